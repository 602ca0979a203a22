#pragma once
// A real PostgreSQL for tests (tests/support/pg-cluster.sh): initdb'd in a temp directory,
// listening on a unix socket there only, stopped when the owner goes away.
#include <sys/types.h>

#include <memory>
#include <string>

namespace idem::test {

class PgCluster {
 public:
  // A new cluster of its own (for tests that stop or freeze the server). nullptr with `error`
  // when PostgreSQL is not installed or does not start.
  static std::unique_ptr<PgCluster> start(std::string& error);
  // One cluster shared by the tests of this process: the one the ctest fixture started
  // (IDEMPROXY_TEST_PG_DIR), else one started on first use and stopped at exit.
  static PgCluster* shared(std::string& error);
  ~PgCluster();

  // A connection string for a new, empty schema of its own (its search_path).
  std::string freshSchema();
  const std::string& conninfo() const { return conninfo_; }
  bool stop(const char* mode);  // pg_ctl stop -m mode
  bool restart();
  // SIGSTOP / SIGCONT the postmaster and every backend.
  void freeze(bool frozen);

 private:
  PgCluster(std::string dir, std::string conninfo, bool owned)
      : dir_(std::move(dir)), conninfo_(std::move(conninfo)), owned_(owned) {}
  std::string dir_;
  std::string conninfo_;
  bool owned_;
};

}  // namespace idem::test
