// The request core settling uncertain outcomes (SPEC §1.6) and sizing a 409's Retry-After, with
// the fakes of request_fixture.h: every store operation and upstream exchange completes when the
// test says so.
#include "request/reconcile.h"
#include "request/request.h"
#include "request_fixture.h"

namespace idem {
namespace {
using namespace testing_request;  // NOLINT: the fixture and its fakes

class ReconcileCoreTest : public RequestCoreTest {
 protected:
  void SetUp() override {
    IdempotencyConfig ic;
    ReconcileConfig rc;
    rc.path = "/v1/payments/by-key/{key}?order={json:/order}";
    EXPECT_EQ(parseLookupTemplate(rc.path, rc.parts), "");
    ic.reconcile = rc;
    build(ic);
  }
  static constexpr const char* kBody = R"({"amount":1,"order":"o 7"})";

  // The record a timed-out exchange left for this request: 504 upstream-timeout.
  Record timedOut() {
    Record r = completed({504, {{"Content-Type", "application/problem+json"}}, "timeout"}, kBody);
    r.flags = kFlagProxyError;
    r.key = "k1";
    r.lookup = {"json:/order", "o 7"};
    return r;
  }
  void startRetry() { start("POST", "/v1/payments", "k1", kBody); }
  void completeClaim(ClaimStatus status, Record rec) {
    ASSERT_FALSE(store_.claims.empty());
    auto [req, done] = std::move(store_.claims.front());
    store_.claims.pop_front();
    done({StoreError::None, status, std::move(rec)});
    loop_->drain();
  }
  SettleRequest completeSettle(SettleStatus status, Record rec, StoreError err = StoreError::None) {
    EXPECT_FALSE(store_.settles.empty());
    if (store_.settles.empty()) return {};
    auto [req, done] = std::move(store_.settles.front());
    store_.settles.pop_front();
    done({err, status, true, std::move(rec)});
    loop_->drain();
    return req;
  }
};

TEST_F(ReconcileCoreTest, TheRecordKeepsThePlaceholderValuesOfTheOriginalRequest) {
  startRetry();
  ASSERT_EQ(store_.reserves.size(), 1u);
  EXPECT_EQ(store_.reserves[0].first.lookup, (std::vector<std::string>{"json:/order", "o 7"}));
}

TEST_F(ReconcileCoreTest, FoundIsRecordedThenReplayed) {
  store_.stored = timedOut();
  startRetry();
  EXPECT_TRUE(store_.reserves.empty()) << "an uncertain record is not reserved again";
  ASSERT_EQ(store_.claims.size(), 1u);
  EXPECT_FALSE(reply_) << "not replayed before the lookup";
  completeClaim(ClaimStatus::Claimed, timedOut());
  ASSERT_EQ(upstream_->sent.size(), 1u);
  const UpstreamRequest& lookup = upstream_->sent[0].first;
  EXPECT_EQ(lookup.method, "GET");
  EXPECT_EQ(lookup.path_and_query, "/v1/payments/by-key/k1?order=o%207");
  EXPECT_TRUE(lookup.body.empty());
  completeUpstream(answer(200, "the payment"));
  ASSERT_EQ(store_.settles.size(), 1u);
  EXPECT_FALSE(reply_) << "answered before the found answer was durable";
  EXPECT_EQ(store_.settles[0].first.kind, SettleKind::Found);
  Record settled = timedOut();
  settled.flags = kFlagNone;
  settled.answer = {200, {{"Content-Type", "application/json"}}, "the payment"};
  completeSettle(SettleStatus::Settled, settled);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 200);
  EXPECT_EQ(reply_->body, "the payment");
  EXPECT_EQ(reply_->field("Idempotent-Replayed"), "true");
  EXPECT_EQ(observer_.reconciles, (std::vector<std::string>{"found"}));
}

TEST_F(ReconcileCoreTest, NotFoundMakesTheRetryTheOwnerAndForwardsIt) {
  store_.stored = timedOut();
  startRetry();
  completeClaim(ClaimStatus::Claimed, timedOut());
  completeUpstream(answer(404, "no such payment"));
  ASSERT_EQ(store_.settles.size(), 1u);
  const SettleRequest sr = store_.settles[0].first;
  EXPECT_EQ(sr.kind, SettleKind::NotFound);
  EXPECT_FALSE(sr.owner.empty());
  Record fresh = timedOut();
  fresh.state = RecordState::InFlight;
  fresh.owner = sr.owner;
  fresh.lease_until_ms = clock_.wallMs() + 5'000;
  completeSettle(SettleStatus::Settled, fresh);
  ASSERT_EQ(upstream_->sent.size(), 1u) << "the retry is forwarded";
  EXPECT_EQ(upstream_->sent[0].first.method, "POST");
  EXPECT_EQ(upstream_->sent[0].first.body, kBody);
  completeUpstream(answer(201, "paid now"));
  ASSERT_EQ(store_.records.size(), 1u);
  EXPECT_EQ(store_.records[0].first.owner, sr.owner) << "recorded as the new owner";
  store_.records[0].second({StoreError::None, RecordStatus::Recorded, {}});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_FALSE(reply_->has("Idempotent-Replayed"));
  EXPECT_EQ(observer_.reconciles, (std::vector<std::string>{"not_found"}));
}

TEST_F(ReconcileCoreTest, AFailedLookupLeavesTheRecordAndReplaysIt) {
  store_.stored = timedOut();
  startRetry();
  completeClaim(ClaimStatus::Claimed, timedOut());
  UpstreamResult failed;
  failed.failure = UpstreamFailure::Timeout;
  failed.detail = "timed out";
  completeUpstream(std::move(failed));
  ASSERT_EQ(store_.settles.size(), 1u);
  EXPECT_EQ(store_.settles[0].first.kind, SettleKind::Unsettled);
  completeSettle(SettleStatus::Settled, timedOut());
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 504);
  EXPECT_EQ(reply_->field("Idempotent-Replayed"), "true");
  EXPECT_EQ(observer_.reconciles, (std::vector<std::string>{"failed"}));
}

