#include "base/http_types.h"

#include <strings.h>

#include <vector>

namespace idem {

bool isHttpToken(std::string_view s) {
  if (s.empty()) return false;
  for (const char c : s) {
    const bool tchar = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                       std::string_view("!#$%&'*+-.^_`|~").find(c) != std::string_view::npos;
    if (!tchar) return false;
  }
  return true;
}

namespace {

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool unreserved(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

}  // namespace

std::string normalizePath(std::string_view raw) {
  // 1. Percent-encoding normalisation.
  std::string decoded;
  decoded.reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    const char c = raw[i];
    if (c == '%' && i + 2 < raw.size()) {
      const int hi = hexValue(raw[i + 1]);
      const int lo = hexValue(raw[i + 2]);
      if (hi >= 0 && lo >= 0) {
        const char v = static_cast<char>(hi * 16 + lo);
        if (unreserved(v)) {
          decoded.push_back(v);
        } else {
          static const char* digits = "0123456789ABCDEF";
          decoded.push_back('%');
          decoded.push_back(digits[hi]);
          decoded.push_back(digits[lo]);
        }
        i += 2;
        continue;
      }
    }
    decoded.push_back(c);
  }
  // 2. Segments: merge empty ones, resolve "." and "..". Built in place (".." cuts the last
  // "/segment" off), so a request's path costs no allocation past `out` itself.
  std::string out;
  out.reserve(decoded.size() + 1);
  std::string_view rest(decoded);
  const bool trailingSlash = rest.size() > 1 && rest.back() == '/';
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view seg = rest.substr(0, slash);
    rest = slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
    if (seg.empty() || seg == ".") continue;
    if (seg == "..") {
      const size_t last = out.rfind('/');
      if (last != std::string::npos) out.resize(last);
      continue;
    }
    out.push_back('/');
    out.append(seg);
  }
  if (out.empty() || trailingSlash) out.push_back('/');
  return out;
}

std::string_view ambiguousPathReason(std::string_view raw) {
  if (raw.find('#') != std::string_view::npos) return "a fragment ('#') in the request target";
  if (raw.find('\\') != std::string_view::npos) return "a backslash in the path";
  if (raw.find(';') != std::string_view::npos) return "a ';' parameter in the path";
  std::string segment;  // the current segment, percent-decoded
  auto dotSegment = [&] { return segment == "." || segment == ".."; };
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == '%') {
      if (i + 2 >= raw.size()) return "a malformed percent-escape in the path";
      const int hi = hexValue(raw[i + 1]);
      const int lo = hexValue(raw[i + 2]);
      if (hi < 0 || lo < 0) return "a malformed percent-escape in the path";
      c = static_cast<char>(hi * 16 + lo);
      if (c == '/' || c == '\\' || c == '\0') return "an encoded '/', '\\' or NUL in the path";
      i += 2;
    } else if (c == '/') {
      if (dotSegment()) return "a '.' or '..' segment in the path";
      segment.clear();
      continue;
    }
    segment.push_back(c);
  }
  if (dotSegment()) return "a '.' or '..' segment in the path";
  return {};
}

}  // namespace idem
