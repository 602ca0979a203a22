// libcurl multi driven by a libevent base. The shape:
//   send()            → configure a pooled easy handle, curl_multi_add_handle (curl then asks
//                       for a 0 ms timer through onTimer; nothing else happens inside send()).
//   onTimer/onSocket  → curl tells us which sockets to watch and when to wake it; one libevent
//                       `event` per socket (EV_PERSIST) and one timer.
//   onEvent/onTimeout → curl_multi_socket_action, then drain curl_multi_info_read into the
//                       `finished_` queue and activate the delivery event.
//   onExchangeTimeout → each exchange's own `timeout` timer: lets curl read what arrived,
//                       then fails the exchange if it is still running.
//   onHeader/onWrite  → build the answer; stop the transfer on a refused transfer coding or
//                       a body past the upstream's cap. Past an idempotent route's limit the
//                       head and the body so far are delivered with a Stream (UpstreamBody):
//                       the rest goes to it one piece at a time, curl paused in between
//                       (CURL_WRITEFUNC_PAUSE, resumed with curl_easy_pause from onStreamKick).
//   onDeliver         → runs the `done` callbacks from the top of the event loop, never inside
//                       a curl call, so a callback may send() again or destroy the Upstream.
// http:// upstreams whose host is an IP literal use the built-in HTTP/1.1 client instead
// (http1_client.cpp); Upstream picks the backend in its constructor.
#include "upstream/upstream.h"

#include <curl/curl.h>
#include <event2/event.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include "base/c_handles.h"
#include "upstream/upstream_backend.h"

namespace idem {

using namespace upstream_detail;

namespace {

constexpr size_t kMaxPooledEasyHandles = 64;

class CurlBackend final : public PooledUpstream::Impl {
 public:
  struct Stream;

  // One forwarded request. Lives in `active_` (keyed by its easy handle) while curl owns it.
  struct Exchange {
    ~Exchange();
    CurlBackend* owner = nullptr;
    CurlPtr easy;
    CurlSlistPtr headerList;
    UpstreamRequest request;  // owns the body curl sends from (CURLOPT_POSTFIELDS: no copy)
    std::string url;
    std::function<void(UpstreamResult)> done;
    SteadyClock::time_point started;
    HttpAnswer answer;             // built by the header and write callbacks
    bool headersComplete = false;  // the final header block ended: later lines are trailers
    int requestAttempts = 0;       // CURLOPT_PREREQFUNCTION calls: the request is about to go
    bool resendRefused = false;    // curl wanted to re-send on a fresh connection; we refused
    size_t bodyLimit = 0;
    bool overLimitIsAnswer = false;  // the caller set the limit: past it, a truncated answer
    bool overLimit = false;          // the body passed the limit; the transfer was stopped
    std::string refusal;             // why the answer's head was refused (transfer coding)
    EventPtr timer;                  // the whole-exchange `timeout` (not curl's: see start)
    char error[CURL_ERROR_SIZE] = {};
    // Past the limit: the rest of the body goes to `stream`, one `piece` at a time.
    bool streaming = false;
    Stream* stream = nullptr;
    std::string piece;        // read, not yet delivered
    bool curlPaused = false;  // onWrite returned CURL_WRITEFUNC_PAUSE
    bool ended = false;       // the transfer is over (curl is done with the handle)
    bool endComplete = false;
    std::string endDetail;
    EventPtr kick;  // delivers `piece`, unpauses curl, ends the stream
  };

  // The rest of a body past the limit (UpstreamBody). Until the transfer ends the exchange
  // lives in `active_`; after, the stream owns it until the last piece is delivered.
  struct Stream final : StreamedRest {
    CurlBackend* owner = nullptr;
    Exchange* ex = nullptr;  // null once the backend is gone
    std::unique_ptr<Exchange> owned;

    ~Stream() override;
    void kick() override;
    void stopReading() override;
  };

  // One socket curl asked us to watch.
  struct SocketWatch {
    CurlBackend* owner = nullptr;
    curl_socket_t fd = CURL_SOCKET_BAD;
    EventPtr ev;
  };

  CurlBackend(event_base* base, const UpstreamConfig& config, unsigned connectionLimit);
  ~CurlBackend() override;

