// The built-in HTTP/1.1 client for http:// upstreams at an IP literal. The shape:
//   send()          → validate, serialise the request once into an evbuffer, arm the
//                     exchange's timer, then hand it to an idle pooled connection, a new
//                     connection (below the limit) or the FIFO queue. Nothing completes inside
//                     send(): failures go through finish() → the delivery event.
//   onWritable      → connected (or connect failed / timed out) → write the request;
//   onReadable      → bytes → parse the response with libhttp-parser (http1_response.cpp:
//                     status line, fields, body by Content-Length / chunked / until close);
//                     EOF ends a body read until close, else it fails the exchange.
// Plain events on a non-blocking socket rather than bufferevents: a bufferevent's teardown is
// deferred to the next loop pass, and destroying an Upstream must leave no event behind.
//   after a reply   → the connection takes the next queued exchange, or goes idle (read
//                     still enabled, so a close by the upstream is noticed and it is dropped).
//   past the limit  → (an idempotent route's `max_response_body`) the head and the body so far
//                     are delivered with a Stream (UpstreamBody) holding the connection; it
//                     reads the rest only while its consumer is not paused, then the
//                     connection is closed (never pooled after a streamed body).
// A request is never sent twice: whatever fails after a byte of it reached the socket is
// AfterSend (or Timeout), and nothing is retried.
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "upstream/http1_response.h"
#include "upstream/upstream_backend.h"

namespace idem::upstream_detail {
namespace {

// Reads taken from a socket when an exchange's timer fires, so that an answer that arrived
// meanwhile is taken rather than timed out (16 KiB each).
constexpr int kMaxReadsAtTimeout = 1024;
// A queued exchange this close to its timeout fails BeforeSend instead of opening a connection.
constexpr std::chrono::milliseconds kStartSlack{10};

// Where an http:// URL points: an IP literal, a port, a path prefix.
struct Target {
  sockaddr_storage addr{};
  socklen_t addrLen = 0;
  std::string hostHeader;  // "127.0.0.1:8080", "[::1]:8080", or the host alone for port 80
  std::string prefix;      // path prefix without trailing slashes, "" for none
};

bool parseTarget(const std::string& url, Target& t) {
  constexpr std::string_view kScheme = "http://";
  if (url.size() < kScheme.size() || !iequals(std::string_view(url).substr(0, 7), kScheme)) {
    return false;
  }
  std::string base = baseUrlOf(url);
  std::string_view rest = std::string_view(base).substr(kScheme.size());
  size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  t.prefix = slash == std::string_view::npos ? std::string() : std::string(rest.substr(slash));
  if (t.prefix.find_first_of("?#") != std::string::npos) return false;
  if (authority.find('@') != std::string_view::npos || authority.empty()) return false;

  std::string host;
  std::string_view portText;
  bool v6 = false;
  if (authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return false;
    host = std::string(authority.substr(1, close - 1));
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':') return false;
      portText = after.substr(1);
    }
    v6 = true;
  } else {
    size_t colon = authority.find(':');
    host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) portText = authority.substr(colon + 1);
  }
  unsigned port = 80;
  if (!portText.empty()) {
    auto [end, ec] = std::from_chars(portText.data(), portText.data() + portText.size(), port);
    if (ec != std::errc() || end != portText.data() + portText.size() || port == 0 ||
        port > 65535) {
      return false;
    }
  }
  if (v6) {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&t.addr);
    if (host.find('%') != std::string::npos) return false;  // zone ids: leave them to curl
    if (inet_pton(AF_INET6, host.c_str(), &sa->sin6_addr) != 1) return false;
    sa->sin6_family = AF_INET6;
    sa->sin6_port = htons(static_cast<uint16_t>(port));
    t.addrLen = sizeof(sockaddr_in6);
    t.hostHeader = "[" + host + "]";
  } else {
    auto* sa = reinterpret_cast<sockaddr_in*>(&t.addr);
    if (inet_pton(AF_INET, host.c_str(), &sa->sin_addr) != 1) return false;  // a name
    sa->sin_family = AF_INET;
    sa->sin_port = htons(static_cast<uint16_t>(port));
    t.addrLen = sizeof(sockaddr_in);
    t.hostHeader = host;
  }
  if (port != 80) t.hostHeader += ":" + std::to_string(port);
  return true;
}

