#pragma once
// The embedded LMDB store: one environment directory shared safely by several processes
// (LMDB's lock file), one writer thread per process that group-commits queued operations.
#include <memory>
#include <string>

#include "base/clock.h"
#include "config/config.h"
#include "store/lmdb/lmdb_wal.h"
#include "store/store.h"

namespace idem {

struct LmdbOptions {
  std::string path;                // directory; created 0700 if missing, files 0600
  uint64_t max_size = 1ull << 30;  // map size limit
  Durability durability = Durability::Full;
  std::chrono::milliseconds relaxed_sync_interval{1000};  // relaxed: how often to fsync
  size_t max_batch = 256;                                 // operations committed together at most
  bool read_only = false;  // for `keys list/show` (writes then fail with Io)
  // Walk the whole store at open (see LmdbStore::verify) and refuse a damaged one. The daemon
  // and `keys forget` open with it; `keys list/show` and `store verify` report damage themselves.
  bool verify_at_open = true;
  // durability full: create a write-ahead log (DIR/wal) if the store has none and this process
  // has it to itself. A store with a log always uses it, whatever this says.
  bool wal = false;
  uint64_t wal_size = wal::kDefaultCapacity;            // bytes of log between checkpoints
  std::chrono::milliseconds checkpoint_interval{5000};  // at most this long between them
  // Growth of the data file since the last checkpoint (4 KiB pages) that starts the next one;
  // 0: an eighth of the file, at least 256 and at most 8192 pages.
  size_t checkpoint_growth_pages = 0;
  // With a log, while more operations are queued, groups share one LMDB transaction: each is
  // acknowledged once its log group is synced, and the transaction commits after `defer_groups`
  // groups, after `defer_for`, or as soon as nothing more is queued (1: a commit per group).
  size_t defer_groups = 16;
  std::chrono::microseconds defer_for{5000};
  // The same limits while no other process has the store open for writing (asked again once per
  // defer_for): nobody waits for the write lock then, and a longer transaction writes each page
  // it changes once instead of once per commit (new keys at 50 connections: 1.8 page writes per
  // key with 16 groups or 5 ms, 1.1 with 64 or 20 ms; bench/README.md, round 7). Also at most
  // defer_ops operations (the group that reaches it commits, so one group more at most), which
  // bounds the changed pages LMDB keeps in memory until the commit.
  size_t defer_groups_alone = 64;
  std::chrono::microseconds defer_for_alone{20000};
  size_t defer_ops = 4096;
  // With a log and no other process writing to the store: the same when nothing more is
  // queued. A lone group is acknowledged once synced, and the writer keeps the transaction for
  // the groups that follow (the record of a reservation, the next request) until one of the
  // limits above, then commits: at one connection a key's reservation and record share one
  // LMDB commit instead of two. Another process that opens the store for writing is noticed
  // within one hold, and turns it off. Reads, in this process and others, may then lag an
  // acknowledgement by up to `defer_for`; the request path asks the writer when a read misses.
  bool hold_when_idle = false;
  // Refuse to replay a log into a data file other than the one it was written for (inode and
  // birth time). Only the power-loss checker, which rebuilds the files of each crash state
  // from recorded writes, turns it off.
  bool wal_check_identity = true;
};

// What LmdbStore::verify found. `problems` is empty for a sound store; each entry says what is
// wrong and where (a record id in hex, an index entry, a page count).
struct VerifyReport {
  uint64_t records = 0;        // entries walked in the main table
  uint64_t index_entries = 0;  // entries walked in the expiry index
  std::vector<std::string> problems;
  bool ok() const { return problems.empty(); }
};

// How to restore, for messages about a damaged store.
inline constexpr const char* kRestoreHint =
    "stop every idemproxy process using it, move the store directory aside, and restore the "
    "last backup taken with `mdb_copy` (see docs/operations.md); or start with an empty store "
    "directory, losing the recorded keys";

class LmdbStore;
// Opens (creating if needed) the environment. On failure returns nullptr and sets `error`.
[[nodiscard]] std::unique_ptr<LmdbStore> openLmdbStore(const LmdbOptions& options,
                                                       const Clock& clock, std::string& error);

// Declared here so tests and main can hold the concrete type; defined in lmdb_store.cpp.
class LmdbStore : public Store {
 public:
  ~LmdbStore() override;
  // (Store interface)
  void reserve(ReserveRequest req, std::function<void(ReserveResult)> done) override;
  void record(RecordRequest req, std::function<void(RecordResult)> done) override;
  void release(RecordId id, std::string owner, std::function<void(WriteResult)> done) override;
  void forget(RecordId id, std::function<void(WriteResult)> done) override;
  void sweep(size_t limit, std::function<void(WriteResult)> done) override;
  void claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) override;
  void settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) override;
  std::optional<Record> lookup(const RecordId& id) override;
  bool visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) override;
  std::vector<std::pair<RecordId, Record>> list() override;
  StoreStats stats() override;
  void flush() override;
  void setCommitObserver(CommitObserver observer) override;
  std::string unavailableReason() override;

  // Walks the main table and the expiry index in one read transaction: the data file holds
  // every page the environment claims, every key has the right size, every record decodes, and
  // every record has exactly its expiry index entry (and every index entry its record).
  VerifyReport verify();
  // Like list(), but reports what it could not read instead of skipping it.
  CheckedList listChecked() override;

  // The write-ahead log: whether this store has one, checkpoints this process made, and how
  // many changes it replayed when it opened the store.
  struct WalStats {
    bool active = false;
    uint64_t checkpoints = 0;
    size_t replayed_at_open = 0;
    uint64_t groups = 0;          // groups synced to the log and acknowledged
    uint64_t lmdb_commits = 0;    // LMDB transactions committed by this process's writer
    uint64_t rolled_forward = 0;  // changes applied from the log that a process left uncommitted
  };
  WalStats walStats() const;

  struct Impl;
  explicit LmdbStore(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace idem
