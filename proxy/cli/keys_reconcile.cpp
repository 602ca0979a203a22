// `idemproxy keys reconcile`: settle one uncertain outcome from the command line (SPEC §1.6),
// with the same store operations and lookup rules as the daemon, so it is safe while the daemon
// runs: the claim keeps it to one lookup per key across every process.
//
// found     → that answer becomes the key's outcome (replayed to the next retry);
// not found → the record is deleted: the next retry with the key is forwarded;
// otherwise → the record stays as it was.
// Exit 0 when the outcome was settled (found or not found), 1 otherwise.
#include <unistd.h>

#include <cstdio>
#include <random>

#include "base/c_handles.h"
#include "base/digest.h"
#include "cli/cli.h"
#include "config/config.h"
#include "request/reconcile.h"
#include "store/store.h"
#include "upstream/upstream.h"

namespace idem {

namespace {

std::string cliClaimer() {
  std::random_device rd;
  char nonce[9];
  std::snprintf(nonce, sizeof nonce, "%08x", rd());
  return "cli:" + std::to_string(getpid()) + ":" + nonce;
}

// One exchange on a private loop; blocking (the command line).
UpstreamResult sendOnce(const UpstreamConfig& uc, UpstreamRequest req) {
  upstreamGlobalInit();
  EventBasePtr base(event_base_new());
  UpstreamResult out;
  bool done = false;
  {
    PooledUpstream upstream(base.get(), uc, 1);
    upstream.send(std::move(req), [&](UpstreamResult r) {
      out = std::move(r);
      done = true;
      event_base_loopbreak(base.get());
    });
    while (!done && event_base_loop(base.get(), EVLOOP_ONCE) == 0) {
    }
  }
  if (!done) {
    out.failure = UpstreamFailure::BeforeSend;
    out.detail = "the lookup did not complete";
  }
  return out;
}

void print(const char* result, int status, const std::string& detail) {
  std::printf("{\"result\": \"%s\"", result);
  if (status != 0) std::printf(", \"status\": %d", status);
  if (!detail.empty()) {
    CJsonPtr s(cJSON_CreateString(detail.c_str()));
    CJsonString text(cJSON_PrintUnformatted(s.get()));
    std::printf(", \"detail\": %s", text.get());
  }
  std::printf("}\n");
}

}  // namespace

int keysReconcile(const Config& cfg, const RouteConfig& route, Store& store, const std::string& key,
                  const std::vector<std::string>& scope) {
  const IdempotencyConfig& ic = *route.idempotency;
  if (!ic.reconcile) {
    std::fprintf(stderr, "idemproxy: route '%s' has no reconcile lookup\n", route.name.c_str());
    return kExitFailure;
  }
  const RecordId id = recordId(route.name, scope, key);
  const std::string claimer = cliClaimer();
  ClaimRequest cr;
  cr.id = id;
  cr.claimer = claimer;
  cr.lease_ms = ic.lease.count();
  ClaimResult claim = claimReconcileSync(store, std::move(cr));
  if (claim.error != StoreError::None) {
    std::fprintf(stderr, "idemproxy: the store failed: %s\n", toString(claim.error));
    return kExitFailure;
  }
  switch (claim.status) {
    case ClaimStatus::Claimed:
      break;
    case ClaimStatus::Missing:
      std::fprintf(stderr, "idemproxy: no record for that route, key and scope\n");
      return kExitFailure;
    case ClaimStatus::NotUncertain:
      std::fprintf(stderr, "idemproxy: the key's outcome is not uncertain (%s, status %d)\n",
                   claim.record.state == RecordState::InFlight ? "in flight" : "completed",
                   claim.record.answer.status);
      return kExitFailure;
    case ClaimStatus::Busy:
      std::fprintf(stderr, "idemproxy: another reconcile lookup of this key is running\n");
      return kExitFailure;
  }
  SettleRequest sr;
  sr.id = id;
  sr.claimer = claimer;
  sr.kind = SettleKind::Unsettled;
  std::string missing;
  auto lookup = buildLookup(ic, key, claim.record.lookup, scope, "", missing);
  LookupVerdict verdict = LookupVerdict::Skipped;
  UpstreamResult answer;
  if (!lookup) {
    std::fprintf(stderr, "idemproxy: the record keeps no value for {%s}\n", missing.c_str());
  } else {
    answer = sendOnce(cfg.upstreams.at(route.upstream), std::move(*lookup));
    if (answer.failure == UpstreamFailure::None &&
        (answer.answer.status < 100 || answer.answer.status > 599)) {
      answer.failure = UpstreamFailure::AfterSend;
    }
    verdict = classifyLookup(*ic.reconcile, answer);
    if (verdict == LookupVerdict::Found) {
      sr.kind = SettleKind::Found;
      sr.answer = recordableAnswer(ic, answer.answer, false);
    } else if (verdict == LookupVerdict::NotFound) {
      sr.kind = SettleKind::NotFound;  // no owner: the record is deleted
    }
  }
  SettleResult settled = settleReconcileSync(store, std::move(sr));
  if (settled.error != StoreError::None) {
    std::fprintf(stderr, "idemproxy: the store failed: %s\n", toString(settled.error));
    return kExitFailure;
  }
  if (settled.status == SettleStatus::Lost) {
    std::fprintf(stderr, "idemproxy: the key was settled or changed meanwhile; nothing written\n");
    return kExitFailure;
  }
  print(toString(verdict), answer.failure == UpstreamFailure::None ? answer.answer.status : 0,
        answer.failure == UpstreamFailure::None ? std::string() : answer.detail);
  return verdict == LookupVerdict::Found || verdict == LookupVerdict::NotFound ? kExitOk
                                                                               : kExitFailure;
}

}  // namespace idem
