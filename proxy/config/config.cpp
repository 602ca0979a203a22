// YAML configuration → validated immutable snapshot. See config.h and docs/configuration.md.
//
// The parser walks the yaml-cpp node tree by hand instead of using Node::as<T>(), so that every
// problem becomes a ConfigError with a 1-based position and a message saying what was expected,
// and so that parsing carries on after an error to report as many problems as practical.
// Syntaxes of single values (durations, sizes, addresses, URLs) are in config_values.cpp.
#include "config/config.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <system_error>
#include <tuple>
#include <utility>

#include "base/c_handles.h"
#include "config/config_values.h"

namespace idem {

namespace {

using namespace config_detail;

constexpr std::string_view kDurationHint = "a duration such as 500ms, 30s, 5m, 24h or 7d";
constexpr std::string_view kSizeHint =
    "a size such as 512KiB, 1MiB, 2GiB, 1MB or a plain number of bytes";

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

// What kind of YAML node this is, for "expected X, got Y" messages.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "'" + node.Scalar() + "'";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "an undefined value";
  }
}

// A key and its value inside a mapping.
struct Field {
  std::string path;  // dotted, for messages: "server.listen", "routes[0].idempotency.ttl"
  YAML::Node key;
  YAML::Node value;

  // Where to point for a problem with the value: a null value has no position of its own
  // (yaml-cpp gives it the next token's), so point at its key.
  YAML::Mark mark() const {
    if (!value.IsDefined() || value.IsNull() || value.Mark().line < 0) return key.Mark();
    return value.Mark();
  }
};

// Positions kept from parsing for the checks that span several blocks.
struct UpstreamMarks {
  YAML::Mark key;
  std::optional<YAML::Mark> timeout;  // set when given explicitly
};

struct RouteMarks {
  YAML::Mark item;
  std::optional<YAML::Mark> name;
  std::optional<YAML::Mark> upstream;
  std::optional<YAML::Mark> idempotency;
  std::optional<YAML::Mark> lease;
  std::optional<YAML::Mark> ttl;
  std::optional<YAML::Mark> scope;
};

struct StringItem {
  std::string text;
  YAML::Mark mark;
};

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  ConfigResult run(const std::string& text);

 private:
  using Handler = std::function<void(const Field&)>;
  using Handlers = std::vector<std::pair<std::string_view, Handler>>;

  void error(const YAML::Mark& mark, std::string message) {
    ConfigError e;
    e.file = file_;
    if (mark.line >= 0) {
      e.line = mark.line + 1;
      e.column = mark.column + 1;
    }
    e.message = std::move(message);
    errors_.push_back(std::move(e));
  }
  void error(const Field& f, const std::string& message) {
    error(f.mark(), f.path + ": " + message);
  }

  // Calls the handler of each key of a mapping (a null node counts as an empty mapping);
  // reports keys that are unknown, repeated or not names. Returns the keys seen.
  std::map<std::string, YAML::Mark> walk(const YAML::Node& node, const std::string& prefix,
                                         const Handlers& handlers);
  // True when the field holds a mapping (or nothing: an empty block keeps the defaults).
  bool expectMap(const Field& f);

  bool readText(const Field& f, std::string& out);
  void readBool(const Field& f, bool& out);
  void readUnsigned(const Field& f, unsigned& out, unsigned min, unsigned max);
  void readDuration(const Field& f, Millis& out, bool allowZero);
  void readSize(const Field& f, uint64_t& out);
  // upstreams.<name>.idle_timeout: a duration > 0 and below kMaxUpstreamIdleTimeout.
  void readIdleTimeout(const Field& f, UpstreamConfig& upstream);
  // upstreams.<name>.max_response_body: a size > 0.
  void readBodyLimit(const Field& f, UpstreamConfig& upstream) {
    readSize(f, upstream.max_response_body);
  }
  void readListen(const Field& f, ListenAddress& out, std::optional<YAML::Mark>& mark);
  std::optional<std::vector<StringItem>> readStringList(const Field& f);
  void readHeaderList(const Field& f, std::vector<std::string>& out);
  template <class E>
  void readEnum(const Field& f, E& out,
                std::initializer_list<std::pair<std::string_view, E>> choices);

  void parseServer(const Field& f, ServerConfig& out);
  void parseErrorBody(const Field& f, ErrorBodyPtr& out);
  void parseAdmin(const Field& f, std::optional<AdminConfig>& out);
  void parseStore(const Field& f, StoreConfig& out);
  void parsePostgres(const Field& f, PostgresStoreConfig& out);
  void parseLog(const Field& f, LogConfig& out);
  void parseUpstreams(const Field& f, std::map<std::string, UpstreamConfig>& out);
  void parseRoutes(const Field& f, std::vector<RouteConfig>& out);
  void parseRoute(const std::string& prefix, const YAML::Node& node, RouteConfig& route,
                  RouteMarks& marks);
  void parseIdempotency(const Field& f, IdempotencyConfig& out, RouteMarks& marks);
  void crossCheck(Config& config, const YAML::Node& root);

  std::string file_;
  std::vector<ConfigError> errors_;
  std::map<std::string, UpstreamMarks> upstreamMarks_;
  std::vector<RouteMarks> routeMarks_;  // parallel to Config::routes
  std::optional<YAML::Mark> serverListenMark_;
  std::optional<YAML::Mark> drainTimeoutMark_;
  std::optional<YAML::Mark> adminListenMark_;
  std::optional<YAML::Mark> routesMark_;
  bool routesListEmpty_ = false;
};