  void start(UpstreamRequest request, std::function<void(UpstreamResult)> done) override;
  size_t active() const override { return active_.size(); }
  const char* name() const override { return "curl"; }
  // Fills the easy handle; returns why the request cannot be sent, or "" when it can.
  std::string configure(Exchange& ex);
  // The options every exchange shares, set once when a handle is created.
  std::string setConstantOptions(CURL* e);
  void failBeforeSend(std::unique_ptr<Exchange> ex, std::string detail);
  void recycle(CurlPtr easy);
  void socketAction(curl_socket_t fd, int flags);
  void collectFinished();
  UpstreamResult complete(Exchange& ex, CURLcode code);
  // The exchange on `easy` ran out of time: fails it (Timeout, or BeforeSend if unsent).
  void timeOut(CURL* easy);
  // The body passed the exchange's limit: delivers the head and a Stream for the rest.
  bool handOver(Exchange& ex);
  // A streamed transfer is over: curl lets go of the handle, the stream keeps the exchange.
  void endTransfer(CURL* easy, bool complete, std::string detail);
  static void onStreamKick(evutil_socket_t fd, short what, void* arg) noexcept;

  static int onSocket(CURL* easy, curl_socket_t fd, int what, void* userp, void* socketp);
  static int onTimer(CURLM* multi, long timeoutMs, void* userp);
  // noexcept: an exception here (only bad_alloc is possible) must not unwind through
  // libevent; it terminates instead, like any other broken invariant.
  static void onEvent(evutil_socket_t fd, short what, void* arg) noexcept;
  static void onTimeout(evutil_socket_t fd, short what, void* arg) noexcept;
  static void onExchangeTimeout(evutil_socket_t fd, short what, void* arg) noexcept;
  // The head of the final answer is complete: false (with the reason kept) to stop.
  static bool headAcceptable(Exchange& ex);
  static size_t onHeader(char* data, size_t size, size_t count, void* userp);
  static size_t onWrite(char* data, size_t size, size_t count, void* userp);
  static int onPrereq(void* userp, char* primaryIp, char* localIp, int primaryPort, int localPort);

