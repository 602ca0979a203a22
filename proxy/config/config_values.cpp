// Syntaxes of single configuration values: durations, sizes, listen addresses, URLs, tokens.
#include "config/config_values.h"

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <limits>
#include <system_error>
#include <utility>

#include "base/c_handles.h"
#include "base/http_types.h"
#include "config/config.h"

namespace idem {
namespace config_detail {

namespace {

// Durations beyond this are refused: nobody needs them, and adding them to a clock's time point
// in nanoseconds could overflow.
constexpr Millis kMaxDuration{3650ll * 24 * 3600 * 1000};  // 3650d

bool isDigit(char c) {
  return c >= '0' && c <= '9';
}
bool isAlpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

}  // namespace

bool isJsonPointer(std::string_view pointer) {
  if (pointer.empty() || pointer.front() != '/') return false;
  for (size_t i = 0; i < pointer.size(); ++i) {
    if (pointer[i] == '~' &&
        (i + 1 >= pointer.size() || (pointer[i + 1] != '0' && pointer[i + 1] != '1'))) {
      return false;
    }
  }
  return true;
}

bool isToken(std::string_view s) {
  return isHttpToken(s);
}

// Printable ASCII without space: what names of routes and upstreams may contain.
bool isPrintableName(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c > 0x20 && c < 0x7f; });
}

std::string toUpper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

std::string toLower(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  }
  return out;
}

// A non-empty run of decimal digits → value; nullopt on anything else or overflow.
std::optional<uint64_t> parseDigits(std::string_view s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), isDigit)) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

namespace {

// Splits "123unit" into its digits and unit.
std::pair<std::string_view, std::string_view> splitAmount(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && isDigit(text[i])) ++i;
  return {text.substr(0, i), text.substr(i)};
}

std::optional<uint16_t> parsePort(std::string_view s) {
  if (s.size() > 5) return std::nullopt;
  auto value = parseDigits(s);
  if (!value || *value > 65535) return std::nullopt;
  return static_cast<uint16_t>(*value);
}

bool isIpv4(const std::string& s) {
  in_addr addr{};
  return inet_pton(AF_INET, s.c_str(), &addr) == 1;
}

bool isIpv6(const std::string& s) {
  in6_addr addr{};
  return inet_pton(AF_INET6, s.c_str(), &addr) == 1;
}

// A host name or an IPv4 address (not bracketed IPv6).
bool isHostName(const std::string& host) {
  if (host.empty() || host.size() > 253) return false;
  bool numeric =
      std::all_of(host.begin(), host.end(), [](char c) { return isDigit(c) || c == '.'; });
  if (numeric) return isIpv4(host);
  return std::all_of(host.begin(), host.end(),
                     [](char c) { return isDigit(c) || isAlpha(c) || c == '-' || c == '.'; });
}

// "host[:port]" or "[v6][:port]" of a URL; empty string when valid, else the problem.
std::string checkAuthority(std::string_view authority) {
  std::string_view port;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return "an IPv6 address must be closed with ']'";
    if (!isIpv6(std::string(authority.substr(1, close - 1)))) return "not a valid IPv6 address";
    std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return "expected ':PORT' after the IPv6 address";
      port = rest.substr(1);
      if (port.empty()) return "empty port";
    }
  } else {
    size_t colon = authority.find(':');
    std::string_view host = authority.substr(0, colon);
    if (host.empty()) return "missing host";
    if (!isHostName(std::string(host))) return "not a valid host name";
    if (colon != std::string_view::npos) {
      port = authority.substr(colon + 1);
      if (port.empty()) return "empty port";
    }
  }
  if (!port.empty()) {
    auto p = parsePort(port);
    if (!p || *p == 0) return "the port must be a number from 1 to 65535";
  }
  return {};
}

}  // namespace

