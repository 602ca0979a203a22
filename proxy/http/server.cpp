#include "http/server.h"

#include <arpa/inet.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <random>

#include "http/worker.h"
#include "request/request.h"

namespace idem {

int openListener(const ListenAddress& addr, std::string& error, uint16_t* boundPort) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(addr.port);
  int rc = getaddrinfo(addr.host.empty() ? nullptr : addr.host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    error = "cannot resolve listen address " + addr.text + ": " + gai_strerror(rc);
    return -1;
  }
  int fd = -1;
  for (addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ai->ai_family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 4096) == 0) break;
    error = "cannot listen on " + addr.text + ": " + std::strerror(errno);
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd >= 0 && boundPort != nullptr) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
    *boundPort = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                          : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
  }
  return fd;
}

Proxy::Proxy(ConfigPtr config, Store& store, ProxyObserver& observer, const Clock& clock)
    : config_(std::move(config)), shared_(store, observer, clock) {}

Proxy::~Proxy() {
  stop();
  // Parked waiters and queued completions are dropped without running; each worker clears its
  // mailbox while its loop's base is still alive.
  shared_.waiters().clear();
  workers_.clear();
  closeListener();
}

void Proxy::closeListener() {
  const int fd = listen_fd_.exchange(-1);
  if (fd >= 0) close(fd);
}

bool Proxy::start(std::string& error) {
  static const bool threadsReady = [] {
    upstreamGlobalInit();
    return evthread_use_pthreads() == 0;
  }();
  if (!threadsReady) {
    error = "libevent has no thread support";
    return false;
  }
  ConfigPtr cfg = config();
  listen_fd_ = openListener(cfg->server.listen, error, &port_);
  if (listen_fd_ < 0) return false;
  unsigned n = cfg->server.workers;
  if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
  for (unsigned i = 0; i < n; ++i) {
    auto w = std::make_unique<Worker>(*this, n, cfg);
    if (!w->init(listen_fd_, error)) return false;
    workers_.push_back(std::move(w));
  }
  listeners_open_ = workers_.size();
  for (size_t i = 0; i < workers_.size(); ++i) workers_[i]->startThread(static_cast<unsigned>(i));
  return true;
}

void Proxy::reload(ConfigPtr config) {
  {
    std::lock_guard lock(config_mu_);
    config_ = config;
  }
  for (auto& w : workers_) w->reload(config);
}

ConfigPtr Proxy::config() const {
  std::lock_guard lock(config_mu_);
  return config_;
}

void Proxy::stopAccepting() {
  shared_.setDraining();
  for (auto& w : workers_) w->stopAccepting();
}

void Proxy::listenerRemoved() {
  // The last worker stopped watching the socket: close it, so that new connections are refused
  // at once (and can go elsewhere) instead of waiting in the backlog.
  if (listeners_open_.fetch_sub(1) == 1) closeListener();
}

void Proxy::stop() {
  if (stopped_.exchange(true)) return;
  for (auto& w : workers_) w->stop();
  for (auto& w : workers_) w->join();
}

bool Proxy::healthy(std::chrono::milliseconds maxSilence) const {
  if (workers_.empty() || stopped_) return false;
  const int64_t now = Worker::steadyMs();
  for (const auto& w : workers_) {
    if (now - w->lastBeatMs() > maxSilence.count()) return false;
  }
  return true;
}

}  // namespace idem