std::map<std::string, YAML::Mark> Parser::walk(const YAML::Node& node, const std::string& prefix,
                                               const Handlers& handlers) {
  std::map<std::string, YAML::Mark> seen;
  if (!node.IsMap()) return seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;  // a copy: it-> returns a temporary
    if (!key.IsScalar()) {
      error(key.Mark(), (prefix.empty() ? std::string("top level") : prefix) +
                            ": expected a key name, got " + describe(key));
      continue;
    }
    const std::string& name = key.Scalar();
    std::string path = prefix.empty() ? name : prefix + "." + name;
    auto handler = std::find_if(handlers.begin(), handlers.end(),
                                [&](const auto& h) { return h.first == name; });
    if (handler == handlers.end()) {
      std::vector<std::string> allowed;
      for (const auto& h : handlers) allowed.emplace_back(h.first);
      error(key.Mark(), "unknown key '" + name + "' in " +
                            (prefix.empty() ? std::string("the top level") : prefix) +
                            "; allowed keys: " + join(allowed) +
                            (name == "<<" ? " (YAML merge keys are not supported)" : ""));
      continue;
    }
    auto [previous, inserted] = seen.emplace(name, key.Mark());
    if (!inserted) {
      error(key.Mark(), "duplicate key '" + path + "' (first given at line " +
                            std::to_string(previous->second.line + 1) + ")");
      continue;
    }
    handler->second(Field{path, key, it->second});
  }
  return seen;
}

bool Parser::expectMap(const Field& f) {
  if (f.value.IsMap() || f.value.IsNull()) return true;
  error(f, "expected a mapping of keys, got " + describe(f.value));
  return false;
}

bool Parser::readText(const Field& f, std::string& out) {
  if (!f.value.IsScalar()) {
    error(f, "expected a string, got " + describe(f.value));
    return false;
  }
  out = f.value.Scalar();
  return true;
}

void Parser::readBool(const Field& f, bool& out) {
  std::string text;
  if (f.value.IsScalar()) text = toLower(f.value.Scalar());
  if (text == "true") {
    out = true;
  } else if (text == "false") {
    out = false;
  } else {
    error(f, "expected true or false, got " + describe(f.value));
  }
}

