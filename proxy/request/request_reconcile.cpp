// ProxyRequest: settling an uncertain outcome with the route's reconcile lookup (SPEC §1.6).
//
//   startReconcile ─► Store::claimReconcile (one lookup per key, across processes)
//     ├─ Claimed ─► the lookup through the route's upstream ─► Store::settleReconcile
//     │              ├─ found     → that answer is the outcome (durable) → replayed
//     │              ├─ not found → the record is our fresh reservation → forwarded
//     │              └─ other, failed → claim dropped → the uncertain record replayed
//     ├─ Busy ─► wait (polling) for the other lookup, then look again
//     ├─ NotUncertain ─► what stands: replay, wait for its owner, 422
//     └─ Missing ─► reserve
#include "request/forwarding.h"
#include "request/request.h"

namespace idem {

void ProxyRequest::startReconcile(Record uncertain) {
  if (state_ != RequestState::Reconciling) setState(RequestState::Reconciling);
  uncertain_ = std::move(uncertain);
  const IdempotencyConfig& ic = *route_->idempotency;
  std::string host;
  client_->forEachField([&](std::string_view name, std::string_view value) {
    if (host.empty() && iequals(name, "Host")) host = std::string(value);
  });
  std::string missing;
  auto lookup = buildLookup(ic, key_, uncertain_.lookup, scope_, host, missing);
  if (!lookup) {
    // Recorded before reconcile was configured, or the request had no such value.
    shared_.observer().event("reconcile-skipped", route_->name,
                             "the record keeps no value for {" + missing + "}");
    shared_.observer().reconcileDone(route_->name, toString(LookupVerdict::Skipped));
    replay(uncertain_);
    return;
  }
  lookup_ = std::move(*lookup);
  claim_ = shared_.newOwnerToken();
  ClaimRequest cr;
  cr.id = id_;
  cr.claimer = claim_;
  cr.lease_ms = ic.lease.count();  // longer than the upstream's timeout (checked by config)
  RequestLoop* w = &loop_;
  shared_.store().claimReconcile(std::move(cr),
                                 [self = shared_from_this(), w](ClaimResult r) mutable {
                                   w->post([self = std::move(self), r = std::move(r)]() mutable {
                                     self->onClaimed(std::move(r));
                                   });
                                 });
}

void ProxyRequest::onClaimed(ClaimResult r) {
  if (r.error != StoreError::None) {
    // Nothing is forwarded without the store: the record stands as it was.
    shared_.observer().event("reconcile-claim-failed", route_->name, toString(r.error));
    shared_.observer().reconcileDone(route_->name, toString(LookupVerdict::Skipped));
    replay(uncertain_);
    return;
  }
  switch (r.status) {
    case ClaimStatus::Claimed: {
      shared_.upstream_in_flight.fetch_add(1, std::memory_order_relaxed);
      upstream_->send(lookup_, [self = shared_from_this()](UpstreamResult res) {
        self->onLookup(std::move(res));
      });
      return;
    }
    case ClaimStatus::Busy:
      // Another request (here or in another process) runs the lookup: look again shortly.
      waitForOwner(r.record, true);
      return;
    case ClaimStatus::NotUncertain:
      dispatchStanding(r.record);
      return;
    case ClaimStatus::Missing:
      reserve();  // forgotten or expired meanwhile: the key is new
      return;
  }
}

void ProxyRequest::onLookup(UpstreamResult r) {
  shared_.upstream_in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (r.failure == UpstreamFailure::None && !sanitizeUpstreamAnswer(r.answer)) {
    r.failure = UpstreamFailure::AfterSend;
  }
  shared_.observer().upstreamDone(route_->upstream, r.latency, r.failure != UpstreamFailure::None);
  const IdempotencyConfig& ic = *route_->idempotency;
  verdict_ = classifyLookup(*ic.reconcile, r);
  SettleRequest sr;
  sr.id = id_;
  sr.claimer = claim_;
  switch (verdict_) {
    case LookupVerdict::Found:
      sr.kind = SettleKind::Found;
      sr.answer = forRecording(r.answer);
      break;
    case LookupVerdict::NotFound:
      sr.kind = SettleKind::NotFound;
      owner_ = shared_.newOwnerToken();
      sr.owner = owner_;
      sr.lease_ms = ic.lease.count();
      sr.ttl_ms = ic.ttl.count();
      break;
    case LookupVerdict::Other:
    case LookupVerdict::Failed:
    case LookupVerdict::Skipped:
      sr.kind = SettleKind::Unsettled;
      if (!r.detail.empty()) shared_.observer().event("reconcile-failed", route_->name, r.detail);
      break;
  }
  RequestLoop* w = &loop_;
  WaiterRegistry* waiters = &shared_.waiters();
  shared_.store().settleReconcile(std::move(sr), [self = shared_from_this(), w, waiters,
                                                  owner = owner_](SettleResult res) {
    // Writer thread: a new owner registers before anyone can see its reservation and park.
    if (res.error == StoreError::None && res.status == SettleStatus::Settled &&
        res.record.state == RecordState::InFlight && !owner.empty() && res.record.owner == owner) {
      waiters->ownerStarted(self->id_);
    }
    w->post([self = std::move(self), res = std::move(res)]() mutable {
      self->onSettled(std::move(res));
    });
  });
}

void ProxyRequest::onSettled(SettleResult res) {
  shared_.observer().reconcileDone(route_->name, toString(verdict_));
  if (res.error != StoreError::None) {
    // A found answer that is not durable is not given out; nothing is forwarded either.
    shared_.observer().event("reconcile-settle-failed", route_->name, toString(res.error));
    respondProblem(Problem::StoreUnavailable,
                   std::string("the store cannot record what the reconcile lookup found: ") +
                       toString(res.error),
                   Outcome::Error);
    return;
  }
  if (res.status == SettleStatus::Lost) {
    // Settled, replaced, forgotten or re-claimed by another meanwhile: go by what stands.
    if (!res.exists) {
      reserve();
      return;
    }
    dispatchStanding(res.record);
    return;
  }
  switch (verdict_) {
    case LookupVerdict::Found:
      replay(res.record);  // durable now; replayed like any record
      return;
    case LookupVerdict::NotFound:
      own_reservation_ = true;
      lease_until_ms_ = res.record.lease_until_ms;
      forward();
      return;
    case LookupVerdict::Other:
    case LookupVerdict::Failed:
    case LookupVerdict::Skipped:
      replay(uncertain_);
      return;
  }
}

void ProxyRequest::dispatchStanding(const Record& rec) {
  if (rec.fingerprint != fingerprint_) {
    respondProblem(Problem::KeyMismatch, "the key was used with a different request",
                   Outcome::Mismatch);
    return;
  }
  if (rec.state == RecordState::Completed) {
    replayOrReconcile(rec);
    return;
  }
  if (rec.leasePassed(shared_.clock().wallMs())) {
    reserve();  // abandoned: the store applies the route's `abandoned` policy
    return;
  }
  waitForOwner(rec);
}

}  // namespace idem