  std::string baseUrl_;
  CurlMultiPtr multi_;
  EventPtr timer_;
  std::unordered_map<curl_socket_t, std::unique_ptr<SocketWatch>> sockets_;
  std::unordered_map<CURL*, std::unique_ptr<Exchange>> active_;
  std::vector<CurlPtr> idleEasy_;
};

CurlBackend::CurlBackend(event_base* base, const UpstreamConfig& config, unsigned connectionLimit)
    : Impl(base, config), baseUrl_(baseUrlOf(config.url)) {
  const long limit = connectionLimit == 0 ? 1L : static_cast<long>(connectionLimit);
  multi_.reset(curl_multi_init());
  timer_.reset(evtimer_new(base_, &CurlBackend::onTimeout, this));
  if (!multi_ || !timer_) throw std::runtime_error("upstream: out of memory");
  CURLM* m = multi_.get();
  CURLMcode rc = CURLM_OK;
  auto set = [&rc](CURLMcode r) {
    if (rc == CURLM_OK) rc = r;
  };
  set(curl_multi_setopt(m, CURLMOPT_SOCKETFUNCTION, &CurlBackend::onSocket));
  set(curl_multi_setopt(m, CURLMOPT_SOCKETDATA, this));
  set(curl_multi_setopt(m, CURLMOPT_TIMERFUNCTION, &CurlBackend::onTimer));
  set(curl_multi_setopt(m, CURLMOPT_TIMERDATA, this));
  // Beyond the limit, curl queues transfers until a connection frees up.
  set(curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, limit));
  set(curl_multi_setopt(m, CURLMOPT_MAX_TOTAL_CONNECTIONS, limit));
  set(curl_multi_setopt(m, CURLMOPT_MAXCONNECTS, limit));
  set(curl_multi_setopt(m, CURLMOPT_PIPELINING, CURLPIPE_NOTHING));
  if (rc != CURLM_OK) {
    throw std::runtime_error(std::string("upstream: ") + curl_multi_strerror(rc));
  }
}

CurlBackend::~CurlBackend() {
  alive_.reset();
  // Abandon in-flight exchanges without calling their callbacks. Removing a handle may make
  // curl call onSocket/onTimer; the maps and events are still alive here.
  for (auto& entry : active_) curl_multi_remove_handle(multi_.get(), entry.first);
  active_.clear();
  idleEasy_.clear();
  finished_.clear();
  multi_.reset();
  sockets_.clear();  // frees (and so deletes) every socket event
  timer_.reset();
  deliver_.reset();
}

void CurlBackend::start(UpstreamRequest request, std::function<void(UpstreamResult)> done) {
  auto ex = std::make_unique<Exchange>();
  ex->owner = this;
  ex->started = SteadyClock::now();
  ex->request = std::move(request);
  ex->done = std::move(done);
  ex->overLimitIsAnswer = ex->request.max_response_body != 0;
  ex->bodyLimit = ex->overLimitIsAnswer ? ex->request.max_response_body
                                        : static_cast<size_t>(config_.max_response_body);
  if (!idleEasy_.empty()) {
    ex->easy = std::move(idleEasy_.back());
    idleEasy_.pop_back();
  } else {
    ex->easy.reset(curl_easy_init());
    if (ex->easy) {
      std::string problem = setConstantOptions(ex->easy.get());
      if (!problem.empty()) {
        ex->easy.reset();
        return failBeforeSend(std::move(ex), std::move(problem));
      }
    }
  }
  if (!ex->easy) return failBeforeSend(std::move(ex), "curl_easy_init failed");
  std::string problem = configure(*ex);
  if (!problem.empty()) return failBeforeSend(std::move(ex), std::move(problem));
  // Our timer rather than CURLOPT_TIMEOUT_MS: curl checks its deadline before it reads, so an
  // answer that arrived as the deadline passed would be a timeout; onExchangeTimeout lets
  // curl read what is there first.
  ex->timer.reset(evtimer_new(base_, &CurlBackend::onExchangeTimeout, ex.get()));
  long ms = static_cast<long>(config_.timeout.count());
  timeval tv{ms / 1000, static_cast<suseconds_t>((ms % 1000) * 1000)};
  if (!ex->timer || evtimer_add(ex->timer.get(), &tv) != 0) {
    return failBeforeSend(std::move(ex), "out of memory");
  }
  CURL* easy = ex->easy.get();
  CURLMcode mc = curl_multi_add_handle(multi_.get(), easy);
  if (mc != CURLM_OK) return failBeforeSend(std::move(ex), curl_multi_strerror(mc));
  active_.emplace(easy, std::move(ex));
}

std::string CurlBackend::configure(Exchange& ex) {
  const UpstreamRequest& req = ex.request;
  if (!isToken(req.method)) return "invalid request method";
  for (const Header& h : req.headers) {
    if (!isToken(h.name) || !isSafeFieldValue(h.value)) return "invalid request header field";
  }

  ex.url = baseUrl_;
  if (req.path_and_query.empty() || req.path_and_query.front() != '/') ex.url += '/';
  ex.url += req.path_and_query;

  // Header list: the caller's fields in order; framing (Content-Length, Expect) is curl's.
  CurlSlistPtr list;
  auto append = [&list](const std::string& line) {
    curl_slist* head = curl_slist_append(list.get(), line.c_str());
    if (!head) return false;
    (void)list.release();
    list.reset(head);
    return true;
  };
  bool ok = true;
  std::string line;
  for (const Header& h : req.headers) {
    if (isHopByHop(h.name) || iequals(h.name, "Content-Length") || iequals(h.name, "Expect")) {
      continue;
    }
    line.assign(h.name);
    if (h.value.empty()) {
      line += ';';  // curl's spelling of "send this field with an empty value"
    } else {
      line += ": ";
      line += h.value;
    }
    ok = ok && append(line);
  }
  // "Name:" tells curl not to send its own field of that name.
  ok = ok && append("Expect:");
  if (!hasHeader(req.headers, "Accept")) ok = ok && append("Accept:");
  if (!hasHeader(req.headers, "Content-Type")) ok = ok && append("Content-Type:");
  if (!ok) return "out of memory";
  ex.headerList = std::move(list);

  // Only what differs between exchanges: the handle is reused without curl_easy_reset (its
  // fixed options were set once by setConstantOptions), so every per-exchange option —
  // the method ones included — is set here each time.
  CURL* e = ex.easy.get();
  CURLcode rc = CURLE_OK;
  auto set = [&rc](CURLcode r) {
    if (rc == CURLE_OK) rc = r;
  };
  set(curl_easy_setopt(e, CURLOPT_URL, ex.url.c_str()));
  if (!config_.tls_ca_file.empty()) {
    set(curl_easy_setopt(e, CURLOPT_CAINFO, config_.tls_ca_file.c_str()));
  }
  set(curl_easy_setopt(e, CURLOPT_PRIVATE, &ex));
  set(curl_easy_setopt(e, CURLOPT_ERRORBUFFER, ex.error));
  set(curl_easy_setopt(e, CURLOPT_HTTPHEADER, ex.headerList.get()));
  set(curl_easy_setopt(e, CURLOPT_HEADERDATA, &ex));
  set(curl_easy_setopt(e, CURLOPT_WRITEDATA, &ex));
  set(curl_easy_setopt(e, CURLOPT_PREREQDATA, &ex));

  const std::string& method = req.method;
  const bool bodyMethod = method == "POST" || method == "PUT" || method == "PATCH";
  // Back to a plain GET without a custom method, whatever the previous exchange used.
  set(curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, static_cast<char*>(nullptr)));
  set(curl_easy_setopt(e, CURLOPT_HTTPGET, 1L));
  if (method == "HEAD") {
    set(curl_easy_setopt(e, CURLOPT_NOBODY, 1L));
  } else if (!req.body.empty() || bodyMethod) {
    // Binary safe; an empty POST still sends "Content-Length: 0".
    set(curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, static_cast<curl_off_t>(req.body.size())));
    set(curl_easy_setopt(e, CURLOPT_POSTFIELDS, req.body.data()));
    if (method != "POST") set(curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method.c_str()));
  } else if (method != "GET") {
    set(curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method.c_str()));
  }
  if (rc != CURLE_OK) return std::string("curl_easy_setopt: ") + curl_easy_strerror(rc);
  return {};
}

