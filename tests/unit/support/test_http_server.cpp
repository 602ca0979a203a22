#include "support/test_http_server.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace idem::testing {
namespace {

sockaddr_in loopback(uint16_t port) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return addr;
}

int listenOnLoopback(int backlog, uint16_t* port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw std::runtime_error("socket failed");
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in addr = loopback(0);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 ||
      ::listen(fd, backlog) != 0) {
    ::close(fd);
    throw std::runtime_error("bind/listen failed");
  }
  socklen_t len = sizeof addr;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  *port = ntohs(addr.sin_port);
  return fd;
}

bool writeAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::send(fd, data.data() + off, data.size() - off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

Reply Reply::respond(int status, const Headers& headers, const std::string& body) {
  std::string raw = "HTTP/1.1 " + std::to_string(status) + " Status\r\n";
  bool framed = false;
  for (const Header& h : headers) {
    raw += h.name + ": " + h.value + "\r\n";
    if (iequals(h.name, "Content-Length") || iequals(h.name, "Transfer-Encoding")) framed = true;
  }
  if (!framed) raw += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  raw += "\r\n";
  raw += body;
  return bytes(std::move(raw));
}

TestHttpServer::TestHttpServer(Handler handler) : handler_(std::move(handler)) {
  if (::pipe2(wakePipe_, O_CLOEXEC) != 0) throw std::runtime_error("pipe failed");
  listenFd_ = listenOnLoopback(512, &port_);
  acceptThread_ = std::thread([this] { acceptLoop(); });
}

TestHttpServer::~TestHttpServer() {
  stop();
  ::close(wakePipe_[0]);
  ::close(wakePipe_[1]);
}

std::string TestHttpServer::url() const {
  return "http://127.0.0.1:" + std::to_string(port_);
}

std::vector<ReceivedRequest> TestHttpServer::received() const {
  std::lock_guard lock(mu_);
  return received_;
}

bool TestHttpServer::waitClosedConnections(int n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return closed_ >= n; });
}

bool TestHttpServer::waitRequests(int n, std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  return cv_.wait_for(lock, timeout, [&] { return static_cast<int>(received_.size()) >= n; });
}

void TestHttpServer::stop() {
  if (stopping_.exchange(true)) return;
  char c = 1;
  (void)!::write(wakePipe_[1], &c, 1);
  acceptThread_.join();
  std::vector<std::thread> threads;
  {
    std::lock_guard lock(mu_);
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
  ::close(listenFd_);
}

bool TestHttpServer::waitStopFor(std::chrono::milliseconds d) {
  pollfd p{wakePipe_[0], POLLIN, 0};
  return ::poll(&p, 1, static_cast<int>(d.count())) > 0;
}

void TestHttpServer::acceptLoop() {
  for (;;) {
    pollfd fds[2] = {{listenFd_, POLLIN, 0}, {wakePipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) continue;
    if (fds[1].revents) return;
    int fd = ::accept4(listenFd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) continue;
    int id = ++connections_;
    int open = ++open_;
    int seen = maxOpen_.load();
    while (open > seen && !maxOpen_.compare_exchange_weak(seen, open)) {
    }
    std::lock_guard lock(mu_);
    threads_.emplace_back([this, fd, id] { serve(fd, id); });
  }
}

void TestHttpServer::serve(int fd, int connectionId) {
  std::string buf;
  int index = 0;
  auto readMore = [&]() -> bool {  // false on EOF, error or stop
    pollfd fds[2] = {{fd, POLLIN, 0}, {wakePipe_[0], POLLIN, 0}};
    if (::poll(fds, 2, -1) <= 0 || fds[1].revents) return false;
    char chunk[16384];
    ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
    if (n <= 0) return false;
    buf.append(chunk, static_cast<size_t>(n));
    return true;
  };
  bool keep = true;
  while (keep) {
    size_t end;
    while ((end = buf.find("\r\n\r\n")) == std::string::npos) {
      if (!buf.empty() && buf[0] == '\x16') {  // a TLS ClientHello: answer in plain HTTP
        writeAll(fd, "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        keep = false;
        break;
      }
      if (!readMore()) {
        keep = false;
        break;
      }
    }
    if (!keep) break;

    ReceivedRequest req;
    req.connection = connectionId;
    req.indexOnConnection = index++;
    std::string_view head(buf.data(), end);
    size_t lineEnd = head.find("\r\n");
    std::string_view requestLine = head.substr(0, lineEnd);
    size_t sp1 = requestLine.find(' ');
    size_t sp2 = requestLine.rfind(' ');
    req.method = std::string(requestLine.substr(0, sp1));
    req.target = std::string(requestLine.substr(sp1 + 1, sp2 - sp1 - 1));
    size_t contentLength = 0;
    std::string_view rest = lineEnd == std::string_view::npos ? "" : head.substr(lineEnd + 2);
    while (!rest.empty()) {
      size_t e = rest.find("\r\n");
      std::string_view line = rest.substr(0, e);
      rest = e == std::string_view::npos ? std::string_view() : rest.substr(e + 2);
      size_t colon = line.find(':');
      if (colon == std::string_view::npos) continue;
      Header h{std::string(line.substr(0, colon)), std::string(trim(line.substr(colon + 1)))};
      if (iequals(h.name, "Content-Length")) contentLength = std::stoul(h.value);
      req.headers.push_back(std::move(h));
    }
    buf.erase(0, end + 4);
    while (buf.size() < contentLength) {
      if (!readMore()) {
        keep = false;
        break;
      }
    }
    if (!keep) break;
    req.body = buf.substr(0, contentLength);
    buf.erase(0, contentLength);

    Reply reply = handler_(req);
    {
      std::lock_guard lock(mu_);
      received_.push_back(std::move(req));
      ++requests_;
    }
    cv_.notify_all();
    if (reply.delay.count() > 0 && waitStopFor(reply.delay)) break;
    switch (reply.kind) {
      case Reply::Kind::Respond:
        keep = writeAll(fd, reply.raw) && !reply.closeAfter;
        break;
      case Reply::Kind::Hang:
        while (readMore()) {
        }
        keep = false;
        break;
      case Reply::Kind::Reset: {
        linger lg{1, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
        keep = false;
        break;
      }
      case Reply::Kind::Close:
        keep = false;
        break;
    }
  }
  ::close(fd);
  --open_;
  {
    std::lock_guard lock(mu_);
    ++closed_;
  }
  cv_.notify_all();
}

FullBacklogListener::FullBacklogListener() {
  listenFd_ = listenOnLoopback(0, &port_);
  // Fill the accept queue: connect until a connect no longer completes.
  for (int i = 0; i < 16; ++i) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in addr = loopback(port_);
    int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    bool connected = rc == 0;
    if (!connected && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof err;
      connected = ::poll(&p, 1, 200) > 0 &&
                  ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    if (!connected) {
      ::close(fd);
      return;
    }
    fillers_.push_back(fd);
  }
  throw std::runtime_error("could not fill the accept queue");
}

FullBacklogListener::~FullBacklogListener() {
  for (int fd : fillers_) ::close(fd);
  ::close(listenFd_);
}

uint16_t closedPort() {
  uint16_t port = 0;
  int fd = listenOnLoopback(1, &port);
  ::close(fd);
  return port;
}

}  // namespace idem::testing
