#pragma once
// Reconcile lookups (SPEC §1.6): which values a record keeps for its route's lookup, how the
// lookup is built from them, and what its answer means. Pure functions: the request core and
// `idemproxy keys reconcile` share them.
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/function_ref.h"
#include "config/config.h"
#include "request/idempotency.h"
#include "upstream/upstream.h"

namespace idem {

// What a record keeps for the lookup: (LookupPart::valueName(), value) pairs for every
// {header:Name} and {json:/pointer} placeholder of `rc` that the request has a value for. A
// header's value is its first field's, without surrounding spaces; a body member must be a
// string or an integer (as its decimal text). Values are 1–1024 bytes; others are not kept.
std::vector<std::string> lookupValues(const ReconcileConfig& rc,
                                      FunctionRef<void(HeaderVisitor)> forEachHeader,
                                      std::string_view body);

// The lookup for a record of key `key` whose kept values are `values`: method and
// path_and_query (each value percent-encoded except RFC 3986 unreserved characters), headers:
// the route's scope headers with `scope` (the values of the retrying request, or those given
// on the command line; empty ones left out) and `host` when not empty. Nothing when a value
// the path needs was not kept (`missing` names it).
std::optional<UpstreamRequest> buildLookup(const IdempotencyConfig& ic, std::string_view key,
                                           const std::vector<std::string>& values,
                                           const std::vector<std::string>& scope,
                                           std::string_view host, std::string& missing);

// What a lookup's result says. Also the `result` label of idemproxy_reconcile_total.
enum class LookupVerdict {
  Found,     // a status in `found`: the payment happened
  NotFound,  // a status in `not_found`: it did not
  Other,     // another status: nothing learned
  Failed,    // the lookup failed (not reached, timed out, reset, answer over the limit)
  Skipped,   // the lookup could not be built or the claim could not be taken (store error)
};
const char* toString(LookupVerdict v);

// What a record keeps of an answer (SPEC §2): without hop-by-hop fields, Date, the route's
// replay_drop_headers, and Content-Length unless the request was a HEAD.
HttpAnswer recordableAnswer(const IdempotencyConfig& ic, const HttpAnswer& answer, bool head);
LookupVerdict classifyLookup(const ReconcileConfig& rc, const UpstreamResult& result);

}  // namespace idem