std::string CurlBackend::setConstantOptions(CURL* e) {
  CURLcode rc = CURLE_OK;
  auto set = [&rc](CURLcode r) {
    if (rc == CURLE_OK) rc = r;
  };
  set(curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L));
  set(curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https"));
  set(curl_easy_setopt(e, CURLOPT_PROXY, ""));  // ignore http_proxy & co. from the environment
  set(curl_easy_setopt(e, CURLOPT_HTTP_VERSION, static_cast<long>(CURL_HTTP_VERSION_1_1)));
  set(curl_easy_setopt(e, CURLOPT_PATH_AS_IS, 1L));  // forward the path as the client sent it
  set(curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L));
  set(curl_easy_setopt(e, CURLOPT_HTTP_CONTENT_DECODING, 0L));
  set(curl_easy_setopt(e, CURLOPT_HTTP_TRANSFER_DECODING, 1L));
  set(curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                       static_cast<long>(config_.connect_timeout.count())));
  set(curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 0L));  // the exchange's own timer: see start()
  // curl drops a connection when its idle whole seconds exceed this: idle_timeout 2 s → 1,
  // so a connection idle 2 s or more is not reused (1.9 s still is).
  const long idleSeconds = static_cast<long>(config_.idle_timeout.count() / 1000);
  set(curl_easy_setopt(e, CURLOPT_MAXAGE_CONN, std::max(0L, idleSeconds - 1)));
  set(curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, &CurlBackend::onHeader));
  set(curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &CurlBackend::onWrite));
  set(curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, &CurlBackend::onPrereq));
  if (rc != CURLE_OK) return std::string("curl_easy_setopt: ") + curl_easy_strerror(rc);
  return {};
}

void CurlBackend::failBeforeSend(std::unique_ptr<Exchange> ex, std::string detail) {
  UpstreamResult result;
  result.failure = UpstreamFailure::BeforeSend;
  result.detail = std::move(detail);
  result.latency =
      std::chrono::duration_cast<std::chrono::microseconds>(SteadyClock::now() - ex->started);
  if (ex->easy) recycle(std::move(ex->easy));
  finished_.push_back({std::move(ex->done), std::move(result)});
  scheduleDelivery();
}

void CurlBackend::recycle(CurlPtr easy) {
  if (idleEasy_.size() >= kMaxPooledEasyHandles) return;  // `easy` is cleaned up here
  // No curl_easy_reset: the fixed options stay; configure() sets the rest for the next
  // exchange. Drop the pointers into this exchange, which is about to be freed.
  curl_easy_setopt(easy.get(), CURLOPT_HTTPHEADER, static_cast<curl_slist*>(nullptr));
  curl_easy_setopt(easy.get(), CURLOPT_ERRORBUFFER, static_cast<char*>(nullptr));
  idleEasy_.push_back(std::move(easy));
}

