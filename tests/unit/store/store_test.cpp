#include <fcntl.h>
#include <gtest/gtest.h>
#include <lmdb.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <latch>
#include <set>
#include <thread>

#include "base/clock.h"
#include "base/digest.h"
#include "store/lmdb/lmdb_store.h"

namespace idem {
namespace {

using namespace std::chrono_literals;

// A fresh directory per test, removed afterwards.
class TempDir {
 public:
  TempDir() {
    const char* base = std::getenv("TMPDIR");
    std::string tmpl =
        std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/idemproxy-store-XXXXXX";
    if (mkdtemp(tmpl.data()) == nullptr) std::abort();
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

Fingerprint fp(uint8_t n) {
  Fingerprint f{};
  f.fill(n);
  return f;
}

RecordId idFor(const std::string& key) {
  return recordId("payments", {"Bearer t"}, key);
}

ReserveRequest reserveReq(const std::string& key, const std::string& owner, uint8_t fpn = 1,
                          int64_t ttl_ms = 24 * 3600 * 1000, int64_t lease_ms = 60'000) {
  ReserveRequest r;
  r.id = idFor(key);
  r.fingerprint = fp(fpn);
  r.route = "payments";
  r.key = key;
  r.scope = {"Bearer t"};
  r.owner = owner;
  r.ttl_ms = ttl_ms;
  r.lease_ms = lease_ms;
  r.abandoned_answer.status = 502;
  r.abandoned_answer.headers = {{"Content-Type", "application/problem+json"}};
  r.abandoned_answer.body = R"({"type":"urn:idemproxy:problem:outcome-unknown"})";
  return r;
}

HttpAnswer answer(int status, std::string body = "ok") {
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

class LmdbStoreTest : public ::testing::Test {
 protected:
  LmdbOptions options() const {
    LmdbOptions o;
    o.path = dir.path() + "/store";
    o.max_size = 64ull << 20;
    // The whole suite runs a second time on a store with a write-ahead log (ctest
    // unit.lmdb_wal), small enough that it wraps and checkpoints.
    if (const char* w = std::getenv("IDEMPROXY_TEST_LMDB_WAL"); w != nullptr && *w == '1') {
      o.wal = true;
      o.wal_size = 256 << 10;
    }
    return o;
  }
  void open(const LmdbOptions& o) {
    store.reset();
    std::string error;
    store = openLmdbStore(o, clock, error);
    ASSERT_NE(store, nullptr) << error;
  }
  void SetUp() override { open(options()); }

  TempDir dir;
  FakeClock clock;
  std::unique_ptr<LmdbStore> store;
};

// ---------------------------------------------------------------------------------------------
// Basic semantics

TEST_F(LmdbStoreTest, ReserveWinsThenReportsInFlight) {
  const int64_t t0 = clock.wallMs();
  ReserveResult r = reserveSync(*store, reserveReq("k1", "A", 1, 10'000, 1'000));
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_EQ(r.record.state, RecordState::InFlight);
  EXPECT_EQ(r.record.owner, "A");
  EXPECT_EQ(r.record.reserved_at_ms, t0);
  EXPECT_EQ(r.record.lease_until_ms, t0 + 1'000);
  EXPECT_EQ(r.record.expires_at_ms, t0 + 10'000);

  auto seen = store->lookup(idFor("k1"));
  ASSERT_TRUE(seen.has_value());
  EXPECT_EQ(*seen, r.record);
  EXPECT_EQ(seen->route, "payments");
  EXPECT_EQ(seen->key, "k1");
  EXPECT_EQ(seen->scope, std::vector<std::string>{"Bearer t"});

  r = reserveSync(*store, reserveReq("k1", "B"));
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::InFlight);
  EXPECT_EQ(r.record.owner, "A");
}

TEST_F(LmdbStoreTest, RecordThenReserveReplays) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  const auto expires = store->lookup(idFor("k"))->expires_at_ms;
  clock.advance(5s);
  RecordResult rr = recordSync(*store, recordReq("k", "A", answer(201, std::string("\0\1", 2))));
  ASSERT_EQ(rr.error, StoreError::None);
  EXPECT_EQ(rr.status, RecordStatus::Recorded);
  EXPECT_EQ(rr.record.state, RecordState::Completed);
  EXPECT_EQ(rr.record.expires_at_ms, expires);  // recording does not extend the life

  ReserveResult r = reserveSync(*store, reserveReq("k", "B"));
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::Completed);
  EXPECT_EQ(r.record.answer, answer(201, std::string("\0\1", 2)));
  EXPECT_EQ(store->lookup(idFor("k"))->answer.headers.size(), 3u);
}

TEST_F(LmdbStoreTest, MismatchWhetherInFlightOrCompleted) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A", 1)).status, ReserveStatus::Won);
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B", 2)).status, ReserveStatus::Mismatch);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B", 2)).status, ReserveStatus::Mismatch);
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B", 1)).status, ReserveStatus::Completed);
}

TEST_F(LmdbStoreTest, SecondRecordIsAlreadyFinal) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200, "first"))).status,
            RecordStatus::Recorded);
  RecordResult rr = recordSync(*store, recordReq("k", "A", answer(500, "second")));
  ASSERT_EQ(rr.error, StoreError::None);
  EXPECT_EQ(rr.status, RecordStatus::AlreadyFinal);
  EXPECT_EQ(rr.record.answer.body, "first");
  EXPECT_EQ(store->lookup(idFor("k"))->answer.body, "first");
}

TEST_F(LmdbStoreTest, RecordWithoutReservationIsMissing) {
  RecordResult rr = recordSync(*store, recordReq("nothing", "A", answer(200)));
  ASSERT_EQ(rr.error, StoreError::None);
  EXPECT_EQ(rr.status, RecordStatus::Missing);
  EXPECT_FALSE(store->lookup(idFor("nothing")).has_value());
}

TEST_F(LmdbStoreTest, ReleaseOnlyByOwnerAndOnlyInFlight) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  EXPECT_FALSE(releaseSync(*store, idFor("k"), "B").changed);
  EXPECT_TRUE(store->lookup(idFor("k")).has_value());
  WriteResult w = releaseSync(*store, idFor("k"), "A");
  ASSERT_EQ(w.error, StoreError::None);
  EXPECT_TRUE(w.changed);
  EXPECT_FALSE(store->lookup(idFor("k")).has_value());
  EXPECT_FALSE(releaseSync(*store, idFor("k"), "A").changed);

  // Released: the key is free for anyone, with any fingerprint.
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "B", 9)).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "B", answer(200))).status, RecordStatus::Recorded);
  EXPECT_FALSE(releaseSync(*store, idFor("k"), "B").changed);  // completed: not released
  EXPECT_TRUE(store->lookup(idFor("k")).has_value());
}

TEST_F(LmdbStoreTest, ForgetDeletesWhateverStands) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  WriteResult w = forgetSync(*store, idFor("k"));
  ASSERT_EQ(w.error, StoreError::None);
  EXPECT_TRUE(w.changed);
  EXPECT_FALSE(store->lookup(idFor("k")).has_value());
  EXPECT_FALSE(forgetSync(*store, idFor("k")).changed);
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B", 3)).status, ReserveStatus::Won);
  // The expiry index entry went with it: nothing left to sweep but the new record's.
  clock.advance(std::chrono::hours(48));
  EXPECT_EQ(sweepSync(*store, 100).removed, 1u);
  EXPECT_EQ(store->stats().records, 0u);
}

TEST_F(LmdbStoreTest, ListShowsEveryRecordInIdOrderExpiredIncluded) {
  for (int i = 0; i < 10; ++i) {
    ASSERT_EQ(
        reserveSync(*store, reserveReq("k" + std::to_string(i), "A", 1, 1000 * (i + 1))).status,
        ReserveStatus::Won);
  }
  clock.advance(3500ms);
  auto all = store->list();
  ASSERT_EQ(all.size(), 10u);
  for (size_t i = 1; i < all.size(); ++i) EXPECT_LT(all[i - 1].first, all[i].first);
  for (const auto& [id, rec] : all) EXPECT_EQ(id, idFor(rec.key));
  EXPECT_EQ(store->stats().records, 10u);
}