// Validates an upstream URL; on success stores the normalised form (lower-case scheme, no
// trailing '/' on the path) in `normalized` and returns an empty string.
std::string checkUpstreamUrl(std::string_view url, std::string& normalized) {
  if (std::any_of(url.begin(), url.end(), [](char c) { return c <= 0x20 || c >= 0x7f; })) {
    return "must not contain spaces or control characters";
  }
  size_t sep = url.find("://");
  std::string scheme = sep == std::string_view::npos ? std::string() : toLower(url.substr(0, sep));
  if (scheme != "http" && scheme != "https") return "must start with http:// or https://";
  if (url.find('?') != std::string_view::npos) {
    return "must not have a query ('?'); only scheme, host, port and an optional path prefix";
  }
  if (url.find('#') != std::string_view::npos) return "must not have a fragment ('#')";
  std::string_view rest = url.substr(sep + 3);
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? std::string_view() : rest.substr(slash);
  if (authority.find('@') != std::string_view::npos) {
    return "must not contain credentials ('user@'); send them as headers from the client";
  }
  if (std::string problem = checkAuthority(authority); !problem.empty()) {
    return "has a bad host or port: " + problem;
  }
  while (!path.empty() && path.back() == '/') path.remove_suffix(1);
  normalized = scheme + "://" + std::string(authority) + std::string(path);
  return {};
}

std::string builtinClientProblem(std::string_view url) {
  if (!url.starts_with("http://")) return "speaks plain http:// only (no TLS)";
  std::string_view rest = url.substr(7);
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string host;
  if (!authority.empty() && authority.front() == '[') {
    host = std::string(authority.substr(1, authority.find(']') - 1));
    if (host.find('%') != std::string::npos) return "takes no IPv6 zone ids";
    return isIpv6(host) ? std::string() : "needs an IP address";
  }
  host = std::string(authority.substr(0, authority.find(':')));
  in_addr addr{};
  if (inet_pton(AF_INET, host.c_str(), &addr) != 1) {
    return "needs an IP address: it does not resolve host names (curl resolves them off the "
           "event loop)";
  }
  return {};
}

}  // namespace config_detail

using namespace config_detail;  // this file's helpers, for the public parsers below

const char* toString(UpstreamClient c) {
  switch (c) {
    case UpstreamClient::Auto:
      return "auto";
    case UpstreamClient::Builtin:
      return "builtin";
    case UpstreamClient::Curl:
      return "curl";
  }
  return "?";
}

