#include "store/redis/redis_conn.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/eventfd.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "base/thread_name.h"

namespace idem::redis {

// ---- Resolution ----

Resolution::Resolution() : fd_(::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)) {}

Resolution::~Resolution() {
  if (fd_ >= 0) ::close(fd_);
}

bool Resolution::done() const {
  std::lock_guard lock(mu_);
  return done_;
}

std::vector<Address> Resolution::take(std::string& error) {
  std::lock_guard lock(mu_);
  error = error_;
  return std::move(addrs_);
}

void Resolution::finish(std::vector<Address> addrs, std::string error) {
  {
    std::lock_guard lock(mu_);
    addrs_ = std::move(addrs);
    error_ = std::move(error);
    done_ = true;
  }
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(fd_, &one, sizeof one);
}

std::shared_ptr<Resolution> Resolution::start(const RedisUrl& url) {
  std::shared_ptr<Resolution> r(new Resolution());
  if (url.unix_socket) {
    Address a;
    sockaddr_un un{};
    un.sun_family = AF_UNIX;
    if (url.path.size() >= sizeof un.sun_path) {
      r->finish({}, "the socket path is too long");
      return r;
    }
    std::memcpy(un.sun_path, url.path.data(), url.path.size());
    std::memcpy(&a.addr, &un, sizeof un);
    a.len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + url.path.size() + 1);
    r->finish({a}, {});
    return r;
  }
  Address a;
  sockaddr_in v4{};
  sockaddr_in6 v6{};
  if (::inet_pton(AF_INET, url.host.c_str(), &v4.sin_addr) == 1) {
    v4.sin_family = AF_INET;
    v4.sin_port = htons(static_cast<uint16_t>(url.port));
    std::memcpy(&a.addr, &v4, sizeof v4);
    a.len = sizeof v4;
    r->finish({a}, {});
    return r;
  }
  if (::inet_pton(AF_INET6, url.host.c_str(), &v6.sin6_addr) == 1) {
    v6.sin6_family = AF_INET6;
    v6.sin6_port = htons(static_cast<uint16_t>(url.port));
    std::memcpy(&a.addr, &v6, sizeof v6);
    a.len = sizeof v6;
    r->finish({a}, {});
    return r;
  }
  // A name: getaddrinfo on a thread of its own. It holds the Resolution, so a store closed
  // meanwhile does not pull it away; the thread ends when getaddrinfo returns.
  std::thread([r, host = url.host, port = std::to_string(url.port)] {
    nameThisThread("idem-resolve");
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    const int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
      r->finish({}, "cannot resolve " + host + ": " + ::gai_strerror(rc));
      return;
    }
    std::vector<Address> out;
    for (addrinfo* p = res; p != nullptr; p = p->ai_next) {
      Address x;
      std::memcpy(&x.addr, p->ai_addr, p->ai_addrlen);
      x.len = p->ai_addrlen;
      out.push_back(x);
    }
    ::freeaddrinfo(res);
    r->finish(std::move(out), {});
  }).detach();
  return r;
}

// ---- Connection ----

Connection::~Connection() {
  if (fd_ >= 0) ::close(fd_);
  if (reader_ != nullptr) redisReaderFree(reader_);
}

bool Connection::start(const Address& to, std::string& error) {
  const int family = reinterpret_cast<const sockaddr*>(&to.addr)->sa_family;
  fd_ = ::socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd_ < 0) {
    error = std::string("socket: ") + std::strerror(errno);
    return false;
  }
  if (family != AF_UNIX) {
    const int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  reader_ = redisReaderCreate();
  if (::connect(fd_, reinterpret_cast<const sockaddr*>(&to.addr), to.len) == 0) return true;
  if (errno == EINPROGRESS || errno == EAGAIN) {
    connecting_ = true;
    return true;
  }
  error = std::string("connect: ") + std::strerror(errno);
  return false;
}