// ---------------------------------------------------------------------------------------------
// Expiry and sweep

TEST_F(LmdbStoreTest, ExpiryOnLookupAndReserve) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A", 1, 1000)).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  clock.advance(999ms);
  EXPECT_TRUE(store->lookup(idFor("k")).has_value());
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B", 1, 1000)).status, ReserveStatus::Completed);
  clock.advance(1ms);
  EXPECT_FALSE(store->lookup(idFor("k")).has_value());
  // The key is new again: forwarded and recorded afresh, even with another fingerprint.
  ReserveResult r = reserveSync(*store, reserveReq("k", "B", 2, 1000));
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_EQ(r.record.owner, "B");
  EXPECT_EQ(r.record.expires_at_ms, clock.wallMs() + 1000);
  EXPECT_EQ(store->stats().records, 1u);
  // The old index entry was replaced: one sweep after expiry removes exactly the one record.
  clock.advance(1000ms);
  EXPECT_EQ(sweepSync(*store, 100).removed, 1u);
}

TEST_F(LmdbStoreTest, VisitSeesTheRecordInPlace) {
  EXPECT_FALSE(store->visit(idFor("k"), [](const RecordView&) { ADD_FAILURE() << "called"; }));
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  RecordState state{};
  ASSERT_TRUE(store->visit(idFor("k"), [&](const RecordView& v) { state = v.state; }));
  EXPECT_EQ(state, RecordState::InFlight);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(201, "paid"))).status,
            RecordStatus::Recorded);
  Record seen;
  ASSERT_TRUE(store->visit(idFor("k"), [&](const RecordView& v) { seen = v.toRecord(); }));
  EXPECT_EQ(seen, *store->lookup(idFor("k")));
  EXPECT_EQ(seen.answer, answer(201, "paid"));
  EXPECT_EQ(seen.fingerprint, fp(1));
}

TEST_F(LmdbStoreTest, VisitTreatsExpiredAsAbsent) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A", 1, 1000)).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  int calls = 0;
  clock.advance(999ms);
  EXPECT_TRUE(store->visit(idFor("k"), [&](const RecordView&) { ++calls; }));
  clock.advance(1ms);
  EXPECT_FALSE(store->visit(idFor("k"), [&](const RecordView&) { ++calls; }));
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(store->stats().records, 1u);  // still stored until swept
}

TEST_F(LmdbStoreTest, VisitReadsASnapshotWhileTheWriterCommits) {
  // Readers run while the writer commits records and overwrites them (forget + reserve +
  // record): every view a reader gets is a whole, consistent record of its snapshot.
  constexpr int kKeys = 20;
  constexpr int kRounds = 30;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "v" + std::to_string(i);
    ASSERT_EQ(reserveSync(*store, reserveReq(key, "A")).status, ReserveStatus::Won);
    ASSERT_EQ(recordSync(*store, recordReq(key, "A", answer(201, std::string(1000, 'a')))).status,
              RecordStatus::Recorded);
  }
  std::atomic<bool> stop{false};
  std::atomic<int> bad{0};
  std::atomic<long> seen{0};
  std::vector<std::thread> readers;
  for (int t = 0; t < 3; ++t) {
    readers.emplace_back([&, t] {
      for (int n = 0; !stop.load() || n < 100; ++n) {
        const std::string key = "v" + std::to_string((n + t) % kKeys);
        store->visit(idFor(key), [&](const RecordView& v) {
          ++seen;
          if (v.state != RecordState::Completed) return;  // between forget and record
          // The body is one repeated letter of the length the writer wrote with it.
          const char c = v.body.empty() ? '?' : v.body.front();
          const size_t expected = c == 'a' ? 1000 : 3000;
          if (v.status != 201 || v.body.size() != expected ||
              v.body.find_first_not_of(c) != std::string_view::npos || v.headers.size() != 3) {
            ++bad;
          }
        });
      }
    });
  }
  for (int round = 0; round < kRounds; ++round) {
    const std::string key = "v" + std::to_string(round % kKeys);
    const std::string owner = "W" + std::to_string(round);
    ASSERT_TRUE(forgetSync(*store, idFor(key)).changed);
    ASSERT_EQ(reserveSync(*store, reserveReq(key, owner)).status, ReserveStatus::Won);
    ASSERT_EQ(recordSync(*store, recordReq(key, owner, answer(201, std::string(3000, 'b')))).status,
              RecordStatus::Recorded);
  }
  stop = true;
  for (auto& th : readers) th.join();
  EXPECT_EQ(bad.load(), 0);
  EXPECT_GT(seen.load(), 0);
}

TEST_F(LmdbStoreTest, SweepDeletesOnlyExpiredOldestFirstBoundedByLimit) {
  // ttl i seconds for key i; insertion order differs from both id order and expiry order.
  const std::vector<int> ttls = {7, 3, 9, 1, 5, 2, 8, 4, 6, 10};
  for (int t : ttls) {
    ASSERT_EQ(reserveSync(*store, reserveReq("k" + std::to_string(t), "A", 1, t * 1000)).status,
              ReserveStatus::Won);
  }
  EXPECT_EQ(sweepSync(*store, 100).removed, 0u);  // nothing due yet

  clock.advance(5s);  // keys 1..5 are due
  WriteResult w = sweepSync(*store, 2);
  ASSERT_EQ(w.error, StoreError::None);
  EXPECT_EQ(w.removed, 2u);
  EXPECT_TRUE(w.changed);
  // Oldest first: 1 and 2 are gone from the table (list shows expired records too).
  auto keys = [&] {
    std::set<std::string> out;
    for (const auto& [id, rec] : store->list()) out.insert(rec.key);
    return out;
  };
  EXPECT_EQ(keys(), (std::set<std::string>{"k3", "k4", "k5", "k6", "k7", "k8", "k9", "k10"}));

  EXPECT_EQ(sweepSync(*store, 100).removed, 3u);
  EXPECT_EQ(keys(), (std::set<std::string>{"k6", "k7", "k8", "k9", "k10"}));
  EXPECT_EQ(sweepSync(*store, 100).removed, 0u);
  EXPECT_EQ(sweepSync(*store, 0).removed, 0u);
  clock.advance(100s);
  EXPECT_EQ(sweepSync(*store, 100).removed, 5u);
  EXPECT_EQ(store->stats().records, 0u);
}

TEST_F(LmdbStoreTest, SweepKeepsARecordRenewedAfterExpiry) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A", 1, 1000)).status, ReserveStatus::Won);
  clock.advance(1000ms);
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "B", 1, 5000)).status, ReserveStatus::Won);
  EXPECT_EQ(sweepSync(*store, 100).removed, 0u);
  ASSERT_TRUE(store->lookup(idFor("k")).has_value());
  EXPECT_EQ(store->lookup(idFor("k"))->owner, "B");
}

// ---------------------------------------------------------------------------------------------
// Abandoned leases (SPEC §1.4) and unknown → known (§1.6)

TEST_F(LmdbStoreTest, AbandonedLeaseFailRecordsOutcomeUnknown) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A", 1, 100'000, 1'000)).status,
            ReserveStatus::Won);
  clock.advance(999ms);
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B")).status, ReserveStatus::InFlight);
  clock.advance(1ms);  // lease passed: A is presumed dead

  ReserveRequest b = reserveReq("k", "B");
  b.retry_abandoned = false;
  ReserveResult r = reserveSync(*store, b);
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::Completed);
  EXPECT_EQ(r.record.state, RecordState::Completed);
  EXPECT_EQ(r.record.flags, kFlagProxyError | kFlagOutcomeUnknown);
  EXPECT_EQ(r.record.owner, "A");  // kept, so A can still replace it
  EXPECT_EQ(r.record.answer, b.abandoned_answer);
  EXPECT_EQ(*store->lookup(idFor("k")), r.record);

  // Anyone else asking now replays the 502.
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "C")).status, ReserveStatus::Completed);
  // Someone other than the original owner cannot overwrite it.
  RecordResult other = recordSync(*store, recordReq("k", "B", answer(201)));
  EXPECT_EQ(other.status, RecordStatus::AlreadyFinal);
  EXPECT_EQ(other.record.answer.status, 502);

  // A was only slow: its real outcome replaces the unknown one (unknown → known) ...
  RecordResult late = recordSync(*store, recordReq("k", "A", answer(201, "paid")));
  ASSERT_EQ(late.error, StoreError::None);
  EXPECT_EQ(late.status, RecordStatus::Recorded);
  EXPECT_EQ(late.record.flags, kFlagNone);
  EXPECT_EQ(store->lookup(idFor("k"))->answer.body, "paid");
  // ... once: the known outcome is final, even for A.
  EXPECT_EQ(recordSync(*store, recordReq("k", "A", answer(500))).status,
            RecordStatus::AlreadyFinal);
  EXPECT_EQ(store->lookup(idFor("k"))->answer.body, "paid");
}

