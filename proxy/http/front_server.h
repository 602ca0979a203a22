#pragma once
// The data plane's front door: a lean, strict HTTP/1.1 server on one libevent loop.
//
// It accepts on a shared listening socket, parses each request with libhttp-parser (plus the
// checks that parser does not make itself, see connection.cpp) and hands every complete request
// to the handler as a Downstream. Ambiguous framing is refused with a 400 problem and the
// connection is closed (RFC 9112 §6.3, §5.1); a body over max_request_body gets a 413 problem
// as soon as it is known to be too large (at the head when Content-Length says so, also under
// `Expect: 100-continue`). Keep-alive and pipelining work: requests on one connection are
// answered in order, and the next one is parsed only once the previous answer is written (or
// buffered: at most one answer per connection is held in memory).
//
// Memory per connection is bounded whatever a peer sends: the input buffer never grows past
// max_head + 16 KiB, the body past max_request_body, the output past one answer.
//
// Threading: everything runs on the loop of `base`, including the Downstream calls. A
// Downstream may outlive its connection and the server: its calls are then no-ops and its views
// stay valid until it is destroyed.
#include <event2/event.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>

#include "base/c_handles.h"
#include "config/config.h"
#include "request/downstream.h"
#include "request/observer.h"

namespace idem {

struct FrontLimits {
  // Request line plus header section (leading empty lines included). Over it: 400.
  // libhttp-parser refuses past 80 KiB itself (its process-wide default), so larger values
  // have no effect.
  size_t max_head = 64 * 1024;
  // Header fields per request (RFC 9110 sets no limit; 100 is nginx's and Envoy's default
  // order of magnitude and far above what payment clients send). Over it: 400.
  size_t max_fields = 100;
  // De-chunked or declared body size (server.max_request_body). Over it: 413.
  uint64_t max_request_body = 1024 * 1024;
  // One deadline for a whole request, from its first byte to its last: not extended by reads
  // (a slowloris client is cut off at it). Also the deadline for writing one answer.
  std::chrono::milliseconds client_timeout{30000};
  // How long a keep-alive connection may sit idle between requests.
  std::chrono::milliseconds idle_timeout{30000};
  // Bytes of chunk framing between two pieces of chunk data: a chunk-size line with its
  // extensions, or the trailer section. Over it: 400.
  size_t max_chunk_line = 4096;
  // The shape of the server's own refusals (server.error_body); absent: problem+json.
  ErrorBodyPtr error_body;
};

// What the server counts for the metrics (called on the loop thread; keep them cheap).
struct FrontCounters {
  std::function<void(FrontRefusal)> refused;
  std::function<void(int delta)> connections;  // +1 accepted, -1 closed
};

class FrontConnection;

class FrontServer {
 public:
  using Handler = std::function<void(std::unique_ptr<Downstream>)>;
  // Operational events worth a log line, e.g. ("accept-failed", "Too many open files"). They
  // are rate-limited here; the wiring writes them as JSON.
  using EventSink = std::function<void(std::string_view name, std::string_view detail)>;

  // `listenFd` is non-blocking, may be shared with other loops, and is not owned.
  FrontServer(event_base* base, int listenFd, FrontLimits limits, Handler onRequest,
              EventSink onEvent = {});
  ~FrontServer();
  FrontServer(const FrontServer&) = delete;
  FrontServer& operator=(const FrontServer&) = delete;

  // Stop watching the listening socket (for good). Connections already open carry on.
  void stopAccepting();
  // Drain: from now on every answer carries `Connection: close` and its connection closes
  // after it; connections with no request in progress are closed now.
  void closeIdleAndFinish();
  bool draining() const { return draining_; }
  // A reload: requests whose head is read from now on get the new limit.
  void setMaxRequestBody(uint64_t bytes) { limits_.max_request_body = bytes; }
  void setErrorBody(ErrorBodyPtr body) { limits_.error_body = std::move(body); }
  // Before the loop runs: where refusals and connection counts go.
  void setCounters(FrontCounters counters) { counters_ = std::move(counters); }
  // Connections open now (idle, reading, waiting for their answer or writing it).
  size_t openConnections() const { return open_; }
  // Times accept() failed for want of descriptors or memory and the server backed off.
  uint64_t acceptBackoffs() const { return accept_backoffs_; }

  // ---- For connections (loop thread only) ----
  const FrontLimits& limits() const { return limits_; }
  event_base* base() const { return base_; }
  void dispatch(std::unique_ptr<Downstream> request);
  void connectionClosed(FrontConnection* conn);
  void refused(FrontRefusal why) {
    if (counters_.refused) counters_.refused(why);
  }
  // "Sun, 06 Nov 1994 08:49:37 GMT", formatted at most once per second.
  std::string_view httpDate();

 private:
  static void onAccept(evutil_socket_t fd, short, void* arg);
  static void onBackoffOver(evutil_socket_t, short, void* arg);
  void acceptFailed(int err);

  event_base* base_;
  int listen_fd_;
  FrontLimits limits_;
  Handler on_request_;
  EventSink on_event_;
  FrontCounters counters_;
  EventPtr accept_event_;
  EventPtr backoff_timer_;
  bool accepting_ = true;
  bool draining_ = false;
  size_t open_ = 0;
  // Every open connection: an intrusive list, so closing one is O(1) and allocation-free.
  FrontConnection* first_ = nullptr;
  std::chrono::steady_clock::time_point last_accept_event_{};
  uint64_t accept_failures_ = 0;  // since the last accept-failed event
  uint64_t accept_backoffs_ = 0;
  int64_t date_second_ = -1;
  char date_[32] = {};
  size_t date_len_ = 0;

  friend class FrontConnection;
};

}  // namespace idem
