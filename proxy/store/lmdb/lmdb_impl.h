#pragma once
// Internals of the LMDB store shared by its source files (lmdb_env.cpp: create, open, sync, read
// transactions; lmdb_store.cpp: operations, the writer, the Store interface; lmdb_verify.cpp:
// integrity walk and checked listing; lmdb_reconcile.cpp: the reconcile operations). Not part of
// the interface.
#include <lmdb.h>

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "store/lmdb/lmdb_store.h"
#include "store/lmdb/lmdb_wal.h"
#include "store/lmdb/page_cache.h"

namespace idem {
namespace lmdb {

inline constexpr unsigned kMaxReaders = 512;      // reader slots in the lock file (all processes)
inline constexpr size_t kMaxPooledReadTxns = 64;  // idle read transactions kept for reuse
inline constexpr int kResizeAttempts = 4;
inline constexpr uint64_t kMinHeadroomPages = 16;
inline constexpr size_t kCompactOutcomeMaxBytes = 2048;  // an encoded compact outcome record
inline constexpr uint64_t kMaxHeadroomPages = 4096;      // 16 MiB with 4 KiB pages

inline MDB_val mdbVal(const void* p, size_t n) {
  return MDB_val{n, const_cast<void*>(p)};
}
inline MDB_val mdbVal(const RecordId& id) {
  return mdbVal(id.data(), id.size());
}
inline MDB_val mdbVal(std::string_view s) {
  return mdbVal(s.data(), s.size());
}
inline std::string_view view(const MDB_val& v) {
  return std::string_view(static_cast<const char*>(v.mv_data), v.mv_size);
}

inline std::string mdbError(int rc) {
  return mdb_strerror(rc);
}

inline StoreError classify(int rc) {
  if (rc == MDB_SUCCESS) return StoreError::None;
  if (rc == MDB_MAP_FULL || rc == MDB_TXN_FULL) return StoreError::Full;
  return StoreError::Io;
}

// Expiry index key: the expiry time made unsigned-sortable (sign bit flipped) in big-endian,
// then the record id, so LMDB's byte order is time order.
using ExpiryKey = std::array<uint8_t, 8 + std::tuple_size_v<RecordId>>;

inline ExpiryKey expiryKey(int64_t expires_at_ms, const RecordId& id) {
  ExpiryKey k{};
  const uint64_t t = static_cast<uint64_t>(expires_at_ms) ^ (uint64_t{1} << 63);
  for (int i = 0; i < 8; ++i) k[static_cast<size_t>(i)] = static_cast<uint8_t>(t >> (56 - 8 * i));
  std::memcpy(k.data() + 8, id.data(), id.size());
  return k;
}

inline int64_t expiryTime(const uint8_t* k) {
  uint64_t t = 0;
  for (int i = 0; i < 8; ++i) t = (t << 8) | k[i];
  return static_cast<int64_t>(t ^ (uint64_t{1} << 63));
}

// A transaction handle that aborts unless committed. Move-only. commit() gives the handle up
// before calling mdb_txn_commit, which frees it whatever the outcome.
class Txn {
 public:
  Txn() = default;
  explicit Txn(MDB_txn* t) : txn_(t) {}
  Txn(Txn&& o) noexcept : txn_(std::exchange(o.txn_, nullptr)) {}
  Txn& operator=(Txn&& o) noexcept {
    if (this != &o) {
      abort();
      txn_ = std::exchange(o.txn_, nullptr);
    }
    return *this;
  }
  Txn(const Txn&) = delete;
  Txn& operator=(const Txn&) = delete;
  ~Txn() { abort(); }

  MDB_txn* get() const { return txn_; }
  explicit operator bool() const { return txn_ != nullptr; }
  [[nodiscard]] int commit() { return mdb_txn_commit(std::exchange(txn_, nullptr)); }
  void abort() {
    if (txn_ != nullptr) mdb_txn_abort(std::exchange(txn_, nullptr));
  }