class Http1Backend final : public PooledUpstream::Impl {
 public:
  Http1Backend(event_base* base, const UpstreamConfig& config, unsigned connectionLimit,
               Target target);
  ~Http1Backend() override;

  void start(UpstreamRequest request, std::function<void(UpstreamResult)> done) override;
  size_t active() const override { return active_; }
  const char* name() const override { return "http1"; }

 private:
  struct Conn;
  struct Stream;

  struct Exchange {
    Http1Backend* owner = nullptr;
    std::function<void(UpstreamResult)> done;
    SteadyClock::time_point started;
    EvbufferPtr out;  // the serialised request, moved into the connection's output
    EventPtr timer;   // the whole-exchange `timeout`
    Conn* conn = nullptr;
    bool head = false;   // HEAD: the response has no body
    bool wrote = false;  // a byte of the request reached the socket
    size_t bodyLimit = 0;
    bool overLimitIsAnswer = false;  // the caller set the limit: past it, the rest is streamed
    HttpAnswer answer;
  };

  struct Conn {
    Http1Backend* owner = nullptr;
    int fd = -1;
    EventPtr readEv;   // persistent, added once connected (idle too: notices a close)
    EventPtr writeEv;  // persistent, added while connecting or while output is pending
    EvbufferPtr in{evbuffer_new()};
    EvbufferPtr out{evbuffer_new()};
    std::unique_ptr<Exchange> ex;  // none: idle (or connecting for nobody: never)
    bool connecting = true;
    Http1ResponseReader reader;
    SteadyClock::time_point idleSince;
    // Streaming the rest of a body past the limit: the consumer, its wake-up (start, resume)
    // and the upstream's `timeout` between bytes; `piece` carries each part read.
    Stream* stream = nullptr;
    EventPtr kickEv;
    EventPtr streamTimer;
    HttpAnswer piece;

    ~Conn();
  };

  // The rest of a body past the limit (UpstreamBody): owns nothing but its place on `conn`.
  struct Stream final : StreamedRest {
    Http1Backend* owner = nullptr;
    Conn* conn = nullptr;  // null once ended, or once the backend is gone

    ~Stream() override;
    void kick() override;
    void stopReading() override;
  };

  // What one read from a connection's socket led to.
  enum class ReadStep {
    Blocked,   // nothing more to read now; the exchange goes on
    Progress,  // bytes were read; the exchange goes on
    Ended,     // the exchange completed or failed (the connection may be gone)
  };

  void fail(std::unique_ptr<Exchange> ex, UpstreamFailure failure, std::string detail);
  void finish(std::unique_ptr<Exchange> ex, UpstreamResult result);
  void dispatch(std::unique_ptr<Exchange> ex);
  // Starts a connection for `ex`; false (with `ex` failed) when the socket cannot be made.
  bool connect(std::unique_ptr<Exchange>& ex);
  void assign(Conn* c, std::unique_ptr<Exchange> ex);
  void beginWrite(Conn* c);
  // Writes what the socket takes; false when the connection failed (and was closed).
  bool flush(Conn* c);
  void onConnected(Conn* c);
  void closeConn(Conn* c);
  // Exchange on `c` failed: close the connection, fail the exchange, serve the queue.
  void failOnConn(Conn* c, std::string detail, bool timedOut);
  void completeOnConn(Conn* c, bool closeAfter);
  // The answer's body passed the exchange's limit: the head and a Stream, or AfterSend.
  void overLimitOnConn(Conn* c);
  // Delivers what the streamed connection has or can read now, while not paused.
  void streamStep(Conn* c);
  // The streamed body ended (complete, or cut short): closes `c`, then tells the consumer.
  void endStream(Conn* c, bool complete, std::string detail);
  ReadStep readOnce(Conn* c);
  // Opens connections for queued exchanges while below the limit.
  void pump();
  bool usable(Conn* c, SteadyClock::time_point now);
  std::string serialise(const UpstreamRequest& req, Exchange& ex);

