#include "http/worker.h"

#include <event2/buffer.h>
#include <event2/http.h>

#include <chrono>

#include "http/evhttp_downstream.h"
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

void Worker::onRequest(evhttp_request* req, void* arg) {
  auto* self = static_cast<Worker*>(arg);
  // Refusals evhttp itself does not make (RFC 9112 §6.3), before the core sees the request.
  if (std::string why = EvhttpDownstream::framingError(req); !why.empty()) {
    sendEvhttpProblem(req, Problem::BadRequest, why, true);
    return;
  }
  const uint64_t limit = self->config_->server.max_request_body;
  if (evbuffer_get_length(evhttp_request_get_input_buffer(req)) > limit) {
    sendEvhttpProblem(req, Problem::RequestTooLarge,
                      "the body is larger than " + std::to_string(limit) + " bytes", false);
    return;
  }
  try {
    // An exception unwinds the request; its Downstream then answers 500 and frees it.
    ProxyRequest::start(*self, std::make_unique<EvhttpDownstream>(req));
  } catch (const std::exception& e) {
    self->proxy_.observer().event("request-failed", "", e.what());
  }
}

}  // namespace idem