void CurlBackend::socketAction(curl_socket_t fd, int flags) {
  int running = 0;
  curl_multi_socket_action(multi_.get(), fd, flags, &running);
  collectFinished();
}

void CurlBackend::collectFinished() {
  int left = 0;
  while (CURLMsg* msg = curl_multi_info_read(multi_.get(), &left)) {
    if (msg->msg != CURLMSG_DONE) continue;
    CURL* easy = msg->easy_handle;  // `msg` dies with curl_multi_remove_handle
    CURLcode code = msg->data.result;
    auto it = active_.find(easy);
    if (it == active_.end()) std::abort();  // a handle we never added: broken invariant
    if (it->second->streaming) {
      const char* why = it->second->error[0] != '\0' ? it->second->error : curl_easy_strerror(code);
      endTransfer(easy, code == CURLE_OK, code == CURLE_OK ? std::string() : std::string(why));
      continue;
    }
    std::unique_ptr<Exchange> ex = std::move(it->second);
    active_.erase(it);
    UpstreamResult result = complete(*ex, code);
    curl_multi_remove_handle(multi_.get(), easy);
    recycle(std::move(ex->easy));
    finished_.push_back({std::move(ex->done), std::move(result)});
  }
  if (!finished_.empty()) scheduleDelivery();
}

UpstreamResult CurlBackend::complete(Exchange& ex, CURLcode code) {
  UpstreamResult result;
  result.latency =
      std::chrono::duration_cast<std::chrono::microseconds>(SteadyClock::now() - ex.started);
  long status = 0;
  curl_easy_getinfo(ex.easy.get(), CURLINFO_RESPONSE_CODE, &status);
  if (!ex.refusal.empty()) {
    result.failure = UpstreamFailure::AfterSend;
    result.detail = ex.refusal;
    return result;
  }
  if (ex.overLimit && !ex.overLimitIsAnswer) {
    result.failure = UpstreamFailure::AfterSend;
    result.detail = "upstream response body over the upstream's max_response_body (" +
                    std::to_string(ex.bodyLimit) + " bytes)";
    return result;
  }
  if (code == CURLE_OK && status >= 200 && status <= 999) {
    HttpAnswer& answer = ex.answer;
    answer.status = static_cast<int>(status);
    bool chunked = hasHeader(answer.headers, "Transfer-Encoding");
    removeHopByHopFields(answer.headers);
    // curl decoded the transfer coding: a Content-Length next to it never described the body.
    if (chunked) {
      std::erase_if(answer.headers,
                    [](const Header& h) { return iequals(h.name, "Content-Length"); });
    }
    result.answer = std::move(answer);
    return result;
  }
  result.detail = ex.error[0] != '\0' ? std::string(ex.error) : curl_easy_strerror(code);
  if (code == CURLE_OK) result.detail = "no final status from upstream";
  long requestBytes = 0;
  curl_easy_getinfo(ex.easy.get(), CURLINFO_REQUEST_SIZE, &requestBytes);
  // The prereq callback runs after connect (and TLS handshake), right before the request is
  // written: without it nothing of the request left this process.
  const bool sent = ex.requestAttempts > 0 || requestBytes > 0;
  if (ex.resendRefused) {
    result.failure = UpstreamFailure::AfterSend;
    result.detail =
        "reused connection closed without an answer after the request was sent; "
        "not re-sending (" +
        result.detail + ")";
  } else if (!sent) {
    result.failure = UpstreamFailure::BeforeSend;
  } else if (code == CURLE_OPERATION_TIMEDOUT) {
    result.failure = UpstreamFailure::Timeout;
  } else {
    result.failure = UpstreamFailure::AfterSend;
  }
  return result;
}

