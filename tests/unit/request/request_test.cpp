// The request core alone: ProxyRequest driven through every transition with fakes at its seams
// (Downstream, Upstream, Store, Clock) on a real libevent loop.
#include "request/request.h"

#include <gtest/gtest.h>

#include "base/digest.h"
#include "request/idempotency.h"
#include "request/request_fixture.h"

namespace idem {
namespace {

using namespace testing_request;  // NOLINT: the fixture and its fakes

// ---- Transitions ----

TEST_F(RequestCoreTest, ReplaysACompletedRecordWithoutWritingOrForwarding) {
  store_.stored = completed({201, {{"Content-Type", "application/json"}}, "paid"});
  start();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->body, "paid");
  EXPECT_EQ(reply_->field("Idempotent-Replayed"), "true");
  EXPECT_TRUE(store_.reserves.empty());
  EXPECT_TRUE(upstream_->sent.empty());
  ASSERT_EQ(observer_.done.size(), 1u);
  EXPECT_EQ(observer_.done[0].second, Outcome::Replayed);
}

TEST_F(RequestCoreTest, WinnerForwardsRecordsThenAnswers) {
  start();
  ASSERT_EQ(store_.reserves.size(), 1u);
  EXPECT_EQ(store_.reserves[0].first.key, "k1");
  // The record keeps a digest of the credential, never the credential.
  ASSERT_EQ(store_.reserves[0].first.scope.size(), 1u);
  EXPECT_EQ(store_.reserves[0].first.scope[0].rfind("sha256:", 0), 0u);
  EXPECT_EQ(store_.reserves[0].first.scope[0].find("Bearer"), std::string::npos);
  completeReserve(ReserveStatus::Won);
  ASSERT_EQ(upstream_->sent.size(), 1u);
  EXPECT_EQ(upstream_->sent[0].first.path_and_query, "/v1/payments");
  EXPECT_EQ(upstream_->sent[0].first.body, R"({"amount":1})");
  completeUpstream(answer(201, "paid"));
  EXPECT_FALSE(reply_) << "answered before the record was durable";
  ASSERT_EQ(store_.records.size(), 1u);
  const RecordRequest& rec = store_.records[0].first;
  EXPECT_EQ(rec.answer.status, 201);
  EXPECT_EQ(rec.answer.body, "paid");
  for (const auto& h : rec.answer.headers) EXPECT_FALSE(iequals(h.name, "Set-Cookie"));
  store_.records[0].second({StoreError::None, RecordStatus::Recorded, {}});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->field("Set-Cookie"), "s=1") << "the first answer keeps every field";
  EXPECT_FALSE(reply_->has("Idempotent-Replayed"));
  EXPECT_EQ(observer_.done.back().second, Outcome::Forwarded);
}

TEST_F(RequestCoreTest, WaiterIsWokenByItsOwnerAndReplays) {
  start();
  const std::string owner = shared_->newOwnerToken();  // a request of this process owns it
  const RecordId id = store_.reserves[0].first.id;
  shared_->waiters().ownerStarted(id);
  completeReserve(ReserveStatus::InFlight, inFlight(owner));
  EXPECT_EQ(shared_->waiters().parked(), 1u);
  EXPECT_FALSE(reply_);
  // Woken, it asks the store's writer (reserve), not a read transaction: the LMDB store
  // acknowledges a record once it is in the log, and its readers may see it a few ms later.
  store_.stored = inFlight(owner);
  shared_->waiters().ownerFinished(id);
  ASSERT_TRUE(loop_->runUntil([&] { return !store_.reserves.empty(); }));
  completeReserve(ReserveStatus::Completed, completed({201, {}, "paid"}));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->field("Idempotent-Replayed"), "true");
  EXPECT_EQ(store_.lookups, 0) << "woken, not polling";
}