TEST_F(LmdbStoreTest, AbandonedLeaseRetryTakesOver) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A", 1, 100'000, 1'000)).status,
            ReserveStatus::Won);
  clock.advance(2s);
  ReserveRequest b = reserveReq("k", "B", 1, 100'000, 1'000);
  b.retry_abandoned = true;
  ReserveResult r = reserveSync(*store, b);
  ASSERT_EQ(r.error, StoreError::None);
  EXPECT_EQ(r.status, ReserveStatus::Won);
  EXPECT_EQ(r.record.state, RecordState::InFlight);
  EXPECT_EQ(r.record.owner, "B");
  EXPECT_EQ(r.record.reserved_at_ms, clock.wallMs());
  EXPECT_EQ(r.record.lease_until_ms, clock.wallMs() + 1'000);
  EXPECT_EQ(r.record.expires_at_ms, clock.wallMs() + 100'000);

  // The old owner comes back: someone took over, its answer is not written.
  RecordResult late = recordSync(*store, recordReq("k", "A", answer(201)));
  EXPECT_EQ(late.status, RecordStatus::AlreadyFinal);
  EXPECT_EQ(late.record.owner, "B");
  EXPECT_FALSE(releaseSync(*store, idFor("k"), "A").changed);
  EXPECT_EQ(recordSync(*store, recordReq("k", "B", answer(200))).status, RecordStatus::Recorded);

  // The expiry index followed the new expiry.
  clock.advance(99s);
  EXPECT_EQ(sweepSync(*store, 10).removed, 0u);
  clock.advance(1s);
  EXPECT_EQ(sweepSync(*store, 10).removed, 1u);
}

// ---------------------------------------------------------------------------------------------
// Storage limits, durability, files

TEST_F(LmdbStoreTest, MapFullIsTypedAndSweepFreesSpace) {
  LmdbOptions o = options();
  o.max_size = 256 << 10;
  open(o);
  const std::string body(700, 'x');

  // Fill in batches submitted together, so that Full hits in the middle of a group commit.
  std::vector<std::string> won;  // reserved and recorded
  size_t reserved = 0;
  int next = 0;
  bool full = false;
  while (!full && next < 10'000) {
    std::vector<std::pair<std::string, ReserveResult>> results(20);
    std::atomic<int> pending{20};
    for (auto& [key, result] : results) {
      key = "fill-" + std::to_string(next++);
      ReserveRequest req = reserveReq(key, "A", 1, 1000);
      req.abandoned_answer.body = body;  // not written; just exercises copying
      ReserveResult* slot = &result;     // clang 14 cannot capture a structured binding
      store->reserve(req, [slot, &pending](ReserveResult rr) {
        *slot = std::move(rr);
        --pending;
      });
    }
    store->flush();
    ASSERT_EQ(pending.load(), 0);
    for (auto& [key, result] : results) {
      if (result.error != StoreError::None) {
        EXPECT_EQ(result.error, StoreError::Full) << toString(result.error);
        full = true;
        continue;
      }
      ASSERT_EQ(result.status, ReserveStatus::Won);
      ++reserved;
      const RecordResult rr = recordSync(*store, recordReq(key, "A", answer(200, body)));
      if (rr.error == StoreError::None) {
        won.push_back(key);
      } else {
        // The answer did not fit: nothing was written, the reservation stands as it was.
        EXPECT_EQ(rr.error, StoreError::Full) << toString(rr.error);
        EXPECT_EQ(store->lookup(idFor(key))->state, RecordState::InFlight);
        full = true;
      }
    }
  }
  ASSERT_TRUE(full);
  ASSERT_GT(won.size(), 10u);

  // A write that does not fit fails with Full (a small one may still fit); nothing stored
  // before was lost.
  ReserveResult r = reserveSync(*store, reserveReq("one-more", "A", 1, 1000));
  if (r.error == StoreError::None) {
    ++reserved;
    RecordResult big =
        recordSync(*store, recordReq("one-more", "A", answer(200, std::string(100 << 10, 'y'))));
    EXPECT_EQ(big.error, StoreError::Full) << toString(big.error);
  } else {
    EXPECT_EQ(r.error, StoreError::Full) << toString(r.error);
  }
  for (const auto& key : won) {
    auto rec = store->lookup(idFor(key));
    ASSERT_TRUE(rec.has_value()) << key;
    EXPECT_EQ(rec->answer.body, body);
  }
  EXPECT_GT(store->stats().bytes_used, o.max_size / 3);

  // Expiry and a sweep make room again.
  clock.advance(1000ms);
  WriteResult w = sweepSync(*store, 100'000);
  ASSERT_EQ(w.error, StoreError::None);
  EXPECT_EQ(w.removed, reserved);
  EXPECT_EQ(store->stats().records, 0u);
  for (int i = 0; i < 10; ++i) {
    const std::string key = "after-" + std::to_string(i);
    ASSERT_EQ(reserveSync(*store, reserveReq(key, "A", 1, 1000)).status, ReserveStatus::Won);
    ASSERT_EQ(recordSync(*store, recordReq(key, "A", answer(200, body))).status,
              RecordStatus::Recorded);
  }
}

TEST_F(LmdbStoreTest, DeletedFilesAreDetectedAndNothingIsWrittenToThem) {
  EXPECT_EQ(store->unavailableReason(), "");
  ASSERT_EQ(reserveSync(*store, reserveReq("a", "A")).status, ReserveStatus::Won);
  std::filesystem::remove_all(options().path);  // an operator's mistake while running
  const ReserveResult r = reserveSync(*store, reserveReq("b", "A"));
  EXPECT_EQ(r.error, StoreError::Io) << "a write to an unlinked file is a write nobody sees";
  EXPECT_NE(store->unavailableReason().find("deleted"), std::string::npos);
}

TEST_F(LmdbStoreTest, AFullStoreIsUnavailableUntilAWriteFitsAgain) {
  LmdbOptions o = options();
  o.max_size = 256 << 10;
  open(o);
  ASSERT_EQ(reserveSync(*store, reserveReq("big", "A")).status, ReserveStatus::Won);
  EXPECT_EQ(recordSync(*store, recordReq("big", "A", answer(200, std::string(1 << 20, 'z')))).error,
            StoreError::Full);
  EXPECT_EQ(store->unavailableReason(), "the store is full");
  ASSERT_EQ(reserveSync(*store, reserveReq("small", "A")).status, ReserveStatus::Won);
  EXPECT_EQ(store->unavailableReason(), "");
}

TEST_F(LmdbStoreTest, OnlyTheOperationThatDoesNotFitFailsInABatch) {
  LmdbOptions o = options();
  o.max_size = 256 << 10;
  open(o);
  ASSERT_EQ(reserveSync(*store, reserveReq("big", "A")).status, ReserveStatus::Won);
  std::vector<ReserveResult> small(4);
  RecordResult big;
  std::atomic<int> pending{5};
  // Queued together so that they are usually committed together; the outcome must not depend
  // on how they are grouped.
  store->reserve(reserveReq("s0", "A"), [&](ReserveResult r) {
    small[0] = r;
    --pending;
  });
  store->reserve(reserveReq("s1", "A"), [&](ReserveResult r) {
    small[1] = r;
    --pending;
  });
  store->record(recordReq("big", "A", answer(200, std::string(1 << 20, 'z'))), [&](RecordResult r) {
    big = r;
    --pending;
  });
  store->reserve(reserveReq("s2", "A"), [&](ReserveResult r) {
    small[2] = r;
    --pending;
  });
  store->reserve(reserveReq("s3", "A"), [&](ReserveResult r) {
    small[3] = r;
    --pending;
  });
  store->flush();
  ASSERT_EQ(pending.load(), 0);
  EXPECT_EQ(big.error, StoreError::Full);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(small[static_cast<size_t>(i)].error, StoreError::None) << i;
    EXPECT_EQ(small[static_cast<size_t>(i)].status, ReserveStatus::Won) << i;
    EXPECT_TRUE(store->lookup(idFor("s" + std::to_string(i))).has_value()) << i;
  }
  EXPECT_EQ(store->lookup(idFor("big"))->state, RecordState::InFlight);
  // The failed record wrote nothing: the owner can still record a smaller answer.
  EXPECT_EQ(recordSync(*store, recordReq("big", "A", answer(200, "small"))).status,
            RecordStatus::Recorded);
}

TEST_F(LmdbStoreTest, GroupCommitUnderConcurrency) {
  constexpr int kThreads = 8;
  constexpr int kPerThread = 200;
  std::atomic<size_t> observed_ops{0};
  std::atomic<size_t> observed_commits{0};
  store->setCommitObserver([&](std::chrono::microseconds, size_t ops) {
    observed_ops += ops;
    ++observed_commits;
  });
  std::latch go(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      go.arrive_and_wait();
      for (int i = 0; i < kPerThread; ++i) {
        const std::string key = "t" + std::to_string(t) + "-" + std::to_string(i);
        ReserveResult r = reserveSync(*store, reserveReq(key, "T" + std::to_string(t)));
        if (r.error != StoreError::None || r.status != ReserveStatus::Won) ++failures;
        // Readers run alongside the writer. Without a log a reservation is committed before it
        // is acknowledged; with one, groups queued behind each other share a commit after
        // their log syncs, so a read may see it only a few ms later (checked after the flush).
        if (!store->lookup(idFor(key)).has_value() && !store->walStats().active) ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  store->flush();
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      const std::string key = "t" + std::to_string(t) + "-" + std::to_string(i);
      ASSERT_TRUE(store->lookup(idFor(key)).has_value()) << key;
    }
  }

  const StoreStats s = store->stats();
  EXPECT_EQ(s.records, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_EQ(s.operations, static_cast<uint64_t>(kThreads * kPerThread));
  EXPECT_LT(s.commits, s.operations);
  EXPECT_EQ(observed_ops.load(), s.operations);
  EXPECT_EQ(observed_commits.load(), s.commits);
  std::printf("group commit: %llu operations in %llu commits\n",
              static_cast<unsigned long long>(s.operations),
              static_cast<unsigned long long>(s.commits));
}

TEST_F(LmdbStoreTest, DestructorCompletesEverythingQueued) {
  std::atomic<int> done{0};
  for (int i = 0; i < 300; ++i) {
    store->reserve(reserveReq("q" + std::to_string(i), "A"), [&](ReserveResult r) {
      if (r.error == StoreError::None && r.status == ReserveStatus::Won) ++done;
    });
  }
  store.reset();
  EXPECT_EQ(done.load(), 300);
  open(options());
  EXPECT_EQ(store->stats().records, 300u);
}

TEST_F(LmdbStoreTest, RelaxedDurabilityWorks) {
  LmdbOptions o = options();
  o.durability = Durability::Relaxed;
  o.relaxed_sync_interval = 10ms;
  open(o);
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(201))).status, RecordStatus::Recorded);
  store->flush();
  EXPECT_EQ(store->lookup(idFor("k"))->answer.status, 201);
  open(o);
  ASSERT_TRUE(store->lookup(idFor("k")).has_value());
  EXPECT_EQ(store->lookup(idFor("k"))->answer.status, 201);
}

