#include "support/pg_cluster.h"

#include <libpq-fe.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace idem::test {
namespace {

const std::string kScript = std::string(IDEMPROXY_SOURCE_DIR) + "/tests/support/pg-cluster.sh";

// Runs the script; returns its exit status and first line of output.
int script(const std::string& args, std::string* out = nullptr) {
  FILE* p = ::popen((kScript + " " + args).c_str(), "r");
  if (p == nullptr) return -1;
  char line[1024] = {};
  if (std::fgets(line, sizeof line, p) != nullptr && out != nullptr) {
    *out = line;
    while (!out->empty() && out->back() == '\n') out->pop_back();
  }
  while (std::fgets(line, sizeof line, p) != nullptr) {
  }
  const int st = ::pclose(p);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

std::string tempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/idemproxy-pg-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

}  // namespace

std::unique_ptr<PgCluster> PgCluster::start(std::string& error) {
  const std::string dir = tempDir();
  std::string conninfo;
  const int rc = script("start " + dir + "/cluster", &conninfo);
  if (rc != 0) {
    error = rc == 77 ? "PostgreSQL is not installed" : "cannot start PostgreSQL in " + dir;
    return nullptr;
  }
  return std::unique_ptr<PgCluster>(new PgCluster(dir, conninfo, true));
}

PgCluster* PgCluster::shared(std::string& error) {
  static std::unique_ptr<PgCluster> cluster;
  static std::string failure;
  if (!cluster && failure.empty()) {
    const char* dir = std::getenv("IDEMPROXY_TEST_PG_DIR");
    if (dir != nullptr && *dir != '\0') {
      std::string conninfo;
      if (script(std::string("start ") + dir, &conninfo) == 0) {
        cluster.reset(new PgCluster(dir, conninfo, false));
      } else {
        failure = std::string("cannot reach the fixture's PostgreSQL in ") + dir;
      }
    } else {
      cluster = start(failure);
    }
  }
  error = failure;
  return cluster.get();
}

PgCluster::~PgCluster() {
  if (!owned_) return;
  freeze(false);
  script("destroy " + dir_ + "/cluster");
  std::error_code ec;
  std::filesystem::remove_all(dir_, ec);
}

std::string PgCluster::freshSchema() {
  static std::atomic<int> n{0};
  const std::string schema = "t" + std::to_string(::getpid()) + "_" + std::to_string(++n);
  PGconn* c = PQconnectdb(conninfo_.c_str());
  PGresult* r = PQexec(c, ("CREATE SCHEMA " + schema).c_str());
  if (PQresultStatus(r) != PGRES_COMMAND_OK) std::abort();
  PQclear(r);
  PQfinish(c);
  return conninfo_ + " options='-c search_path=" + schema + "'";
}

bool PgCluster::stop(const char* mode) {
  return script("stop " + dir_ + "/cluster " + mode) == 0;
}

bool PgCluster::restart() {
  return script("restart " + dir_ + "/cluster") == 0;
}

void PgCluster::freeze(bool frozen) {
  std::ifstream pidFile(dir_ + "/cluster/data/postmaster.pid");
  pid_t postmaster = 0;
  if (!(pidFile >> postmaster) || postmaster <= 0) return;
  const int sig = frozen ? SIGSTOP : SIGCONT;
  // The backends are the postmaster's children.
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const std::string name = entry.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(entry.path() / "stat");
    std::string line;
    std::getline(stat, line);
    const size_t close = line.rfind(')');
    if (close == std::string::npos) continue;
    int ppid = 0;
    char state = 0;
    if (std::sscanf(line.c_str() + close + 1, " %c %d", &state, &ppid) != 2) continue;
    if (ppid == postmaster) ::kill(std::stoi(name), sig);
  }
  ::kill(postmaster, sig);
}

}  // namespace idem::test