int CurlBackend::onSocket(CURL*, curl_socket_t fd, int what, void* userp, void* socketp) {
  auto* self = static_cast<CurlBackend*>(userp);
  auto* watch = static_cast<SocketWatch*>(socketp);
  if (what == CURL_POLL_REMOVE) {
    self->sockets_.erase(fd);  // event_free deletes the event, even from its own callback
    return 0;
  }
  if (!watch) {
    try {
      auto owned = std::make_unique<SocketWatch>();
      owned->owner = self;
      owned->fd = fd;
      watch = owned.get();
      self->sockets_[fd] = std::move(owned);  // replaces a stale watch on a reused fd number
    } catch (...) {
      return -1;
    }
    curl_multi_assign(self->multi_.get(), fd, watch);
  }
  short kind = EV_PERSIST;
  if (what & CURL_POLL_IN) kind |= EV_READ;
  if (what & CURL_POLL_OUT) kind |= EV_WRITE;
  watch->ev.reset(event_new(self->base_, fd, kind, &CurlBackend::onEvent, watch));
  if (!watch->ev || event_add(watch->ev.get(), nullptr) != 0) return -1;
  return 0;
}

int CurlBackend::onTimer(CURLM*, long timeoutMs, void* userp) {
  auto* self = static_cast<CurlBackend*>(userp);
  if (timeoutMs < 0) {
    evtimer_del(self->timer_.get());
    return 0;
  }
  timeval tv{};
  tv.tv_sec = timeoutMs / 1000;
  tv.tv_usec = static_cast<suseconds_t>((timeoutMs % 1000) * 1000);
  return evtimer_add(self->timer_.get(), &tv) == 0 ? 0 : -1;
}

void CurlBackend::onEvent(evutil_socket_t fd, short what, void* arg) noexcept {
  CurlBackend* self = static_cast<SocketWatch*>(arg)->owner;  // the watch may die in socketAction
  int flags = 0;
  if (what & EV_READ) flags |= CURL_CSELECT_IN;
  if (what & EV_WRITE) flags |= CURL_CSELECT_OUT;
  self->socketAction(fd, flags);
}

void CurlBackend::onTimeout(evutil_socket_t, short, void* arg) noexcept {
  static_cast<CurlBackend*>(arg)->socketAction(CURL_SOCKET_TIMEOUT, 0);
}

void CurlBackend::onExchangeTimeout(evutil_socket_t, short, void* arg) noexcept {
  auto* ex = static_cast<Exchange*>(arg);
  CurlBackend* self = ex->owner;
  CURL* easy = ex->easy.get();
  if (ex->streaming) {  // streaming: `timeout` between bytes while not paused
    return self->endTransfer(easy, false,
                             "no byte of the body from upstream in " +
                                 std::to_string(self->config_.timeout.count()) + " milliseconds");
  }
  // An answer that arrived as the timer fired is taken, not timed out: let curl read every
  // socket it watches first (a socket with nothing to read costs one EAGAIN).
  std::vector<curl_socket_t> fds;
  fds.reserve(self->sockets_.size());
  for (const auto& entry : self->sockets_) fds.push_back(entry.first);
  for (curl_socket_t fd : fds) {
    self->socketAction(fd, CURL_CSELECT_IN);
    if (self->active_.find(easy) == self->active_.end()) return;  // done: `ex` is gone
  }
  self->timeOut(easy);
}

void CurlBackend::timeOut(CURL* easy) {
  auto it = active_.find(easy);
  if (it == active_.end()) std::abort();  // the timer dies with its exchange
  std::unique_ptr<Exchange> ex = std::move(it->second);
  active_.erase(it);
  UpstreamResult result = complete(*ex, CURLE_OPERATION_TIMEDOUT);
  result.detail =
      "Operation timed out after " + std::to_string(config_.timeout.count()) + " milliseconds";
  if (result.failure == UpstreamFailure::BeforeSend) result.detail += " waiting for a connection";
  curl_multi_remove_handle(multi_.get(), easy);
  recycle(std::move(ex->easy));
  finished_.push_back({std::move(ex->done), std::move(result)});
  scheduleDelivery();
}

bool CurlBackend::headAcceptable(Exchange& ex) {
  const HttpAnswer& answer = ex.answer;
  if (ex.request.method == "HEAD" || answer.status == 204 || answer.status == 304) return true;
  ex.refusal = unsupportedTransferCoding(answer.headers);
  if (!ex.refusal.empty()) return false;
  for (const Header& h : answer.headers) {
    if (!iequals(h.name, "Content-Length")) continue;
    std::string_view v = trimOws(h.value);
    size_t n = 0;
    auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec == std::errc() && p == v.data() + v.size() && n > ex.bodyLimit) {
      ex.overLimit = true;  // known from the head: not a byte of the body is buffered
      return ex.overLimitIsAnswer && ex.owner->handOver(ex);
    }
  }
  return true;
}

