#pragma once
// Plain HTTP value types shared by the store, the upstream client and the server.
#include <strings.h>

#include <string>
#include <string_view>
#include <vector>

namespace idem {

// One header field as it appeared on the wire; order and repeats are significant.
struct Header {
  std::string name;
  std::string value;
  bool operator==(const Header&) const = default;
};

using Headers = std::vector<Header>;

// A complete HTTP answer: what is recorded and replayed.
struct HttpAnswer {
  int status = 0;
  Headers headers;
  std::string body;
  bool operator==(const HttpAnswer&) const = default;
};

// An RFC 9110 §5.6.2 token (field names, methods): one or more tchar.
bool isHttpToken(std::string_view s);

// ASCII case-insensitive comparison for header names.
// Inline: field-name checks call it hundreds of times per forwarded request, nearly always
// with sizes that differ.
inline bool iequals(std::string_view a, std::string_view b) {
  return a.size() == b.size() && strncasecmp(a.data(), b.data(), a.size()) == 0;
}

// The form of a request path used for routing and fingerprints (the raw path is forwarded):
// percent-encoded unreserved characters decoded, other escapes' hex upper-cased, repeated
// slashes merged, "." and ".." segments resolved (RFC 3986 §6.2.2, §5.2.4). So "/v1//pay",
// "/v1/%70ay" and "/v1/x/../pay" all match a route for "/v1/pay", as the backend would see it.
std::string normalizePath(std::string_view raw);

// Why a request path cannot be read one way only, or "" when it can: a fragment ('#'), a
// backslash, a ';' parameter, an encoded '/', '\' or NUL, a malformed escape, or a "." or ".."
// segment (plain or encoded). Backends disagree on each, so the proxy refuses them rather than
// route on one reading and forward another (and a ".." could climb out of an upstream's prefix).
std::string_view ambiguousPathReason(std::string_view rawPath);

}  // namespace idem
