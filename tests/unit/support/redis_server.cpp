#include "support/redis_server.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "config/redis_url.h"
#include "store/redis/redis_conn.h"

namespace idem::test {
namespace {

const std::string kScript = std::string(IDEMPROXY_SOURCE_DIR) + "/tests/support/redis-server.sh";

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
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/idemproxy-redis-XXXXXX";
  if (::mkdtemp(tmpl.data()) == nullptr) std::abort();
  return tmpl;
}

}  // namespace

std::unique_ptr<RedisServer> RedisServer::start(std::string& error) {
  const std::string dir = tempDir() + "/server";
  std::string url;
  const int rc = script("start " + dir, &url);
  if (rc != 0) {
    error = rc == 77 ? "redis-server is not installed" : "cannot start redis-server in " + dir;
    return nullptr;
  }
  return std::unique_ptr<RedisServer>(new RedisServer(dir, url, true));
}

RedisServer* RedisServer::shared(std::string& error) {
  static std::unique_ptr<RedisServer> server;
  static std::string failure;
  if (!server && failure.empty()) {
    const char* dir = std::getenv("IDEMPROXY_TEST_REDIS_DIR");
    if (dir != nullptr && *dir != '\0') {
      std::string url;
      if (script(std::string("start ") + dir, &url) == 0) {
        server.reset(new RedisServer(dir, url, false));
      } else {
        failure = std::string("cannot reach the fixture's redis-server in ") + dir;
      }
    } else {
      server = start(failure);
    }
  }
  error = failure;
  return server.get();
}

RedisServer::~RedisServer() {
  if (!owned_) return;
  script("stop " + dir_);
  std::error_code ec;
  std::filesystem::remove_all(std::filesystem::path(dir_).parent_path(), ec);
}

std::string RedisServer::freshPrefix() {
  static std::atomic<int> n{0};
  return "t" + std::to_string(::getpid()) + "_" + std::to_string(++n) + ":";
}

pid_t RedisServer::pid() const {
  std::ifstream f(dir_ + "/redis.pid");
  pid_t p = 0;
  f >> p;
  return p;
}

bool RedisServer::kill() {
  return script("stop " + dir_) == 0;
}

bool RedisServer::restart() {
  std::string url;
  return script("start " + dir_, &url) == 0 && url == url_;
}

void RedisServer::freeze(bool frozen) {
  const pid_t p = pid();
  if (p > 0) ::kill(p, frozen ? SIGSTOP : SIGCONT);
}

std::string RedisServer::command(const std::vector<std::string>& args) {
  RedisUrl u;
  std::string error;
  if (!parseRedisUrl(url_, u, error)) return "ERR " + error;
  redis::SyncClient c;
  if (!c.connect(u, 5'000, error)) return "ERR " + error;
  std::vector<std::string_view> argv(args.begin(), args.end());
  redis::ReplyPtr r = c.command(argv, error);
  if (!r) return "ERR " + error;
  if (r->type == REDIS_REPLY_INTEGER) return std::to_string(r->integer);
  if (r->type == REDIS_REPLY_NIL) return "";
  if (r->type == REDIS_REPLY_ARRAY) return "array:" + std::to_string(r->elements);
  return std::string(r->str, r->len);
}

}  // namespace idem::test