TEST_F(ReconcileCoreTest, AnotherStatusLeavesTheRecordAndReplaysIt) {
  store_.stored = timedOut();
  startRetry();
  completeClaim(ClaimStatus::Claimed, timedOut());
  completeUpstream(answer(500, "oops"));
  ASSERT_EQ(store_.settles.size(), 1u);
  EXPECT_EQ(store_.settles[0].first.kind, SettleKind::Unsettled);
  completeSettle(SettleStatus::Settled, timedOut());
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 504);
  EXPECT_EQ(observer_.reconciles, (std::vector<std::string>{"other"}));
}

TEST_F(ReconcileCoreTest, AFoundAnswerThatIsNotDurableIsNotGivenOut) {
  store_.stored = timedOut();
  startRetry();
  completeClaim(ClaimStatus::Claimed, timedOut());
  completeUpstream(answer(200, "the payment"));
  completeSettle(SettleStatus::Lost, {}, StoreError::Io);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 503);
  EXPECT_EQ(reply_->body.find("the payment"), std::string::npos);
}

TEST_F(ReconcileCoreTest, ABusyClaimIsWaitedForThenTheSettledOutcomeReplayed) {
  store_.stored = timedOut();
  startRetry();
  Record busy = timedOut();
  busy.claim_owner = "otherhost:1:abcd:9";
  busy.claim_until_ms = clock_.wallMs() + 5'000;
  completeClaim(ClaimStatus::Busy, busy);
  EXPECT_FALSE(reply_);
  EXPECT_TRUE(upstream_->sent.empty()) << "one lookup per key";
  // The other lookup found the payment: the next look replays it, with no lookup of our own.
  Record found = timedOut();
  found.flags = kFlagNone;
  found.answer = {200, {}, "found by another"};
  store_.stored = found;
  ASSERT_TRUE(loop_->runUntil([&] { return reply_.has_value(); }));
  EXPECT_EQ(reply_->status, 200);
  EXPECT_EQ(reply_->body, "found by another");
  EXPECT_TRUE(store_.claims.empty());
}

TEST_F(ReconcileCoreTest, ALostSettleGoesByWhatStands) {
  store_.stored = timedOut();
  startRetry();
  completeClaim(ClaimStatus::Claimed, timedOut());
  completeUpstream(answer(404, "none"));
  Record real = timedOut();  // the late owner recorded the real outcome meanwhile
  real.flags = kFlagNone;
  real.answer = {201, {}, "the real one"};
  completeSettle(SettleStatus::Lost, real);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->body, "the real one");
  EXPECT_EQ(upstream_->sent.size(), 0u) << "nothing forwarded";
}

