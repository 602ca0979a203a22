#include "http/front_server.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <stdexcept>
#include <string>

#include "http/connection.h"

namespace idem {

namespace {

constexpr int kAcceptsPerWakeup = 32;
// Out of descriptors: stop watching the socket this long instead of spinning on it.
constexpr std::chrono::milliseconds kAcceptBackoff{250};
// At most one accept-failed event per this interval (the count of failures is in its detail).
constexpr std::chrono::seconds kAcceptEventInterval{10};

}  // namespace

FrontServer::FrontServer(event_base* base, int listenFd, FrontLimits limits, Handler onRequest,
                         EventSink onEvent)
    : base_(base),
      listen_fd_(listenFd),
      limits_(limits),
      on_request_(std::move(onRequest)),
      on_event_(std::move(onEvent)) {
  accept_event_.reset(event_new(base_, listen_fd_, EV_READ | EV_PERSIST, &onAccept, this));
  backoff_timer_.reset(evtimer_new(base_, &onBackoffOver, this));
  if (!accept_event_ || !backoff_timer_ || event_add(accept_event_.get(), nullptr) != 0) {
    throw std::runtime_error("front server: cannot watch the listening socket");
  }
}

FrontServer::~FrontServer() {
  accept_event_.reset();
  backoff_timer_.reset();
  while (first_ != nullptr) first_->closeNow();
}

void FrontServer::stopAccepting() {
  accepting_ = false;
  if (accept_event_) event_del(accept_event_.get());
  if (backoff_timer_) event_del(backoff_timer_.get());
}

void FrontServer::closeIdleAndFinish() {
  draining_ = true;
  for (FrontConnection* c = first_; c != nullptr;) {
    FrontConnection* next = c->next_;
    c->closeIfIdle();
    c = next;
  }
}

void FrontServer::onAccept(evutil_socket_t fd, short, void* arg) {
  auto* self = static_cast<FrontServer*>(arg);
  for (int i = 0; i < kAcceptsPerWakeup && self->accepting_; ++i) {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    const int c =
        ::accept4(fd, reinterpret_cast<sockaddr*>(&ss), &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0) {
      const int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;  // another worker took it, or none left
      if (err == EINTR || err == ECONNABORTED || err == EPROTO) continue;
      self->acceptFailed(err);  // EMFILE, ENFILE, ENOBUFS, ENOMEM, or worse: back off
      return;
    }
    const int one = 1;
    setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    std::shared_ptr<FrontConnection> conn;
    try {
      conn = std::make_shared<FrontConnection>(*self, c, reinterpret_cast<sockaddr*>(&ss));
    } catch (const std::bad_alloc&) {
      ::close(c);
      self->acceptFailed(ENOMEM);
      return;
    }
    conn->next_ = self->first_;
    if (self->first_ != nullptr) self->first_->prev_ = conn.get();
    self->first_ = conn.get();
    ++self->open_;
    if (self->counters_.connections) self->counters_.connections(1);
    conn->start();
  }
}

void FrontServer::acceptFailed(int err) {
  // libevent's evconnlistener retries at once and spins at 100% CPU while descriptors are out;
  // here the socket is left alone for a while (pending connections wait in the backlog).
  event_del(accept_event_.get());
  const timeval tv{0, static_cast<suseconds_t>(kAcceptBackoff.count() * 1000)};
  event_add(backoff_timer_.get(), &tv);
  ++accept_failures_;
  ++accept_backoffs_;
  const auto now = std::chrono::steady_clock::now();
  if (on_event_ && (last_accept_event_ == std::chrono::steady_clock::time_point{} ||
                    now - last_accept_event_ >= kAcceptEventInterval)) {
    char detail[160];
    std::snprintf(detail, sizeof detail, "%s (%llu failures; accepting again in %lld ms)",
                  std::strerror(err), static_cast<unsigned long long>(accept_failures_),
                  static_cast<long long>(kAcceptBackoff.count()));
    last_accept_event_ = now;
    accept_failures_ = 0;
    on_event_("accept-failed", detail);
  }
}

void FrontServer::onBackoffOver(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<FrontServer*>(arg);
  if (self->accepting_) event_add(self->accept_event_.get(), nullptr);
}

void FrontServer::dispatch(std::unique_ptr<Downstream> request) {
  try {
    on_request_(std::move(request));
  } catch (const std::exception& e) {
    // No exception crosses the loop; a request the handler dropped closes its connection.
    if (on_event_) on_event_("request-failed", e.what());
  }
}

void FrontServer::connectionClosed(FrontConnection* conn) {
  if (conn->prev_ != nullptr) {
    conn->prev_->next_ = conn->next_;
  } else {
    first_ = conn->next_;
  }
  if (conn->next_ != nullptr) conn->next_->prev_ = conn->prev_;
  conn->prev_ = conn->next_ = nullptr;
  --open_;
  if (counters_.connections) counters_.connections(-1);
}

std::string_view FrontServer::httpDate() {
  const time_t now = std::time(nullptr);
  if (now != date_second_) {
    tm t{};
    gmtime_r(&now, &t);
    date_len_ = std::strftime(date_, sizeof date_, "%a, %d %b %Y %H:%M:%S GMT", &t);
    date_second_ = now;
  }
  return {date_, date_len_};
}

}  // namespace idem
