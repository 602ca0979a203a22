#include <cstdio>

#include "version.h"

int main() {
  std::printf("idemproxy %s\n", IDEMPROXY_VERSION);
  return 0;
}