TEST_F(RequestCoreTest, WaiterTimesOutWith409AndRetryAfter) {
  IdempotencyConfig ic;
  ic.wait_timeout = Millis(30);
  build(ic);
  start();
  // Another process owns the key: the waiter polls the store until its deadline.
  store_.stored = inFlight("otherhost:1:abcd:0");
  completeReserve(ReserveStatus::InFlight, *store_.stored);
  // Polls by reading; the last look, at the deadline, asks the writer (reads may lag it).
  ASSERT_TRUE(loop_->runUntil([&] { return !store_.reserves.empty(); }));
  EXPECT_GE(store_.lookups, 1) << "polled before the deadline";
  EXPECT_FALSE(reply_);
  completeReserve(ReserveStatus::InFlight, *store_.stored);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 409);
  EXPECT_EQ(reply_->field("Retry-After"), "5");
  EXPECT_EQ(observer_.done.back().second, Outcome::Conflict);
}

TEST_F(RequestCoreTest, RejectModeAnswers409AtOnce) {
  IdempotencyConfig ic;
  ic.concurrent = ConcurrentMode::Reject;
  build(ic);
  start();
  completeReserve(ReserveStatus::InFlight, inFlight("otherhost:1:abcd:0"));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 409);
  EXPECT_EQ(store_.lookups, 0);
}

TEST_F(RequestCoreTest, MismatchIs422FromTheStoreAndFromTheFastPath) {
  start();
  completeReserve(ReserveStatus::Mismatch, inFlight("x"));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 422);

  reply_.reset();
  store_.stored = completed({201, {}, "paid"}, R"({"amount":2})");  // recorded for another body
  start();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 422);
  EXPECT_TRUE(store_.reserves.empty());
}

TEST_F(RequestCoreTest, LateOwnerAnswersWithTheOutcomeThatStands) {
  start();
  completeReserve(ReserveStatus::Won);
  completeUpstream(answer(201, "mine"));
  store_.records[0].second(
      {StoreError::None, RecordStatus::AlreadyFinal, completed({502, {}, "unknown"})});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 502);
  EXPECT_EQ(reply_->body, "unknown");
  EXPECT_TRUE(observer_.saw("late-owner"));
}

TEST_F(RequestCoreTest, ReleasedStatusIsPassedOnAndTheKeyReleased) {
  start();
  completeReserve(ReserveStatus::Won);
  completeUpstream(answer(503, "busy"));
  EXPECT_TRUE(store_.records.empty());
  ASSERT_EQ(store_.releases.size(), 1u);
  EXPECT_FALSE(reply_) << "answered before the release";
  store_.releases[0].second({});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 503);
  EXPECT_EQ(observer_.done.back().second, Outcome::Released);
}

TEST_F(RequestCoreTest, NothingSentReleasesAndAnswers502Unavailable) {
  start();
  completeReserve(ReserveStatus::Won);
  UpstreamResult r;
  r.failure = UpstreamFailure::BeforeSend;
  completeUpstream(std::move(r));
  ASSERT_EQ(store_.releases.size(), 1u);
  store_.releases[0].second({StoreError::Io, false, 0});  // the release fails
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 502);
  EXPECT_NE(reply_->body.find("upstream-unavailable"), std::string::npos);
  EXPECT_TRUE(observer_.saw("release-failed"));
}

TEST_F(RequestCoreTest, SentWithoutAnAnswerRecords504) {
  start();
  completeReserve(ReserveStatus::Won);
  UpstreamResult r;
  r.failure = UpstreamFailure::Timeout;
  completeUpstream(std::move(r));
  ASSERT_EQ(store_.records.size(), 1u);
  EXPECT_EQ(store_.records[0].first.answer.status, 504);
  EXPECT_TRUE(store_.records[0].first.flags & kFlagProxyError);
}

TEST_F(RequestCoreTest, AnAnswerThatDoesNotFitIsRecordedCompactBeforeTheClientSeesIt) {
  start();
  completeReserve(ReserveStatus::Won, inFlight("me"));
  completeUpstream(answer(201, std::string(4096, 'x')));
  store_.records[0].second({StoreError::Full, RecordStatus::Recorded, {}});
  store_.records.pop_front();
  loop_->drain();
  EXPECT_TRUE(observer_.saw("record-failed"));
  EXPECT_FALSE(reply_) << "no answer leaves without its record";
  ASSERT_EQ(store_.records.size(), 1u);
  const RecordRequest& compact = store_.records[0].first;
  EXPECT_EQ(compact.answer.status, 502);
  EXPECT_NE(compact.answer.body.find("response-not-replayable"), std::string::npos);
  EXPECT_TRUE(compact.flags & kFlagNotReplayable);
  EXPECT_LT(compact.answer.body.size(), 1024u);
  store_.records[0].second({StoreError::None, RecordStatus::Recorded, {}});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->body.size(), 4096u);
}