TEST_F(LmdbStoreTest, FilesArePrivate) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  struct stat st {};
  ASSERT_EQ(::stat(options().path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  for (const char* name : {"/data.mdb", "/lock.mdb"}) {
    ASSERT_EQ(::stat((options().path + name).c_str(), &st), 0) << name;
    EXPECT_EQ(st.st_mode & 0777, 0600u) << name;
  }
}

// The pages of `path` in the page cache, and how many of them belong to large folios (pagemap
// and kpageflags: KPF_COMPOUND_HEAD and _TAIL). Nothing if this process cannot tell (it needs
// root to see page frame numbers).
struct CachedPages {
  size_t resident = 0;
  size_t in_large_folios = 0;
};
std::optional<CachedPages> cachedPages(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  struct stat st {};
  ::fstat(fd, &st);
  const size_t pages = static_cast<size_t>(st.st_size) / 4096;
  CachedPages out;
  if (pages == 0) {
    ::close(fd);
    return out;
  }
  void* map = ::mmap(nullptr, pages * 4096, PROT_READ, MAP_SHARED, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return std::nullopt;
  ::madvise(map, pages * 4096, MADV_RANDOM);  // touching a page brings in no other
  std::vector<unsigned char> in_core(pages);
  const int pagemap = ::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  const int flags = ::open("/proc/kpageflags", O_RDONLY | O_CLOEXEC);
  bool ok = pagemap >= 0 && flags >= 0 && ::mincore(map, pages * 4096, in_core.data()) == 0;
  const auto base = reinterpret_cast<uintptr_t>(map) / 4096;
  for (size_t i = 0; ok && i < pages; ++i) {
    if ((in_core[i] & 1) == 0) continue;
    (void)*static_cast<volatile const char*>(static_cast<const char*>(map) + i * 4096);
    uint64_t entry = 0;
    uint64_t kflags = 0;
    ok = ::pread(pagemap, &entry, 8, static_cast<off_t>((base + i) * 8)) == 8;
    const uint64_t pfn = entry & ((1ull << 55) - 1);
    if (!ok || (entry >> 63) == 0) continue;
    if (pfn == 0) ok = false;  // hidden without CAP_SYS_ADMIN
    ok = ok && ::pread(flags, &kflags, 8, static_cast<off_t>(pfn * 8)) == 8;
    ++out.resident;
    if ((kflags & ((1ull << 15) | (1ull << 16))) != 0) ++out.in_large_folios;
  }
  if (pagemap >= 0) ::close(pagemap);
  if (flags >= 0) ::close(flags);
  ::munmap(map, pages * 4096);
  if (!ok) return std::nullopt;
  return out;
}

TEST_F(LmdbStoreTest, TheStoresFilesAreCachedAsSinglePages) {
  // A kernel that caches large folios (ext4 since Linux 6.16) makes one of a 1 MiB write.
  const std::string probe = dir.path() + "/probe";
  {
    const int fd = ::open(probe.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    const std::string mib(1 << 20, 'x');
    ASSERT_EQ(::pwrite(fd, mib.data(), mib.size(), 0), static_cast<ssize_t>(mib.size()));
    ::close(fd);
  }
  const auto control = cachedPages(probe);
  if (!control) GTEST_SKIP() << "cannot read page flags here (needs root)";
  if (control->in_large_folios == 0)
    GTEST_SKIP() << "this kernel caches this file system's "
                    "files in single pages only";

  // Enough queued at once that commits write long runs of new pages (one writev each), and the
  // log grows by several steps.
  std::atomic<int> done{0};
  constexpr int kKeys = 3000;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "g" + std::to_string(i);
    store->reserve(reserveReq(key, "A"), [&, key](ReserveResult r) {
      if (r.error != StoreError::None) return;
      store->record(recordReq(key, "A", answer(201, std::string(1500, 'b'))),
                    [&](RecordResult) { ++done; });
    });
  }
  store->flush();
  store->flush();
  ASSERT_EQ(done.load(), kKeys);
  for (const char* name : {"/data.mdb", "/wal"}) {
    const auto pages = cachedPages(options().path + name);
    if (std::string(name) == "/wal" && !store->walStats().active) continue;
    ASSERT_TRUE(pages.has_value()) << name;
    EXPECT_GT(pages->resident, std::string(name) == "/wal" ? 32u : 256u) << name;
    // The data file's first commit (the empty environment) may write its first pages at once.
    EXPECT_LE(pages->in_large_folios, 16u)
        << name << ": " << pages->in_large_folios << " of " << pages->resident << " cached pages";
  }
}

TEST_F(LmdbStoreTest, StatsReportSizes) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  const StoreStats s = store->stats();
  EXPECT_EQ(s.records, 1u);
  EXPECT_EQ(s.map_size, options().max_size);
  EXPECT_GT(s.bytes_used, 0u);
  EXPECT_LT(s.bytes_used, 1u << 20);
  EXPECT_GE(s.commits, 1u);
  EXPECT_EQ(s.operations, 1u);
}

TEST_F(LmdbStoreTest, UndecodableValueReadsAsAbsentAndIsCounted) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  store.reset();
  {  // Corrupt the value behind the store's back.
    MDB_env* env = nullptr;
    ASSERT_EQ(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    ASSERT_EQ(mdb_env_open(env, options().path.c_str(), 0, 0600), 0);
    MDB_txn* txn = nullptr;
    ASSERT_EQ(mdb_txn_begin(env, nullptr, 0, &txn), 0);
    MDB_dbi dbi;
    ASSERT_EQ(mdb_dbi_open(txn, "records", 0, &dbi), 0);
    RecordId id = idFor("k");
    MDB_val k{id.size(), id.data()};
    char junk[] = "\x09garbage";
    MDB_val v{sizeof junk, junk};
    ASSERT_EQ(mdb_put(txn, dbi, &k, &v, 0), 0);
    ASSERT_EQ(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
  }
  // A writable open refuses the damaged store and says how to recover (see verify_test.cpp);
  // without the check at open, the damaged value reads as absent.
  LmdbOptions o = options();
  std::string error;
  EXPECT_EQ(openLmdbStore(o, clock, error), nullptr);
  EXPECT_NE(error.find("does not decode"), std::string::npos) << error;
  EXPECT_NE(error.find("mdb_copy"), std::string::npos) << error;
  o.verify_at_open = false;
  open(o);
  EXPECT_FALSE(store->lookup(idFor("k")).has_value());
  EXPECT_EQ(store->stats().decode_errors, 1u);
  EXPECT_TRUE(store->list().empty());
  // The key can be used again; the garbage is overwritten.
  EXPECT_EQ(reserveSync(*store, reserveReq("k", "B")).status, ReserveStatus::Won);
  EXPECT_EQ(store->lookup(idFor("k"))->owner, "B");
}

TEST_F(LmdbStoreTest, OpenFailsClearlyOnUnusablePath) {
  store.reset();
  const std::string file = dir.path() + "/plain-file";
  std::ofstream(file) << "x";
  LmdbOptions o = options();
  std::string error;
  o.path = file;
  EXPECT_EQ(openLmdbStore(o, clock, error), nullptr);
  EXPECT_NE(error.find(file), std::string::npos) << error;

  error.clear();
  o.path = file + "/below";
  EXPECT_EQ(openLmdbStore(o, clock, error), nullptr);
  EXPECT_FALSE(error.empty());

  error.clear();
  o.path = dir.path() + "/missing";
  o.read_only = true;  // read-only never creates
  EXPECT_EQ(openLmdbStore(o, clock, error), nullptr);
  EXPECT_FALSE(error.empty());
}

TEST_F(LmdbStoreTest, ReadOnlyStoreReadsWhileWriterRuns) {
  ASSERT_EQ(reserveSync(*store, reserveReq("k", "A")).status, ReserveStatus::Won);
  LmdbOptions o = options();
  o.read_only = true;
  std::string error;
  auto reader = openLmdbStore(o, clock, error);
  ASSERT_NE(reader, nullptr) << error;
  EXPECT_EQ(reader->list().size(), 1u);
  EXPECT_EQ(reader->lookup(idFor("k"))->owner, "A");
  EXPECT_EQ(reserveSync(*reader, reserveReq("x", "A")).error, StoreError::Io);
  reader->flush();
  // The writer keeps writing; the reader sees new commits.
  ASSERT_EQ(recordSync(*store, recordReq("k", "A", answer(200))).status, RecordStatus::Recorded);
  EXPECT_EQ(reader->lookup(idFor("k"))->state, RecordState::Completed);
}

// ---------------------------------------------------------------------------------------------
// Several processes on one environment (SPEC §7)

// Writes/reads exactly n bytes or dies.
void writeAll(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t w = ::write(fd, c, n);
    if (w <= 0) std::_Exit(90);
    c += w;
    n -= static_cast<size_t>(w);
  }
}
void readAll(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t r = ::read(fd, c, n);
    if (r <= 0) std::_Exit(91);
    c += r;
    n -= static_cast<size_t>(r);
  }
}

