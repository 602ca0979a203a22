// Idempotency-Key header values (SPEC §2): the input is split at '\n' into the header's values.
#include <cstdint>
#include <string_view>
#include <vector>

#include "request/idempotency.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  std::vector<std::string_view> values;
  for (size_t at = 0;;) {
    const size_t nl = in.find('\n', at);
    values.push_back(in.substr(at, nl == std::string_view::npos ? nl : nl - at));
    if (nl == std::string_view::npos) break;
    at = nl + 1;
  }
  const idem::ParsedKey a = idem::parseIdempotencyKey(values);
  const idem::ParsedKey b = idem::parseIdempotencyKey(values.front(), values.size());
  // The two entry points are one parser.
  if (a.status != b.status || a.key != b.key) __builtin_trap();
  return 0;
}