TEST_F(ReconcileCoreTest, ARecordWithoutTheValuesIsReplayedAsItStands) {
  Record r = timedOut();
  r.lookup.clear();  // recorded before reconcile was configured
  store_.stored = r;
  startRetry();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 504);
  EXPECT_TRUE(store_.claims.empty());
  EXPECT_EQ(observer_.reconciles, (std::vector<std::string>{"skipped"}));
}

TEST_F(ReconcileCoreTest, AnUncertainRecordFromReserveIsReconciledToo) {
  store_.local = false;  // a network store: the reserve is the read
  startRetry();
  completeReserve(ReserveStatus::Completed, timedOut());
  EXPECT_EQ(store_.claims.size(), 1u);
  EXPECT_FALSE(reply_);
}

TEST_F(ReconcileCoreTest, AKnownOutcomeIsReplayedWithoutALookup) {
  Record r = timedOut();
  r.flags = kFlagProxyError | kFlagNotReplayable;  // response-not-replayable: it happened
  store_.stored = r;
  startRetry();
  ASSERT_TRUE(reply_);
  EXPECT_TRUE(store_.claims.empty());
}

// ---- Retry-After ----

TEST_F(RequestCoreTest, RetryAfterFollowsTheRoutesUsualExchangeNotTheLease) {
  IdempotencyConfig ic;
  ic.concurrent = ConcurrentMode::Reject;
  ic.lease = Millis(60'000);
  build(ic);
  shared_->latency().observe("payments", std::chrono::milliseconds(300));
  start();
  Record r = inFlight("otherhost:1:abcd:0");
  r.reserved_at_ms = clock_.wallMs();
  r.lease_until_ms = clock_.wallMs() + 60'000;
  completeReserve(ReserveStatus::InFlight, r);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 409);
  EXPECT_EQ(reply_->field("Retry-After"), "1");
}

TEST(RetryAfter, IsWhatIsLeftOfTheUsualExchangeBoundedByTheLease) {
  EXPECT_EQ(retryAfterSeconds(std::nullopt, 0, 30'000), 30) << "nothing known: the lease";
  EXPECT_EQ(retryAfterSeconds(2'500, 0, 30'000), 3);
  EXPECT_EQ(retryAfterSeconds(2'500, 2'000, 30'000), 1);
  EXPECT_EQ(retryAfterSeconds(2'500, 9'000, 30'000), 1) << "at least 1";
  EXPECT_EQ(retryAfterSeconds(90'000, 0, 30'000), 30) << "never past the lease";
  EXPECT_EQ(retryAfterSeconds(90'000, 0, -5), 1);
}

TEST(LatencyEstimates, FollowTheRoutesExchanges) {
  LatencyEstimates e;
  EXPECT_FALSE(e.expectedMs("r"));
  e.observe("r", std::chrono::milliseconds(100));
  EXPECT_EQ(*e.expectedMs("r"), 300) << "RFC 6298 start: srtt + 4 * srtt / 2";
  for (int i = 0; i < 50; ++i) e.observe("r", std::chrono::milliseconds(100));
  EXPECT_LT(*e.expectedMs("r"), 110) << "steady exchanges: the variation fades";
  EXPECT_FALSE(e.expectedMs("other"));
}

TEST(Lookup, PlaceholdersArePercentEncodedAndMissingOnesNamed) {
  IdempotencyConfig ic;
  ReconcileConfig rc;
  ASSERT_EQ(parseLookupTemplate("/by/{header:X-Order}/{key}", rc.parts), "");
  ic.reconcile = rc;
  std::string missing;
  auto req = buildLookup(ic, "a/b c", {"header:X-Order", "o~1"}, {"Bearer T"}, "api", missing);
  ASSERT_TRUE(req);
  EXPECT_EQ(req->path_and_query, "/by/o~1/a%2Fb%20c");
  EXPECT_EQ(req->headers, (Headers{{"Host", "api"}, {"Authorization", "Bearer T"}}));
  EXPECT_FALSE(buildLookup(ic, "k", {}, {}, "", missing));
  EXPECT_EQ(missing, "header:X-Order");
}

}  // namespace
}  // namespace idem
