#pragma once
// Forwarding with libcurl's multi interface driven by a libevent loop (one Upstream per
// upstream per worker). Knows nothing of keys or the store.
#include <event2/event.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "config.h"
#include "http_types.h"

namespace idem {

struct UpstreamRequest {
  std::string method;
  std::string path_and_query;  // as the client sent it, e.g. "/v1/payments/1?x=y"
  Headers headers;             // already filtered: no hop-by-hop fields; Host kept; X-F-* added
  std::string body;
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
  std::string detail;         // curl's message, for logs only
  HttpAnswer answer;          // when failure == None; hop-by-hop fields already removed
  std::chrono::microseconds latency{0};
};

class Upstream {
 public:
  // `base` must outlive the Upstream. The multi handle's sockets and timer live on `base`.
  Upstream(event_base* base, const UpstreamConfig& config, unsigned connectionLimit);
  ~Upstream();
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  // Starts the exchange; `done` runs later on the base's thread (never from inside send()).
  // The exchange runs to its end even if the caller's client is gone.
  void send(UpstreamRequest request, std::function<void(UpstreamResult)> done);
  size_t inFlight() const;
  const UpstreamConfig& config() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// RFC 9110 §7.6.1 hop-by-hop fields (plus the ones named in a Connection header are handled
// by the caller). Case-insensitive.
bool isHopByHop(std::string_view name);

// Call once per process before any thread starts.
void upstreamGlobalInit();

}  // namespace idem