  static void onReadable(evutil_socket_t fd, short what, void* arg) noexcept;
  static void onWritable(evutil_socket_t fd, short what, void* arg) noexcept;
  static void onTimeout(evutil_socket_t fd, short what, void* arg) noexcept;
  static void onStreamKick(evutil_socket_t fd, short what, void* arg) noexcept;
  static void onStreamTimeout(evutil_socket_t fd, short what, void* arg) noexcept;

  Target target_;
  size_t limit_;
  const timeval* timeout_ = nullptr;  // a common timeout: all exchanges share the duration
  timeval timeoutStorage_{};
  std::vector<std::unique_ptr<Conn>> conns_;  // every open connection
  std::deque<Conn*> idle_;                    // back: most recently used
  std::deque<std::unique_ptr<Exchange>> queue_;
  size_t active_ = 0;
};

Http1Backend::Conn::~Conn() {
  if (stream != nullptr) stream->conn = nullptr;  // the backend is going: the stream ends mute
  readEv.reset();                                 // event_free deletes the events first
  writeEv.reset();
  kickEv.reset();
  streamTimer.reset();
  if (fd >= 0) ::close(fd);
}

Http1Backend::Stream::~Stream() {
  alive.reset();
  if (conn == nullptr) return;
  // Abandoned mid-body: the connection is closed, never pooled.
  Conn* c = conn;
  c->stream = nullptr;
  owner->closeConn(c);
  owner->pump();
}

void Http1Backend::Stream::stopReading() {
  if (conn == nullptr) return;
  event_del(conn->readEv.get());
  event_del(conn->streamTimer.get());
}

void Http1Backend::Stream::kick() {
  if (conn != nullptr && started && !paused) event_active(conn->kickEv.get(), EV_TIMEOUT, 0);
}

Http1Backend::Http1Backend(event_base* base, const UpstreamConfig& config, unsigned connectionLimit,
                           Target target)
    : Impl(base, config),
      target_(std::move(target)),
      limit_(connectionLimit == 0 ? 1 : connectionLimit) {
  long ms = static_cast<long>(config_.timeout.count());
  timeoutStorage_.tv_sec = ms / 1000;
  timeoutStorage_.tv_usec = static_cast<suseconds_t>((ms % 1000) * 1000);
  timeout_ = event_base_init_common_timeout(base_, &timeoutStorage_);
  if (!timeout_) timeout_ = &timeoutStorage_;
}

Http1Backend::~Http1Backend() {
  // Abandon everything without calling back: timers die with their exchanges, sockets close.
  alive_.reset();
  queue_.clear();
  idle_.clear();
  conns_.clear();
}