void Parser::readUnsigned(const Field& f, unsigned& out, unsigned min, unsigned max) {
  std::optional<uint64_t> value;
  if (f.value.IsScalar()) value = parseDigits(f.value.Scalar());
  if (!value || *value < min || *value > max) {
    error(f, "expected an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                 ", got " + describe(f.value));
    return;
  }
  out = static_cast<unsigned>(*value);
}

void Parser::readDuration(const Field& f, Millis& out, bool allowZero) {
  std::optional<Millis> value;
  if (f.value.IsScalar()) value = parseDuration(f.value.Scalar());
  if (!value) {
    std::string hint;
    if (f.value.IsScalar() && parseDigits(f.value.Scalar())) hint = " (a unit is required)";
    error(f, "expected " + std::string(kDurationHint) + " (at most 3650d), got " +
                 describe(f.value) + hint);
    return;
  }
  if (!allowZero && value->count() == 0) {
    error(f, "must be longer than 0, got " + describe(f.value));
    return;
  }
  out = *value;
}

void Parser::readIdleTimeout(const Field& f, UpstreamConfig& upstream) {
  Millis idle = upstream.idle_timeout;
  readDuration(f, idle, false);
  if (idle >= kMaxUpstreamIdleTimeout) {
    error(f, "idle_timeout " + formatDuration(idle) + " must be below " +
                 formatDuration(kMaxUpstreamIdleTimeout) +
                 ", under common upstream keep-alive timeouts (Node and Apache close idle "
                 "connections after 5s)");
    return;
  }
  upstream.idle_timeout = idle;
}

void Parser::readSize(const Field& f, uint64_t& out) {
  std::optional<uint64_t> value;
  if (f.value.IsScalar()) value = parseSize(f.value.Scalar());
  if (!value) {
    error(f, "expected " + std::string(kSizeHint) + ", got " + describe(f.value));
    return;
  }
  if (*value == 0) {
    error(f, "must be larger than 0");
    return;
  }
  out = *value;
}

void Parser::readListen(const Field& f, ListenAddress& out, std::optional<YAML::Mark>& mark) {
  std::optional<ListenAddress> value;
  if (f.value.IsScalar()) value = parseListen(f.value.Scalar());
  if (!value) {
    error(f, "expected HOST:PORT or [IPV6]:PORT with a port from 0 to 65535, got " +
                 describe(f.value));
    return;
  }
  out = *value;
  mark = f.mark();
}

std::optional<std::vector<StringItem>> Parser::readStringList(const Field& f) {
  if (!f.value.IsSequence()) {
    error(f, "expected a list of strings, got " + describe(f.value));
    return std::nullopt;
  }
  std::vector<StringItem> items;
  bool ok = true;
  for (size_t i = 0; i < f.value.size(); ++i) {
    const YAML::Node item = f.value[i];
    if (!item.IsScalar()) {
      error(item.Mark().line >= 0 ? item.Mark() : f.mark(),
            f.path + "[" + std::to_string(i) + "]: expected a list of strings, got " +
                describe(item) + " as an item");
      ok = false;
      continue;
    }
    items.push_back({item.Scalar(), item.Mark()});
  }
  if (!ok) return std::nullopt;
  return items;
}

void Parser::readHeaderList(const Field& f, std::vector<std::string>& out) {
  auto items = readStringList(f);
  if (!items) return;
  std::vector<std::string> names;
  bool ok = true;
  for (const auto& item : *items) {
    if (!isToken(item.text)) {
      error(item.mark, f.path + ": '" + item.text + "' is not a valid header name");
      ok = false;
      continue;
    }
    names.push_back(item.text);
  }
  if (ok) out = std::move(names);
}

template <class E>
void Parser::readEnum(const Field& f, E& out,
                      std::initializer_list<std::pair<std::string_view, E>> choices) {
  if (f.value.IsScalar()) {
    for (const auto& [name, value] : choices) {
      if (f.value.Scalar() == name) {
        out = value;
        return;
      }
    }
  }
  std::vector<std::string> names;
  for (const auto& choice : choices) names.emplace_back(choice.first);
  error(f, "expected one of " + join(names) + ", got " + describe(f.value));
}

namespace {

// The canonical text of an IPv4 or IPv6 literal, "" when `text` is not one.
std::string canonicalIp(const std::string& text) {
  unsigned char bytes[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  for (int family : {AF_INET, AF_INET6}) {
    if (inet_pton(family, text.c_str(), bytes) == 1 &&
        inet_ntop(family, bytes, out, sizeof out) != nullptr) {
      return out;
    }
  }
  return {};
}

}  // namespace

void Parser::parseServer(const Field& f, ServerConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path,
       {
           {"listen", [&](const Field& k) { readListen(k, out.listen, serverListenMark_); }},
           {"workers", [&](const Field& k) { readUnsigned(k, out.workers, 0, 256); }},
           {"max_request_body", [&](const Field& k) { readSize(k, out.max_request_body); }},
           {"client_timeout", [&](const Field& k) { readDuration(k, out.client_timeout, false); }},
           {"error_body", [&](const Field& k) { parseErrorBody(k, out.error_body); }},
           {"trusted_proxies",
            [&](const Field& k) {
              auto items = readStringList(k);
              if (!items) return;
              for (const auto& item : *items) {
                std::string canonical = canonicalIp(item.text);
                if (canonical.empty()) {
                  error(item.mark, "server.trusted_proxies: '" + item.text +
                                       "' is not an IP address (names and ranges are not "
                                       "accepted)");
                  continue;
                }
                out.trusted_proxies.push_back(std::move(canonical));
              }
            }},
           {"drain_timeout",
            [&](const Field& k) {
              drainTimeoutMark_ = k.key.Mark();
              readDuration(k, out.drain_timeout, true);
            }},
       });
}

void Parser::parseErrorBody(const Field& f, ErrorBodyPtr& out) {
  if (!expectMap(f)) return;
  ErrorBody body;
  std::optional<YAML::Mark> templateMark;
  walk(f.value, f.path,
       {
           {"content_type", [&](const Field& k) { readText(k, body.content_type); }},
           {"template",
            [&](const Field& k) {
              if (readText(k, body.templ)) templateMark = k.mark();
            }},
       });
  if (!templateMark) {
    error(f.key.Mark(), f.path + ": missing required key 'template'");
    return;
  }
  // A JSON template must stay JSON whatever is filled in (values are JSON-escaped): check it
  // with sample values, quotes and backslashes included.
  std::string lowered = body.content_type;
  for (char& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lowered.find("json") != std::string::npos) {
    const std::string sample = fillErrorTemplate(body.templ, 409, "idempotency-key-in-use",
                                                 "A \"quoted\" title", "a\\detail\nline");
    CJsonPtr parsed(cJSON_ParseWithLength(sample.data(), sample.size()));
    if (!parsed) {
      error(*templateMark, f.path + ".template: once filled in it is not valid JSON (" +
                               sample.substr(0, 120) + ")");
      return;
    }
  }
  out = std::make_shared<const ErrorBody>(std::move(body));
}

void Parser::parseAdmin(const Field& f, std::optional<AdminConfig>& out) {
  if (!expectMap(f)) return;
  AdminConfig admin;
  walk(f.value, f.path,
       {{"listen", [&](const Field& k) { readListen(k, admin.listen, adminListenMark_); }}});
  out = admin;
}

void Parser::parseStore(const Field& f, StoreConfig& out) {
  if (!expectMap(f)) return;
  std::optional<YAML::Mark> backendMark;
  walk(f.value, f.path,
       {
           {"backend",
            [&](const Field& k) {
              std::string backend;
              if (!readText(k, backend)) return;
              if (backend != "lmdb" && backend != "postgres") {
                error(k, "unsupported store backend '" + backend + "'; supported: lmdb, postgres");
                return;
              }
              out.backend = backend;
              backendMark = k.key.Mark();
            }},
           {"path",
            [&](const Field& k) {
              std::string path;
              if (!readText(k, path)) return;
              if (path.empty()) {
                error(k, "expected the directory of the store, got an empty string");
                return;
              }
              out.path = path;
            }},
           {"max_size", [&](const Field& k) { readSize(k, out.max_size); }},
           {"durability",
            [&](const Field& k) {
              readEnum(k, out.durability,
                       {{"full", Durability::Full}, {"relaxed", Durability::Relaxed}});
            }},
           {"sweep_interval", [&](const Field& k) { readDuration(k, out.sweep_interval, false); }},
           {"postgres", [&](const Field& k) { parsePostgres(k, out.postgres); }},
       });
  if (out.backend == "postgres" && out.postgres.url.empty() && backendMark) {
    error(*backendMark, f.path + ".backend: postgres needs store.postgres.url");
  }
}

void Parser::parsePostgres(const Field& f, PostgresStoreConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path,
       {
           {"url",
            [&](const Field& k) {
              std::string url;
              if (!readText(k, url)) return;
              // The text is never echoed: it may hold a password.
              char* message = nullptr;
              PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &message);
              if (message != nullptr) PQfreemem(message);
              if (parsed == nullptr || url.empty()) {
                error(k, "expected a libpq connection string or URI (postgresql://…)");
              } else {
                out.url = url;
              }
              if (parsed != nullptr) PQconninfoFree(parsed);
            }},
           {"connections", [&](const Field& k) { readUnsigned(k, out.connections, 1, 64); }},
           {"timeout", [&](const Field& k) { readDuration(k, out.timeout, false); }},
       });
}