size_t CurlBackend::onHeader(char* data, size_t size, size_t count, void* userp) {
  auto* ex = static_cast<Exchange*>(userp);
  const size_t total = size * count;
  std::string_view line(data, total);
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  try {
    HttpAnswer& answer = ex->answer;
    if (line.starts_with("HTTP/")) {  // a new response (after a 1xx): start over
      answer.headers.clear();
      answer.status = parseStatusLine(line);
      ex->headersComplete = false;
    } else if (ex->headersComplete) {
      // trailer fields of a chunked body: not part of the recorded header block
    } else if (line.empty()) {
      ex->headersComplete = answer.status >= 200;
      if (ex->headersComplete && !headAcceptable(*ex)) return 0;  // curl stops the transfer
    } else {
      appendHeaderLine(answer.headers, line);
    }
  } catch (...) {
    return 0;  // out of memory: curl fails the transfer with CURLE_WRITE_ERROR
  }
  return total;
}

size_t CurlBackend::onWrite(char* data, size_t size, size_t count, void* userp) {
  auto* ex = static_cast<Exchange*>(userp);
  const size_t total = size * count;
  if (!ex->streaming && ex->answer.body.size() + total > ex->bodyLimit) {
    ex->overLimit = true;
    // Past an upstream's cap: curl stops the transfer (CURLE_WRITE_ERROR), the connection is
    // closed. Past a route's limit: the rest is streamed, starting with this piece.
    if (!ex->overLimitIsAnswer || !ex->owner->handOver(*ex)) return 0;
  }
  if (ex->streaming) {
    Stream* s = ex->stream;
    // One piece waits at a time; curl keeps the next one (and stops reading) until asked.
    if (s == nullptr || !s->started || s->paused || !ex->piece.empty()) {
      ex->curlPaused = true;
      return CURL_WRITEFUNC_PAUSE;
    }
    try {
      ex->piece.assign(data, total);
    } catch (...) {
      return 0;
    }
    event_active(ex->kick.get(), EV_TIMEOUT, 0);
    return total;
  }
  try {
    ex->answer.body.append(data, total);
  } catch (...) {
    return 0;
  }
  return total;
}

CurlBackend::Exchange::~Exchange() {
  if (stream != nullptr) stream->ex = nullptr;  // the backend is going: the stream ends mute
}

bool CurlBackend::handOver(Exchange& ex) {
  // Inside a curl callback: the result is queued for the delivery event, nothing is called.
  try {
    ex.kick.reset(event_new(base_, -1, 0, &CurlBackend::onStreamKick, &ex));
    if (!ex.kick) return false;
    UpstreamResult result;
    result.latency = since(ex.started);
    result.answer = std::move(ex.answer);
    const bool chunked = hasHeader(result.answer.headers, "Transfer-Encoding");
    removeHopByHopFields(result.answer.headers);
    if (chunked) {
      std::erase_if(result.answer.headers,
                    [](const Header& h) { return iequals(h.name, "Content-Length"); });
    }
    auto stream = std::make_unique<Stream>();
    stream->owner = this;
    stream->ex = &ex;
    ex.stream = stream.get();
    result.body_over_limit = true;
    result.rest = std::move(stream);
    ex.streaming = true;
    evtimer_del(ex.timer.get());  // nothing is read until the stream starts
    finished_.push_back({std::move(ex.done), std::move(result)});
    scheduleDelivery();
    return true;
  } catch (...) {
    return false;
  }
}

void CurlBackend::endTransfer(CURL* easy, bool complete, std::string detail) {
  auto it = active_.find(easy);
  if (it == active_.end()) std::abort();  // a streamed exchange stays active until it ends
  std::unique_ptr<Exchange> ex = std::move(it->second);
  active_.erase(it);
  curl_multi_remove_handle(multi_.get(), easy);  // mid-body: curl closes the connection
  recycle(std::move(ex->easy));
  evtimer_del(ex->timer.get());
  ex->ended = true;
  ex->endComplete = complete;
  ex->endDetail = std::move(detail);
  Exchange* raw = ex.get();
  if (raw->stream != nullptr) {
    raw->stream->owned = std::move(ex);
    raw->stream->kick();
  }
}

