#include "base/bounds.h"

#ifdef IDEMPROXY_BOUNDS
#include <cstdlib>
#include <cstring>

namespace idem::bounds {

namespace {
const char* bound() {
  static const char* const value = [] {
    const char* v = std::getenv("IDEMPROXY_BOUND");
    return v != nullptr && (std::strcmp(v, "nosync") == 0 || std::strcmp(v, "nostore") == 0) ? v
                                                                                             : "";
  }();
  return value;
}
}  // namespace

bool skipLogSync() {
  return std::strcmp(bound(), "nosync") == 0;
}
bool skipStore() {
  return std::strcmp(bound(), "nostore") == 0;
}
const char* active() {
  return bound();
}

}  // namespace idem::bounds
#endif
