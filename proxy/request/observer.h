#pragma once
// The telemetry seam: the request core reports what happened; the wiring (metrics, logs)
// listens. Neither side knows the other.
#include <chrono>
#include <string_view>

namespace idem {

// What happened to a request, for metrics (SPEC §7 outcome label).
enum class Outcome {
  Forwarded,
  Replayed,
  Conflict,
  Mismatch,
  Invalid,
  Passthrough,
  Released,
  Error
};
const char* toString(Outcome o);

// Requests the HTTP server answers or drops itself, before any handler sees them
// (idemproxy_front_refusals_total's reason label).
enum class FrontRefusal {
  Malformed,      // 400 bad-request: faulty framing, the head or field limits
  TooLarge,       // 413 request-too-large
  Timeout,        // 408 request-timeout: started but not received within client_timeout
  AnswerTimeout,  // the client did not take its answer within client_timeout: closed
};
const char* toString(FrontRefusal r);

struct RequestReport {
  std::string_view route;  // "" when no route matched
  std::string_view method;
  std::string_view path;
  int status = 0;
  Outcome outcome = Outcome::Error;
  double duration_ms = 0;
  // The raw key ("" when none): an observer that logs it must hash it (keyHashForLog), so
  // the hash is only computed when a log line is actually written.
  std::string_view key;
  std::string_view detail;  // short reason for errors, never a body or secret
};

// Telemetry seam: the server reports, the wiring (metrics, logs) listens. Called on worker
// threads; implementations must be thread-safe and cheap.
class ProxyObserver {
 public:
  virtual ~ProxyObserver() = default;
  virtual void requestDone(const RequestReport& report) = 0;
  virtual void upstreamDone(std::string_view upstream, std::chrono::microseconds latency,
                            bool failed) = 0;
  virtual void event(std::string_view name, std::string_view route, std::string_view detail) = 0;
  // A request waiting for a key's owner looked at the store again, because: "owner" (the owner
  // in this process finished), "notify" (the store reported an owner elsewhere settled the key)
  // or "poll" (its poll interval passed).
  virtual void waitWoken(std::string_view /*how*/) {}
  // A reconcile lookup (SPEC §1.6) ended: `result` is found, not_found, other, failed or
  // skipped (request/reconcile.h LookupVerdict).
  virtual void reconcileDone(std::string_view route, std::string_view result) {
    (void)route;
    (void)result;
  }
  // The HTTP server answered or dropped a request itself.
  virtual void frontRefused(FrontRefusal /*why*/) {}
  // Client connections opened (+1) or closed (-1).
  virtual void frontConnections(int /*delta*/) {}
};

}  // namespace idem
