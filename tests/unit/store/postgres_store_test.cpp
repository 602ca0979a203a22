// PostgresStore against a real PostgreSQL (tests/support/pg-cluster.sh): the same semantics as
// the LMDB store (store_test.cpp), with the database's clock deciding leases and expiry, plus
// what only a network store has: schema versions, many connections and processes racing,
// a stopped or frozen server, reservations whose answer was lost.
#include "store/postgres/postgres_store.h"

#include <gtest/gtest.h>
#include <libpq-fe.h>

#include <chrono>
#include <future>
#include <thread>

#include "base/digest.h"
#include "store/postgres/postgres_sql.h"
#include "support/pg_cluster.h"

namespace idem {
namespace {

using namespace std::chrono_literals;
using test::PgCluster;

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

class PostgresStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string error;
    cluster_ = PgCluster::shared(error);
    if (cluster_ == nullptr) GTEST_SKIP() << error;
    conninfo_ = cluster_->freshSchema();
    store_ = open(conninfo_);
    ASSERT_NE(store_, nullptr);
  }
  std::unique_ptr<PostgresStore> open(const std::string& conninfo,
                                      std::chrono::milliseconds timeout = 2s) {
    PostgresOptions o;
    o.conninfo = conninfo;
    o.connections = 3;
    o.timeout = timeout;
    std::string error;
    auto s = openPostgresStore(o, error);
    EXPECT_NE(s, nullptr) << error;
    return s;
  }
  // Runs SQL on the test's schema.
  void sql(const std::string& statement) {
    PGconn* c = PQconnectdb(conninfo_.c_str());
    PGresult* r = PQexec(c, statement.c_str());
    EXPECT_TRUE(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK)
        << PQerrorMessage(c);
    PQclear(r);
    PQfinish(c);
  }
  PgCluster* cluster_ = nullptr;
  std::string conninfo_;
  std::unique_ptr<PostgresStore> store_;
};

TEST_F(PostgresStoreTest, ReservesOnTheDatabaseClockAndReportsInFlight) {
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

TEST_F(PostgresStoreTest, RecordThenReserveReplaysTheAnswerByteForByte) {
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

TEST_F(PostgresStoreTest, MismatchWhetherInFlightOrCompleted) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 1)).status, ReserveStatus::Won);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "B", 2)).status, ReserveStatus::Mismatch);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "B", 2)).status, ReserveStatus::Mismatch);
}

TEST_F(PostgresStoreTest, RecordOnceByTheOwnerOnly) {
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

TEST_F(PostgresStoreTest, ReleaseOnlyByOwnerAndOnlyInFlight) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A")).status, ReserveStatus::Won);
  EXPECT_FALSE(releaseSync(*store_, idFor("k"), "B").changed);
  EXPECT_TRUE(releaseSync(*store_, idFor("k"), "A").changed);
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "B")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "B", answer(200))).status, RecordStatus::Recorded);
  EXPECT_FALSE(releaseSync(*store_, idFor("k"), "B").changed);  // completed: kept
  EXPECT_EQ(reserveSync(*store_, reserveReq("k", "C")).status, ReserveStatus::Completed);
}

