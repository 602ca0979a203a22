#pragma once
// Internal to the configuration parser: syntaxes of single values (tokens, names, numbers,
// URLs). The public value parsers (parseDuration, parseSize, parseListen) are in config.h; all
// of them are implemented in config_values.cpp.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace idem::config_detail {

// An HTTP token (RFC 9110 §5.6.2): header names and methods.
bool isToken(std::string_view s);
// `templ` with {status}, {slug}, {title} and {detail} replaced by the values JSON-escaped
// (without quotes); other text is kept as it is (server.error_body templates).
std::string fillErrorTemplate(std::string_view templ, int status, std::string_view slug,
                              std::string_view title, std::string_view detail);
// An RFC 6901 JSON pointer to a member ("/a/b~1c": non-empty, '~' only as ~0 or ~1).
bool isJsonPointer(std::string_view pointer);
// Printable ASCII without space: names of routes and upstreams.
bool isPrintableName(std::string_view s);
std::string toUpper(std::string_view s);
std::string toLower(std::string_view s);
// A non-empty run of decimal digits → value; nullopt on anything else or overflow.
std::optional<uint64_t> parseDigits(std::string_view s);
// Validates an upstream URL. Returns an empty string and sets `normalized` (lower-case scheme,
// no trailing '/' on the path) when valid, else the problem, phrased to follow "url '...' ".
std::string checkUpstreamUrl(std::string_view url, std::string& normalized);
// Why the built-in HTTP/1.1 client cannot reach a (valid, normalised) upstream URL, phrased to
// follow "client builtin ", or "" when it can: it speaks plain http:// to an IP address only.
std::string builtinClientProblem(std::string_view url);

}  // namespace idem::config_detail
