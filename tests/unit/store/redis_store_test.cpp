// RedisStore against a real redis-server (tests/support/redis-server.sh): the same semantics as
// the LMDB and PostgreSQL stores, with Redis's clock deciding leases and native expiry, plus
// what only this backend has: scripts the server forgets, memory limits, wake-ups published to
// other processes, a killed or frozen server, reservations whose answer was lost.
#include "store/redis/redis_store.h"

#include <gtest/gtest.h>

#include <chrono>
#include <future>
#include <thread>

#include "base/digest.h"
#include "store/redis/redis_scripts.h"
#include "support/redis_server.h"

namespace idem {
namespace {

using namespace std::chrono_literals;
using test::RedisServer;

RecordId idFor(const std::string& key) {
  return recordId("payments", {"Bearer t"}, key);
}

Fingerprint fp(uint8_t n) {
  Fingerprint f{};
  f.fill(n);
  return f;
}

ReserveRequest reserveReq(const std::string& key, const std::string& owner, uint8_t fpn = 1,
                          int64_t ttl_ms = 3'600'000, int64_t lease_ms = 60'000) {
  ReserveRequest r;
  r.id = idFor(key);
  r.fingerprint = fp(fpn);
  r.route = "payments";
  r.key = key;
  r.scope = {"Bearer t", std::string("\xff\0x", 3)};  // scope values need not be text
  r.owner = owner;
  r.ttl_ms = ttl_ms;
  r.lease_ms = lease_ms;
  r.abandoned_answer.status = 502;
  r.abandoned_answer.headers = {{"Content-Type", "application/problem+json"}};
  r.abandoned_answer.body = R"({"type":"urn:idemproxy:problem:outcome-unknown"})";
  return r;
}

HttpAnswer answer(int status, std::string body = std::string("ok\0\xfe", 4)) {
  HttpAnswer a;
  a.status = status;
  a.headers = {{"Set-Cookie", "a=1"}, {"Content-Type", "text/plain"}, {"Set-Cookie", "b=2"}};
  a.body = std::move(body);
  return a;
}

RecordRequest recordReq(const std::string& key, const std::string& owner, HttpAnswer a,
                        uint32_t flags = kFlagNone) {
  RecordRequest r;
  r.id = idFor(key);
  r.owner = owner;
  r.answer = std::move(a);
  r.flags = flags;
  return r;
}

RedisOptions options(const RedisServer& server, const std::string& prefix,
                     std::chrono::milliseconds timeout = 2s) {
  RedisOptions o;
  o.url = server.url();
  o.key_prefix = prefix;
  o.timeout = timeout;
  o.max_backoff = 100ms;
  o.check_settings = false;
  return o;
}

std::unique_ptr<RedisStore> open(const RedisOptions& o) {
  std::string error;
  auto s = openRedisStore(o, error);
  EXPECT_NE(s, nullptr) << error;
  return s;
}

// Waits for `cond`, looking every 10 ms, for at most `limit` (a bound, not a timing).
template <class F>
bool eventually(F cond, std::chrono::milliseconds limit = 10s) {
  for (auto end = std::chrono::steady_clock::now() + limit;
       std::chrono::steady_clock::now() < end;) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    server_ = RedisServer::shared(error);
    if (server_ == nullptr) GTEST_SKIP() << error;
    prefix_ = RedisServer::freshPrefix();
    store_ = open(options(*server_, prefix_));
    ASSERT_NE(store_, nullptr);
  }
  RedisServer* server_ = nullptr;
  std::string prefix_;
  std::unique_ptr<RedisStore> store_;
};

TEST_F(RedisStoreTest, ReservesOnTheServerClockAndReportsInFlight) {
  EXPECT_FALSE(store_->localReads());
  const auto before = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  ReserveResult a = reserveSync(*store_, reserveReq("k1", "A"));
  ASSERT_EQ(a.error, StoreError::None);
  EXPECT_EQ(a.status, ReserveStatus::Won);
  EXPECT_EQ(a.record.owner, "A");
  EXPECT_EQ(a.record.lease_until_ms - a.record.reserved_at_ms, 60'000);
  EXPECT_EQ(a.record.expires_at_ms - a.record.reserved_at_ms, 3'600'000);
  EXPECT_NEAR(static_cast<double>(a.record.reserved_at_ms), static_cast<double>(before), 5'000);
  EXPECT_EQ(a.record.scope, reserveReq("k1", "A").scope);
  ReserveResult b = reserveSync(*store_, reserveReq("k1", "B"));
  EXPECT_EQ(b.status, ReserveStatus::InFlight);
  EXPECT_EQ(b.record.owner, "A");
  EXPECT_EQ(b.record.lease_until_ms, a.record.lease_until_ms);
}

TEST_F(RedisStoreTest, RecordThenReserveReplaysTheAnswerByteForByte) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A")).status, ReserveStatus::Won);
  RecordResult r = recordSync(*store_, recordReq("k", "A", answer(201)));
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, RecordStatus::Recorded);
  ReserveResult again = reserveSync(*store_, reserveReq("k", "B"));
  EXPECT_EQ(again.status, ReserveStatus::Completed);
  EXPECT_EQ(again.record.answer, answer(201));
  EXPECT_EQ(again.record.state, RecordState::Completed);
  ASSERT_TRUE(store_->lookup(idFor("k")).has_value());
  EXPECT_EQ(store_->lookup(idFor("k"))->answer, answer(201));
  bool seen = false;
  EXPECT_TRUE(store_->visit(idFor("k"), [&](const RecordView& v) {
    seen = true;
    EXPECT_EQ(v.status, 201);
    EXPECT_EQ(v.body, answer(201).body);
  }));
  EXPECT_TRUE(seen);
}

TEST_F(RedisStoreTest, MismatchWhetherInFlightOrCompleted) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 1)).status, ReserveStatus::Won);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "B", 2)).status, ReserveStatus::Mismatch);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "B", 2)).status, ReserveStatus::Mismatch);
}

