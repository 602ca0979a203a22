// Damage is reported, never hidden: LmdbStore::verify, listChecked and the check at open, each
// against a store damaged behind its back through LMDB itself or by truncating its file.
#include <gtest/gtest.h>
#include <lmdb.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <string>

#include "base/clock.h"
#include "base/digest.h"
#include "store/lmdb/lmdb_store.h"
#include "support/temp_dir.h"

namespace idem {
namespace {

RecordId idFor(const std::string& key) {
  return recordId("payments", {"Bearer t"}, key);
}

ReserveRequest reserveReq(const std::string& key) {
  ReserveRequest r;
  r.id = idFor(key);
  r.fingerprint.fill(1);
  r.route = "payments";
  r.key = key;
  r.scope = {"Bearer t"};
  r.owner = "A";
  r.ttl_ms = 24 * 3600 * 1000;
  r.lease_ms = 60'000;
  return r;
}

bool mentions(const std::vector<std::string>& problems, const std::string& what) {
  for (const auto& p : problems)
    if (p.find(what) != std::string::npos) return true;
  return false;
}

class VerifyTest : public ::testing::Test {
 protected:
  LmdbOptions options() const {
    LmdbOptions o;
    o.path = dir.path() + "/store";
    o.max_size = 64ull << 20;
    return o;
  }
  void fill(int n) {
    std::string error;
    auto store = openLmdbStore(options(), clock, error);
    ASSERT_NE(store, nullptr) << error;
    std::atomic<int> won{0};
    for (int i = 0; i < n; ++i) {  // queued together: a few group commits
      store->reserve(reserveReq("k" + std::to_string(i)), [&won](ReserveResult r) {
        if (r.error == StoreError::None && r.status == ReserveStatus::Won) ++won;
      });
    }
    store->flush();
    ASSERT_EQ(won.load(), n);
  }
  // Changes the store with raw LMDB calls inside one write transaction (the store is closed).
  void damage(const std::function<void(MDB_txn*, MDB_dbi records, MDB_dbi expiry)>& fn) {
    MDB_env* env = nullptr;
    ASSERT_EQ(mdb_env_create(&env), 0);
    mdb_env_set_maxdbs(env, 4);
    ASSERT_EQ(mdb_env_open(env, options().path.c_str(), 0, 0600), 0);
    MDB_txn* txn = nullptr;
    ASSERT_EQ(mdb_txn_begin(env, nullptr, 0, &txn), 0);
    MDB_dbi records, expiry;
    ASSERT_EQ(mdb_dbi_open(txn, "records", 0, &records), 0);
    ASSERT_EQ(mdb_dbi_open(txn, "expiry", 0, &expiry), 0);
    fn(txn, records, expiry);
    ASSERT_EQ(mdb_txn_commit(txn), 0);
    mdb_env_close(env);
  }
  std::unique_ptr<LmdbStore> openUnchecked() {
    LmdbOptions o = options();
    o.verify_at_open = false;
    std::string error;
    auto store = openLmdbStore(o, clock, error);
    EXPECT_NE(store, nullptr) << error;
    return store;
  }
  std::string refusal() {
    std::string error;
    EXPECT_EQ(openLmdbStore(options(), clock, error), nullptr);
    return error;
  }

  idem::testing::TempDir dir;
  FakeClock clock;
};

TEST_F(VerifyTest, SoundStorePasses) {
  fill(3);
  auto store = openUnchecked();
  const VerifyReport rep = store->verify();
  EXPECT_TRUE(rep.ok()) << rep.problems.front();
  EXPECT_EQ(rep.records, 3u);
  EXPECT_EQ(rep.index_entries, 3u);
  const CheckedList list = store->listChecked();
  EXPECT_TRUE(list.problems.empty());
  EXPECT_EQ(list.records.size(), 3u);
}

TEST_F(VerifyTest, RecordsWithoutIndexEntriesAreReportedAndRefusedAtOpen) {
  fill(3);
  damage([](MDB_txn* txn, MDB_dbi, MDB_dbi expiry) { ASSERT_EQ(mdb_drop(txn, expiry, 0), 0); });
  auto store = openUnchecked();
  const VerifyReport rep = store->verify();
  EXPECT_EQ(rep.problems.size(), 3u);
  EXPECT_TRUE(mentions(rep.problems, "no expiry index entry"));
  store.reset();
  const std::string error = refusal();
  EXPECT_NE(error.find("is damaged: record "), std::string::npos) << error;
  EXPECT_NE(error.find("mdb_copy"), std::string::npos) << error;
}

TEST_F(VerifyTest, IndexEntryWithoutRecordIsReported) {
  fill(2);
  damage([](MDB_txn* txn, MDB_dbi records, MDB_dbi) {
    RecordId id = idFor("k1");
    MDB_val k{id.size(), id.data()};
    ASSERT_EQ(mdb_del(txn, records, &k, nullptr), 0);
  });
  auto store = openUnchecked();
  const VerifyReport rep = store->verify();
  ASSERT_EQ(rep.problems.size(), 1u);
  EXPECT_NE(rep.problems[0].find(toHex(idFor("k1")) + ", which is absent"), std::string::npos)
      << rep.problems[0];
}

TEST_F(VerifyTest, UndecodableRecordFailsTheCheckedList) {
  fill(3);
  damage([](MDB_txn* txn, MDB_dbi records, MDB_dbi) {
    RecordId id = idFor("k2");
    MDB_val k{id.size(), id.data()};
    char junk[] = "\x01garbage";
    MDB_val v{sizeof junk, junk};
    ASSERT_EQ(mdb_put(txn, records, &k, &v, 0), 0);
  });
  auto store = openUnchecked();
  const CheckedList list = store->listChecked();
  ASSERT_EQ(list.problems.size(), 1u);
  EXPECT_NE(list.problems[0].find("record " + toHex(idFor("k2")) + ": does not decode"),
            std::string::npos)
      << list.problems[0];
  EXPECT_EQ(list.records.size(), 2u);
  EXPECT_TRUE(mentions(store->verify().problems, "does not decode"));
}

TEST_F(VerifyTest, TruncatedDataFileIsRefusedBeforeAnyPageIsRead) {
  fill(300);  // several pages
  ASSERT_EQ(::truncate((options().path + "/data.mdb").c_str(), 3 * 4096), 0);
  const std::string error = refusal();
  EXPECT_NE(error.find("pages written before the last commit are lost"), std::string::npos)
      << error;
  LmdbOptions ro = options();
  ro.read_only = true;
  std::string ro_error;
  EXPECT_EQ(openLmdbStore(ro, clock, ro_error), nullptr);
  EXPECT_NE(ro_error.find("damaged"), std::string::npos) << ro_error;
}

}  // namespace
}  // namespace idem