 private:
  MDB_txn* txn_ = nullptr;
};

// A cursor closed when it goes out of scope (read-only cursors are not freed with their txn).
class Cursor {
 public:
  Cursor() = default;
  Cursor(const Cursor&) = delete;
  Cursor& operator=(const Cursor&) = delete;
  ~Cursor() {
    if (cur_ != nullptr) mdb_cursor_close(cur_);
  }
  [[nodiscard]] int open(MDB_txn* txn, MDB_dbi dbi) { return mdb_cursor_open(txn, dbi, &cur_); }
  MDB_cursor* get() const { return cur_; }

 private:
  MDB_cursor* cur_ = nullptr;
};

}  // namespace lmdb

struct LmdbStore::Impl {
  // One queued write. apply() runs inside a (nested) write transaction and keeps its result;
  // finish() runs after the commit and hands the result (or `error`) to the caller's callback.
  struct Op {
    virtual ~Op() = default;
    [[nodiscard]] virtual int apply(Impl& s, MDB_txn* txn, int64_t now) = 0;
    virtual void finish(StoreError error) = 0;
    // Forgets a result from an attempt whose transaction did not commit (apply runs again).
    virtual void reset() {}
    virtual bool isBarrier() const { return false; }
    // Takes room in the map (reserve, record): its success means the store is not full.
    virtual bool grows() const { return false; }
    // Can share the group's transaction without a nested one of its own (reserve, record): a
    // failure then runs the group again with one nested transaction per operation.
    virtual bool flat() const { return false; }
  };
  template <typename Result>
  struct OpWith : Op {
    explicit OpWith(std::function<void(Result)> d) : done(std::move(d)) {}
    void finish(StoreError error) override {
      if (error != StoreError::None) {
        result = Result{};
        result.error = error;
      }
      if (done) done(std::move(result));
    }
    void reset() override { result = Result{}; }
    std::function<void(Result)> done;
    Result result;
  };
  struct ReserveOp;
  struct RecordOp;
  struct ReleaseOp;
  struct ForgetOp;
  struct SweepOp;
  struct BarrierOp;
  struct CheckpointOp;       // lmdb_wal_store.cpp
  struct ClaimReconcileOp;   // lmdb_reconcile.cpp
  struct SettleReconcileOp;  // lmdb_reconcile.cpp

  Impl(const LmdbOptions& o, const Clock& c) : opts(o), clock(c) {}
  ~Impl();

  bool open(std::string& error);
  void start();
  void stop();

  void submit(std::unique_ptr<Op> op);
  // The write transaction, with the lock that lets the map not be resized under it. Before
  // returning, applies and commits whatever a process synced to the log but did not commit
  // (rollForward), so no transaction starts behind the log.
  int beginWrite(lmdb::Txn& txn, std::shared_lock<std::shared_mutex>& map_lock);
  // Writer: the transaction groups run in (open_txn) ends. commitOpen: every group in it was
  // synced to the log and acknowledged; if the commit fails they stay in the log, and the next
  // write transaction (of any process) rolls them forward. abortOpen: the same, without trying.
  int commitOpen();
  void commitOpenReporting();  // commitOpen, a failure shown in `health`
  void failedWrite(int rc);    // `health` after a write transaction failed with `rc`
  void abortOpen();
  // Writer: whether the group just logged may leave open_txn open for the next.
  bool mayDefer(bool more_queued);
  void writerLoop();
  void process(std::span<const std::unique_ptr<Op>> batch, bool& dirty);
  size_t runGroup(std::span<Op* const> ops, bool& dirty);
  void adoptMapSize();
  void syncToDisk();

  // Integrity (lmdb_verify.cpp): see LmdbStore::verify and LmdbStore::listChecked.
  VerifyReport verify();
  CheckedList listChecked();
  void checkFileSize(std::vector<std::string>& problems);

  // Runs `fn` in a read-only transaction on the calling thread; returns an LMDB code.
  int withRead(FunctionRef<int(MDB_txn*)> fn);