TEST_F(RedisStoreTest, RecordOnceByTheOwnerOnly) {
  EXPECT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Missing);
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A")).status, ReserveStatus::Won);
  RecordResult other = recordSync(*store_, recordReq("k", "B", answer(500)));
  EXPECT_EQ(other.status, RecordStatus::AlreadyFinal);  // not the owner: nothing written
  EXPECT_EQ(other.record.state, RecordState::InFlight);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  RecordResult second = recordSync(*store_, recordReq("k", "A", answer(500)));
  EXPECT_EQ(second.status, RecordStatus::AlreadyFinal);
  EXPECT_EQ(second.record.answer.status, 200);
}

TEST_F(RedisStoreTest, ReleaseOnlyByOwnerAndOnlyInFlight) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A")).status, ReserveStatus::Won);
  EXPECT_FALSE(releaseSync(*store_, idFor("k"), "B").changed);
  EXPECT_TRUE(releaseSync(*store_, idFor("k"), "A").changed);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "B")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "B", answer(200))).status, RecordStatus::Recorded);
  EXPECT_FALSE(releaseSync(*store_, idFor("k"), "B").changed);  // completed: kept
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "C")).status, ReserveStatus::Completed);
}

TEST_F(RedisStoreTest, ForgetDeletesWhateverStandsAndListShowsAll) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("a", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(reserveSync(*store_, reserveReq("b", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store_, recordReq("b", "A", answer(200))).status, RecordStatus::Recorded);
  auto all = store_->list();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_LT(all[0].first, all[1].first);
  EXPECT_TRUE(forgetSync(*store_, idFor("b")).changed);
  EXPECT_FALSE(forgetSync(*store_, idFor("b")).changed);
  EXPECT_TRUE(forgetSync(*store_, idFor("a")).changed);
  EXPECT_TRUE(store_->list().empty());
}

TEST_F(RedisStoreTest, AbandonedLeaseFailRecordsOutcomeUnknownTheOwnerMayStillSettle) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 1, 3'600'000, 200)).status,
            ReserveStatus::Won);
  std::this_thread::sleep_for(300ms);
  ReserveResult r = reserveSync(*store_, reserveReq("k", "B"));
  EXPECT_EQ(r.status, ReserveStatus::Completed);
  EXPECT_EQ(r.record.flags, kFlagProxyError | kFlagOutcomeUnknown);
  EXPECT_EQ(r.record.answer, reserveReq("k", "B").abandoned_answer);
  EXPECT_EQ(r.record.owner, "A");
  // unknown → known, once, by the owner only
  EXPECT_EQ(recordSync(*store_, recordReq("k", "B", answer(200))).status,
            RecordStatus::AlreadyFinal);
  EXPECT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_EQ(recordSync(*store_, recordReq("k", "A", answer(500))).status,
            RecordStatus::AlreadyFinal);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "C")).record.answer.status, 200);
}