TEST_F(RequestCoreTest, AFailingRecordIsRetriedWhileTheLeaseLastsThen503) {
  start();
  completeReserve(ReserveStatus::Won, inFlight("me"));  // lease: 5 s from now
  completeUpstream(answer(201, "paid"));
  // The store fails; it is retried (a timer, backing off) and succeeds the second time.
  store_.records[0].second({StoreError::Io, RecordStatus::Recorded, {}});
  store_.records.pop_front();
  loop_->drain();
  EXPECT_FALSE(reply_);
  ASSERT_TRUE(loop_->runUntil([&] { return !store_.records.empty(); }));
  EXPECT_EQ(store_.records[0].first.answer.body, "paid");
  store_.records[0].second({StoreError::Io, RecordStatus::Recorded, {}});
  store_.records.pop_front();
  loop_->drain();
  EXPECT_FALSE(reply_);
  // Time passes to near the end of the lease: the next failure is the last.
  clock_.advance(std::chrono::milliseconds(4'500));
  ASSERT_TRUE(loop_->runUntil([&] { return !store_.records.empty(); }));
  store_.records[0].second({StoreError::Io, RecordStatus::Recorded, {}});
  store_.records.pop_front();
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 503);
  EXPECT_NE(reply_->body.find("store-unavailable"), std::string::npos);
  EXPECT_EQ(reply_->body.find("paid"), std::string::npos);
}

TEST_F(RequestCoreTest, StoreFailingOnReserveIs503AndNothingForwarded) {
  start();
  completeReserve(ReserveStatus::Won, {}, StoreError::Io);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 503);
  EXPECT_TRUE(upstream_->sent.empty());
}

TEST_F(RequestCoreTest, ClientGoneStillRecordsTheOutcome) {
  start();
  completeReserve(ReserveStatus::Won);
  // The exchange is running; the client's connection goes away (its reply calls are no-ops).
  // The outcome must still be recorded so a retry finds it, and the request freed.
  FakeClient::closed = true;
  completeUpstream(answer(201, "paid"));
  ASSERT_EQ(store_.records.size(), 1u);
  EXPECT_EQ(store_.records[0].first.answer.body, "paid");
  store_.records[0].second({StoreError::None, RecordStatus::Recorded, {}});
  store_.records.clear();
  loop_->drain();
  FakeClient::closed = false;
  EXPECT_FALSE(reply_);
  EXPECT_EQ(observer_.done.back().second, Outcome::Forwarded);
  EXPECT_EQ(shared_->active.load(), 0u);
}

TEST_F(RequestCoreTest, HeadReplayKeepsContentLengthOtherMethodsDoNot) {
  store_.stored = completed({200, {{"Content-Length", "4"}}, "paid"});
  store_.stored->fingerprint =
      requestFingerprint(*config_->routes[0].idempotency, {"HEAD", "/v1/payments", "", ""});
  start("HEAD", "/v1/payments", "k1", "");
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->field("Content-Length"), "4");

  reply_.reset();
  store_.stored = completed({200, {{"Content-Length", "4"}}, "paid"});
  start();
  ASSERT_TRUE(reply_);
  EXPECT_FALSE(reply_->has("Content-Length"));
}

TEST_F(RequestCoreTest, KeyRulesAnswer400) {
  start("POST", "/v1/payments", "");
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 400);
  EXPECT_NE(reply_->body.find("idempotency-key-missing"), std::string::npos);
  reply_.reset();
  start("POST", "/v1/payments", std::string(256, 'a'));
  ASSERT_TRUE(reply_);
  EXPECT_NE(reply_->body.find("idempotency-key-invalid"), std::string::npos);
  EXPECT_TRUE(store_.reserves.empty());
}