CurlBackend::Stream::~Stream() {
  alive.reset();
  if (ex == nullptr || ex->ended) return;  // `owned` (if any) dies with us
  // Abandoned mid-body: curl lets go of the handle and closes the connection.
  ex->stream = nullptr;
  CURL* easy = ex->easy.get();
  auto it = owner->active_.find(easy);
  if (it == owner->active_.end()) std::abort();
  std::unique_ptr<Exchange> dead = std::move(it->second);
  owner->active_.erase(it);
  curl_multi_remove_handle(owner->multi_.get(), easy);
  owner->recycle(std::move(dead->easy));
}

void CurlBackend::Stream::stopReading() {
  // The next piece curl offers is refused (CURL_WRITEFUNC_PAUSE): curl stops reading.
  if (ex != nullptr && ex->timer) evtimer_del(ex->timer.get());
}

void CurlBackend::Stream::kick() {
  if (ex != nullptr && started && !paused) event_active(ex->kick.get(), EV_TIMEOUT, 0);
}

void CurlBackend::onStreamKick(evutil_socket_t, short, void* arg) noexcept {
  auto* ex = static_cast<Exchange*>(arg);
  Stream* s = ex->stream;
  if (s == nullptr || !s->started || s->paused) return;
  std::weak_ptr<bool> alive = s->alive;
  if (!ex->piece.empty()) {
    std::string piece;
    piece.swap(ex->piece);
    UpstreamBody::DataFn data = s->data;  // a copy: the consumer may destroy `s` (and `ex`) inside
    data(piece);
    if (alive.expired()) return;  // the consumer dropped the stream (and the exchange)
    piece.clear();
    ex->piece.swap(piece);  // keeps the capacity for the next piece
  }
  if (ex->ended) {
    UpstreamBody::EndFn end = std::move(s->end);
    const bool complete = ex->endComplete;
    const std::string detail = std::move(ex->endDetail);
    end(complete, detail);  // may destroy `s` and, with it, `ex`
    return;
  }
  if (s->paused) return;
  // Waiting for the upstream: at most `timeout` between bytes.
  CurlBackend* self = ex->owner;
  long ms = static_cast<long>(self->config_.timeout.count());
  timeval tv{ms / 1000, static_cast<suseconds_t>((ms % 1000) * 1000)};
  evtimer_add(ex->timer.get(), &tv);
  if (ex->curlPaused) {
    // May call onWrite at once with what curl kept (a new piece, and another kick); curl then
    // asks for a 0 ms timer to carry on reading.
    ex->curlPaused = false;
    curl_easy_pause(ex->easy.get(), CURLPAUSE_CONT);
  }
}

int CurlBackend::onPrereq(void* userp, char*, char*, int, int) {
  auto* ex = static_cast<Exchange*>(userp);
  // A second call means curl is about to re-send the request on a fresh connection after a
  // reused one closed without answering. The upstream may have acted on the first copy.
  if (++ex->requestAttempts > 1) {
    ex->resendRefused = true;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
}

}  // namespace

PooledUpstream::PooledUpstream(event_base* base, const UpstreamConfig& config,
                               unsigned connectionLimit, UpstreamBackend backend) {
  const UpstreamClient client =
      backend == UpstreamBackend::Curl ? UpstreamClient::Curl : config.client;
  if (client != UpstreamClient::Curl) impl_ = makeHttp1Backend(base, config, connectionLimit);
  if (client == UpstreamClient::Builtin && !impl_) {
    // `check` refuses this combination; a hand-built configuration may still ask for it.
    throw std::runtime_error("upstream '" + config.name + "': the built-in client cannot reach " +
                             config.url);
  }
  if (!impl_) impl_ = std::make_unique<CurlBackend>(base, config, connectionLimit);
}

PooledUpstream::~PooledUpstream() = default;

void PooledUpstream::send(UpstreamRequest request, std::function<void(UpstreamResult)> done) {
  impl_->start(std::move(request), std::move(done));
}

size_t PooledUpstream::inFlight() const {
  return impl_->inFlight();
}

const char* PooledUpstream::backendName() const {
  return impl_->name();
}

const UpstreamConfig& PooledUpstream::config() const {
  return impl_->config_;
}

}  // namespace idem
