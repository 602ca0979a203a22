#pragma once
// Internal to upstream*.cpp: the backend interface behind Upstream, what both backends share
// (deferred delivery of `done`, field validation, status-line and URL helpers), and the
// factory of the built-in HTTP/1.1 backend.
#include <event2/event.h>

#include <chrono>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "base/c_handles.h"
#include "upstream/upstream.h"

namespace idem {

// One backend per Upstream: libcurl (https://, http:// to a host name) or the built-in
// HTTP/1.1 client (http:// to an IP literal). Both deliver results through finish(), which
// runs `done` from the delivery event, never inside send() or a socket callback.
struct PooledUpstream::Impl {
  Impl(event_base* base, const UpstreamConfig& config);
  virtual ~Impl();
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;

  virtual void start(UpstreamRequest request, std::function<void(UpstreamResult)> done) = 0;
  // Exchanges started and not yet in `finished_`.
  virtual size_t active() const = 0;
  virtual const char* name() const = 0;

  size_t inFlight() const { return active() + finished_.size(); }
  void scheduleDelivery();

  struct Finished {
    std::function<void(UpstreamResult)> done;
    UpstreamResult result;
  };

  // noexcept: an exception here (only bad_alloc is possible) must not unwind through
  // libevent; it terminates instead, like any other broken invariant.
  static void onDeliver(evutil_socket_t fd, short what, void* arg) noexcept;

  event_base* base_;
  UpstreamConfig config_;
  EventPtr deliver_;
  std::deque<Finished> finished_;
  // Expires when the Impl dies, so onDeliver notices a callback that destroyed the Upstream.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

namespace upstream_detail {

using SteadyClock = std::chrono::steady_clock;

// What both clients' streamed rests (UpstreamBody) share: the consumer's callbacks, whether it
// takes pieces now, and a token that dies with the rest (a backend checks it after calling the
// consumer, who may have dropped the rest). The backend supplies the wake-up and the stop.
struct StreamedRest : UpstreamBody {
  DataFn data;
  EndFn end;
  bool started = false;
  bool paused = false;
  std::shared_ptr<bool> alive = std::make_shared<bool>(true);

  void start(DataFn d, EndFn e) final {
    data = std::move(d);
    end = std::move(e);
    started = true;
    kick();
  }
  void pause() final {
    paused = true;
    stopReading();
  }
  void resume() final {
    paused = false;
    kick();
  }
  // Schedules the backend's delivery event when started and not paused.
  virtual void kick() = 0;
  // Nothing is read from the upstream (and its `timeout` does not run) until kick().
  virtual void stopReading() = 0;
};

std::string_view trimOws(std::string_view s);
// Adds one response header line (without CRLF) to `headers`: "name: value", or an obs-fold
// continuation of the previous field (RFC 9112 §5.2); anything else is ignored.
void appendHeaderLine(Headers& headers, std::string_view line);
bool isToken(std::string_view s);
// A value that cannot smuggle a line break into the request head.
bool isSafeFieldValue(std::string_view v);
bool hasHeader(const Headers& headers, std::string_view name);
// Parses "HTTP/1.1 200 Reason" → 200, or 0 when malformed.
int parseStatusLine(std::string_view line);
// "" when `headers` have no Transfer-Encoding or a lone "chunked" (the only coding this proxy
// reads); otherwise why the answer is refused. Any other coding ("gzip, chunked") would reach
// the client and the record still encoded, its label dropped as a hop-by-hop field.
std::string unsupportedTransferCoding(const Headers& headers);
// The upstream URL without trailing slashes, so "/prefix/" + "/v1" does not double the slash.
std::string baseUrlOf(const std::string& url);

inline std::chrono::microseconds since(SteadyClock::time_point start) {
  return std::chrono::duration_cast<std::chrono::microseconds>(SteadyClock::now() - start);
}

// The HTTP/1.1 backend for `config.url`, or nullptr when it does not apply (not http://, or
// the host is not an IP literal: names are resolved by curl, off the loop).
std::unique_ptr<PooledUpstream::Impl> makeHttp1Backend(event_base* base,
                                                       const UpstreamConfig& config,
                                                       unsigned connectionLimit);

}  // namespace upstream_detail
}  // namespace idem
