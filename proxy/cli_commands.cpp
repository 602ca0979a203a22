// Placeholder commands: replaced by the integrator once the server and the store exist.
#include <cstdio>

#include "cli.h"

namespace idem {

int cmdRun(const CliOptions&) {
  std::fprintf(stderr, "idemproxy: 'run' is not available in this build\n");
  return kExitUsage;
}

int cmdKeys(const CliOptions&) {
  std::fprintf(stderr, "idemproxy: 'keys' is not available in this build\n");
  return kExitUsage;
}

}  // namespace idem
