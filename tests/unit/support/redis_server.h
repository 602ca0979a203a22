#pragma once
// A real redis-server for tests (tests/support/redis-server.sh): in a temp directory, on a unix
// socket there only, append-only file on, killed when the owner goes away.
#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

namespace idem::test {

class RedisServer {
 public:
  // A server of its own (for tests that kill, freeze or starve it). nullptr with `error` when
  // redis-server is not installed or does not start.
  static std::unique_ptr<RedisServer> start(std::string& error);
  // One server shared by the tests of this process: the one the ctest fixture started
  // (IDEMPROXY_TEST_REDIS_DIR), else one started on first use and stopped at exit.
  static RedisServer* shared(std::string& error);
  ~RedisServer();

  const std::string& url() const { return url_; }
  // A key prefix no other test uses.
  static std::string freshPrefix();
  bool kill();               // SIGKILL (the AOF stays)
  bool restart();            // start again from the AOF
  void freeze(bool frozen);  // SIGSTOP / SIGCONT
  // One command on a connection of its own; the reply as text ("" for nil), or "ERR …".
  std::string command(const std::vector<std::string>& args);

 private:
  RedisServer(std::string dir, std::string url, bool owned)
      : dir_(std::move(dir)), url_(std::move(url)), owned_(owned) {}
  pid_t pid() const;
  std::string dir_;
  std::string url_;
  bool owned_;
};

}  // namespace idem::test
