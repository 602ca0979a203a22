// MeteredStore: every asynchronous operation of the wrapped store is reported once, with its
// name and error, before the caller's completion runs; everything else passes through.
#include "store/metered_store.h"

#include <gtest/gtest.h>

#include <future>
#include <mutex>
#include <vector>

#include "base/clock.h"
#include "base/digest.h"
#include "store/lmdb/lmdb_store.h"
#include "store/postgres/postgres_store.h"
#include "support/temp_dir.h"

namespace idem {
namespace {

using namespace std::chrono_literals;

struct Seen {
  StoreOp op;
  StoreError error;
};

class Reports {
 public:
  OperationObserver observer() {
    return [this](StoreOp op, std::chrono::microseconds took, StoreError e) {
      std::lock_guard lock(mu_);
      EXPECT_GE(took.count(), 0);
      seen_.push_back({op, e});
    };
  }
  std::vector<Seen> seen() {
    std::lock_guard lock(mu_);
    return seen_;
  }

 private:
  std::mutex mu_;
  std::vector<Seen> seen_;
};

ReserveRequest reserveReq(const std::string& key) {
  ReserveRequest r;
  r.id = recordId("payments", {"Bearer t"}, key);
  r.fingerprint.fill(1);
  r.route = "payments";
  r.key = key;
  r.owner = "A";
  r.ttl_ms = 3'600'000;
  r.lease_ms = 60'000;
  return r;
}

TEST(MeteredStore, ReportsEveryOperationBeforeItsCompletion) {
  testing::TempDir dir;
  LmdbOptions o;
  o.path = dir.path() + "/store";
  o.max_size = 16ull << 20;
  FakeClock clock;
  std::string error;
  auto inner = openLmdbStore(o, clock, error);
  ASSERT_NE(inner, nullptr) << error;
  Reports reports;
  MeteredStore store(*inner, reports.observer());
  EXPECT_TRUE(store.localReads());

  // The observer has run when the caller's completion runs.
  size_t seenAtCompletion = 0;
  std::promise<void> done;
  store.reserve(reserveReq("k"), [&](ReserveResult r) {
    EXPECT_EQ(r.status, ReserveStatus::Won);
    seenAtCompletion = reports.seen().size();
    done.set_value();
  });
  done.get_future().wait();
  EXPECT_EQ(seenAtCompletion, 1u);

  RecordRequest rec;
  rec.id = reserveReq("k").id;
  rec.owner = "A";
  rec.answer.status = 201;
  EXPECT_EQ(recordSync(store, rec).status, RecordStatus::Recorded);
  ASSERT_EQ(reserveSync(store, reserveReq("k2")).status, ReserveStatus::Won);
  EXPECT_TRUE(releaseSync(store, reserveReq("k2").id, "A").changed);
  EXPECT_TRUE(forgetSync(store, reserveReq("k").id).changed);
  EXPECT_EQ(sweepSync(store, 10).error, StoreError::None);
  EXPECT_FALSE(store.lookup(reserveReq("k").id).has_value());  // reads pass through

  const std::vector<StoreOp> want = {StoreOp::Reserve, StoreOp::Record, StoreOp::Reserve,
                                     StoreOp::Release, StoreOp::Forget, StoreOp::Sweep};
  const auto seen = reports.seen();
  ASSERT_EQ(seen.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(seen[i].op, want[i]) << i;
    EXPECT_EQ(seen[i].error, StoreError::None) << i;
  }
  EXPECT_STREQ(toString(StoreOp::Release), "release");
}

TEST(MeteredStore, ReportsTheErrorOfAFailedOperation) {
  PostgresOptions o;
  o.conninfo = "host=/nonexistent dbname=x";  // never reachable: every operation fails (Io)
  o.start_unreachable = true;
  std::string error;
  auto inner = openPostgresStore(o, error);
  ASSERT_NE(inner, nullptr) << error;
  Reports reports;
  MeteredStore store(*inner, reports.observer());
  EXPECT_FALSE(store.ready());
  EXPECT_EQ(reserveSync(store, reserveReq("k")).error, StoreError::Io);
  const auto seen = reports.seen();
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].op, StoreOp::Reserve);
  EXPECT_EQ(seen[0].error, StoreError::Io);
  EXPECT_STREQ(errorLabel(seen[0].error), "io");
}

}  // namespace
}  // namespace idem