  // Record access inside a transaction. get: MDB_NOTFOUND when absent; an undecodable value
  // reads as absent (and is counted).
  int get(MDB_txn* txn, const RecordId& id, Record& out);
  // Sets grow_budget for a new write transaction: free pages in the map beyond the headroom.
  int measureFreePages(MDB_txn* txn);
  int put(MDB_txn* txn, const RecordId& id, const Record& rec, const Record* old);
  // put() of an encoded record; `budget`: refuse (MDB_MAP_FULL) a write that does not fit.
  int putEncoded(MDB_txn* txn, const RecordId& id, std::string_view bytes, int64_t expires_at_ms,
                 const Record* old, bool compact_outcome, bool budget);
  int erase(MDB_txn* txn, const RecordId& id, const Record* old);

  // Write-ahead log (lmdb_wal_store.cpp; the protocol is described there).
  // Opening: before the environment is opened, takes the presence lock and, alone with a log
  // that was not closed cleanly, restores the checkpoint's meta pages; `use_wal` tells whether
  // the store has a log (or will get one: walStart creates it).
  bool walPrepare(bool& use_wal, bool& create_wal, std::string& error);
  // After the environment is open: replays the log (alone) or creates it, then checkpoints.
  bool walStart(bool create_wal, std::string& error);
  // Appends the group's changes (wal_pending) and syncs, inside the write transaction `txn`
  // before it commits; sets wal_group_at to where the group went. False: the group must not
  // commit (the error is in `error`).
  bool walAppend(MDB_txn* txn, std::string& error);
  // The log synced, the transaction then failed to commit: make sure the group is not replayed.
  void walForget();
  // Checkpoint (write transaction `txn` open, so no commit can happen meanwhile).
  bool checkpoint(MDB_txn* txn, bool clean, std::string& error);
  // Runs a checkpoint in a write transaction of its own (the writer thread, or with it stopped).
  bool checkpointNow(bool clean, std::string& error);
  // At close: the last process out writes a clean checkpoint.
  void walClose();
  void checkpointerLoop();
  bool replayLog(const wal::Checkpoint& c, std::string& error);
  // Applies the groups after the last committed one that are valid in the log (synced by a
  // process that then died, or failed to commit, holding the write transaction), in `txn`, and
  // moves the log position past them; one group per call (`moved`: there was one).
  int rollForward(MDB_txn* txn, bool& moved);
  // Applies logged changes (replay, roll forward), without logging them again.
  int applyChanges(MDB_txn* txn, const std::vector<wal::Change>& changes);
  bool readableWithoutReplay(std::string& error);

  LmdbOptions opts;
  const Clock& clock;
  MDB_env* env = nullptr;
  MDB_dbi records = 0;
  MDB_dbi expiry = 0;
  size_t page_size = 4096;
  int64_t grow_budget = 0;     // writer thread only: bytes growing writes may still take
  int64_t headroom_bytes = 0;  // writer thread only: the headroom, for compact outcomes

  // What the last write transaction found (writer thread writes, anyone reads).
  enum class Health : int { Ok, Full, Failing, FilesGone };
  std::atomic<Health> health{Health::Ok};
  // The data file this environment has open was deleted or replaced (its directory removed, a
  // restore copied over it while running): writes would go to a file nobody else sees.
  bool filesGone() const;
  struct FileIdentity {
    uint64_t ino = 0;
    uint32_t dev_major = 0;
    uint32_t dev_minor = 0;
    bool operator==(const FileIdentity&) const = default;
  };
  FileIdentity data_identity;  // the open data file's (set by open)
  std::string data_path;       // DIR/data.mdb
  int data_fd = -1;            // LMDB's descriptor of it (set by open)
  // Writer only: the data file grown ahead of LMDB's last page and read into the cache as single
  // pages, at the start of a write transaction (page_cache.h).
  lmdb::GrowthAhead growth_ahead;
  static constexpr uint64_t kGrowthAhead = 2ull << 20;
  void prepareGrowth();
  // TEST ONLY (IDEMPROXY_TEST_PLANT=answer-before-commit, read once at open): a planted bug
  // that completes every operation before its transaction is committed and synced, then waits
  // 20 ms and commits. It exists so that the sync-order test and the power-loss simulator can
  // show that they catch an answer given before it is durable. Never set it in production.
  bool plant_answer_before_commit = false;
  // TEST ONLY (IDEMPROXY_TEST_PLANT=exit-holding-transaction): keeps the write transaction open
  // across groups whatever is queued, and ends the process (std::_Exit) right after the third
  // group is acknowledged, still holding it: a process that dies with acknowledged groups not
  // yet committed, for the test that another process rolls them forward.
  bool plant_exit_holding_transaction = false;
  int planted_groups = 0;