TEST_F(PostgresStoreTest, ForgetDeletesWhateverStandsAndListShowsAll) {
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

TEST_F(PostgresStoreTest, ExpiredRecordsReadAsAbsentAndAreTakenOver) {
  ASSERT_EQ(reserveSync(*store_, reserveReq("k", "A", 1, 300, 300)).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store_, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_TRUE(store_->lookup(idFor("k")).has_value());
  std::this_thread::sleep_for(400ms);  // the database's clock must pass the expiry
  EXPECT_FALSE(store_->lookup(idFor("k")).has_value());
  EXPECT_EQ(store_->list().size(), 1u);                             // an operator still sees it
  ReserveResult r = reserveSync(*store_, reserveReq("k", "B", 2));  // even another fingerprint
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_EQ(r.record.owner, "B");
  EXPECT_TRUE(r.record.answer.body.empty());
}

TEST_F(PostgresStoreTest, SweepDeletesOnlyExpiredBoundedByLimit) {
  for (int i = 0; i < 5; ++i) {
    const std::string k = "old" + std::to_string(i);
    ASSERT_EQ(reserveSync(*store_, reserveReq(k, "A", 1, 200)).status, ReserveStatus::Won);
  }
  ASSERT_EQ(reserveSync(*store_, reserveReq("new", "A")).status, ReserveStatus::Won);
  std::this_thread::sleep_for(300ms);
  WriteResult s = sweepSync(*store_, 3);
  ASSERT_EQ(s.error, StoreError::None);
  EXPECT_EQ(s.removed, 3u);
  EXPECT_EQ(store_->stats().records, 3u);
  EXPECT_EQ(sweepSync(*store_, 100).removed, 2u);
  EXPECT_EQ(store_->stats().records, 1u);
  EXPECT_GT(store_->stats().bytes_used, 0u);
  EXPECT_EQ(sweepSync(*store_, 100).removed, 0u);
  EXPECT_TRUE(store_->lookup(idFor("new")).has_value());
}

TEST_F(PostgresStoreTest, AbandonedLeaseFailRecordsOutcomeUnknownTheOwnerMayStillSettle) {
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

TEST_F(PostgresStoreTest, AbandonedLeaseRetryTakesOver) {
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

TEST_F(PostgresStoreTest, ManyStoresRacingForOneKeyExactlyOneWins) {
  auto other = open(conninfo_);
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

TEST_F(PostgresStoreTest, SchemaIsCreatedOnceAndAnUnknownVersionIsRefused) {
  EXPECT_NE(open(conninfo_), nullptr);  // a second start finds version 1
  sql("UPDATE idemproxy_schema_version SET version = 99");
  PostgresOptions o;
  o.conninfo = conninfo_;
  std::string error;
  EXPECT_EQ(openPostgresStore(o, error), nullptr);
  EXPECT_NE(error.find("schema version 99"), std::string::npos) << error;
}

TEST_F(PostgresStoreTest, ThePasswordNeverAppearsInMessages) {
  EXPECT_EQ(pg::maskConninfo("postgresql://u:hunter2@/db?host=/nonexistent"),
            "user=u password=*** dbname=db host=/nonexistent");
  EXPECT_EQ(pg::maskConninfo("host=/nonexistent password=hunter2"),
            "password=*** host=/nonexistent");
  PostgresOptions o;
  o.conninfo = "postgresql://u:hunter2@/db?host=/nonexistent";
  std::string error;
  EXPECT_EQ(openPostgresStore(o, error), nullptr);
  EXPECT_EQ(error.find("hunter2"), std::string::npos) << error;
  EXPECT_NE(error.find("password=***"), std::string::npos) << error;
}

// Wake-ups across processes: B's waiter hears of A's record through LISTEN/NOTIFY, including a
// record that lands between B's reserve and B's watch (no lost wake-up), and a watch made after
// the record it waited for fires at once only if that record came after its reserve.
TEST_F(PostgresStoreTest, AnOwnersRecordWakesWatchersInAnotherStoreEvenBeforeTheyWatch) {
  auto other = open(conninfo_);
  ASSERT_NE(other, nullptr);
  auto listening = [](PostgresStore& s) {
    for (auto end = std::chrono::steady_clock::now() + 10s;
         !s.notifies() && std::chrono::steady_clock::now() < end;) {
      std::this_thread::sleep_for(10ms);  // the listener connects in the background
    }
    return s.notifies();
  };
  ASSERT_TRUE(listening(*store_));
  ASSERT_TRUE(listening(*other));
  ASSERT_EQ(reserveSync(*store_, reserveReq("w1", "A")).status, ReserveStatus::Won);
  ReserveResult inFlight = reserveSync(*other, reserveReq("w1", "B"));
  ASSERT_EQ(inFlight.status, ReserveStatus::InFlight);

  // A records before B watches: B's watch, made with the sequence of its reserve, fires at once.
  const uint64_t heard = other->notificationsHeard();
  ASSERT_EQ(recordSync(*store_, recordReq("w1", "A", answer(201))).status, RecordStatus::Recorded);
  for (auto end = std::chrono::steady_clock::now() + 10s;
       other->notificationsHeard() == heard && std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(5ms);  // delivered after A's commit, on B's listener
  }
  ASSERT_GT(other->notificationsHeard(), heard);
  std::promise<void> late;
  other->watch(idFor("w1"), inFlight.wake_seq, [&late] { late.set_value(); });
  EXPECT_EQ(late.get_future().wait_for(0s), std::future_status::ready);

  // A watch made before the record fires when it lands; one on another key does not.
  ASSERT_EQ(reserveSync(*store_, reserveReq("w2", "A")).status, ReserveStatus::Won);
  ReserveResult w2 = reserveSync(*other, reserveReq("w2", "B"));
  ASSERT_EQ(w2.status, ReserveStatus::InFlight);
  std::promise<void> woken;
  std::atomic<int> unrelated{0};
  other->watch(idFor("w2"), w2.wake_seq, [&woken] { woken.set_value(); });
  other->watch(idFor("w3"), w2.wake_seq, [&unrelated] { ++unrelated; });
  auto fired = woken.get_future();
  EXPECT_EQ(fired.wait_for(0s), std::future_status::timeout);
  ASSERT_EQ(releaseSync(*store_, idFor("w2"), "A").changed, true);  // a release wakes too
  EXPECT_EQ(fired.wait_for(10s), std::future_status::ready);
  EXPECT_EQ(unrelated.load(), 0);
}

// The database is down when the store opens: with start_unreachable the store opens anyway,
// not ready, failing every operation at once; when the database arrives the schema is created
// and the store serves.
TEST(PostgresStoreFailure, OpensNotReadyWhileTheDatabaseIsDownThenCreatesTheSchema) {
  std::string error;
  auto cluster = PgCluster::start(error);
  if (!cluster) GTEST_SKIP() << error;
  const std::string conninfo = cluster->freshSchema();
  ASSERT_TRUE(cluster->stop("immediate"));
  PostgresOptions o;
  o.conninfo = conninfo;
  o.connections = 2;
  o.timeout = 1s;
  o.max_backoff = 100ms;
  EXPECT_EQ(openPostgresStore(o, error), nullptr);  // the command line: fail
  o.start_unreachable = true;
  error.clear();
  auto store = openPostgresStore(o, error);
  ASSERT_NE(store, nullptr) << error;
  EXPECT_NE(error.find("cannot connect"), std::string::npos) << error;
  EXPECT_FALSE(store->ready());
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "A")).error, StoreError::Io);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 500ms);  // fails fast, no timeout waited
  ASSERT_TRUE(cluster->restart());
  ReserveResult r;
  for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;) {
    r = reserveSync(*store, reserveReq("k", "A"));
    if (r.error == StoreError::None) break;
    std::this_thread::sleep_for(50ms);  // the reconnect back-off is time-based
  }
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_TRUE(store->ready());
  PGconn* c = PQconnectdb(conninfo.c_str());
  PGresult* v = PQexec(c, "SELECT version FROM idemproxy_schema_version");
  ASSERT_EQ(PQresultStatus(v), PGRES_TUPLES_OK) << PQerrorMessage(c);
  EXPECT_EQ(std::atoi(PQgetvalue(v, 0, 0)), pg::kSchemaVersion);
  PQclear(v);
  PQfinish(c);
}