// Tests that fork are in suites named *ProcessTest: sanitizer builds run the unit tests as a few
// shards of one process each, and a fork from a process other tests left threads in is not
// supported under ThreadSanitizer, so these run in a process of their own (tests/CMakeLists.txt).
class LmdbStoreProcessTest : public LmdbStoreTest {};

uint8_t outcomeCode(const ReserveResult& r) {
  if (r.error != StoreError::None) return 9;
  return r.status == ReserveStatus::Won ? 1 : r.status == ReserveStatus::InFlight ? 2 : 3;
}

TEST_F(LmdbStoreProcessTest, TwoProcessesRacingForOneKeyExactlyOneWins) {
  constexpr int kRounds = 1000;
  LmdbOptions o = options();
  store.reset();  // no environment is carried across fork

  int to_child[2], to_parent[2];
  ASSERT_EQ(::pipe(to_child), 0);
  ASSERT_EQ(::pipe(to_parent), 0);
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  const bool child = pid == 0;
  const int in = child ? to_child[0] : to_parent[0];
  const int out = child ? to_parent[1] : to_child[1];
  ::close(child ? to_child[1] : to_parent[1]);
  ::close(child ? to_parent[0] : to_child[0]);

  std::string error;
  auto mine = openLmdbStore(o, clock, error);
  if (child && mine == nullptr) std::_Exit(92);
  ASSERT_NE(mine, nullptr) << error;

  std::vector<uint8_t> outcomes(kRounds);
  for (int i = 0; i < kRounds; ++i) {
    char token = 'x';
    writeAll(out, &token, 1);  // barrier: both sides are ready for round i
    readAll(in, &token, 1);
    ReserveRequest req = reserveReq("race-" + std::to_string(i), child ? "child" : "parent");
    outcomes[static_cast<size_t>(i)] = outcomeCode(reserveSync(*mine, req));
  }
  if (child) {
    writeAll(out, outcomes.data(), outcomes.size());
    mine.reset();
    std::_Exit(0);
  }
  std::vector<uint8_t> theirs(kRounds);
  readAll(in, theirs.data(), theirs.size());
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  ASSERT_EQ(WEXITSTATUS(status), 0);
  ::close(in);
  ::close(out);

  int parent_wins = 0;
  for (int i = 0; i < kRounds; ++i) {
    const uint8_t a = outcomes[static_cast<size_t>(i)], b = theirs[static_cast<size_t>(i)];
    ASSERT_TRUE((a == 1 && b == 2) || (a == 2 && b == 1))
        << "round " << i << ": parent " << int(a) << ", child " << int(b);
    parent_wins += a == 1;
    auto rec = mine->lookup(idFor("race-" + std::to_string(i)));
    ASSERT_TRUE(rec.has_value());
    EXPECT_EQ(rec->owner, a == 1 ? "parent" : "child");
  }
  std::printf("race: parent won %d of %d\n", parent_wins, kRounds);
}