void Parser::parseLog(const Field& f, LogConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path, {{"level", [&](const Field& k) {
                            readEnum(k, out.level,
                                     {{"debug", LogLevel::Debug},
                                      {"info", LogLevel::Info},
                                      {"warn", LogLevel::Warn},
                                      {"error", LogLevel::Error}});
                          }}});
}

void Parser::parseUpstreams(const Field& f, std::map<std::string, UpstreamConfig>& out) {
  if (!expectMap(f)) return;
  if (!f.value.IsMap()) return;
  for (auto it = f.value.begin(); it != f.value.end(); ++it) {
    const YAML::Node key = it->first;  // a copy: it-> returns a temporary
    if (!key.IsScalar() || !isPrintableName(key.Scalar())) {
      error(key.Mark(),
            f.path + ": expected an upstream name (printable, no spaces), got " + describe(key));
      continue;
    }
    const std::string& name = key.Scalar();
    Field field{f.path + "." + name, key, it->second};
    if (out.count(name) != 0) {
      error(key.Mark(), "duplicate upstream '" + name + "' (first defined at line " +
                            std::to_string(upstreamMarks_[name].key.line + 1) + ")");
      continue;
    }
    if (!field.value.IsMap()) {
      error(field, "expected a mapping with at least 'url', got " + describe(field.value));
      continue;
    }
    UpstreamConfig upstream;
    upstream.name = name;
    UpstreamMarks marks{key.Mark(), std::nullopt};
    auto seen =
        walk(field.value, field.path,
             {
                 {"url",
                  [&](const Field& k) {
                    std::string url;
                    if (!readText(k, url)) return;
                    std::string normalized;
                    if (std::string problem = checkUpstreamUrl(url, normalized); !problem.empty()) {
                      error(k, "upstream url '" + url + "' " + problem);
                      return;
                    }
                    upstream.url = normalized;
                  }},
                 {"connect_timeout",
                  [&](const Field& k) { readDuration(k, upstream.connect_timeout, false); }},
                 {"timeout",
                  [&](const Field& k) {
                    readDuration(k, upstream.timeout, false);
                    marks.timeout = k.mark();
                  }},
                 {"max_connections",
                  [&](const Field& k) { readUnsigned(k, upstream.max_connections, 1, 65536); }},
                 {"idle_timeout", [&](const Field& k) { readIdleTimeout(k, upstream); }},
                 {"max_response_body", [&](const Field& k) { readBodyLimit(k, upstream); }},
                 {"tls_ca_file",
                  [&](const Field& k) {
                    std::string path;
                    if (!readText(k, path)) return;
                    if (access(path.c_str(), R_OK) != 0) {
                      error(k, "tls_ca_file '" + path + "' cannot be read");
                      return;
                    }
                    upstream.tls_ca_file = path;
                  }},
             });
    if (seen.count("url") == 0) {
      error(field.value.Mark(), field.path + ": missing required key 'url'");
    }
    upstreamMarks_[name] = marks;
    out.emplace(name, std::move(upstream));
  }
}

