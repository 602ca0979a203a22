// The reconcile store operations (store.h, "Reconcile") against every backend: the same
// contract on LMDB (in a temp dir), on a real PostgreSQL (support/pg_cluster.h) and on a real
// Redis (support/redis_server.h).
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "base/clock.h"
#include "base/digest.h"
#include "store/lmdb/lmdb_store.h"
#include "store/postgres/postgres_store.h"
#include "store/redis/redis_store.h"
#include "support/pg_cluster.h"
#include "support/redis_server.h"

namespace idem {
namespace {

RecordId idFor(const std::string& key) {
  return recordId("payments", {"Bearer t"}, key);
}

ReserveRequest reserveReq(const std::string& key, const std::string& owner, int64_t lease_ms,
                          int64_t ttl_ms = 3'600'000) {
  ReserveRequest r;
  r.id = idFor(key);
  r.fingerprint.fill(7);
  r.route = "payments";
  r.key = key;
  r.scope = {"sha256:t"};
  r.owner = owner;
  r.ttl_ms = ttl_ms;
  r.lease_ms = lease_ms;
  r.abandoned_answer = {502, {{"Content-Type", "application/problem+json"}}, "unknown"};
  r.lookup = {"json:/order", "o-1", "header:X-Shop", "s 2"};
  return r;
}

class ReconcileStoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "lmdb") {
      const char* base = std::getenv("TMPDIR");
      std::string tmpl = std::string(base != nullptr && *base != '\0' ? base : "/tmp") +
                         "/idemproxy-reconcile-XXXXXX";
      ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
      dir_ = tmpl;
      LmdbOptions o;
      o.path = dir_;
      o.max_size = 64ull << 20;
      std::string error;
      store_ = openLmdbStore(o, clock_, error);
      ASSERT_NE(store_, nullptr) << error;
    } else if (GetParam() == "redis") {
      std::string error;
      test::RedisServer* server = test::RedisServer::shared(error);
      if (server == nullptr) GTEST_SKIP() << error;
      RedisOptions o;
      o.url = server->url();
      o.key_prefix = test::RedisServer::freshPrefix();
      o.check_settings = false;
      store_ = openRedisStore(o, error);
      ASSERT_NE(store_, nullptr) << error;
    } else {
      std::string error;
      test::PgCluster* cluster = test::PgCluster::shared(error);
      if (cluster == nullptr) GTEST_SKIP() << error;
      PostgresOptions o;
      o.conninfo = cluster->freshSchema();
      o.connections = 2;
      store_ = openPostgresStore(o, error);
      ASSERT_NE(store_, nullptr) << error;
    }
  }
  void TearDown() override {
    store_.reset();
    if (!dir_.empty()) {
      std::error_code ec;
      std::filesystem::remove_all(dir_, ec);
    }
  }

  // A key whose exchange timed out: completed as a recorded 504 (kFlagProxyError).
  void timedOut(const std::string& key, const std::string& owner = "A") {
    ReserveResult r = reserveSync(*store_, reserveReq(key, owner, 60'000));
    ASSERT_EQ(r.status, ReserveStatus::Won);
    RecordRequest rq;
    rq.id = idFor(key);
    rq.owner = owner;
    rq.answer = {504, {{"Content-Type", "application/problem+json"}}, "timeout"};
    rq.flags = kFlagProxyError;
    ASSERT_EQ(recordSync(*store_, rq).status, RecordStatus::Recorded);
  }
  ClaimResult claim(const std::string& key, const std::string& claimer, int64_t lease = 60'000) {
    return claimReconcileSync(*store_, {idFor(key), claimer, lease});
  }
  SettleResult settle(const std::string& key, const std::string& claimer, SettleKind kind,
                      HttpAnswer answer = {}, std::string owner = {}) {
    SettleRequest s;
    s.id = idFor(key);
    s.claimer = claimer;
    s.kind = kind;
    s.answer = std::move(answer);
    s.owner = std::move(owner);
    s.lease_ms = 60'000;
    s.ttl_ms = 3'600'000;
    return settleReconcileSync(*store_, std::move(s));
  }

  FakeClock clock_;
  std::string dir_;
  std::unique_ptr<Store> store_;
};

TEST_P(ReconcileStoreTest, OnlyUncertainOutcomesCanBeClaimed) {
  EXPECT_EQ(claim("none", "C").status, ClaimStatus::Missing);
  ASSERT_EQ(reserveSync(*store_, reserveReq("flying", "A", 60'000)).status, ReserveStatus::Won);
  ClaimResult inFlight = claim("flying", "C");
  EXPECT_EQ(inFlight.status, ClaimStatus::NotUncertain);
  EXPECT_EQ(inFlight.record.state, RecordState::InFlight);
  RecordRequest rq{idFor("flying"), "A", {201, {}, "paid"}, kFlagNone};
  ASSERT_EQ(recordSync(*store_, rq).status, RecordStatus::Recorded);
  EXPECT_EQ(claim("flying", "C").status, ClaimStatus::NotUncertain);
}

TEST_P(ReconcileStoreTest, TheClaimIsOneAtATimeAndKeepsTheLookupValues) {
  timedOut("k");
  ClaimResult a = claim("k", "C1");
  ASSERT_EQ(a.error, StoreError::None);
  ASSERT_EQ(a.status, ClaimStatus::Claimed);
  EXPECT_EQ(a.record.lookup, reserveReq("k", "A", 0).lookup);
  EXPECT_EQ(a.record.claim_owner, "C1");
  EXPECT_EQ(a.record.answer.status, 504);
  ClaimResult b = claim("k", "C2");
  EXPECT_EQ(b.status, ClaimStatus::Busy);
  EXPECT_GT(b.record.claim_until_ms, 0);
  EXPECT_EQ(settle("k", "C2", SettleKind::Found, {200, {}, "x"}).status, SettleStatus::Lost)
      << "only the claim's holder settles";
  SettleResult dropped = settle("k", "C1", SettleKind::Unsettled);
  EXPECT_EQ(dropped.status, SettleStatus::Settled);
  EXPECT_EQ(dropped.record.answer.status, 504) << "unsettled: the record as it was";
  EXPECT_EQ(claim("k", "C2").status, ClaimStatus::Claimed) << "the claim was dropped";
}

TEST_P(ReconcileStoreTest, APassedClaimIsTakenAndItsHolderCanNoLongerSettle) {
  timedOut("k");
  ASSERT_EQ(claim("k", "C1", 0).status, ClaimStatus::Claimed);  // passes at once
  ASSERT_EQ(claim("k", "C2").status, ClaimStatus::Claimed);
  EXPECT_EQ(settle("k", "C1", SettleKind::Found, {200, {}, "x"}).status, SettleStatus::Lost);
}

TEST_P(ReconcileStoreTest, FoundBecomesTheOutcome) {
  timedOut("k");
  ASSERT_EQ(claim("k", "C").status, ClaimStatus::Claimed);
  SettleResult s = settle("k", "C", SettleKind::Found, {200, {{"X-Id", "p1"}}, "the payment"});
  ASSERT_EQ(s.status, SettleStatus::Settled);
  auto rec = store_->lookup(idFor("k"));
  ASSERT_TRUE(rec);
  EXPECT_EQ(rec->state, RecordState::Completed);
  EXPECT_EQ(rec->flags, kFlagNone);
  EXPECT_EQ(rec->answer, (HttpAnswer{200, {{"X-Id", "p1"}}, "the payment"}));
  EXPECT_FALSE(rec->uncertain());
  EXPECT_EQ(claim("k", "C").status, ClaimStatus::NotUncertain) << "settled for good";
}

TEST_P(ReconcileStoreTest, NotFoundMakesAFreshReservationOfTheNewOwner) {
  timedOut("k");
  ASSERT_EQ(claim("k", "C").status, ClaimStatus::Claimed);
  SettleResult s = settle("k", "C", SettleKind::NotFound, {}, "B");
  ASSERT_EQ(s.status, SettleStatus::Settled);
  EXPECT_EQ(s.record.state, RecordState::InFlight);
  EXPECT_EQ(s.record.owner, "B");
  EXPECT_EQ(s.record.lookup, reserveReq("k", "A", 0).lookup);
  EXPECT_GT(s.record.lease_until_ms, s.record.reserved_at_ms);
  // A retry now waits for B; the old owner cannot record; B records the real outcome.
  ReserveResult retry = reserveSync(*store_, reserveReq("k", "D", 60'000));
  EXPECT_EQ(retry.status, ReserveStatus::InFlight);
  RecordRequest late{idFor("k"), "A", {201, {}, "late"}, kFlagNone};
  EXPECT_EQ(recordSync(*store_, late).status, RecordStatus::AlreadyFinal);
  RecordRequest mine{idFor("k"), "B", {201, {}, "paid"}, kFlagNone};
  EXPECT_EQ(recordSync(*store_, mine).status, RecordStatus::Recorded);
}

TEST_P(ReconcileStoreTest, NotFoundWithoutAnOwnerDeletesTheRecord) {
  timedOut("k");
  ASSERT_EQ(claim("k", "cli").status, ClaimStatus::Claimed);
  SettleResult s = settle("k", "cli", SettleKind::NotFound);
  EXPECT_EQ(s.status, SettleStatus::Settled);
  EXPECT_FALSE(s.exists);
  EXPECT_FALSE(store_->lookup(idFor("k")));
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "E", 60'000)).status, ReserveStatus::Won);
}

TEST_P(ReconcileStoreTest, AnAbandonedReservationIsUncertainWithItsLookupValues) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 0)).status, ReserveStatus::Won);
  ReserveResult r = reserveSync(*store_, reserveReq("k", "B", 60'000));
  ASSERT_EQ(r.status, ReserveStatus::Completed);
  EXPECT_TRUE(r.record.uncertain());
  EXPECT_EQ(r.record.lookup, reserveReq("k", "A", 0).lookup) << "a network store's replay read";
  ClaimResult c = claim("k", "C");
  EXPECT_EQ(c.status, ClaimStatus::Claimed);
}

TEST_P(ReconcileStoreTest, AnExpiredRecordIsMissing) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 60'000, 0)).status, ReserveStatus::Won);
  RecordRequest rq{idFor("k"), "A", {504, {}, "t"}, kFlagProxyError};
  (void)recordSync(*store_, rq);
  EXPECT_EQ(claim("k", "C").status, ClaimStatus::Missing);
  EXPECT_EQ(settle("k", "C", SettleKind::Found, {200, {}, "x"}).status, SettleStatus::Lost);
}

INSTANTIATE_TEST_SUITE_P(Backends, ReconcileStoreTest,
                         ::testing::Values("lmdb", "postgres", "redis"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace idem