std::string Http1Backend::serialise(const UpstreamRequest& req, Exchange& ex) {
  if (!isToken(req.method)) return "invalid request method";
  for (const Header& h : req.headers) {
    if (!isToken(h.name) || !isSafeFieldValue(h.value)) return "invalid request header field";
  }
  const std::string& method = req.method;
  ex.head = method == "HEAD";
  const bool bodyMethod = method == "POST" || method == "PUT" || method == "PATCH";
  const bool withBody = !ex.head && (bodyMethod || !req.body.empty());

  std::string head;
  head.reserve(128 + req.path_and_query.size() + target_.prefix.size() + req.headers.size() * 48);
  head += method;
  head += ' ';
  head += target_.prefix;
  if (req.path_and_query.empty() || req.path_and_query.front() != '/') head += '/';
  head += req.path_and_query;
  head += " HTTP/1.1\r\n";
  if (!hasHeader(req.headers, "Host")) {
    head += "Host: ";
    head += target_.hostHeader;
    head += "\r\n";
  }
  for (const Header& h : req.headers) {
    if (isHopByHop(h.name) || iequals(h.name, "Content-Length") || iequals(h.name, "Expect")) {
      continue;
    }
    head += h.name;
    head += ':';
    if (!h.value.empty()) {
      head += ' ';
      head += h.value;
    }
    head += "\r\n";
  }
  if (withBody) {
    head += "Content-Length: ";
    head += std::to_string(req.body.size());
    head += "\r\n";
  }
  head += "\r\n";
  ex.out.reset(evbuffer_new());
  if (!ex.out || evbuffer_add(ex.out.get(), head.data(), head.size()) != 0) return "out of memory";
  if (withBody && !req.body.empty()) {
    if (evbuffer_add(ex.out.get(), req.body.data(), req.body.size()) != 0) return "out of memory";
  }
  return {};
}

void Http1Backend::start(UpstreamRequest request, std::function<void(UpstreamResult)> done) {
  auto ex = std::make_unique<Exchange>();
  ex->owner = this;
  ex->started = SteadyClock::now();
  ex->done = std::move(done);
  ex->overLimitIsAnswer = request.max_response_body != 0;
  ex->bodyLimit = ex->overLimitIsAnswer ? request.max_response_body
                                        : static_cast<size_t>(config_.max_response_body);
  ++active_;
  std::string problem = serialise(request, *ex);
  if (!problem.empty()) return fail(std::move(ex), UpstreamFailure::BeforeSend, std::move(problem));
  ex->timer.reset(evtimer_new(base_, &Http1Backend::onTimeout, ex.get()));
  if (!ex->timer || evtimer_add(ex->timer.get(), timeout_) != 0) {
    return fail(std::move(ex), UpstreamFailure::BeforeSend, "out of memory");
  }
  dispatch(std::move(ex));
}

void Http1Backend::finish(std::unique_ptr<Exchange> ex, UpstreamResult result) {
  result.latency = since(ex->started);
  --active_;
  finished_.push_back({std::move(ex->done), std::move(result)});
  scheduleDelivery();
  // `ex` (its timer and buffers) dies here.
}

void Http1Backend::fail(std::unique_ptr<Exchange> ex, UpstreamFailure failure, std::string detail) {
  UpstreamResult result;
  result.failure = failure;
  result.detail = std::move(detail);
  finish(std::move(ex), std::move(result));
}