void Parser::parseRoutes(const Field& f, std::vector<RouteConfig>& out) {
  routesMark_ = f.key.Mark();
  if (!f.value.IsSequence()) {
    error(f, "expected a list of routes, got " + describe(f.value));
    return;
  }
  routesListEmpty_ = f.value.size() == 0;
  for (size_t i = 0; i < f.value.size(); ++i) {
    const YAML::Node item = f.value[i];
    std::string prefix = f.path + "[" + std::to_string(i) + "]";
    if (!item.IsMap()) {
      error(item.Mark().line >= 0 ? item.Mark() : f.mark(),
            prefix + ": expected a route (a mapping with name, path and upstream), got " +
                describe(item));
      continue;
    }
    RouteConfig route;
    RouteMarks marks;
    marks.item = item.Mark();
    parseRoute(prefix, item, route, marks);
    out.push_back(std::move(route));
    routeMarks_.push_back(marks);
  }
}

void Parser::parseRoute(const std::string& prefix, const YAML::Node& node, RouteConfig& route,
                        RouteMarks& marks) {
  auto seen = walk(
      node, prefix,
      {
          {"name",
           [&](const Field& k) {
             std::string name;
             if (!readText(k, name)) return;
             if (!isPrintableName(name)) {
               error(k, "expected a route name (printable, no spaces), got " + describe(k.value));
               return;
             }
             route.name = name;
             marks.name = k.mark();
           }},
          {"methods",
           [&](const Field& k) {
             auto items = readStringList(k);
             if (!items) return;
             for (const auto& item : *items) {
               if (!isToken(item.text)) {
                 error(item.mark, k.path + ": '" + item.text + "' is not a valid HTTP method");
                 continue;
               }
               std::string method = toUpper(item.text);
               if (std::find(route.methods.begin(), route.methods.end(), method) ==
                   route.methods.end()) {
                 route.methods.push_back(method);
               }
             }
           }},
          {"path",
           [&](const Field& k) {
             std::string path;
             if (!readText(k, path)) return;
             if (path.empty() || path.front() != '/') {
               error(k, "expected a path starting with '/', got " + describe(k.value));
               return;
             }
             if (path.find_first_of("?#") != std::string::npos) {
               error(k,
                     "a route path must not contain a query or fragment, got " + describe(k.value));
               return;
             }
             if (std::any_of(path.begin(), path.end(),
                             [](char c) { return c <= 0x20 || c >= 0x7f; })) {
               error(k, "a route path must not contain spaces or control characters");
               return;
             }
             size_t star = path.find('*');
             if (star != std::string::npos) {
               if (star != path.size() - 1 || path[star - 1] != '/') {
                 error(k, "'*' is only allowed as a final '/*' (prefix match), got " +
                              describe(k.value));
                 return;
               }
               route.path = path.substr(0, path.size() - 2);
               route.prefix = true;
             } else {
               route.path = path;
               route.prefix = false;
             }
           }},
          {"upstream",
           [&](const Field& k) {
             if (readText(k, route.upstream)) marks.upstream = k.mark();
           }},
          {"error_body", [&](const Field& k) { parseErrorBody(k, route.error_body); }},
          {"idempotency",
           [&](const Field& k) {
             if (!expectMap(k)) return;
             IdempotencyConfig idem;
             marks.idempotency = k.key.Mark();
             parseIdempotency(k, idem, marks);
             route.idempotency = std::move(idem);
           }},
      });
  for (const char* required : {"name", "path", "upstream"}) {
    if (seen.count(required) == 0) {
      error(node.Mark(), prefix + ": missing required key '" + required + "'");
    }
  }
}

