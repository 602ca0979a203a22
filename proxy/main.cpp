// The idemproxy binary: everything lives in idemproxy_core; see cli.h.
#include "cli/cli.h"

int main(int argc, char** argv) {
  return idem::runCli(argc, argv);
}