bool Http1Backend::usable(Conn* c, SteadyClock::time_point now) {
  if (now - c->idleSince > config_.idle_timeout) return false;
  if (evbuffer_get_length(c->in.get()) != 0) return false;
  // The upstream may have closed it since the loop last looked (its EOF not yet dispatched).
  char byte;
  ssize_t n = recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
  return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void Http1Backend::dispatch(std::unique_ptr<Exchange> ex) {
  if (!idle_.empty()) {
    auto now = SteadyClock::now();
    // The least recently used one too, so idle connections past their age do not linger.
    if (idle_.size() > 1 && now - idle_.front()->idleSince > config_.idle_timeout) {
      closeConn(idle_.front());
    }
    while (!idle_.empty()) {
      Conn* c = idle_.back();
      if (usable(c, now)) {
        idle_.pop_back();
        return assign(c, std::move(ex));
      }
      closeConn(c);
    }
  }
  if (conns_.size() < limit_ && queue_.empty()) {
    connect(ex);
    return;
  }
  queue_.push_back(std::move(ex));
  pump();
}

bool Http1Backend::connect(std::unique_ptr<Exchange>& ex) {
  const auto* sa = reinterpret_cast<const sockaddr*>(&target_.addr);
  int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) {
    fail(std::move(ex), UpstreamFailure::BeforeSend,
         std::string("socket: ") + std::strerror(errno));
    return false;
  }
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  auto c = std::make_unique<Conn>();
  c->owner = this;
  c->fd = fd;
  c->readEv.reset(event_new(base_, fd, EV_READ | EV_PERSIST, &Http1Backend::onReadable, c.get()));
  c->writeEv.reset(event_new(base_, fd, EV_WRITE | EV_PERSIST, &Http1Backend::onWritable, c.get()));
  if (!c->readEv || !c->writeEv || !c->in || !c->out) {
    fail(std::move(ex), UpstreamFailure::BeforeSend, "out of memory");
    return false;
  }
  bool connected = false;
  if (::connect(fd, sa, target_.addrLen) == 0) {
    connected = true;
  } else if (errno != EINPROGRESS) {
    fail(std::move(ex), UpstreamFailure::BeforeSend,
         std::string("connect: ") + std::strerror(errno));
    return false;  // `c` closes the socket
  }
  long ms = static_cast<long>(config_.connect_timeout.count());
  timeval connectTimeout{ms / 1000, static_cast<suseconds_t>((ms % 1000) * 1000)};
  if (!connected && event_add(c->writeEv.get(), &connectTimeout) != 0) {
    fail(std::move(ex), UpstreamFailure::BeforeSend, "event_add failed");
    return false;
  }
  Conn* raw = c.get();
  conns_.push_back(std::move(c));
  raw->ex = std::move(ex);
  raw->ex->conn = raw;
  if (connected) onConnected(raw);
  return true;
}

void Http1Backend::onConnected(Conn* c) {
  c->connecting = false;
  event_del(c->writeEv.get());  // drops the connect timeout; flush re-adds it if needed
  if (event_add(c->readEv.get(), nullptr) != 0) return failOnConn(c, "event_add failed", false);
  beginWrite(c);
}

void Http1Backend::assign(Conn* c, std::unique_ptr<Exchange> ex) {
  ex->conn = c;
  c->ex = std::move(ex);
  beginWrite(c);
}

void Http1Backend::beginWrite(Conn* c) {
  c->reader.reset(c->ex->head, c->ex->bodyLimit);
  evbuffer_add_buffer(c->out.get(), c->ex->out.get());
  flush(c);
}

bool Http1Backend::flush(Conn* c) {
  // sendmsg with MSG_NOSIGNAL rather than evbuffer_write: no SIGPIPE whatever the process's
  // signal setup. evbuffer_iovec has iovec's layout on POSIX.
  evbuffer_iovec vec[16];
  int nvec = evbuffer_peek(c->out.get(), -1, nullptr, vec, 16);
  ssize_t n = 0;
  if (nvec > 0) {
    msghdr msg{};
    msg.msg_iov = reinterpret_cast<iovec*>(vec);
    msg.msg_iovlen = static_cast<size_t>(std::min(nvec, 16));
    n = ::sendmsg(c->fd, &msg, MSG_NOSIGNAL);
  }
  if (n > 0) {
    evbuffer_drain(c->out.get(), static_cast<size_t>(n));
    if (c->ex) c->ex->wrote = true;
  }
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    failOnConn(c, std::string("send: ") + std::strerror(errno), false);
    return false;
  }
  if (evbuffer_get_length(c->out.get()) != 0) {
    event_add(c->writeEv.get(), nullptr);
  } else {
    event_del(c->writeEv.get());
  }
  return true;
}

void Http1Backend::closeConn(Conn* c) {
  if (auto it = std::find(idle_.begin(), idle_.end(), c); it != idle_.end()) idle_.erase(it);
  auto it = std::find_if(conns_.begin(), conns_.end(),
                         [c](const std::unique_ptr<Conn>& p) { return p.get() == c; });
  if (it != conns_.end()) {
    std::unique_ptr<Conn> owned = std::move(*it);
    *it = std::move(conns_.back());
    conns_.pop_back();
  }
}