// The server stopped, then started again: operations fail fast with Io (never hang), the store
// reports not ready, then reconnects by itself; records survive the restart.
TEST(PostgresStoreFailure, StoppedDatabaseFailsFastThenRecovers) {
  std::string error;
  auto cluster = PgCluster::start(error);
  if (!cluster) GTEST_SKIP() << error;
  PostgresOptions o;
  o.conninfo = cluster->conninfo();
  o.connections = 2;
  o.timeout = 1s;
  o.max_backoff = 200ms;
  auto store = openPostgresStore(o, error);
  ASSERT_NE(store, nullptr) << error;
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  ASSERT_TRUE(cluster->stop("immediate"));
  const auto t0 = std::chrono::steady_clock::now();
  ReserveResult r = reserveSync(*store, reserveReq("k2", "A"));
  EXPECT_EQ(r.error, StoreError::Io);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, 1500ms);
  // Not ready once every connection has noticed (poll with a deadline).
  for (auto end = std::chrono::steady_clock::now() + 5s;
       store->ready() && std::chrono::steady_clock::now() < end;) {
    (void)reserveSync(*store, reserveReq("probe", "A"));
  }
  EXPECT_FALSE(store->ready());
  ASSERT_TRUE(cluster->restart());
  ReserveResult after;
  for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;) {
    after = reserveSync(*store, reserveReq("k", "B"));
    if (after.error == StoreError::None) break;
    std::this_thread::sleep_for(50ms);  // the reconnect back-off is time-based
  }
  EXPECT_EQ(after.error, StoreError::None);
  EXPECT_EQ(after.status, ReserveStatus::Completed);  // survived the restart
  EXPECT_EQ(after.record.answer, answer(200));
  EXPECT_TRUE(store->ready());
}