void Parser::parseIdempotency(const Field& f, IdempotencyConfig& out, RouteMarks& marks) {
  walk(f.value, f.path,
       {
           {"key_header",
            [&](const Field& k) {
              std::string name;
              if (!readText(k, name)) return;
              if (!isToken(name)) {
                error(k, "expected a header name (an HTTP token), got " + describe(k.value));
                return;
              }
              out.key_header = name;
            }},
           {"key_json_pointer",
            [&](const Field& k) {
              std::string pointer;
              if (!readText(k, pointer)) return;
              if (!isJsonPointer(pointer)) {
                error(k,
                      "expected an RFC 6901 JSON pointer to a member of the body, like "
                      "/idempotency_key ('~' only as ~0 or ~1), got " +
                          describe(k.value));
                return;
              }
              out.key_json_pointer = pointer;
            }},
           {"required", [&](const Field& k) { readBool(k, out.required); }},
           {"ttl",
            [&](const Field& k) {
              readDuration(k, out.ttl, false);
              marks.ttl = k.mark();
            }},
           {"scope",
            [&](const Field& k) {
              readHeaderList(k, out.scope);
              marks.scope = k.key.Mark();
            }},
           {"shared_scope", [&](const Field& k) { readBool(k, out.shared_scope); }},
           {"fingerprint",
            [&](const Field& k) {
              auto items = readStringList(k);
              if (!items) return;
              static const std::pair<std::string_view, FingerprintPart> kParts[] = {
                  {"method", FingerprintPart::Method},
                  {"path", FingerprintPart::Path},
                  {"query", FingerprintPart::Query},
                  {"body", FingerprintPart::Body},
                  {"body_json", FingerprintPart::BodyJson}};
              std::vector<FingerprintPart> parts;
              bool ok = true;
              for (const auto& item : *items) {
                auto found = std::find_if(std::begin(kParts), std::end(kParts),
                                          [&](const auto& p) { return p.first == item.text; });
                if (found == std::end(kParts)) {
                  error(item.mark, k.path + ": unknown fingerprint part '" + item.text +
                                       "'; expected method, path, query, body or body_json");
                  ok = false;
                  continue;
                }
                if (std::find(parts.begin(), parts.end(), found->second) != parts.end()) {
                  error(item.mark, k.path + ": '" + item.text + "' is listed twice");
                  ok = false;
                  continue;
                }
                bool hasBody =
                    std::find(parts.begin(), parts.end(), FingerprintPart::Body) != parts.end();
                bool hasJson =
                    std::find(parts.begin(), parts.end(), FingerprintPart::BodyJson) != parts.end();
                if ((found->second == FingerprintPart::Body && hasJson) ||
                    (found->second == FingerprintPart::BodyJson && hasBody)) {
                  error(item.mark, k.path + ": 'body' and 'body_json' are mutually exclusive");
                  ok = false;
                  continue;
                }
                parts.push_back(found->second);
              }
              if (ok) out.fingerprint = std::move(parts);
            }},
           {"concurrent",
            [&](const Field& k) {
              readEnum(k, out.concurrent,
                       {{"wait", ConcurrentMode::Wait}, {"reject", ConcurrentMode::Reject}});
            }},
           {"wait_timeout", [&](const Field& k) { readDuration(k, out.wait_timeout, true); }},
           {"lease",
            [&](const Field& k) {
              readDuration(k, out.lease, false);
              marks.lease = k.mark();
            }},
           {"abandoned",
            [&](const Field& k) {
              readEnum(k, out.abandoned,
                       {{"fail", AbandonedMode::Fail}, {"retry", AbandonedMode::Retry}});
            }},
           {"release_statuses",
            [&](const Field& k) {
              auto items = readStringList(k);
              if (!items) return;
              std::vector<int> statuses;
              bool ok = true;
              for (const auto& item : *items) {
                auto value = parseDigits(item.text);
                if (!value || *value < 100 || *value > 599) {
                  error(item.mark, k.path + ": expected HTTP status codes from 100 to 599, got '" +
                                       item.text + "'");
                  ok = false;
                  continue;
                }
                if (*value >= 200 && *value <= 299) {
                  // Releasing a success would let a retry execute the request a second time.
                  error(item.mark, k.path + ": " + item.text +
                                       " is a success status; releasing it would let a retry "
                                       "execute the request twice");
                  ok = false;
                  continue;
                }
                statuses.push_back(static_cast<int>(*value));
              }
              if (ok) out.release_statuses = std::move(statuses);
            }},
           {"replay_drop_headers",
            [&](const Field& k) { readHeaderList(k, out.replay_drop_headers); }},
           {"max_response_body", [&](const Field& k) { readSize(k, out.max_response_body); }},
       });
}

