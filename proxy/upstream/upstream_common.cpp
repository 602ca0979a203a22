// What both upstream clients share: header-line, token and status-line helpers, the
// hop-by-hop rules, and the deferred delivery of results (PooledUpstream::Impl).
#include <curl/curl.h>
#include <event2/event.h>

#include <charconv>
#include <cstring>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "upstream/upstream.h"
#include "upstream/upstream_backend.h"

namespace idem {
namespace upstream_detail {

std::string_view trimOws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

void appendHeaderLine(Headers& headers, std::string_view line) {
  if (line.empty()) return;
  if (line.front() == ' ' || line.front() == '\t') {
    // obs-fold: continues the previous field's value (RFC 9112 §5.2)
    std::string_view more = trimOws(line);
    if (!headers.empty() && !more.empty()) {
      std::string& value = headers.back().value;
      if (!value.empty()) value += ' ';
      value += more;
    }
  } else if (size_t colon = line.find(':'); colon != std::string_view::npos && colon > 0) {
    // A name that is not a token (NUL, CR, spaces inside …) is not a field: ignored, like a
    // line without a colon, so it never reaches a record or a client (found by
    // tests/fuzz/fuzz_upstream_head).
    const std::string_view name = trimOws(line.substr(0, colon));
    if (!isToken(name)) return;
    headers.push_back({std::string(name), std::string(trimOws(line.substr(colon + 1)))});
  }
}

bool isToken(std::string_view s) {
  return isHttpToken(s);  // RFC 9110 token, one definition for the whole proxy
}

bool isSafeFieldValue(std::string_view v) {
  return v.find_first_of(std::string_view("\r\n\0", 3)) == std::string_view::npos;
}

bool hasHeader(const Headers& headers, std::string_view name) {
  for (const Header& h : headers) {
    if (iequals(h.name, name)) return true;
  }
  return false;
}

int parseStatusLine(std::string_view line) {
  size_t sp = line.find(' ');
  if (sp == std::string_view::npos || line.size() < sp + 4) return 0;
  int status = 0;
  for (size_t i = sp + 1; i < sp + 4; ++i) {
    char c = line[i];
    if (c < '0' || c > '9') return 0;
    status = status * 10 + (c - '0');
  }
  // Three digits, then the end or a space; a first digit of 0 is no status (found by
  // tests/fuzz/fuzz_upstream_head: "0 098" read as 98).
  if (status < 100 || (line.size() > sp + 4 && line[sp + 4] != ' ')) return 0;
  return status;
}

std::string unsupportedTransferCoding(const Headers& headers) {
  std::string codings;
  int fields = 0;
  for (const Header& h : headers) {
    if (!iequals(h.name, "Transfer-Encoding")) continue;
    if (fields++ != 0) codings += ", ";
    codings += h.value;
  }
  if (fields == 0 || (fields == 1 && iequals(trimOws(codings), "chunked"))) return {};
  return "unsupported Transfer-Encoding from upstream: " + codings.substr(0, 200);
}

std::string baseUrlOf(const std::string& url) {
  std::string base = url;
  size_t scheme = base.find("://");
  size_t minSize = scheme == std::string::npos ? 0 : scheme + 3;
  while (base.size() > minSize && base.back() == '/') base.pop_back();
  return base;
}

}  // namespace upstream_detail

using namespace upstream_detail;

bool isHopByHop(std::string_view name) {
  static constexpr std::string_view kNames[] = {"Connection",
                                                "Keep-Alive",
                                                "Proxy-Connection",
                                                "TE",
                                                "Trailer",
                                                "Transfer-Encoding",
                                                "Upgrade",
                                                "Proxy-Authenticate",
                                                "Proxy-Authorization"};
  for (std::string_view n : kNames) {
    if (iequals(n, name)) return true;
  }
  return false;
}

void removeHopByHopFields(Headers& headers) {
  // Linear in the size of the fields: at most kMaxConnectionTokens distinct names are taken
  // from Connection values (further ones are ignored: no real sender lists that many), so the
  // check per field is bounded, whatever a peer sends (16,000 tokens × 7,000 fields would
  // otherwise cost a worker's loop most of a second).
  constexpr size_t kMaxConnectionTokens = 32;
  std::string_view named[kMaxConnectionTokens];
  size_t count = 0;
  for (const Header& h : headers) {
    if (count == kMaxConnectionTokens) break;
    if (!iequals(h.name, "Connection")) continue;
    std::string_view rest = h.value;
    while (!rest.empty() && count < kMaxConnectionTokens) {
      size_t comma = rest.find(',');
      std::string_view token = trimOws(rest.substr(0, comma));
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      if (token.empty() || isHopByHop(token)) continue;
      bool seen = false;
      for (size_t i = 0; i < count && !seen; ++i) seen = iequals(named[i], token);
      if (!seen) named[count++] = token;
    }
  }
  // The views above point into Connection values, which are themselves removed: decide for
  // every field first, then compact.
  // On the stack for the usual field counts (this runs twice per forwarded request).
  constexpr size_t kOnStack = 64;
  bool dropSmall[kOnStack];
  std::unique_ptr<bool[]> dropLarge;
  bool* drop = dropSmall;
  if (headers.size() > kOnStack) {
    dropLarge = std::make_unique<bool[]>(headers.size());
    drop = dropLarge.get();
  }
  for (size_t i = 0; i < headers.size(); ++i) {
    const std::string& name = headers[i].name;
    bool hop = isHopByHop(name);
    for (size_t j = 0; j < count && !hop; ++j) {
      hop = named[j].size() == name.size() && iequals(named[j], name);
    }
    drop[i] = hop;
  }
  size_t out = 0;
  for (size_t i = 0; i < headers.size(); ++i) {
    if (drop[i]) continue;
    if (out != i) headers[out] = std::move(headers[i]);
    ++out;
  }
  headers.resize(out);
}

void upstreamGlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
      throw std::runtime_error("curl_global_init failed");
    }
  });
}

PooledUpstream::Impl::Impl(event_base* base, const UpstreamConfig& config)
    : base_(base), config_(config) {
  deliver_.reset(event_new(base_, -1, 0, &Impl::onDeliver, this));
  if (!deliver_) throw std::runtime_error("upstream: out of memory");
}

PooledUpstream::Impl::~Impl() {
  alive_.reset();
  finished_.clear();
  deliver_.reset();
}

void PooledUpstream::Impl::scheduleDelivery() {
  event_active(deliver_.get(), EV_TIMEOUT, 0);
}

void PooledUpstream::Impl::onDeliver(evutil_socket_t, short, void* arg) noexcept {
  auto* self = static_cast<Impl*>(arg);
  std::weak_ptr<bool> alive = self->alive_;
  // Only what is queued now: a callback that keeps failing new sends cannot starve the loop.
  size_t n = self->finished_.size();
  for (size_t i = 0; i < n; ++i) {
    {
      Finished f = std::move(self->finished_.front());
      self->finished_.pop_front();
      f.done(std::move(f.result));
      // `f` dies here: its callback may hold the last reference to this Upstream (a request
      // that outlived a reload), so nothing of `self` is touched before `alive` is checked.
    }
    if (alive.expired()) return;  // the callback (or its destruction) destroyed the Upstream
  }
  if (!self->finished_.empty()) self->scheduleDelivery();
}
}  // namespace idem