TEST_F(RedisStoreTest, AbandonedLeaseRetryTakesOver) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 1, 3'600'000, 200)).status,
            ReserveStatus::Won);
  ReserveRequest retry = reserveReq("k", "B");
  retry.retry_abandoned = true;
  EXPECT_EQ(reserveSync(*store_, retry).status, ReserveStatus::InFlight);  // lease still live
  std::this_thread::sleep_for(300ms);
  ReserveResult r = reserveSync(*store_, retry);
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_EQ(r.record.owner, "B");
  EXPECT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status,
            RecordStatus::AlreadyFinal);  // the old owner lost it
  EXPECT_EQ(recordSync(*store_, recordReq("k", "B", answer(200))).status, RecordStatus::Recorded);
}

TEST_F(RedisStoreTest, ManyStoresRacingForOneKeyExactlyOneWins) {
  auto other = open(options(*server_, prefix_));
  ASSERT_NE(other, nullptr);
  std::vector<std::future<ReserveResult>> results;
  for (int i = 0; i < 30; ++i) {
    std::promise<ReserveResult> p;
    results.push_back(p.get_future());
    Store& s = i % 2 == 0 ? static_cast<Store&>(*store_) : *other;
    s.reserve(reserveReq("hot", "owner" + std::to_string(i)),
              [p = std::make_shared<std::promise<ReserveResult>>(std::move(p))](ReserveResult r) {
                p->set_value(std::move(r));
              });
  }
  int won = 0, inflight = 0;
  for (auto& f : results) {
    ReserveResult r = f.get();
    ASSERT_EQ(r.error, StoreError::None);
    won += r.status == ReserveStatus::Won ? 1 : 0;
    inflight += r.status == ReserveStatus::InFlight ? 1 : 0;
  }
  EXPECT_EQ(won, 1);
  EXPECT_EQ(inflight, 29);
}

TEST_F(RedisStoreTest, OneHashPerRecordUnderAHashTagWithNativeExpiry) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 1, 300, 300)).status, ReserveStatus::Won);
  const std::string key = prefix_ + "{" + redis::hexId(idFor("k")) + "}";
  EXPECT_EQ(server_->command({"TYPE", key}), "hash");
  const int64_t pttl = std::stoll(server_->command({"PTTL", key}));
  EXPECT_GT(pttl, 0);
  EXPECT_LE(pttl, 300);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_GT(std::stoll(server_->command({"PTTL", key})), 0);  // recording keeps the expiry
  // Another key under the same prefix is not a record: list skips it.
  server_->command({"SET", prefix_ + "other", "x"});
  ASSERT_EQ(store_->list().size(), 1u);
  EXPECT_TRUE(eventually([&] { return !store_->lookup(idFor("k")).has_value(); }));
  EXPECT_TRUE(store_->list().empty());  // Redis deleted it: nothing to sweep
  WriteResult s = sweepSync(*store_, 100);
  EXPECT_EQ(s.error, StoreError::None);
  EXPECT_EQ(s.removed, 0u);
  ReserveResult r = reserveSync(*store_, reserveReq("k", "B", 2));  // even another fingerprint
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_EQ(r.record.owner, "B");
}

TEST_F(RedisStoreTest, StatsCountTheRecordsUnderThePrefixInTheBackground) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("a", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(reserveSync(*store_, reserveReq("b", "A")).status, ReserveStatus::Won);
  server_->command({"SET", prefix_ + "other", "x"});  // not a record
  EXPECT_TRUE(eventually([&] { return store_->stats().records == 2; }));
  EXPECT_TRUE(eventually([&] { return store_->stats().bytes_used > 0; }));
  ASSERT_TRUE(forgetSync(*store_, idFor("a")).changed);
  EXPECT_TRUE(eventually([&] { return store_->stats().records == 1; }));
  store_->flush();  // internal counting is not waited for
}

