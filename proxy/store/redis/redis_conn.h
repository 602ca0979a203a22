#pragma once
// One non-blocking connection to Redis: our own socket, connect and buffers, with hiredis's
// command formatter and reply reader (hiredis 0.14's own connect resolves names with a blocking
// getaddrinfo and has no timeouts; the store's I/O thread drives this one with poll()).
// Also the name resolution that runs off that thread, and a blocking client for start-up and
// the command line.
#include <hiredis/hiredis.h>
#include <sys/socket.h>

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "config/redis_url.h"

namespace idem::redis {

struct ReplyDeleter {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyDeleter>;

struct Address {
  sockaddr_storage addr{};
  socklen_t len = 0;
};

// Resolves a host name on a thread of its own (getaddrinfo may block for seconds); an IP
// literal or a unix path is ready at once. The I/O thread polls fd() and reads the result.
class Resolution {
 public:
  static std::shared_ptr<Resolution> start(const RedisUrl& url);
  ~Resolution();
  int fd() const { return fd_; }  // readable once done
  bool done() const;
  // Once done: the addresses, or empty with `error`.
  std::vector<Address> take(std::string& error);

 private:
  Resolution();
  void finish(std::vector<Address> addrs, std::string error);
  int fd_ = -1;
  mutable std::mutex mu_;
  bool done_ = false;
  std::vector<Address> addrs_;
  std::string error_;
};

class Connection {
 public:
  Connection() = default;
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // Starts a non-blocking connect. False with `error` when it failed at once.
  bool start(const Address& to, std::string& error);
  int fd() const { return fd_; }
  bool connecting() const { return connecting_; }
  // The socket became writable while connecting: false with `error` when the connect failed.
  bool finishConnect(std::string& error);

  void append(const std::vector<std::string_view>& args);
  bool wantsWrite() const { return connecting_ || sent_ < out_.size(); }
  // Writes what the socket takes; false with `error` when it broke.
  bool flush(std::string& error);
  // Reads what is there into the reader; false with `error` on EOF or error.
  bool read(std::string& error);
  // The next complete reply (null when none yet); false with `error` on a protocol error.
  bool next(ReplyPtr& out, std::string& error);

 private:
  int fd_ = -1;
  bool connecting_ = false;
  std::string out_;
  size_t sent_ = 0;
  redisReader* reader_ = nullptr;
};

// A blocking connection (hiredis's own, with its timeouts): start-up checks and the command
// line. Never used on an event loop or the store's I/O thread.
class SyncClient {
 public:
  // Connects, authenticates and selects the database; false with `error` (never the password).
  bool connect(const RedisUrl& url, int timeout_ms, std::string& error);
  ~SyncClient();
  // One command; null with `error` on an I/O error, or an error reply as the reply itself.
  ReplyPtr command(const std::vector<std::string_view>& args, std::string& error);

 private:
  redisContext* ctx_ = nullptr;
};

// The message of an error reply, or "" when `r` is not one.
std::string errorText(const redisReply* r);

}  // namespace idem::redis