TEST_F(LmdbStoreProcessTest, AReservationIsSeenByAnotherProcess) {
  ASSERT_EQ(reserveSync(*store, reserveReq("from-parent", "parent")).status, ReserveStatus::Won);
  store.reset();  // no environment is carried across fork
  const LmdbOptions o = options();
  const pid_t pid = ::fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    std::string error;
    auto other = openLmdbStore(o, clock, error);
    if (other == nullptr) std::_Exit(10);
    auto rec = other->lookup(idFor("from-parent"));
    if (!rec || rec->owner != "parent") std::_Exit(11);
    if (reserveSync(*other, reserveReq("from-parent", "child")).status != ReserveStatus::InFlight)
      std::_Exit(12);
    if (reserveSync(*other, reserveReq("from-child", "child")).status != ReserveStatus::Won)
      std::_Exit(13);
    other.reset();
    std::_Exit(0);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(pid, &status, 0), pid);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  open(o);
  auto rec = store->lookup(idFor("from-child"));
  ASSERT_TRUE(rec.has_value());
  EXPECT_EQ(rec->owner, "child");
}

// ---------------------------------------------------------------------------------------------
// Write-ahead log (store.wal)

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

void spit(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Waits for child `pid`: its exit code, or -1 if it did not exit (a signal, a failed wait).
int exitCode(pid_t pid) {
  int status = 0;
  if (::waitpid(pid, &status, 0) != pid || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

class LmdbWalProcessTest : public LmdbStoreTest {
 protected:
  LmdbOptions walOptions() const {
    LmdbOptions o = options();
    o.wal = true;
    o.wal_size = 1 << 20;
    // Checkpoints only at open, when the log is half full, and at close.
    o.checkpoint_interval = std::chrono::hours(1);
    o.checkpoint_growth_pages = size_t{1} << 30;
    return o;
  }
  void SetUp() override { open(walOptions()); }
  std::string file(const std::string& name) const { return dir.path() + "/store/" + name; }

  // Runs `work` on the store in a child process that then dies without closing it (as if the
  // power went: the data file is put back to what it was on disk after the child's own
  // checkpoint at open, so none of its unsynced commits reached the disk). `damage` may then
  // change the log.
  void crashAfter(const std::function<void(LmdbStore&)>& work,
                  const std::function<void(std::string& log)>& damage = {}) {
    store.reset();  // closed cleanly: the child opens it alone
    const LmdbOptions o = walOptions();
    const std::string snapshot = dir.path() + "/data.on-disk";
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      std::string error;
      auto child = openLmdbStore(o, clock, error);
      if (!child) std::_Exit(91);
      // Synced at open (its checkpoint): this is what the disk holds.
      spit(snapshot, slurp(file("data.mdb")));
      work(*child);
      std::_Exit(0);  // no close: no clean checkpoint
    }
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
    spit(file("data.mdb"), slurp(snapshot));
    if (damage) {
      std::string log = slurp(file("wal"));
      damage(log);
      spit(file("wal"), log);
    }
  }
};

TEST_F(LmdbWalProcessTest, EveryGroupGoesThroughTheLog) {
  ASSERT_TRUE(store->walStats().active);
  ASSERT_EQ(reserveSync(*store, reserveReq("through-the-log", "A")).status, ReserveStatus::Won);
  EXPECT_NE(slurp(file("wal")).find("through-the-log"), std::string::npos);
}

TEST_F(LmdbWalProcessTest, ADataFileThatLostEveryCommitSinceTheCheckpointIsRebuiltFromTheLog) {
  constexpr int kKeys = 50;
  crashAfter([](LmdbStore& s) {
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = "lost-" + std::to_string(i);
      if (reserveSync(s, reserveReq(key, "A")).status != ReserveStatus::Won) std::_Exit(92);
      if (i % 2 == 0 && recordSync(s, recordReq(key, "A", answer(201, "paid " + key))).status !=
                            RecordStatus::Recorded) {
        std::_Exit(93);
      }
    }
  });
  open(walOptions());
  EXPECT_EQ(store->walStats().replayed_at_open, static_cast<size_t>(kKeys + kKeys / 2));
  EXPECT_TRUE(store->verify().ok());
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "lost-" + std::to_string(i);
    auto rec = store->lookup(idFor(key));
    ASSERT_TRUE(rec.has_value()) << key;
    if (i % 2 == 0) {
      EXPECT_EQ(rec->state, RecordState::Completed) << key;
      EXPECT_EQ(rec->answer.body, "paid " + key);
    } else {
      EXPECT_EQ(rec->state, RecordState::InFlight) << key;
    }
  }
  // Replayed and checkpointed: a clean close and another open replay nothing.
  open(walOptions());
  EXPECT_EQ(store->walStats().replayed_at_open, 0u);
  EXPECT_TRUE(store->lookup(idFor("lost-0")).has_value());
}