TEST_F(RedisStoreTest, ScriptsForgottenByTheServerAreSentWhole) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A")).status, ReserveStatus::Won);
  EXPECT_EQ(server_->command({"SCRIPT", "FLUSH"}), "OK");
  EXPECT_EQ(server_->command({"SCRIPT", "EXISTS", redis::recordScript().sha1}), "array:1");
  RecordResult r = recordSync(*store_, recordReq("k", "A", answer(201)));
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, RecordStatus::Recorded);
  server_->command({"SCRIPT", "FLUSH"});
  ReserveResult again = reserveSync(*store_, reserveReq("k", "B"));
  ASSERT_EQ(again.error, StoreError::None);
  EXPECT_EQ(again.status, ReserveStatus::Completed);
  EXPECT_EQ(again.record.answer, answer(201));
  server_->command({"SCRIPT", "FLUSH"});
  EXPECT_TRUE(releaseSync(*store_, idFor("none"), "A").error == StoreError::None);
  server_->command({"SCRIPT", "FLUSH"});
  EXPECT_TRUE(forgetSync(*store_, idFor("k")).changed);
}

// A waiter in another process is woken by the owner's PUBLISH, which is sent only when someone
// waits; a message that arrives between the reserve and the watch is not lost.
TEST_F(RedisStoreTest, WakeUpsCrossProcessesAndAreNeverLost) {
  auto other = open(options(*server_, prefix_));
  ASSERT_NE(other, nullptr);
  ASSERT_TRUE(eventually([&] { return store_->notifies() && other->notifies(); }));
  // Nobody waits on "quiet": its completion publishes nothing.
  ASSERT_EQ(reserveSync(*store_, reserveReq("quiet", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store_, recordReq("quiet", "A", answer(200))).status,
            RecordStatus::Recorded);
  // A waiter parks on "hot" in the other process.
  ASSERT_EQ(reserveSync(*store_, reserveReq("hot", "A")).status, ReserveStatus::Won);
  ReserveResult waiting = reserveSync(*other, reserveReq("hot", "B"));
  ASSERT_EQ(waiting.status, ReserveStatus::InFlight);
  std::promise<void> woken;
  const uint64_t h = other->watch(idFor("hot"), waiting.wake_seq, [&woken] { woken.set_value(); });
  ASSERT_NE(h, 0u);
  auto f = woken.get_future();
  ASSERT_EQ(recordSync(*store_, recordReq("hot", "A", answer(201))).status, RecordStatus::Recorded);
  EXPECT_EQ(f.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(other->wakeMessages(), 1u);  // "quiet" (published first, if at all) sent none
  // The lost wake-up window: the owner completes after the reserve, before the watch.
  ASSERT_EQ(reserveSync(*store_, reserveReq("late", "A")).status, ReserveStatus::Won);
  ReserveResult w2 = reserveSync(*other, reserveReq("late", "B"));
  ASSERT_EQ(w2.status, ReserveStatus::InFlight);
  ASSERT_TRUE(releaseSync(*store_, idFor("late"), "A").changed);
  ASSERT_TRUE(eventually([&] { return other->wakeMessages() == 2; }));
  bool now = false;
  other->watch(idFor("late"), w2.wake_seq, [&now] { now = true; });
  EXPECT_TRUE(now);
  // A watch that is dropped never fires.
  ASSERT_EQ(reserveSync(*store_, reserveReq("dropped", "A")).status, ReserveStatus::Won);
  ReserveResult w3 = reserveSync(*other, reserveReq("dropped", "B"));
  bool fired = false;
  const uint64_t h3 = other->watch(idFor("dropped"), w3.wake_seq, [&fired] { fired = true; });
  other->unwatch(idFor("dropped"), h3);
  ASSERT_TRUE(releaseSync(*store_, idFor("dropped"), "A").changed);
  ASSERT_TRUE(eventually([&] { return other->wakeMessages() == 3; }));
  EXPECT_FALSE(fired);
}

TEST(RedisStoreOpen, ErrorsNeverHoldThePassword) {
  RedisOptions o;
  o.url = "redis://:hunter2@127.0.0.1:1/0";
  o.timeout = 500ms;
  std::string error;
  EXPECT_EQ(openRedisStore(o, error), nullptr);
  EXPECT_EQ(error.find("hunter2"), std::string::npos) << error;
  EXPECT_NE(error.find("redis://:***@127.0.0.1:1/0"), std::string::npos) << error;
}

// Used memory over maxmemory: every write script is refused as a whole (503), nothing is
// evicted; once memory is back, the records are all there.
TEST(RedisStoreFailure, OutOfMemoryRefusesAndNeverEvicts) {
  std::string error;
  auto server = RedisServer::start(error);
  if (!server) GTEST_SKIP() << error;
  auto store = open(options(*server, "oom:"));
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  ASSERT_EQ(server->command({"CONFIG", "SET", "maxmemory", "1"}), "OK");
  ReserveResult r = reserveSync(*store, reserveReq("k2", "A"));
  EXPECT_EQ(r.error, StoreError::Full);
  EXPECT_NE(store->unavailableReason(), "");
  EXPECT_TRUE(store->lookup(idFor("k")).has_value());  // not evicted
  ASSERT_EQ(server->command({"CONFIG", "SET", "maxmemory", "0"}), "OK");
  // Ready again without a request (a proxy that is not ready gets none): the store probes.
  EXPECT_TRUE(eventually([&] { return store->unavailableReason().empty(); }));
  ReserveResult again = reserveSync(*store, reserveReq("k", "B"));
  ASSERT_EQ(again.error, StoreError::None);
  EXPECT_EQ(again.status, ReserveStatus::Completed);
  EXPECT_FALSE(store->lookup(idFor("k2")).has_value());  // the refused reserve wrote nothing
}

// min_replicas with no replica: WAIT falls short, the operation fails (503) and the
// reservation it made is given back.
TEST(RedisStoreFailure, TooFewReplicasFailsAndReleases) {
  std::string error;
  auto server = RedisServer::start(error);
  if (!server) GTEST_SKIP() << error;
  RedisOptions o = options(*server, "wait:", 500ms);
  o.min_replicas = 1;
  auto store = open(o);
  ASSERT_NE(store, nullptr);
  ReserveResult r = reserveSync(*store, reserveReq("k", "A"));
  EXPECT_EQ(r.error, StoreError::Io);
  EXPECT_TRUE(eventually([&] { return store->pendingReleases() == 0; }));
  EXPECT_TRUE(eventually([&] { return !store->lookup(idFor("k")).has_value(); }));
}

// Killed (-9), then started again from its append-only file: operations fail with Io while it
// is gone, the store reports not ready, reconnects by itself, and recorded answers replay.
TEST(RedisStoreFailure, KilledServerFailsThenRecoversFromTheAof) {
  std::string error;
  auto server = RedisServer::start(error);
  if (!server) GTEST_SKIP() << error;
  auto store = open(options(*server, "kill:", 1s));
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  ASSERT_TRUE(server->kill());
  EXPECT_EQ(reserveSync(*store, reserveReq("k2", "A")).error, StoreError::Io);
  EXPECT_TRUE(eventually([&] {
    (void)reserveSync(*store, reserveReq("probe", "A"));
    return !store->ready();
  }));
  ASSERT_TRUE(server->restart());
  ReserveResult after;
  EXPECT_TRUE(eventually([&] {
    after = reserveSync(*store, reserveReq("k", "B"));
    return after.error == StoreError::None;
  }));
  EXPECT_EQ(after.status, ReserveStatus::Completed);
  EXPECT_EQ(after.record.answer, answer(200));
  EXPECT_TRUE(store->ready());
}

// A frozen server (SIGSTOP): operations complete with Io once their timeout passes; a reserve
// whose answer was lost is released by owner when the server answers again.
TEST(RedisStoreFailure, HungServerTimesOutAndLostReservationsAreReleased) {
  std::string error;
  auto server = RedisServer::start(error);
  if (!server) GTEST_SKIP() << error;
  auto store = open(options(*server, "hung:", 500ms));
  ASSERT_NE(store, nullptr);
  ASSERT_EQ(reserveSync(*store, reserveReq("warm", "A")).status, ReserveStatus::Won);
  server->freeze(true);
  ReserveResult r = reserveSync(*store, reserveReq("k", "A"));
  EXPECT_EQ(r.error, StoreError::Io);
  EXPECT_EQ(store->pendingReleases(), 1u);
  server->freeze(false);
  ReserveResult b;
  EXPECT_TRUE(eventually([&] {
    if (store->pendingReleases() != 0) return false;
    b = reserveSync(*store, reserveReq("k", "B"));
    return b.error == StoreError::None;
  }));
  EXPECT_EQ(b.status, ReserveStatus::Won);
}

}  // namespace
}  // namespace idem
