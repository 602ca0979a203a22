// Canonical JSON of request bodies (the fingerprint): any bytes in; when they are JSON, the
// canonical form is itself JSON and canonical (a fixed point).
#include <cstdint>
#include <string>
#include <string_view>

#include "request/idempotency.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string out;
  if (!idem::canonicalJson(std::string_view(reinterpret_cast<const char*>(data), size), out)) {
    return 0;
  }
  std::string again;
  if (!idem::canonicalJson(out, again) || again != out) __builtin_trap();
  return 0;
}