void Http1Backend::pump() {
  while (!queue_.empty() && conns_.size() < limit_) {
    std::unique_ptr<Exchange> ex = std::move(queue_.front());
    queue_.pop_front();
    // Its timer is due (libevent's clock may be coarse): not worth a connection.
    if (since(ex->started) + kStartSlack >= config_.timeout) {
      fail(std::move(ex), UpstreamFailure::BeforeSend,
           "Operation timed out after " + std::to_string(config_.timeout.count()) +
               " milliseconds waiting for a connection");
      continue;
    }
    connect(ex);
  }
}

void Http1Backend::failOnConn(Conn* c, std::string detail, bool timedOut) {
  std::unique_ptr<Exchange> ex = std::move(c->ex);
  closeConn(c);
  UpstreamFailure failure = !ex->wrote ? UpstreamFailure::BeforeSend
                            : timedOut ? UpstreamFailure::Timeout
                                       : UpstreamFailure::AfterSend;
  fail(std::move(ex), failure, std::move(detail));
  pump();
}

void Http1Backend::completeOnConn(Conn* c, bool closeAfter) {
  std::unique_ptr<Exchange> ex = std::move(c->ex);
  UpstreamResult result;
  HttpAnswer& answer = ex->answer;
  removeHopByHopFields(answer.headers);
  // The transfer coding was decoded: a Content-Length next to it never described the body.
  if (c->reader.chunked()) {
    std::erase_if(answer.headers,
                  [](const Header& h) { return iequals(h.name, "Content-Length"); });
  }
  result.answer = std::move(answer);
  // Bytes beyond the answer, or a request not fully written (an early answer): not reusable.
  const bool reusable = !closeAfter && !c->reader.closeAfter() &&
                        evbuffer_get_length(c->in.get()) == 0 &&
                        evbuffer_get_length(c->out.get()) == 0;
  finish(std::move(ex), std::move(result));
  if (!reusable) {
    closeConn(c);
    pump();
    return;
  }
  if (!queue_.empty()) {
    std::unique_ptr<Exchange> next = std::move(queue_.front());
    queue_.pop_front();
    return assign(c, std::move(next));
  }
  c->idleSince = SteadyClock::now();
  idle_.push_back(c);
}

void Http1Backend::overLimitOnConn(Conn* c) {
  if (!c->ex->overLimitIsAnswer) {
    return failOnConn(c,
                      "upstream response body over the upstream's max_response_body (" +
                          std::to_string(c->ex->bodyLimit) + " bytes)",
                      false);
  }
  // The head and the body so far are the result; the rest is read through a Stream, which
  // keeps the connection (out of the pool) until it ends or is dropped.
  c->kickEv.reset(event_new(base_, -1, 0, &Http1Backend::onStreamKick, c));
  c->streamTimer.reset(evtimer_new(base_, &Http1Backend::onStreamTimeout, c));
  if (!c->kickEv || !c->streamTimer) return failOnConn(c, "out of memory", false);
  event_del(c->readEv.get());  // nothing more is read until the stream starts
  std::unique_ptr<Exchange> ex = std::move(c->ex);
  UpstreamResult result;
  result.answer = std::move(ex->answer);
  removeHopByHopFields(result.answer.headers);
  if (c->reader.chunked()) {
    std::erase_if(result.answer.headers,
                  [](const Header& h) { return iequals(h.name, "Content-Length"); });
  }
  c->reader.unlimit();
  auto stream = std::make_unique<Stream>();
  stream->owner = this;
  stream->conn = c;
  c->stream = stream.get();
  result.body_over_limit = true;
  result.rest = std::move(stream);
  finish(std::move(ex), std::move(result));
}

