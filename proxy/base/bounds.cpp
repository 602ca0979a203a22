#include "base/bounds.h"

#ifdef IDEMPROXY_BOUNDS
#include <cstdlib>
#include <string_view>

namespace idem::bounds {

namespace {
// IDEMPROXY_BOUND as given ("" when unset), read once.
std::string_view given() {
  static const std::string_view value = [] {
    const char* v = std::getenv("IDEMPROXY_BOUND");
    return std::string_view(v != nullptr ? v : "");
  }();
  return value;
}
}  // namespace

bool skipLogSync() {
  return given() == "nosync";
}
bool skipStore() {
  return given() == "nostore";
}
const char* active() {
  return skipLogSync() ? "nosync" : skipStore() ? "nostore" : "";
}
bool valid() {
  return given().empty() || skipLogSync() || skipStore();
}

}  // namespace idem::bounds
#endif
