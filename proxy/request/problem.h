#pragma once
// RFC 9457 problem responses the proxy writes itself (SPEC §4).
#include <string>
#include <string_view>

#include "base/http_types.h"
#include "config/config.h"

namespace idem {

enum class Problem {
  KeyMissing,             // 400 idempotency-key-missing
  KeyInvalid,             // 400 idempotency-key-invalid
  ScopeMissing,           // 400 idempotency-scope-missing
  NoRoute,                // 404 no-route
  KeyInUse,               // 409 idempotency-key-in-use
  RequestTimeout,         // 408 request-timeout (the request was not received in time)
  RequestTooLarge,        // 413 request-too-large
  KeyMismatch,            // 422 idempotency-key-mismatch
  UpstreamUnavailable,    // 502 upstream-unavailable
  UpstreamFailed,         // 502 upstream-failed
  OutcomeUnknown,         // 502 outcome-unknown
  ResponseNotReplayable,  // 502 response-not-replayable
  StoreUnavailable,       // 503 store-unavailable
  UpstreamTimeout,        // 504 upstream-timeout
  BadRequest,             // 400 bad-request (malformed request the HTTP layer accepted)
  Internal,               // 500 internal-error (a broken invariant caught; logged)
};

int problemStatus(Problem p);
const char* problemSlug(Problem p);
const char* problemTitle(Problem p);

// `{"type":"urn:idemproxy:problem:<slug>","title":…,"status":…,"detail":…}` with
// Content-Type application/problem+json. `detail` must never carry a request body or secret.
// With `shape`, the body is its template filled in instead, under its content type (status and
// the caller's other fields unchanged).
HttpAnswer problemAnswer(Problem p, std::string_view detail, const ErrorBody* shape = nullptr);

// The outcome-unknown answer that every reservation carries (recorded if its lease is
// abandoned). It is the same for every request of a route with a given error shape, so it is
// built once per thread and shape (compared by content, so a reload that changes the shape
// rebuilds it) rather than formatted for each new key: that was 16 of a new key's 85 heap
// allocations. The reference is valid until the next call on the same thread.
const HttpAnswer& abandonedAnswer(const ErrorBody* shape);

}  // namespace idem