TEST_F(LmdbWalProcessTest, ATornGroupIsNotReplayedNorAnythingAfterIt) {
  crashAfter(
      [](LmdbStore& s) {
        for (const char* key : {"torn-a", "torn-b", "torn-c"}) {
          if (reserveSync(s, reserveReq(key, "A")).status != ReserveStatus::Won) std::_Exit(92);
        }
      },
      [](std::string& log) {
        const size_t at = log.find("torn-b");
        ASSERT_NE(at, std::string::npos);
        log[at] ^= 0x20;  // one byte of the second group, as a write that half reached the disk
      });
  open(walOptions());
  EXPECT_EQ(store->walStats().replayed_at_open, 1u);
  EXPECT_TRUE(store->lookup(idFor("torn-a")).has_value());
  EXPECT_FALSE(store->lookup(idFor("torn-b")).has_value());
  EXPECT_FALSE(store->lookup(idFor("torn-c")).has_value());
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(LmdbWalProcessTest, ReadOnlyRefusesAStoreNotClosedCleanlyUntilAWriterHasReplayedIt) {
  crashAfter([](LmdbStore& s) {
    if (reserveSync(s, reserveReq("unclean", "A")).status != ReserveStatus::Won) std::_Exit(92);
  });
  LmdbOptions ro = walOptions();
  ro.read_only = true;
  std::string error;
  EXPECT_EQ(openLmdbStore(ro, clock, error), nullptr);
  EXPECT_NE(error.find("not closed cleanly"), std::string::npos) << error;
  open(walOptions());
  store.reset();
  error.clear();
  auto reader = openLmdbStore(ro, clock, error);
  ASSERT_NE(reader, nullptr) << error;
  EXPECT_TRUE(reader->lookup(idFor("unclean")).has_value());
}

TEST_F(LmdbWalProcessTest, AReplayThatFailsLeavesTheLogUncleanForTheNextOpen) {
  crashAfter([](LmdbStore&) {});
  // A group that passes its checksum but holds a record that does not decode.
  wal::LogFile log;
  bool missing = false;
  std::string error;
  ASSERT_TRUE(log.open(dir.path() + "/store", 1 << 20, missing, error)) << error;
  const auto c = log.readCheckpoint();
  ASSERT_TRUE(c.has_value());
  ASSERT_FALSE(c->clean);
  std::string payload;
  wal::addPut(payload, idFor("undecodable"), "not a record");
  uint64_t length = 0;
  ASSERT_TRUE(log.append(wal::kLogStart, c->salt, c->next_seq, payload, length, error)) << error;
  for (int attempt = 0; attempt < 2; ++attempt) {
    error.clear();
    EXPECT_EQ(openLmdbStore(walOptions(), clock, error), nullptr) << attempt;
    EXPECT_NE(error.find("cannot replay the write-ahead log"), std::string::npos) << error;
  }
}

TEST_F(LmdbWalProcessTest, ALogIsNeverAppliedToAnotherDataFile) {
  crashAfter([](LmdbStore& s) {
    if (reserveSync(s, reserveReq("other-file", "A")).status != ReserveStatus::Won) std::_Exit(92);
  });
  // A backup restored over the data file (a new file) while the log was not closed cleanly.
  const std::string restored = slurp(file("data.mdb"));
  ASSERT_EQ(::unlink(file("data.mdb").c_str()), 0);
  spit(file("data.mdb"), restored);
  std::string error;
  EXPECT_EQ(openLmdbStore(walOptions(), clock, error), nullptr);
  EXPECT_NE(error.find("belongs to another data.mdb"), std::string::npos) << error;
  // As the message says: the log moved aside, the data file opens alone (with a new log).
  ASSERT_EQ(::rename(file("wal").c_str(), (dir.path() + "/wal.aside").c_str()), 0);
  open(walOptions());
  EXPECT_TRUE(store->walStats().active);
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(LmdbWalProcessTest, ALogWrapsThroughCheckpointsAndKeepsEverything) {
  LmdbOptions o = walOptions();
  o.wal_size = 16 << 10;
  store.reset();
  std::filesystem::remove_all(dir.path() + "/store");
  open(o);
  constexpr int kKeys = 200;
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "wrap-" + std::to_string(i);
    ASSERT_EQ(reserveSync(*store, reserveReq(key, "A")).status, ReserveStatus::Won);
    ASSERT_EQ(recordSync(*store, recordReq(key, "A", answer(201, std::string(300, 'x')))).status,
              RecordStatus::Recorded);
  }
  EXPECT_GT(store->walStats().checkpoints, 5u);
  open(o);
  for (int i = 0; i < kKeys; ++i) {
    auto rec = store->lookup(idFor("wrap-" + std::to_string(i)));
    ASSERT_TRUE(rec.has_value()) << i;
    EXPECT_EQ(rec->state, RecordState::Completed);
  }
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(LmdbWalProcessTest, GroupsQueuedBehindEachOtherShareOneLmdbCommitAndAllAreKept) {
  LmdbOptions o = walOptions();
  o.max_batch = 4;  // many groups: the writer finds more queued after each
  open(o);
  constexpr int kKeys = 400;
  std::atomic<int> won{0};
  std::latch done(kKeys);
  for (int i = 0; i < kKeys; ++i) {
    store->reserve(reserveReq("shared-commit-" + std::to_string(i), "A"), [&](ReserveResult r) {
      won += r.error == StoreError::None && r.status == ReserveStatus::Won;
      done.count_down();
    });
  }
  done.wait();
  EXPECT_EQ(won.load(), kKeys);
  store->flush();
  const auto w = store->walStats();
  EXPECT_GE(w.groups, static_cast<uint64_t>(kKeys / 4));
  // Each group was acknowledged once synced to the log; LMDB committed several at a time.
  EXPECT_LT(w.lmdb_commits * 2, w.groups) << w.lmdb_commits << " commits for " << w.groups;
  for (int i = 0; i < kKeys; ++i) {
    ASSERT_TRUE(store->lookup(idFor("shared-commit-" + std::to_string(i))).has_value()) << i;
  }
  open(o);  // and after a clean close
  EXPECT_TRUE(store->lookup(idFor("shared-commit-0")).has_value());
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(LmdbWalProcessTest, AloneOnTheStoreLoneGroupsAreAcknowledgedBeforeTheirCommitAndKept) {
  LmdbOptions o = walOptions();
  o.hold_when_idle = true;
  o.defer_for = std::chrono::seconds(30);  // only the group limit or a barrier commits
  o.defer_for_alone = o.defer_for;
  open(o);
  const auto before = store->walStats();
  constexpr int kKeys = 10;  // fewer than defer_groups_alone (64)
  for (int i = 0; i < kKeys; ++i) {
    // One at a time: nothing is ever queued behind a group.
    ASSERT_EQ(reserveSync(*store, reserveReq("held-" + std::to_string(i), "A")).status,
              ReserveStatus::Won);
  }
  const auto w = store->walStats();
  EXPECT_EQ(w.groups - before.groups, static_cast<uint64_t>(kKeys));
  EXPECT_EQ(w.lmdb_commits, before.lmdb_commits) << "each lone group committed on its own";
  // Not readable yet (that is the lag reads may have); a barrier commits them, once.
  EXPECT_FALSE(store->lookup(idFor("held-0")).has_value());
  store->flush();
  EXPECT_EQ(store->walStats().lmdb_commits, before.lmdb_commits + 1);
  for (int i = 0; i < kKeys; ++i) {
    EXPECT_TRUE(store->lookup(idFor("held-" + std::to_string(i))).has_value()) << i;
  }
  EXPECT_EQ(reserveSync(*store, reserveReq("held-0", "B")).status, ReserveStatus::InFlight);
  open(o);  // and after a clean close
  EXPECT_TRUE(store->lookup(idFor("held-9")).has_value());
}

TEST_F(LmdbWalProcessTest, AnotherProcessWritingToTheStoreMakesEveryLoneGroupCommitAtOnce) {
  store.reset();  // forks from a process without threads (ThreadSanitizer)
  LmdbOptions o = walOptions();
  o.hold_when_idle = true;
  o.defer_for = std::chrono::seconds(30);  // only another process ends a hold here
  constexpr int kKeys = 5;
  int opened[2], written[2], checked[2];
  ASSERT_EQ(::pipe(opened), 0);
  ASSERT_EQ(::pipe(written), 0);
  ASSERT_EQ(::pipe(checked), 0);
  const pid_t other = ::fork();
  ASSERT_GE(other, 0);
  if (other == 0) {
    ::close(opened[0]);
    ::close(written[1]);
    ::close(checked[0]);  // checked[1] stays open until this process ends
    std::string error;
    auto mine = openLmdbStore(o, clock, error);
    if (mine == nullptr) std::_Exit(81);
    writeAll(opened[1], "o", 1);
    char c = 0;
    if (::read(written[0], &c, 1) != 1) std::_Exit(82);  // the writer gave up (see its code)
    // Committed before they were acknowledged: readable here at once, the writer still alive.
    for (int i = 0; i < kKeys; ++i) {
      if (!mine->lookup(idFor("shared-" + std::to_string(i))).has_value()) std::_Exit(83);
    }
    mine.reset();
    std::_Exit(0);
  }
  ::close(opened[1]);
  ::close(checked[1]);
  char c = 0;
  ASSERT_EQ(::read(opened[0], &c, 1), 1);
  const pid_t writer = ::fork();
  ASSERT_GE(writer, 0);
  if (writer == 0) {
    ::close(written[0]);
    std::string error;
    auto mine = openLmdbStore(o, clock, error);
    if (mine == nullptr) std::_Exit(91);
    const auto before = mine->walStats();
    for (int i = 0; i < kKeys; ++i) {
      const std::string key = "shared-" + std::to_string(i);
      if (reserveSync(*mine, reserveReq(key, "A")).status != ReserveStatus::Won) std::_Exit(92);
    }
    // Each lone group committed on its own, before it was acknowledged.
    if (mine->walStats().lmdb_commits - before.lmdb_commits != kKeys) std::_Exit(93);
    writeAll(written[1], "w", 1);
    while (::read(checked[0], &c, 1) > 0) {
    }               // end of file: the other process has looked
    std::_Exit(0);  // no close: a close would commit what a hold kept
  }
  ::close(written[0]);
  ::close(written[1]);
  ::close(checked[0]);
  EXPECT_EQ(exitCode(writer), 0) << "writer";
  EXPECT_EQ(exitCode(other), 0) << "other";
  ::close(opened[0]);
  open(walOptions());
}

// Alone on the store, groups share a transaction up to the longer limits (defer_groups_alone);
// while another process has the store open for writing, up to the short ones (defer_groups),
// since that process waits for the write lock meanwhile.
TEST_F(LmdbWalProcessTest, GroupsShareLongerTransactionsOnlyWhileAloneOnTheStore) {
  store.reset();  // forks from a process without threads (ThreadSanitizer)
  LmdbOptions o = walOptions();
  o.max_batch = 4;  // many groups of at most 4
  o.defer_groups = 4;
  o.defer_groups_alone = 64;
  o.defer_for = o.defer_for_alone = std::chrono::seconds(30);  // only the group limits commit
  // Alone, the writer keeps the transaction when it finds the queue empty too: the counts below
  // do not depend on whether it catches up with the submitting thread.
  o.hold_when_idle = true;
  constexpr int kKeys = 400;
  struct Counts {
    uint64_t groups = 0;
    uint64_t commits = 0;
  };
  // LMDB commits and groups for kKeys reservations queued at once, with another process holding
  // the store open for writing or not.
  auto run = [&](const std::string& prefix) {
    open(o);
    const auto before = store->walStats();
    std::latch done(kKeys);
    for (int i = 0; i < kKeys; ++i) {
      store->reserve(reserveReq(prefix + std::to_string(i), "A"), [&](ReserveResult r) {
        EXPECT_EQ(r.error, StoreError::None);
        done.count_down();
      });
    }
    done.wait();
    store->flush();
    const auto w = store->walStats();
    store.reset();
    return Counts{w.groups - before.groups, w.lmdb_commits - before.lmdb_commits};
  };
  const Counts alone = run("alone-");
  EXPECT_GT(alone.groups, 16 * alone.commits) << alone.groups << " groups";
  // At most defer_ops operations, and the group that reaches them (at most 4 more).
  o.defer_ops = 8;
  const Counts capped = run("capped-");
  EXPECT_GE(capped.commits * 12, static_cast<uint64_t>(kKeys)) << capped.commits << " commits";
  o.defer_ops = LmdbOptions{}.defer_ops;

  int opened[2], finish[2];
  ASSERT_EQ(::pipe(opened), 0);
  ASSERT_EQ(::pipe(finish), 0);
  const pid_t other = ::fork();
  ASSERT_GE(other, 0);
  if (other == 0) {
    ::close(opened[0]);
    ::close(finish[1]);
    std::string error;
    auto mine = openLmdbStore(o, clock, error);
    if (mine == nullptr) std::_Exit(81);
    writeAll(opened[1], "o", 1);
    char c = 0;
    while (::read(finish[0], &c, 1) > 0) {
    }  // end of file: the test is done
    mine.reset();
    std::_Exit(0);
  }
  ::close(opened[1]);
  ::close(finish[0]);
  char c = 0;
  ASSERT_EQ(::read(opened[0], &c, 1), 1);
  const Counts shared = run("shared-");
  EXPECT_LE(shared.groups, 4 * shared.commits) << shared.groups << " groups";
  ::close(finish[1]);
  EXPECT_EQ(exitCode(other), 0);
  ::close(opened[0]);
  open(walOptions());
}

TEST_F(LmdbWalProcessTest, ALogThatFillsWhileGroupsShareATransactionCommitsThemFirst) {
  // The log wraps many times while groups are queued behind each other: a checkpoint (which
  // starts the log over) must never leave acknowledged groups only in the old log.
  LmdbOptions o = walOptions();
  o.wal_size = 16 << 10;
  o.max_batch = 2;
  store.reset();
  std::filesystem::remove_all(dir.path() + "/store");
  open(o);
  constexpr int kKeys = 300;
  std::atomic<int> recorded{0};
  std::latch done(kKeys);
  for (int i = 0; i < kKeys; ++i) {
    const std::string key = "fill-" + std::to_string(i);
    store->reserve(reserveReq(key, "A"), [&, key, i](ReserveResult r) {
      if (r.status != ReserveStatus::Won) {
        done.count_down();
        return;
      }
      // Groups of every size up to most of the log: some find it full with groups in the
      // transaction before them.
      const size_t body = 100 + static_cast<size_t>(i % 7) * 1100;
      store->record(recordReq(key, "A", answer(201, std::string(body, 'y'))), [&](RecordResult rr) {
        recorded += rr.status == RecordStatus::Recorded;
        done.count_down();
      });
    });
  }
  done.wait();
  ASSERT_EQ(recorded.load(), kKeys);
  const auto w = store->walStats();
  EXPECT_GT(w.checkpoints, 5u);
  EXPECT_LT(w.lmdb_commits, w.groups);
  // As the power would leave it: nothing of data.mdb after the last checkpoint, then replay.
  crashAfter([](LmdbStore&) {});
  open(o);
  for (int i = 0; i < kKeys; ++i) {
    auto rec = store->lookup(idFor("fill-" + std::to_string(i)));
    ASSERT_TRUE(rec.has_value()) << i;
    EXPECT_EQ(rec->state, RecordState::Completed) << i;
  }
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(LmdbWalProcessTest, GroupsAcknowledgedByAProcessThatDiedHoldingTheTransactionAreKept) {
  ASSERT_EQ(reserveSync(*store, reserveReq("before", "parent")).status, ReserveStatus::Won);
  store.reset();  // forks from a process without threads (ThreadSanitizer)
  const LmdbOptions o = walOptions();
  int ready[2], dead[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(dead), 0);
  // The survivor has the store open when the holder dies (so nobody replays at open).
  const pid_t survivor = ::fork();
  ASSERT_GE(survivor, 0);
  if (survivor == 0) {
    ::close(ready[0]);
    ::close(dead[1]);
    std::string error;
    auto mine = openLmdbStore(o, clock, error);
    if (mine == nullptr) std::_Exit(81);
    writeAll(ready[1], "r", 1);
    char c = 0;
    while (::read(dead[0], &c, 1) > 0) {
    }  // end of file: the holder is gone
    // Nothing of the holder's is committed; its groups are in the log after the last commit,
    // and this process's next write transaction commits them before anything else.
    if (mine->lookup(idFor("held-1")).has_value()) std::_Exit(82);
    for (const char* key : {"held-1", "held-2", "held-3"}) {
      const ReserveResult r = reserveSync(*mine, reserveReq(key, "survivor"));
      if (r.status != ReserveStatus::InFlight) std::_Exit(83);  // forwarded twice
      if (r.record.owner != "holder") std::_Exit(84);
    }
    if (mine->walStats().rolled_forward != 3) std::_Exit(85);
    if (reserveSync(*mine, reserveReq("after", "survivor")).status != ReserveStatus::Won) {
      std::_Exit(86);
    }
    mine.reset();
    std::_Exit(0);
  }
  ::close(ready[1]);
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  const pid_t holder = ::fork();
  ASSERT_GE(holder, 0);
  if (holder == 0) {
    ::close(dead[0]);  // dead[1] stays open until this process ends
    // The plant keeps the transaction open across groups and ends the process right after the
    // third is acknowledged: three reservations in the log, none committed to LMDB.
    ::setenv("IDEMPROXY_TEST_PLANT", "exit-holding-transaction", 1);
    std::string error;
    auto child = openLmdbStore(o, clock, error);
    if (child == nullptr) std::_Exit(91);
    for (const char* key : {"held-1", "held-2", "held-3"}) {
      if (reserveSync(*child, reserveReq(key, "holder")).status != ReserveStatus::Won) {
        std::_Exit(92);
      }
    }
    std::this_thread::sleep_for(std::chrono::seconds(10));  // the plant exits before this ends
    std::_Exit(93);
  }
  ::close(dead[0]);
  ::close(dead[1]);
  EXPECT_EQ(exitCode(holder), 0) << "holder";
  EXPECT_EQ(exitCode(survivor), 0) << "survivor";
  ::close(ready[0]);
  open(walOptions());
  for (const char* key : {"before", "held-1", "held-2", "held-3", "after"}) {
    EXPECT_TRUE(store->lookup(idFor(key)).has_value()) << key;
  }
  EXPECT_TRUE(store->verify().ok());
}

TEST_F(LmdbWalProcessTest, AStoreGetsALogOnlyWhenNoOtherProcessHasItOpen) {
  store.reset();
  std::filesystem::remove_all(dir.path() + "/store");
  LmdbOptions classic = walOptions();
  classic.wal = false;
  open(classic);
  std::string error;
  auto second = openLmdbStore(walOptions(), clock, error);  // another open file: another process
  ASSERT_NE(second, nullptr) << error;
  EXPECT_FALSE(second->walStats().active);
  EXPECT_FALSE(std::filesystem::exists(file("wal")));
  second.reset();
  store.reset();
  open(walOptions());
  EXPECT_TRUE(store->walStats().active);
  // The store's files decide from then on.
  error.clear();
  second = openLmdbStore(classic, clock, error);
  ASSERT_NE(second, nullptr) << error;
  EXPECT_TRUE(second->walStats().active);
  ASSERT_EQ(reserveSync(*second, reserveReq("shared", "B")).status, ReserveStatus::Won);
  EXPECT_NE(slurp(file("wal")).find("shared"), std::string::npos);
}

}  // namespace
}  // namespace idem
