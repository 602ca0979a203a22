// The LMDB store's reconcile operations (store.h, "Reconcile"): each is one queued write applied
// in the writer's transaction like reserve and record, so a claim and a settle are atomic and
// durable (under durability full) before their completion runs.
#include "store/lmdb/lmdb_impl.h"

namespace idem {
using namespace lmdb;  // NOLINT: the store's own helpers

struct LmdbStore::Impl::ClaimReconcileOp final : OpWith<ClaimResult> {
  ClaimReconcileOp(ClaimRequest r, std::function<void(ClaimResult)> d)
      : OpWith(std::move(d)), req(std::move(r)) {}

  int apply(Impl& s, MDB_txn* txn, int64_t now) override {
    Record cur;
    int rc = s.get(txn, req.id, cur);
    if (rc == MDB_NOTFOUND || (rc == MDB_SUCCESS && cur.expired(now))) {
      result.status = ClaimStatus::Missing;
      return MDB_SUCCESS;
    }
    if (rc != MDB_SUCCESS) return rc;
    if (!cur.uncertain()) {
      result.status = ClaimStatus::NotUncertain;
    } else if (!cur.claim_owner.empty() && now < cur.claim_until_ms) {
      result.status = ClaimStatus::Busy;
    } else {
      Record rec = cur;
      rec.claim_owner = req.claimer;
      rec.claim_until_ms = now + req.lease_ms;
      rc = s.put(txn, req.id, rec, &cur);  // same expires_at: the index is untouched
      if (rc != MDB_SUCCESS) return rc;
      result.status = ClaimStatus::Claimed;
      cur = std::move(rec);
    }
    result.record = std::move(cur);
    return MDB_SUCCESS;
  }

  ClaimRequest req;
};

struct LmdbStore::Impl::SettleReconcileOp final : OpWith<SettleResult> {
  bool grows() const override { return req.kind == SettleKind::Found; }
  SettleReconcileOp(SettleRequest r, std::function<void(SettleResult)> d)
      : OpWith(std::move(d)), req(std::move(r)) {}

  int apply(Impl& s, MDB_txn* txn, int64_t now) override {
    Record cur;
    int rc = s.get(txn, req.id, cur);
    if (rc == MDB_NOTFOUND || (rc == MDB_SUCCESS && cur.expired(now))) {
      result.status = SettleStatus::Lost;
      return MDB_SUCCESS;
    }
    if (rc != MDB_SUCCESS) return rc;
    if (!cur.uncertain() || cur.claim_owner != req.claimer) {
      result.status = SettleStatus::Lost;
      result.exists = true;
      result.record = std::move(cur);
      return MDB_SUCCESS;
    }
    Record rec = cur;
    rec.claim_owner.clear();
    rec.claim_until_ms = 0;
    switch (req.kind) {
      case SettleKind::Found:
        rec.flags = kFlagNone;
        rec.answer = req.answer;  // copied: apply may run again if the commit fails
        break;
      case SettleKind::NotFound:
        if (req.owner.empty()) {
          rc = s.erase(txn, req.id, &cur);
          if (rc != MDB_SUCCESS) return rc;
          result.status = SettleStatus::Settled;
          return MDB_SUCCESS;
        }
        rec.state = RecordState::InFlight;
        rec.flags = kFlagNone;
        rec.answer = HttpAnswer{};
        rec.owner = req.owner;
        rec.reserved_at_ms = now;
        rec.lease_until_ms = now + req.lease_ms;
        rec.expires_at_ms = now + req.ttl_ms;
        break;
      case SettleKind::Unsettled:
        break;
    }
    rc = s.put(txn, req.id, rec, &cur);
    if (rc != MDB_SUCCESS) return rc;
    result.status = SettleStatus::Settled;
    result.exists = true;
    result.record = std::move(rec);
    return MDB_SUCCESS;
  }

  SettleRequest req;
};

void LmdbStore::claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) {
  impl_->submit(std::make_unique<Impl::ClaimReconcileOp>(std::move(req), std::move(done)));
}

void LmdbStore::settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) {
  impl_->submit(std::make_unique<Impl::SettleReconcileOp>(std::move(req), std::move(done)));
}

}  // namespace idem