void Http1Backend::streamStep(Conn* c) {
  Stream* s = c->stream;
  if (s == nullptr || !s->started || s->paused) return;
  std::weak_ptr<bool> alive = s->alive;
  // A few reads per loop pass (16 KiB each), so one stream cannot starve the loop.
  for (int round = 0; round < 4; ++round) {
    std::string problem;
    const Http1ResponseReader::Result r = c->reader.feed(c->in.get(), c->piece, problem);
    if (!c->piece.body.empty()) {
      std::string piece;
      piece.swap(c->piece.body);
      UpstreamBody::DataFn data = s->data;  // a copy: the consumer may destroy `s` inside
      data(piece);
      if (alive.expired()) return;  // the consumer dropped the stream: `c` is closed
      piece.clear();
      c->piece.body.swap(piece);  // keeps the capacity for the next piece
    }
    if (r == Http1ResponseReader::Result::Done) return endStream(c, true, {});
    if (r == Http1ResponseReader::Result::Malformed) return endStream(c, false, problem);
    if (s->paused) return s->stopReading();
    evbuffer_iovec vec[2];
    const int nvec = evbuffer_reserve_space(c->in.get(), 16 * 1024, vec, 2);
    const ssize_t n = nvec > 0 ? ::recv(c->fd, vec[0].iov_base, vec[0].iov_len, 0) : -1;
    const int err = nvec > 0 ? errno : ENOMEM;
    if (n > 0) {
      vec[0].iov_len = static_cast<size_t>(n);
      evbuffer_commit_space(c->in.get(), vec, 1);
      continue;
    }
    if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) break;
    if (n == 0) {
      problem.clear();
      if (c->reader.finish(c->piece, problem) == Http1ResponseReader::Result::Done) {
        return endStream(c, true, {});
      }
      return endStream(c, false, problem);
    }
    return endStream(c, false, std::string("recv: ") + std::strerror(err));
  }
  if (evbuffer_get_length(c->in.get()) != 0) {
    // The last read is not parsed yet: carry on at the next loop pass (the socket may have
    // nothing more to say, so its read event would not come).
    event_active(c->kickEv.get(), EV_TIMEOUT, 0);
    return;
  }
  // Waiting for the upstream: at most `timeout` between bytes.
  event_add(c->readEv.get(), nullptr);
  event_add(c->streamTimer.get(), timeout_);
}

void Http1Backend::endStream(Conn* c, bool complete, std::string detail) {
  Stream* s = c->stream;
  s->conn = nullptr;
  c->stream = nullptr;
  closeConn(c);
  pump();
  UpstreamBody::EndFn end = std::move(s->end);
  end(complete, detail);  // may destroy `s`
}

void Http1Backend::onStreamKick(evutil_socket_t, short, void* arg) noexcept {
  auto* c = static_cast<Conn*>(arg);
  c->owner->streamStep(c);
}

void Http1Backend::onStreamTimeout(evutil_socket_t, short, void* arg) noexcept {
  auto* c = static_cast<Conn*>(arg);
  Http1Backend* self = c->owner;
  self->endStream(c, false,
                  "no byte of the body from upstream in " +
                      std::to_string(self->config_.timeout.count()) + " milliseconds");
}