TEST_F(RequestCoreTest, PassThroughForwardsWithoutTheStore) {
  start("GET", "/status?x=1", "");
  ASSERT_EQ(upstream_->sent.size(), 1u);
  EXPECT_EQ(upstream_->sent[0].first.path_and_query, "/status?x=1");
  completeUpstream(answer(200, "up"));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->body, "up");
  EXPECT_EQ(store_.lookups, 0);
  EXPECT_EQ(observer_.done.back().second, Outcome::Passthrough);
}

TEST_F(RequestCoreTest, AnExceptionIsAnswered500) {
  store_.throwOnReserve = true;
  start();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 500);
  EXPECT_TRUE(observer_.saw("request-failed"));
  EXPECT_EQ(shared_->active.load(), 0u) << "the request was freed";
}

TEST_F(RequestCoreTest, DrainingAnswersCarryClose) {
  shared_->setDraining();
  store_.stored = completed({201, {}, "paid"});
  start();
  ASSERT_TRUE(reply_);
  EXPECT_TRUE(reply_->close);
}

TEST_F(RequestCoreTest, NoScopeHeaderIsRefusedUnlessTheRouteSharesOneKeySpace) {
  start("POST", "/v1/payments", "k1", "{}", "");
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 400);
  EXPECT_NE(reply_->body.find("idempotency-scope-missing"), std::string::npos);
  reply_.reset();
  start("POST", "/v1/payments", "k1", "{}", " \t ");  // only whitespace: no credential
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 400);
  EXPECT_TRUE(store_.reserves.empty());

  IdempotencyConfig ic;
  ic.shared_scope = true;
  build(ic);
  reply_.reset();
  start("POST", "/v1/payments", "k1", "{}", "");
  EXPECT_FALSE(reply_);
  EXPECT_EQ(store_.reserves.size(), 1u);
}

TEST_F(RequestCoreTest, ScopeValuesAreComparedWithoutSurroundingWhitespace) {
  start("POST", "/v1/payments", "k1", "{}", "Bearer T");
  start("POST", "/v1/payments", "k1", "{}", "\tBearer T ");
  ASSERT_EQ(store_.reserves.size(), 2u);
  EXPECT_EQ(store_.reserves[0].first.id, store_.reserves[1].first.id);
  start("POST", "/v1/payments", "k1", "{}", "Bearer U");
  EXPECT_NE(store_.reserves[0].first.id, store_.reserves[2].first.id);
}

TEST_F(RequestCoreTest, UpstreamReplayMarkerAndBadFieldNamesAreNotPassedOn) {
  start();
  completeReserve(ReserveStatus::Won);
  UpstreamResult r = answer(201, "paid");
  r.answer.headers.push_back({"Idempotent-Replayed", "true"});
  r.answer.headers.push_back({"X Bad Name", "v"});
  completeUpstream(std::move(r));
  ASSERT_EQ(store_.records.size(), 1u);
  for (const auto& h : store_.records[0].first.answer.headers) {
    EXPECT_FALSE(iequals(h.name, "Idempotent-Replayed"));
    EXPECT_NE(h.name, "X Bad Name");
  }
  store_.records[0].second({StoreError::None, RecordStatus::Recorded, {}});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_FALSE(reply_->has("Idempotent-Replayed"));
  EXPECT_FALSE(reply_->has("X Bad Name"));
}

TEST_F(RequestCoreTest, StatusBeyond599IsAMalformedAnswerRecordedAs502) {
  start();
  completeReserve(ReserveStatus::Won);
  completeUpstream(answer(600, "??"));
  ASSERT_EQ(store_.records.size(), 1u);
  EXPECT_EQ(store_.records[0].first.answer.status, 502);
  EXPECT_NE(store_.records[0].first.answer.body.find("upstream-failed"), std::string::npos);
}