void Parser::crossCheck(Config& config, const YAML::Node& root) {
  if (!routesMark_) {
    error(root.Mark(), "missing required key 'routes': at least one route is needed");
  } else if (routesListEmpty_) {
    error(*routesMark_, "routes: at least one route is needed");
  }

  std::map<std::string, size_t> routeByName;
  for (size_t i = 0; i < config.routes.size(); ++i) {
    const RouteConfig& route = config.routes[i];
    const RouteMarks& marks = routeMarks_[i];
    std::string label =
        route.name.empty() ? "routes[" + std::to_string(i) + "]" : "route '" + route.name + "'";
    if (!route.name.empty() && marks.name) {
      auto [first, inserted] = routeByName.emplace(route.name, i);
      if (!inserted) {
        error(*marks.name, "duplicate route name '" + route.name + "' (first defined at line " +
                               std::to_string(routeMarks_[first->second].name->line + 1) + ")");
      }
    }
    if (!marks.upstream) continue;
    auto upstream = config.upstreams.find(route.upstream);
    if (upstream == config.upstreams.end()) {
      std::vector<std::string> names;
      for (const auto& [name, _] : config.upstreams) names.push_back(name);
      error(*marks.upstream, label + ": unknown upstream '" + route.upstream + "'; " +
                                 (names.empty() ? std::string("no upstreams are defined")
                                                : "defined upstreams: " + join(names)));
      continue;
    }
    if (!route.idempotency) continue;
    const IdempotencyConfig& idem = *route.idempotency;
    if (idem.scope.empty() && !idem.shared_scope && marks.scope) {
      error(*marks.scope, label +
                              ": scope [] makes every client one tenant; say so with "
                              "shared_scope: true, or name the header that identifies a "
                              "client (e.g. Authorization, X-Api-Key)");
    }
    const UpstreamMarks& upMarks = upstreamMarks_[route.upstream];
    if (upstream->second.timeout >= idem.lease) {
      // A lease that ends while the upstream may still answer lets another request take the key
      // over (abandoned: retry) or record outcome-unknown while the payment goes through.
      std::string timeout = formatDuration(upstream->second.timeout);
      std::string lease = formatDuration(idem.lease);
      if (marks.lease) {
        std::string where = upMarks.timeout ? "line " + std::to_string(upMarks.timeout->line + 1)
                                            : std::string("the default");
        error(*marks.lease, label + ": lease " + lease + " must be longer than the timeout " +
                                timeout + " (" + where + ") of its upstream '" + route.upstream +
                                "'");
      } else {
        YAML::Mark at = upMarks.timeout ? *upMarks.timeout : *marks.idempotency;
        error(at, "upstream '" + route.upstream + "': timeout " + timeout +
                      " must be shorter than the lease " + lease + " (the default) of " + label +
                      " (line " + std::to_string(marks.item.line + 1) + "), which uses it");
      }
    }
    if (idem.ttl <= idem.lease) {
      YAML::Mark at = marks.ttl ? *marks.ttl : (marks.lease ? *marks.lease : *marks.idempotency);
      error(at, label + ": ttl " + formatDuration(idem.ttl) + " must be longer than the lease " +
                    formatDuration(idem.lease) +
                    ", or a key could expire while its request is still in flight");
    }
  }

  // SIGTERM waits drain_timeout for in-flight exchanges: it must outlast the slowest one, or a
  // stop cuts a payment that is still running (and its outcome is never recorded).
  Millis slowest{0};
  std::string slowestName;
  for (const auto& [name, up] : config.upstreams) {
    if (up.timeout > slowest) {
      slowest = up.timeout;
      slowestName = name;
    }
  }
  if (!slowestName.empty() && config.server.drain_timeout < slowest + kDrainMargin) {
    const YAML::Mark at = drainTimeoutMark_ ? *drainTimeoutMark_ : upstreamMarks_[slowestName].key;
    error(at, "server.drain_timeout " + formatDuration(config.server.drain_timeout) +
                  " must be at least the timeout " + formatDuration(slowest) + " of upstream '" +
                  slowestName + "' plus " + formatDuration(kDrainMargin) +
                  ", so that a stop lets every exchange finish and be recorded");
  }
  if (config.admin && adminListenMark_ && config.admin->listen.port != 0 &&
      config.admin->listen.port == config.server.listen.port &&
      config.admin->listen.host == config.server.listen.host) {
    error(*adminListenMark_,
          "admin.listen: " + config.admin->listen.text + " is also the address of server.listen");
  }
}