Http1Backend::ReadStep Http1Backend::readOnce(Conn* c) {
  // Read straight into the input buffer (evbuffer_read would ask FIONREAD first).
  evbuffer_iovec vec[2];
  int nvec = evbuffer_reserve_space(c->in.get(), 16 * 1024, vec, 2);
  ssize_t n = nvec > 0 ? ::recv(c->fd, vec[0].iov_base, vec[0].iov_len, 0) : -1;
  int err = nvec > 0 ? errno : ENOMEM;
  if (n > 0) {
    vec[0].iov_len = static_cast<size_t>(n);
    evbuffer_commit_space(c->in.get(), vec, 1);
  } else if (n < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == EINTR)) {
    return ReadStep::Blocked;
  }
  if (!c->ex) {  // idle: closed by the upstream, an error, or unsolicited bytes → drop it
    closeConn(c);
    return ReadStep::Ended;
  }
  if (n == 0) {
    // The close ends a body without framing; anything else it cuts short.
    std::string problem;
    if (c->reader.finish(c->ex->answer, problem) == Http1ResponseReader::Result::Done) {
      completeOnConn(c, true);
    } else {
      failOnConn(c, std::move(problem), false);
    }
    return ReadStep::Ended;
  }
  if (n < 0) {
    failOnConn(c, std::string("recv: ") + std::strerror(err), false);
    return ReadStep::Ended;
  }
  std::string problem;
  switch (c->reader.feed(c->in.get(), c->ex->answer, problem)) {
    case Http1ResponseReader::Result::NeedMore:
      return ReadStep::Progress;
    case Http1ResponseReader::Result::Done:
      completeOnConn(c, false);
      break;
    case Http1ResponseReader::Result::Malformed:
      failOnConn(c, std::move(problem), false);
      break;
    case Http1ResponseReader::Result::OverLimit:
      overLimitOnConn(c);
      break;
  }
  return ReadStep::Ended;
}

void Http1Backend::onReadable(evutil_socket_t, short, void* arg) noexcept {
  auto* c = static_cast<Conn*>(arg);
  if (c->stream != nullptr) return c->owner->streamStep(c);
  c->owner->readOnce(c);
}

void Http1Backend::onWritable(evutil_socket_t fd, short what, void* arg) noexcept {
  auto* c = static_cast<Conn*>(arg);
  Http1Backend* self = c->owner;
  if (c->connecting) {
    if (what & EV_TIMEOUT) {
      return self->failOnConn(c,
                              "Connection timed out after " +
                                  std::to_string(self->config_.connect_timeout.count()) +
                                  " milliseconds",
                              false);
    }
    int err = 0;
    socklen_t len = sizeof err;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) return self->failOnConn(c, std::string("connect: ") + std::strerror(err), false);
    return self->onConnected(c);
  }
  self->flush(c);
}

void Http1Backend::onTimeout(evutil_socket_t, short, void* arg) noexcept {
  auto* ex = static_cast<Exchange*>(arg);
  Http1Backend* self = ex->owner;
  std::string detail = "Operation timed out after " +
                       std::to_string(self->config_.timeout.count()) + " milliseconds";
  if (Conn* c = ex->conn) {
    // An answer that arrived as the timer fired (its bytes not read yet: the loop reads
    // 16 KiB per pass) is taken, not timed out.
    if (!c->connecting) {
      for (int i = 0; i < kMaxReadsAtTimeout; ++i) {
        ReadStep step = self->readOnce(c);
        if (step == ReadStep::Ended) return;  // `ex` and perhaps `c` are gone
        if (step == ReadStep::Blocked) break;
      }
    }
    return self->failOnConn(c, std::move(detail), true);
  }
  auto it = std::find_if(self->queue_.begin(), self->queue_.end(),
                         [ex](const std::unique_ptr<Exchange>& p) { return p.get() == ex; });
  if (it == self->queue_.end()) return;  // cannot happen: every exchange is queued or on a conn
  std::unique_ptr<Exchange> owned = std::move(*it);
  self->queue_.erase(it);
  self->fail(std::move(owned), UpstreamFailure::BeforeSend, detail + " waiting for a connection");
}

}  // namespace

std::unique_ptr<PooledUpstream::Impl> makeHttp1Backend(event_base* base,
                                                       const UpstreamConfig& config,
                                                       unsigned connectionLimit) {
  Target target;
  if (!parseTarget(config.url, target)) return nullptr;
  return std::make_unique<Http1Backend>(base, config, connectionLimit, std::move(target));
}

}  // namespace idem::upstream_detail