bool Connection::finishConnect(std::string& error) {
  int err = 0;
  socklen_t len = sizeof err;
  if (::getsockopt(fd_, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
  if (err != 0) {
    error = std::string("connect: ") + std::strerror(err);
    return false;
  }
  connecting_ = false;
  return true;
}

void Connection::append(const std::vector<std::string_view>& args) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  argv.reserve(args.size());
  lens.reserve(args.size());
  for (std::string_view a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  char* cmd = nullptr;
  const int n =
      redisFormatCommandArgv(&cmd, static_cast<int>(argv.size()), argv.data(), lens.data());
  if (n > 0) out_.append(cmd, static_cast<size_t>(n));
  redisFreeCommand(cmd);
}

bool Connection::flush(std::string& error) {
  while (sent_ < out_.size()) {
    const ssize_t n = ::send(fd_, out_.data() + sent_, out_.size() - sent_, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      if (errno == EINTR) continue;
      error = std::string("write: ") + std::strerror(errno);
      return false;
    }
    sent_ += static_cast<size_t>(n);
  }
  if (sent_ == out_.size()) {
    out_.clear();
    sent_ = 0;
  }
  return true;
}

bool Connection::read(std::string& error) {
  char buf[16384];
  for (;;) {
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n > 0) {
      if (redisReaderFeed(reader_, buf, static_cast<size_t>(n)) != REDIS_OK) {
        error = "protocol error";
        return false;
      }
      if (static_cast<size_t>(n) < sizeof buf) return true;
      continue;
    }
    if (n == 0) {
      error = "the server closed the connection";
      return false;
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
    if (errno == EINTR) continue;
    error = std::string("read: ") + std::strerror(errno);
    return false;
  }
}

bool Connection::next(ReplyPtr& out, std::string& error) {
  void* reply = nullptr;
  if (redisReaderGetReply(reader_, &reply) != REDIS_OK) {
    error = std::string("protocol error: ") + reader_->errstr;
    return false;
  }
  out.reset(static_cast<redisReply*>(reply));
  return true;
}

// ---- SyncClient ----

std::string errorText(const redisReply* r) {
  if (r == nullptr || r->type != REDIS_REPLY_ERROR) return {};
  return std::string(r->str, r->len);
}

SyncClient::~SyncClient() {
  if (ctx_ != nullptr) redisFree(ctx_);
}

bool SyncClient::connect(const RedisUrl& url, int timeout_ms, std::string& error) {
  const timeval tv{timeout_ms / 1000, static_cast<suseconds_t>((timeout_ms % 1000) * 1000)};
  ctx_ = url.unix_socket
             ? redisConnectUnixWithTimeout(url.path.c_str(), tv)
             : redisConnectWithTimeout(url.host.c_str(), static_cast<int>(url.port), tv);
  if (ctx_ == nullptr || ctx_->err != 0) {
    error = ctx_ != nullptr ? ctx_->errstr : "out of memory";
    return false;
  }
  redisSetTimeout(ctx_, tv);
  std::string err;
  if (!url.password.empty()) {
    std::vector<std::string_view> auth{"AUTH"};
    if (!url.user.empty()) auth.push_back(url.user);
    auth.push_back(url.password);
    ReplyPtr r = command(auth, err);
    if (!r || r->type == REDIS_REPLY_ERROR) {
      error = "AUTH failed: " + (r ? errorText(r.get()) : err);
      return false;
    }
  }
  if (url.db != 0) {
    const std::string db = std::to_string(url.db);
    ReplyPtr r = command({"SELECT", db}, err);
    if (!r || r->type == REDIS_REPLY_ERROR) {
      error = "SELECT " + db + " failed: " + (r ? errorText(r.get()) : err);
      return false;
    }
  }
  return true;
}

ReplyPtr SyncClient::command(const std::vector<std::string_view>& args, std::string& error) {
  std::vector<const char*> argv;
  std::vector<size_t> lens;
  for (std::string_view a : args) {
    argv.push_back(a.data());
    lens.push_back(a.size());
  }
  ReplyPtr r(static_cast<redisReply*>(
      redisCommandArgv(ctx_, static_cast<int>(argv.size()), argv.data(), lens.data())));
  if (!r) error = ctx_->errstr[0] != '\0' ? ctx_->errstr : "connection lost";
  return r;
}

}  // namespace idem::redis