// The first document, and a second one if there is one (an error: the caller reports it).
// Not YAML::LoadAll: yaml-cpp 0.7's LoadAll never returns on some malformed inputs (found by
// tests/fuzz/fuzz_config: ",\xff\xff\xff\xff\xff\xff[" grows without bound), while parsing
// one document at a time does.
class DocumentCounter : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  std::vector<YAML::Mark> marks;
};

struct Documents {
  YAML::Node first;                  // undefined when the text holds no document
  std::optional<YAML::Mark> second;  // where a second document starts, if there is one
};

Documents loadFirstDocument(const std::string& text) {
  Documents docs;
  docs.first = YAML::Load(text);
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentCounter counter;
  if (parser.HandleNextDocument(counter) && parser.HandleNextDocument(counter) &&
      counter.marks.size() >= 2) {
    docs.second = counter.marks[1];
  }
  return docs;
}

ConfigResult Parser::run(const std::string& text) {
  ConfigResult result;
  auto config = std::make_shared<Config>();
  config->source = file_;
  try {
    const Documents docs = loadFirstDocument(text);
    if (!docs.first.IsDefined() || docs.first.IsNull()) {
      error(YAML::Mark(), "the configuration is empty; expected at least 'upstreams' and 'routes'");
      errors_.back().line = 1;
      errors_.back().column = 1;
    } else if (!docs.first.IsMap()) {
      error(docs.first.Mark(),
            "expected a mapping of keys at the top level, got " + describe(docs.first));
    } else {
      const YAML::Node& root = docs.first;
      if (docs.second) error(*docs.second, "expected a single YAML document, found another");
      walk(root, "",
           {
               {"server", [&](const Field& f) { parseServer(f, config->server); }},
               {"admin", [&](const Field& f) { parseAdmin(f, config->admin); }},
               {"store", [&](const Field& f) { parseStore(f, config->store); }},
               {"upstreams", [&](const Field& f) { parseUpstreams(f, config->upstreams); }},
               {"routes", [&](const Field& f) { parseRoutes(f, config->routes); }},
               {"log", [&](const Field& f) { parseLog(f, config->log); }},
           });
      crossCheck(*config, root);
    }
  } catch (const YAML::ParserException& e) {
    error(e.mark, "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    error(e.mark, "YAML error: " + e.msg);
  }

  // A relative store path is relative to the configuration file, not to the working directory
  // (which is "/" under systemd).
  std::filesystem::path storePath(config->store.path);
  std::filesystem::path dir = std::filesystem::path(file_).parent_path();
  if (storePath.is_relative() && !dir.empty()) {
    config->store.path = (dir / storePath).lexically_normal().string();
  }

  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  });
  result.errors = std::move(errors_);
  if (result.errors.empty()) result.config = std::move(config);
  return result;
}

}  // namespace

bool RouteConfig::matches(std::string_view method, std::string_view requestPath) const {
  if (!methods.empty() && std::find(methods.begin(), methods.end(), method) == methods.end()) {
    return false;
  }
  if (!prefix) return requestPath == path;
  if (!requestPath.starts_with(path)) return false;
  // "/a/*" matches "/a" and "/a/..." but not "/ab"; "/*" (empty path) matches everything.
  return requestPath.size() == path.size() || path.empty() || requestPath[path.size()] == '/';
}

const RouteConfig* Config::findRoute(std::string_view method, std::string_view path) const {
  for (const RouteConfig& route : routes) {
    if (route.matches(method, path)) return &route;
  }
  return nullptr;
}

std::string ConfigError::str() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

ConfigResult loadConfigFile(const std::string& path) {
  auto fail = [&](const std::string& message) {
    ConfigResult result;
    result.errors.push_back(ConfigError{path, 0, 0, message});
    return result;
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return fail("cannot read configuration file: it is a directory");
  }
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return fail(std::string("cannot read configuration file: ") + std::strerror(errno));
  }
  std::string text;
  char buffer[8192];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0) text.append(buffer, n);
  bool failed = std::ferror(file) != 0;
  int readErrno = errno;
  std::fclose(file);
  if (failed)
    return fail(std::string("cannot read configuration file: ") + std::strerror(readErrno));
  return parseConfig(text, path);
}

ConfigResult parseConfig(const std::string& yamlText, const std::string& fileName) {
  return Parser(fileName).run(yamlText);
}

bool ServerConfig::trusts(std::string_view peer) const {
  return std::find(trusted_proxies.begin(), trusted_proxies.end(), peer) != trusted_proxies.end();
}

}  // namespace idem