  std::shared_mutex map_mu;  // shared: a transaction is active; exclusive: resizing the map

  std::mutex pool_mu;
  std::vector<MDB_txn*> read_pool;  // reset read-only transactions

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Op>> queue;
  bool stopping = false;
  std::thread writer;
  std::atomic<std::thread::id> writer_id{};

  std::mutex observer_mu;
  CommitObserver observer;

  std::unique_ptr<wal::LogFile> wal_file;  // null: the store commits without a log
  wal::Presence presence;                  // writable opens only
  bool wal_alone = false;                  // opening: nobody else has the store open to write
  bool wal_started = false;                // walStart completed: the store is open
  bool wal_replaying = false;              // writer: changes are not logged while replaying
  bool wal_retrying = false;               // writer: a group re-run after a checkpoint
  bool wal_broken = false;  // writer: a sync failed; nothing more is appended (503) until restart
  std::atomic<bool> wal_dirty{false};  // committed through the log since the checkpoint
  size_t replayed_at_open = 0;         // changes replayed from the log when opening
  std::string wal_pending;             // writer: the changes of the group being applied
  bool nested_only = false;            // writer: this group runs each op in a nested transaction
  bool wal_needs_commit = false;       // writer: the log is full and open_txn has groups in it
  // Writer: the write transaction groups run in, open across groups while more are queued.
  lmdb::Txn open_txn;
  std::shared_lock<std::shared_mutex> open_lock;  // map_mu, while open_txn is
  size_t open_groups = 0;                         // acknowledged groups in open_txn
  size_t open_ops = 0;                            // their operations
  // Writer: whether no other process has the store open for writing (hold_when_idle), as last
  // asked (aloneOnStore).
  bool aloneOnStore();
  // Writer: how long open_txn may stay open, in groups and time (the longer limits when alone).
  size_t deferGroups();
  std::chrono::microseconds deferFor();
  bool alone = false;
  std::chrono::steady_clock::time_point alone_checked{};
  std::chrono::steady_clock::time_point open_since;
  uint64_t wal_group_at = 0;  // writer: where walAppend put the last group
  // Writer: the log's checkpoint as the write transaction now open read it (rollForward) or
  // wrote it (checkpoint): nobody else writes one while the write lock is held.
  std::optional<wal::Checkpoint> held_checkpoint;
  uint64_t wal_used = 0;     // writer: log bytes used since the checkpoint
  MDB_txn* pin = nullptr;    // writer: read transaction at this process's last checkpoint
  size_t pin_last_page = 0;  // writer: the data file's last page at that checkpoint
  // The checkpointer thread: syncs the data file ahead of a checkpoint, then queues it.
  std::thread checkpointer;
  std::mutex ck_mu;
  std::condition_variable ck_cv;
  bool ck_stopping = false;
  bool ck_wanted = false;  // the log is half full: checkpoint soon
  std::atomic<uint64_t> checkpoints{0};

  std::atomic<uint64_t> commits{0};  // groups acknowledged
  std::atomic<uint64_t> lmdb_commits{0};
  std::atomic<uint64_t> rolled_forward{0};
  std::atomic<uint64_t> operations{0};
  std::atomic<uint64_t> decode_errors{0};
};

}  // namespace idem