std::optional<Millis> parseDuration(std::string_view text) {
  auto [digits, unit] = splitAmount(text);
  auto amount = parseDigits(digits);
  if (!amount) return std::nullopt;
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {
      {"ms", 1}, {"s", 1000}, {"m", 60'000}, {"h", 3'600'000}, {"d", 86'400'000}};
  for (const auto& [name, factor] : kUnits) {
    if (unit != name) continue;
    uint64_t limit = static_cast<uint64_t>(kMaxDuration.count()) / factor;
    if (*amount > limit) return std::nullopt;
    return Millis(static_cast<Millis::rep>(*amount * factor));
  }
  return std::nullopt;
}

std::optional<uint64_t> parseSize(std::string_view text) {
  auto [digits, unit] = splitAmount(text);
  auto amount = parseDigits(digits);
  if (!amount) return std::nullopt;
  static constexpr std::pair<std::string_view, uint64_t> kUnits[] = {{"", 1},
                                                                     {"B", 1},
                                                                     {"KiB", 1ull << 10},
                                                                     {"MiB", 1ull << 20},
                                                                     {"GiB", 1ull << 30},
                                                                     {"TiB", 1ull << 40},
                                                                     {"KB", 1'000},
                                                                     {"MB", 1'000'000},
                                                                     {"GB", 1'000'000'000},
                                                                     {"TB", 1'000'000'000'000}};
  for (const auto& [name, factor] : kUnits) {
    if (unit != name) continue;
    if (*amount > std::numeric_limits<uint64_t>::max() / factor) return std::nullopt;
    return *amount * factor;
  }
  return std::nullopt;
}

std::optional<ListenAddress> parseListen(std::string_view text) {
  ListenAddress out;
  std::string_view port;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos) return std::nullopt;
    out.host = std::string(text.substr(1, close - 1));
    if (!isIpv6(out.host)) return std::nullopt;
    std::string_view rest = text.substr(close + 1);
    if (rest.empty() || rest.front() != ':') return std::nullopt;
    port = rest.substr(1);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    out.host = std::string(text.substr(0, colon));
    // An IPv6 address must be bracketed; isHostName refuses ':'.
    if (!isHostName(out.host)) return std::nullopt;
    port = text.substr(colon + 1);
  }
  auto p = parsePort(port);
  if (!p) return std::nullopt;
  out.port = *p;
  out.text = std::string(text);
  return out;
}

std::string formatDuration(Millis duration) {
  auto ms = duration.count();
  static constexpr std::pair<const char*, Millis::rep> kUnits[] = {
      {"d", 86'400'000}, {"h", 3'600'000}, {"m", 60'000}, {"s", 1000}};
  if (ms != 0) {
    for (const auto& [name, factor] : kUnits) {
      if (ms % factor == 0) return std::to_string(ms / factor) + name;
    }
  }
  return std::to_string(ms) + "ms";
}

}  // namespace idem

namespace idem::config_detail {

namespace {

std::string jsonEscaped(std::string_view v) {
  CJsonPtr s(cJSON_CreateString(std::string(v).c_str()));
  CJsonString text(cJSON_PrintUnformatted(s.get()));
  std::string out = text ? text.get() : "\"\"";
  return out.size() >= 2 ? out.substr(1, out.size() - 2) : std::string();
}

}  // namespace

std::string fillErrorTemplate(std::string_view templ, int status, std::string_view slug,
                              std::string_view title, std::string_view detail) {
  const std::pair<std::string_view, std::string> fields[] = {
      {"{status}", std::to_string(status)},
      {"{slug}", jsonEscaped(slug)},
      {"{title}", jsonEscaped(title)},
      {"{detail}", jsonEscaped(detail)},
  };
  std::string out;
  out.reserve(templ.size() + 64);
  for (size_t i = 0; i < templ.size();) {
    bool replaced = false;
    if (templ[i] == '{') {
      for (const auto& [name, value] : fields) {
        if (templ.substr(i, name.size()) == name) {
          out += value;
          i += name.size();
          replaced = true;
          break;
        }
      }
    }
    if (!replaced) out.push_back(templ[i++]);
  }
  return out;
}

}  // namespace idem::config_detail

namespace idem {

std::string LookupPart::valueName() const {
  switch (kind) {
    case Kind::Header:
      return "header:" + text;
    case Kind::Json:
      return "json:" + text;
    case Kind::Literal:
    case Kind::Key:
      break;
  }
  return {};
}

std::string parseLookupTemplate(std::string_view path, std::vector<LookupPart>& parts) {
  using config_detail::isJsonPointer;
  using config_detail::isToken;
  parts.clear();
  if (path.empty() || path.front() != '/') {
    return "expected an absolute path starting with '/' (placeholders {key}, {header:Name}, "
           "{json:/pointer} allowed)";
  }
  std::string literal;
  auto flush = [&] {
    if (!literal.empty()) parts.push_back({LookupPart::Kind::Literal, std::move(literal)});
    literal.clear();
  };
  for (size_t i = 0; i < path.size(); ++i) {
    const char c = path[i];
    if (c == '}') return "a '}' without its '{' at offset " + std::to_string(i);
    if (c != '{') {
      if (c <= 0x20 || c >= 0x7f || c == '#') {
        return "the path may hold printable ASCII only (no spaces, no '#')";
      }
      literal.push_back(c);
      continue;
    }
    const size_t close = path.find('}', i);
    if (close == std::string_view::npos)
      return "a '{' without its '}' at offset " + std::to_string(i);
    const std::string_view inner = path.substr(i + 1, close - i - 1);
    flush();
    if (inner == "key") {
      parts.push_back({LookupPart::Kind::Key, {}});
    } else if (inner.substr(0, 7) == "header:" && isToken(inner.substr(7))) {
      parts.push_back({LookupPart::Kind::Header, std::string(inner.substr(7))});
    } else if (inner.substr(0, 5) == "json:" && isJsonPointer(inner.substr(5))) {
      parts.push_back({LookupPart::Kind::Json, std::string(inner.substr(5))});
    } else {
      return "unknown placeholder {" + std::string(inner) +
             "}: expected {key}, {header:Name} or {json:/pointer} (RFC 6901)";
    }
    i = close;
  }
  flush();
  return {};
}

}  // namespace idem