// A frozen server (SIGSTOP): every operation completes with Io within the timeout; a reserve
// whose answer was lost is released by owner once the server answers again, so the key is free.
TEST(PostgresStoreFailure, HungDatabaseTimesOutAndLostReservationsAreReleased) {
  std::string error;
  auto cluster = PgCluster::start(error);
  if (!cluster) GTEST_SKIP() << error;
  PostgresOptions o;
  o.conninfo = cluster->conninfo();
  o.connections = 1;
  o.timeout = 500ms;
  o.max_backoff = 100ms;
  auto store = openPostgresStore(o, error);
  ASSERT_NE(store, nullptr) << error;
  ASSERT_EQ(reserveSync(*store, reserveReq("warm", "A")).status, ReserveStatus::Won);
  cluster->freeze(true);
  const auto t0 = std::chrono::steady_clock::now();
  ReserveResult r = reserveSync(*store, reserveReq("k", "A"));
  const auto took = std::chrono::steady_clock::now() - t0;
  EXPECT_EQ(r.error, StoreError::Io);
  EXPECT_GE(took, 450ms);
  EXPECT_LT(took, 1500ms);
  EXPECT_EQ(store->pendingReleases(), 1u);
  cluster->freeze(false);
  // The frozen backend may have reserved "k" for A; once released, B wins it at once.
  ReserveResult b;
  for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;) {
    if (store->pendingReleases() == 0) {
      b = reserveSync(*store, reserveReq("k", "B"));
      if (b.error == StoreError::None) break;
    }
    std::this_thread::sleep_for(50ms);
  }
  EXPECT_EQ(store->pendingReleases(), 0u);
  EXPECT_EQ(b.status, ReserveStatus::Won);
}

// A reserve whose answer was lost may still be running on the server: here it waits behind
// another transaction's uncommitted insert of the same key, past the store's timeout. Its
// release must not run before that statement ends, or the reserve commits afterwards and
// leaves a reservation nobody owns (the client's retry would wait out the lease and get a
// false outcome-unknown). The release ends the lost reserve's backend first.
TEST_F(PostgresStoreTest, ALostReserveStillRunningOnTheServerCannotCommitAfterItsRelease) {
  PostgresOptions o;
  o.conninfo = conninfo_;
  o.connections = 1;
  o.timeout = 500ms;
  o.max_backoff = 50ms;
  std::string error;
  auto store = openPostgresStore(o, error);
  ASSERT_NE(store, nullptr) << error;

  auto exec = [](PGconn* c, const std::string& statement) {
    PGresult* r = PQexec(c, statement.c_str());
    const bool ok = PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK;
    std::string out = ok && PQntuples(r) > 0 ? PQgetvalue(r, 0, 0) : "";
    EXPECT_TRUE(ok) << PQerrorMessage(c);
    PQclear(r);
    return out;
  };
  std::string hex;
  for (uint8_t b : idFor("raced")) {
    static const char* digits = "0123456789abcdef";
    hex += digits[b >> 4];
    hex += digits[b & 15];
  }
  PGconn* blocker = PQconnectdb(conninfo_.c_str());
  exec(blocker, "BEGIN");
  exec(blocker,
       "INSERT INTO idemproxy_records (id, state, reserved_at, lease_until, expires_at, owner, "
       "fingerprint, route, key, scope) VALUES ('\\x" +
           hex + "', 1, 0, 0, 0, 'T', '', 'payments', 'raced', '')");

  // A's reserve waits on the blocker's row, times out, and its answer is lost.
  EXPECT_EQ(reserveSync(*store, reserveReq("raced", "A")).error, StoreError::Io);
  for (auto end = std::chrono::steady_clock::now() + 10s;
       store->pendingReleases() > 0 && std::chrono::steady_clock::now() < end;) {
    std::this_thread::sleep_for(10ms);  // released on the next connection
  }
  ASSERT_EQ(store->pendingReleases(), 0u);
  exec(blocker, "ROLLBACK");  // the blocker goes away: a reserve still waiting would now win
  PGconn* watcher = PQconnectdb(conninfo_.c_str());
  for (auto end = std::chrono::steady_clock::now() + 10s; std::chrono::steady_clock::now() < end;) {
    if (exec(watcher,
             "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND "
             "query LIKE '%idemproxy_reserve(%' AND pid <> pg_backend_pid()") == "0") {
      break;
    }
    std::this_thread::sleep_for(10ms);
  }
  PQfinish(watcher);
  PQfinish(blocker);
  // Nobody holds the key: B wins it at once.
  ReserveResult b = reserveSync(*store, reserveReq("raced", "B"));
  ASSERT_EQ(b.error, StoreError::None);
  EXPECT_EQ(b.status, ReserveStatus::Won) << "owner " << b.record.owner;
}

}  // namespace
}  // namespace idem