TEST_F(RequestCoreTest, WaiterTicketsAreUniqueAcrossRequests) {
  // Two waiters on one key, on two loops: the one that parked second times out first, and its
  // cancel must remove its own entry, not the other waiter's.
  const std::string owner = shared_->newOwnerToken();
  store_.stored = inFlight(owner);
  auto withWait = [&](Millis wait) {
    auto c = std::make_shared<Config>(*config_);
    c->routes[0].idempotency->wait_timeout = wait;
    return c;
  };
  TestLoop patientLoop(withWait(Millis(5'000)), *shared_, upstream_);
  TestLoop hastyLoop(withWait(Millis(20)), *shared_, upstream_);
  std::optional<FakeClient::Reply> patient, hasty;
  const Headers h{{"Authorization", "Bearer A"}, {"Idempotency-Key", "k1"}};
  ProxyRequest::start(patientLoop, std::make_unique<FakeClient>("POST", "/v1/payments", h,
                                                                R"({"amount":1})", &patient));
  ProxyRequest::start(hastyLoop, std::make_unique<FakeClient>("POST", "/v1/payments", h,
                                                              R"({"amount":1})", &hasty));
  const RecordId id = store_.reserves[0].first.id;
  shared_->waiters().ownerStarted(id);
  ASSERT_EQ(store_.reserves.size(), 2u);
  for (TestLoop* l : {&patientLoop, &hastyLoop}) {  // parked in this order
    auto [req, done] = std::move(store_.reserves.front());
    store_.reserves.pop_front();
    done({StoreError::None, ReserveStatus::InFlight, *store_.stored});
    l->drain();
  }
  ASSERT_EQ(shared_->waiters().parked(), 2u);
  // The hasty one's deadline: a last look through the writer, still in flight, then 409.
  ASSERT_TRUE(hastyLoop.runUntil([&] { return !store_.reserves.empty(); }));
  {
    auto [req, done] = std::move(store_.reserves.front());
    store_.reserves.pop_front();
    done({StoreError::None, ReserveStatus::InFlight, *store_.stored});
    hastyLoop.drain();
  }
  ASSERT_TRUE(hasty.has_value());
  EXPECT_EQ(hasty->status, 409);
  EXPECT_EQ(shared_->waiters().parked(), 1u);
  // The owner finishes: the patient waiter is woken at once (no timer needed) and asks again.
  store_.reserves.clear();
  shared_->waiters().ownerFinished(id);
  patientLoop.drain();
  ASSERT_EQ(store_.reserves.size(), 1u) << "the patient waiter's entry was cancelled by the other";
  auto [req, done] = std::move(store_.reserves.front());
  store_.reserves.pop_front();
  done({StoreError::None, ReserveStatus::Completed, completed({201, {}, "paid"})});
  patientLoop.drain();
  ASSERT_TRUE(patient.has_value());
  EXPECT_EQ(patient->status, 201);
}

TEST_F(RequestCoreTest, TheRoutedPathIsTheForwardedPath) {
  start("GET", "/status//x/%70q?a=1;b", "");
  ASSERT_EQ(upstream_->sent.size(), 1u);
  EXPECT_EQ(upstream_->sent[0].first.path_and_query, "/status/x/pq?a=1;b");
}

TEST_F(RequestCoreTest, AmbiguousTargetsAreRefusedBeforeRouting) {
  for (const char* target : {"/v1/payments#frag", "/v1%2Fpayments", "/v1/payments/%2e%2e/status",
                             "/v1/payments;jsessionid=1", "/../internal/admin"}) {
    reply_.reset();
    start("POST", target);
    ASSERT_TRUE(reply_) << target;
    EXPECT_EQ(reply_->status, 400) << target;
    EXPECT_NE(reply_->body.find("bad-request"), std::string::npos);
  }
  EXPECT_TRUE(upstream_->sent.empty());
  EXPECT_TRUE(store_.reserves.empty());
}

TEST_F(RequestCoreTest, WithANetworkStoreTheReserveIsTheRead) {
  store_.local = false;
  store_.stored = completed({201, {}, "paid"});  // would be replayed by a local read
  start();
  ASSERT_EQ(store_.reserves.size(), 1u) << "no direct read: straight to reserve";
  completeReserve(ReserveStatus::Completed, *store_.stored);
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->field("Idempotent-Replayed"), "true");
}

TEST_F(RequestCoreTest, WithANetworkStoreAWokenWaiterReservesAgain) {
  store_.local = false;
  start();
  const std::string owner = shared_->newOwnerToken();
  const RecordId id = store_.reserves[0].first.id;
  shared_->waiters().ownerStarted(id);
  completeReserve(ReserveStatus::InFlight, inFlight(owner));
  EXPECT_EQ(shared_->waiters().parked(), 1u);
  shared_->waiters().ownerFinished(id);
  ASSERT_TRUE(loop_->runUntil([&] { return !store_.reserves.empty(); }));
  completeReserve(ReserveStatus::Completed, completed({201, {}, "paid"}));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(store_.lookups, 0);
}

TEST_F(RequestCoreTest, WithAStoreThatNotifiesAWaiterOnAnotherHostsOwnerWatchesIt) {
  store_.local = false;
  store_.notify = true;
  start();
  ASSERT_EQ(store_.reserves.size(), 1u);
  auto [req, done] = std::move(store_.reserves.front());
  store_.reserves.pop_front();
  ReserveResult r{StoreError::None, ReserveStatus::InFlight, inFlight("otherhost:1:abcd:0")};
  r.wake_seq = 7;
  done(std::move(r));
  loop_->drain();
  ASSERT_EQ(store_.watches.size(), 1u);
  EXPECT_EQ(store_.watches[0].since, 7u) << "watched from the reserve's wake sequence";
  EXPECT_TRUE(store_.reserves.empty());
  store_.watches[0].wake();  // the owner elsewhere recorded
  ASSERT_TRUE(loop_->runUntil([&] { return !store_.reserves.empty(); }));
  EXPECT_EQ(observer_.woken, std::vector<std::string>{"notify"});
  completeReserve(ReserveStatus::Completed, completed({201, {}, "paid"}));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(store_.unwatches, 0) << "a fired watch is not removed again";
}

TEST_F(RequestCoreTest, TheKeyMayComeFromTheBodyAndMustAgreeWithTheHeader) {
  IdempotencyConfig ic;
  ic.key_json_pointer = "/idempotency_id";
  build(ic);
  start("POST", "/v1/payments", "", R"({"idempotency_id":"body-key","amount":1})");
  ASSERT_EQ(store_.reserves.size(), 1u);
  EXPECT_EQ(store_.reserves[0].first.key, "body-key");
  start("POST", "/v1/payments", "body-key", R"({"idempotency_id":"body-key"})");
  ASSERT_EQ(store_.reserves.size(), 2u);
  EXPECT_EQ(store_.reserves[1].first.id, store_.reserves[0].first.id) << "same key, same record";
  start("POST", "/v1/payments", "other", R"({"idempotency_id":"body-key"})");
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 400);
  EXPECT_NE(reply_->body.find("idempotency-key-invalid"), std::string::npos);
  reply_.reset();
  start("POST", "/v1/payments", "", "not json");
  ASSERT_TRUE(reply_);
  EXPECT_NE(reply_->body.find("idempotency-key-missing"), std::string::npos);
}

TEST_F(RequestCoreTest, TheRoutesErrorBodyShapesItsErrorsAndKeepsRetryAfter) {
  IdempotencyConfig ic;
  ic.concurrent = ConcurrentMode::Reject;
  build(ic);
  auto c = std::make_shared<Config>(*config_);
  auto shape = std::make_shared<ErrorBody>();
  shape->templ = R"({"error":{"type":"idempotency_error","code":"{slug}"}})";
  c->routes[0].error_body = shape;
  config_ = c;
  loop_ = std::make_unique<TestLoop>(config_, *shared_, upstream_);
  start();
  completeReserve(ReserveStatus::InFlight, inFlight("otherhost:1:abcd:0"));
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->status, 409);
  EXPECT_EQ(reply_->body,
            R"({"error":{"type":"idempotency_error","code":"idempotency-key-in-use"}})");
  EXPECT_EQ(reply_->field("Content-Type"), "application/json");
  EXPECT_FALSE(reply_->field("Retry-After").empty());
}

}  // namespace
}  // namespace idem
