#include "http/worker.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <chrono>

#include "base/thread_name.h"
#include "http/server.h"
#include "request/request.h"

namespace idem {

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
  front_.reset();  // closes the connections still open (their Downstreams become no-ops)
  mailbox_event_.reset();
  heartbeat_.reset();
  wakes_event_.reset();  // (events are freed before their base)
  base_.reset();
  if (mailbox_fd_ >= 0) ::close(mailbox_fd_);
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
  // The mailbox's wake-up is an eventfd of its own, written after the lock is released: the
  // loop, woken on the same core, then never waits for the poster to let go of a lock (as it
  // did behind event_active's base lock, two more context switches per store operation).
  mailbox_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (mailbox_fd_ < 0) {
    error = "cannot create the worker's mailbox (eventfd)";
    return false;
  }
  mailbox_event_.reset(
      event_new(base_.get(), mailbox_fd_, EV_READ | EV_PERSIST, &Worker::onMailbox, this));
  event_add(mailbox_event_.get(), nullptr);
  wakes_event_.reset(event_new(base_.get(), -1, 0, &Worker::onWakes, this));
  wake_batch_.arm = [this] { event_active(wakes_event_.get(), EV_TIMEOUT, 0); };
  heartbeat_.reset(event_new(base_.get(), -1, EV_PERSIST, &Worker::onHeartbeat, this));
  const timeval second{1, 0};
  event_add(heartbeat_.get(), &second);
  last_beat_ms_ = steadyMs();
  const ServerConfig& s = config_->server;
  FrontLimits limits;
  limits.max_request_body = s.max_request_body;
  limits.error_body = s.error_body;
  limits.client_timeout = s.client_timeout;
  limits.idle_timeout = s.client_timeout;
  try {
    front_ = std::make_unique<FrontServer>(
        base_.get(), listenFd, limits,
        [this](std::unique_ptr<Downstream> client) { onRequest(std::move(client)); },
        [this](std::string_view name, std::string_view detail) {
          proxy_.observer().event(name, "", detail);
        });
  } catch (const std::exception& e) {
    error = e.what();
    return false;
  }
  front_->setCounters({[this](FrontRefusal why) { proxy_.observer().frontRefused(why); },
                       [this](int delta) { proxy_.observer().frontConnections(delta); }});
  accepting_ = true;
  rebuildUpstreams();
  return true;
}

void Worker::startThread(unsigned index) {
  thread_ = std::thread([this, index] {
    nameThisThread("idem-worker-" + std::to_string(index));
    tl_wake_batch = &wake_batch_;  // a store's writer is woken once per batch of callbacks
    event_base_loop(base_.get(), EVLOOP_NO_EXIT_ON_EMPTY);
    // A loop broken mid-iteration skips the rest of it: the wakes it queued go now.
    tl_wake_batch = nullptr;
    wake_batch_.run();
  });
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
  if (wasEmpty) {
    // Only the post that made the mailbox non-empty wakes the loop; onMailbox reads the
    // counter before it takes the batch, so a post after that take wakes it again.
    const uint64_t one = 1;
    [[maybe_unused]] const ssize_t n = ::write(mailbox_fd_, &one, sizeof one);
  }
}

void Worker::onWakes(evutil_socket_t, short, void* arg) {
  static_cast<Worker*>(arg)->wake_batch_.run();
}

void Worker::onMailbox(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  uint64_t posted = 0;
  [[maybe_unused]] const ssize_t n = ::read(self->mailbox_fd_, &posted, sizeof posted);
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
    front_->setMaxRequestBody(config_->server.max_request_body);
    front_->setErrorBody(config_->server.error_body);
    rebuildUpstreams();
  });
}

void Worker::stopAccepting() {
  post([this] {
    if (accepting_) {
      accepting_ = false;
      front_->stopAccepting();
      // Drain: idle keep-alive connections close now, the others after their answer.
      front_->closeIdleAndFinish();
      // With EPOLL_USE_CHANGELIST the listener's removal from epoll is applied at this loop's
      // next dispatch, not now: only after it may the last worker close the shared socket (a
      // close first would let epoll_ctl act on a reused descriptor number). A timer fires after
      // that dispatch; not a zero one, which event_base_once activates at once, before it
      // (tests/integration/test_listener_close.py sees the order in the system calls).
      const timeval soon{0, 1};
      event_base_once(
          base_.get(), -1, EV_TIMEOUT,
          [](evutil_socket_t, short, void* arg) { static_cast<Proxy*>(arg)->listenerRemoved(); },
          &proxy_, &soon);
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
          old.tls_ca_file == uc.tls_ca_file && old.client == uc.client &&
          old.idle_timeout == uc.idle_timeout && old.max_response_body == uc.max_response_body) {
        next.emplace(name, it->second);
        continue;
      }
    }
    const unsigned limit = std::max(1u, (uc.max_connections + worker_count_ - 1) / worker_count_);
    next.emplace(name, std::make_shared<PooledUpstream>(base_.get(), uc, limit));
  }
  upstreams_.swap(next);  // old clients live on while requests still hold them
}

std::shared_ptr<Upstream> Worker::upstream(const std::string& name) {
  auto it = upstreams_.find(name);
  return it == upstreams_.end() ? nullptr : it->second;
}

RequestShared& Worker::shared() {
  return proxy_.shared();
}

void Worker::onRequest(std::unique_ptr<Downstream> client) {
  // Framing and body-size refusals are the FrontServer's: what arrives here is well-formed.
  try {
    // An exception unwinds the request; its Downstream then answers 500 and frees it.
    ProxyRequest::start(*this, std::move(client));
  } catch (const std::exception& e) {
    proxy_.observer().event("request-failed", "", e.what());
  }
}

}  // namespace idem
