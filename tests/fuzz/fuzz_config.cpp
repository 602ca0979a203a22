// Configuration loading from YAML text: any input gives a config or errors, never a crash.
#include <cstdint>
#include <string>

#include "config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const idem::ConfigResult r = idem::parseConfig(text, "fuzz.yaml");
  if (r.ok() == !r.errors.empty()) __builtin_trap();
  return 0;
}
