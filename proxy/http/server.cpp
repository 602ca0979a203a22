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

#include "request/request.h"
#include "http/worker.h"

namespace idem {

const char* toString(Outcome o) {
  switch (o) {
    case Outcome::Forwarded:
      return "forwarded";
    case Outcome::Replayed:
      return "replayed";
    case Outcome::Conflict:
      return "conflict";
    case Outcome::Mismatch:
      return "mismatch";
    case Outcome::Invalid:
      return "invalid";
    case Outcome::Passthrough:
      return "passthrough";
    case Outcome::Released:
      return "released";
    case Outcome::Error:
      return "error";
  }
  return "error";
}

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

namespace {

std::string bootId() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  if (id.size() > 8) id.resize(8);
  return id.empty() ? "noboot" : id;
}

}  // namespace

Proxy::Proxy(ConfigPtr config, Store& store, ProxyObserver& observer, const Clock& clock)
    : config_(std::move(config)), store_(store), observer_(observer), clock_(clock) {
  // boot id + pid + a random nonce: containers on one host share the boot id and often the
  // pid (1), and a restarted process must not mistake its predecessor's reservations for its own.
  std::random_device rd;
  char nonce[9];
  std::snprintf(nonce, sizeof nonce, "%08x", rd());
  owner_prefix_ = bootId() + ":" + std::to_string(getpid()) + ":" + nonce + ":";
}

Proxy::~Proxy() {
  stop();
  // Parked waiters and queued completions are dropped without running; each worker clears its
  // mailbox while its loop's base is still alive.
  waiters_.clear();
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
  for (auto& w : workers_) w->startThread();
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
  draining_ = true;
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

std::string Proxy::newOwnerToken() {
  return owner_prefix_ + std::to_string(owner_seq_.fetch_add(1, std::memory_order_relaxed));
}

bool Proxy::ownsToken(std::string_view owner) const {
  return owner.substr(0, owner_prefix_.size()) == owner_prefix_;
}

// ---- Worker ----

Worker::Worker(Proxy& proxy, unsigned workerCount, ConfigPtr config)
    : proxy_(proxy), worker_count_(workerCount), config_(std::move(config)) {}

Worker::~Worker() {
  join();
  std::vector<std::function<void()>> dropped;
  {
    std::lock_guard lock(mailbox_mu_);
    dropped.swap(mailbox_);
  }
  dropped.clear();  // may destroy requests: their timers and upstreams need the base alive
  upstreams_.clear();
  if (bound_ != nullptr && http_) evhttp_del_accept_socket(http_.get(), bound_);
  http_.reset();
  mailbox_event_.reset();
  heartbeat_.reset();
  base_.reset();
}

bool Worker::init(int listenFd, std::string& error) {
  event_config* ec = event_config_new();
  event_config_set_flag(ec, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
  base_.reset(event_base_new_with_config(ec));
  event_config_free(ec);
  if (!base_) {
    error = "cannot create event loop";
    return false;
  }
  mailbox_event_.reset(event_new(base_.get(), -1, EV_PERSIST, &Worker::onMailbox, this));
  event_add(mailbox_event_.get(), nullptr);
  heartbeat_.reset(event_new(base_.get(), -1, EV_PERSIST, &Worker::onHeartbeat, this));
  const timeval second{1, 0};
  event_add(heartbeat_.get(), &second);
  last_beat_ms_ = steadyMs();
  http_.reset(evhttp_new(base_.get()));
  const ServerConfig& s = config_->server;
  // evhttp enforces a hard cap; bodies between the configured limit and the cap are read and
  // refused with a problem body by the request handler (evhttp's own 413 has no problem body).
  const uint64_t cap = s.max_request_body * 2 + 65536;
  evhttp_set_max_body_size(http_.get(), static_cast<ev_ssize_t>(cap));
  evhttp_set_max_headers_size(http_.get(), 64 * 1024);
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(s.client_timeout.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((s.client_timeout.count() % 1000) * 1000);
  evhttp_set_timeout_tv(http_.get(), &tv);
  evhttp_set_allowed_methods(http_.get(), EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_HEAD |
                                              EVHTTP_REQ_PUT | EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_OPTIONS | EVHTTP_REQ_PATCH);
  evhttp_set_default_content_type(http_.get(), nullptr);
  evhttp_set_flags(http_.get(), EVHTTP_SERVER_LINGERING_CLOSE);
  evhttp_set_gencb(http_.get(), &Worker::onRequest, this);
  evconnlistener* listener =
      evconnlistener_new(base_.get(), nullptr, nullptr, LEV_OPT_REUSEABLE, 0, listenFd);
  if (listener == nullptr) {
    error = "cannot attach listener";
    return false;
  }
  bound_ = evhttp_bind_listener(http_.get(), listener);
  rebuildUpstreams();
  return true;
}

void Worker::startThread() {
  thread_ = std::thread([this] { event_base_loop(base_.get(), EVLOOP_NO_EXIT_ON_EMPTY); });
}

void Worker::join() {
  if (thread_.joinable()) thread_.join();
}

void Worker::post(std::function<void()> fn) {
  bool wasEmpty;
  {
    std::lock_guard lock(mailbox_mu_);
    wasEmpty = mailbox_.empty();
    mailbox_.push_back(std::move(fn));
  }
  if (wasEmpty) event_active(mailbox_event_.get(), EV_READ, 0);
}

void Worker::onMailbox(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  std::vector<std::function<void()>> batch;
  {
    std::lock_guard lock(self->mailbox_mu_);
    batch.swap(self->mailbox_);
  }
  for (auto& fn : batch) {
    try {
      fn();
    } catch (const std::exception& e) {
      self->proxy_.observer().event("worker-task-failed", "", e.what());
    }
  }
}

int64_t Worker::steadyMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void Worker::onHeartbeat(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  self->last_beat_ms_.store(steadyMs(), std::memory_order_relaxed);
}

void Worker::reload(ConfigPtr config) {
  post([this, config = std::move(config)] {
    config_ = config;
    rebuildUpstreams();
  });
}

void Worker::stopAccepting() {
  post([this] {
    if (bound_ != nullptr) {
      evhttp_del_accept_socket(http_.get(), bound_);
      bound_ = nullptr;
      proxy_.listenerRemoved();
    }
  });
}

void Worker::stop() {
  if (!base_) return;
  post([this] { event_base_loopbreak(base_.get()); });
}

void Worker::rebuildUpstreams() {
  std::map<std::string, std::shared_ptr<Upstream>> next;
  for (const auto& [name, uc] : config_->upstreams) {
    auto it = upstreams_.find(name);
    if (it != upstreams_.end()) {
      const UpstreamConfig& old = it->second->config();
      if (old.url == uc.url && old.connect_timeout == uc.connect_timeout &&
          old.timeout == uc.timeout && old.max_connections == uc.max_connections &&
          old.tls_ca_file == uc.tls_ca_file) {
        next.emplace(name, it->second);
        continue;
      }
    }
    const unsigned limit = std::max(1u, (uc.max_connections + worker_count_ - 1) / worker_count_);
    next.emplace(name, std::make_shared<Upstream>(base_.get(), uc, limit));
  }
  upstreams_.swap(next);  // old clients live on while requests still hold them
}

std::shared_ptr<Upstream> Worker::upstream(const std::string& name) {
  auto it = upstreams_.find(name);
  return it == upstreams_.end() ? nullptr : it->second;
}

void Worker::onRequest(evhttp_request* req, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  try {
    ProxyRequest::start(*self, req);
  } catch (const std::exception& e) {
    self->proxy_.observer().event("request-failed", "", e.what());
  }
}

}  // namespace idem
