// The upstream answer's head as both backends read it: the status line, then header lines
// (with obs-fold continuations), as libcurl's header callback hands them over. The input is
// split at "\r\n" (or '\n'). The built-in client's reader has its own target,
// fuzz_upstream_response.
#include <cstdint>
#include <string_view>

#include "upstream/upstream_backend.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  idem::Headers headers;
  bool first = true;
  while (!in.empty()) {
    const size_t nl = in.find('\n');
    std::string_view line = in.substr(0, nl);
    in = nl == std::string_view::npos ? std::string_view() : in.substr(nl + 1);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (first) {
      const int status = idem::upstream_detail::parseStatusLine(line);
      if (status != 0 && (status < 100 || status > 999)) __builtin_trap();
      first = false;
    } else {
      idem::upstream_detail::appendHeaderLine(headers, line);
    }
  }
  for (const auto& h : headers) {
    if (!idem::upstream_detail::isToken(h.name)) __builtin_trap();
  }
  return 0;
}
