#pragma once
// Forwarding to one upstream from a libevent loop (one Upstream per upstream per worker),
// through the client its configuration names (`client`: the built-in HTTP/1.1 client, for
// http:// at an IP literal, or libcurl's multi interface, for anything). Knows nothing of keys
// or the store.
#include <event2/event.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/http_types.h"
#include "config/config.h"

namespace idem {

struct UpstreamRequest {
  std::string method;
  std::string path_and_query;  // as the client sent it, e.g. "/v1/payments/1?x=y"
  Headers headers;             // already filtered: no hop-by-hop fields; Host kept; X-F-* added
  std::string body;
  // 0: the body of the answer may be as large as the upstream's `max_response_body`; past it
  // the exchange fails as AfterSend (a pass-through answer is never buffered without bound).
  // Otherwise (an idempotent route's `max_response_body`): past this many body bytes the
  // client stops buffering and hands the rest over as a stream (UpstreamResult::rest).
  size_t max_response_body = 0;
};

// The rest of an answer whose body passed the request's `max_response_body`, read from the
// upstream only as fast as it is taken (memory stays bounded however large the body is).
// Nothing is read until start(); the connection it reads from is never pooled again.
class UpstreamBody {
 public:
  // Abandons what is not read yet: the connection is closed (never pooled mid-body). May be
  // called from inside `data` or `end`.
  virtual ~UpstreamBody() = default;
  using DataFn = std::function<void(std::string_view piece)>;
  // complete: the body ended as its framing says; otherwise `detail` says why it was cut
  // short (reset, malformed framing, or `timeout` passed without a byte while not paused).
  using EndFn = std::function<void(bool complete, std::string_view detail)>;
  // Delivers each piece of the body as it is read, then `end` once. The callbacks run on the
  // loop's thread from the backend's own events, never inside start(), pause() or resume(),
  // and may call pause() or destroy this object. Called once.
  virtual void start(DataFn data, EndFn end) = 0;
  // No `data` call follows pause() until resume(): the upstream is not read meanwhile (its
  // `timeout` does not run either).
  virtual void pause() = 0;
  virtual void resume() = 0;
};

// How an exchange failed, typed so the caller never compares strings.
enum class UpstreamFailure {
  None,        // a complete answer arrived
  BeforeSend,  // nothing was sent: refused, not resolved, connect timeout → safe to retry
  Timeout,     // sent, no complete answer within `timeout`
  AfterSend,   // sent, then reset / malformed reply
};

struct UpstreamResult {
  UpstreamFailure failure = UpstreamFailure::None;
  std::string detail;  // curl's message, for logs only
  HttpAnswer answer;   // when failure == None; hop-by-hop fields already removed
  // failure == None: the body passed the request's `max_response_body`. The status and
  // fields are the upstream's; `answer.body` holds the part read so far (at most the limit)
  // and `rest` the remainder, unread until started. The framing's Content-Length (when the
  // upstream sent one and no transfer coding) stays in the fields. The head arrived, so the
  // request took effect.
  bool body_over_limit = false;
  std::unique_ptr<UpstreamBody> rest;  // set exactly when body_over_limit
  std::chrono::microseconds latency{0};
};

// Pooled connections idle longer than the upstream's `idle_timeout` (default 2 s) are not
// reused but closed. Neither backend ever
// sends a request twice: libcurl 7.88 silently re-sends a request (any method, body included)
// on a fresh connection when a *reused* one yields no response byte at all; Upstream refuses
// that re-send (the exchange fails as AfterSend instead), and the built-in client never
// retries. So a stale pooled connection costs a failed exchange. Keeping this shorter than
// common backend keep-alive timeouts (Node 5s, Apache 5s, gunicorn 2s, nginx 75s) makes that
// race rare; the built-in client also drops an idle connection as soon as the upstream
// closes it, and checks it (recv MSG_PEEK) before reuse. libcurl counts idle age in whole
// seconds: it is given idle_timeout rounded down to a second, less one, so that it never
// keeps a connection longer than asked (an idle_timeout under 2 s means "under 1 s" there).

// Which client an Upstream uses. Auto: the configuration's `client` (UpstreamClient::Auto: the
// built-in HTTP/1.1 client for http:// URLs whose host is an IP literal, libcurl otherwise).
// Curl forces libcurl (tests compare the two).
enum class UpstreamBackend { Auto, Curl };

// One upstream as the request core sees it: start an exchange, get one result later. The
// core is unit-tested against fakes of this; PooledUpstream is the real one.
class Upstream {
 public:
  virtual ~Upstream() = default;
  // Starts the exchange; `done` runs later on the loop's thread (never from inside send()),
  // from its own event callback, never from inside a libcurl call or a socket callback. It
  // must not throw (it runs in a noexcept context: an escaping exception terminates the
  // process). It may call send() or destroy this Upstream.
  // The exchange runs to its end even if the caller's client is gone.
  // Destroying the Upstream abandons in-flight exchanges: their `done` is never called.
  // Framing is the backend's: Content-Length and Expect in `request.headers` are not forwarded
  // (Content-Length is written from the body); hop-by-hop fields are dropped too. A method that
  // is not a token, or a header name/value with CR, LF or NUL fails the exchange as BeforeSend.
  virtual void send(UpstreamRequest request, std::function<void(UpstreamResult)> done) = 0;
  // Exchanges started whose `done` has not run yet.
  virtual size_t inFlight() const = 0;
  virtual const UpstreamConfig& config() const = 0;
};

// The real Upstream: pooled keep-alive connections on one libevent loop (one per upstream per
// worker), through the built-in HTTP/1.1 client or libcurl's multi interface.
class PooledUpstream final : public Upstream {
 public:
  // `base` must outlive the Upstream. Its sockets and timers live on `base`. Throws when the
  // configuration asks for the built-in client where it cannot go (https, a host name).
  PooledUpstream(event_base* base, const UpstreamConfig& config, unsigned connectionLimit,
                 UpstreamBackend backend = UpstreamBackend::Auto);
  ~PooledUpstream() override;
  PooledUpstream(const PooledUpstream&) = delete;
  PooledUpstream& operator=(const PooledUpstream&) = delete;

  void send(UpstreamRequest request, std::function<void(UpstreamResult)> done) override;
  size_t inFlight() const override;
  const UpstreamConfig& config() const override;
  // "http1" (the built-in client) or "curl".
  const char* backendName() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// RFC 9110 §7.6.1 hop-by-hop fields: Connection, Keep-Alive, Proxy-Connection, TE, Trailer,
// Transfer-Encoding, Upgrade, Proxy-Authenticate, Proxy-Authorization. Case-insensitive.
// (Fields named in a Connection header are hop-by-hop too: see removeHopByHopFields.)
bool isHopByHop(std::string_view name);

// Removes every isHopByHop field and every field named in a Connection header value, keeping
// the order of the rest. For request and response headers alike.
void removeHopByHopFields(Headers& headers);

// Call once per process before any thread starts.
void upstreamGlobalInit();

}  // namespace idem
