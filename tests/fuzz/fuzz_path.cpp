// Request path normalisation (the route match and the fingerprint use its result).
#include <cstdint>
#include <string>
#include <string_view>

#include "base/http_types.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string out =
      idem::normalizePath(std::string_view(reinterpret_cast<const char*>(data), size));
  (void)out;
  return 0;
}
