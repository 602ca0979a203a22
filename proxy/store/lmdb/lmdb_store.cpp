#include "store/lmdb/lmdb_store.h"

#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <future>
#include <mutex>
#include <shared_mutex>
#include <span>
#include <thread>
#include <utility>

#include "base/bounds.h"
#include "base/thread_name.h"
#include "base/wake_batch.h"
#include "store/lmdb/lmdb_impl.h"

// The LMDB store.
//
// Layout: two named databases in one environment.
//   records: RecordId (32 bytes)                       → encodeRecord(Record)
//   expiry:  sortable(expires_at) (8, big-endian) ‖ id → (empty)
// Every write that creates, changes the expiry of, or deletes a record updates `expiry` in the
// same transaction, so the sweep walks the index from its start and stops at the first entry in
// the future. The sweep still re-reads each record and deletes it only if the record itself has
// expired (a stale entry, left by a crash-free but unusual history, is dropped on the way).
//
// Threads: writes are queued to one writer thread, which applies everything queued (up to
// max_batch) in one write transaction and commits once (group commit). Reads run on the calling
// thread in read-only transactions taken from a small pool of reset transactions (MDB_NOTLS, so a
// transaction is not tied to a thread; mdb_txn_renew/mdb_txn_reset reuse them).
//
// Map full: each operation of a batch runs in its own nested transaction (mdb_txn_begin with the
// batch transaction as parent). An operation that hits MDB_MAP_FULL aborts only its nested
// transaction and completes with StoreError::Full; the rest of the batch commits. If the final
// commit itself fails with MDB_MAP_FULL (LMDB may need pages to save the free list), the batch is
// re-run one operation per transaction, so again only the operations that do not fit fail.
// MDB_TXN_FULL (too many dirty pages for one transaction) makes the batch commit early; the
// remaining operations continue in a new transaction.
//
// Headroom: LMDB copies pages on write, so once the map is truly full even a delete fails and a
// full store could never be swept back into service. Writes that grow the store (reserve,
// record) are therefore refused with Full once they would eat into `headroom` pages (1/32 of the
// map, at least 16 and at most 4096 pages); deletes (release, forget, sweep) may use the
// headroom. Free pages are counted at the start of each write transaction (map pages minus the
// pages of every tree, free list included) and each growing write subtracts an estimate of the
// bytes it takes. A sweep that still hits MDB_MAP_FULL
// retries with half the slice, down to one record.
//
// Map resize: if another process configured a larger map and the data grew past ours,
// mdb_txn_begin/renew report MDB_MAP_RESIZED; we adopt the new size with mdb_env_set_mapsize(0).
// LMDB requires that no transaction of this process is active then, so every transaction holds
// `map_mu` shared and the resize takes it exclusively.

namespace idem {
using namespace lmdb;  // NOLINT: the store's own helpers

// ---------------------------------------------------------------------------------------------
// Record access

int LmdbStore::Impl::get(MDB_txn* txn, const RecordId& id, Record& out) {
  MDB_val k = mdbVal(id);
  MDB_val v;
  int rc = mdb_get(txn, records, &k, &v);
  if (rc != MDB_SUCCESS) return rc;
  if (decodeRecord(view(v), out) != DecodeError::None) {
    decode_errors.fetch_add(1, std::memory_order_relaxed);
    return MDB_NOTFOUND;
  }
  return MDB_SUCCESS;
}

int LmdbStore::Impl::measureFreePages(MDB_txn* txn) {
  MDB_envinfo info;
  int rc = mdb_env_info(env, &info);
  if (rc != MDB_SUCCESS) return rc;
  const uint64_t map_pages = info.me_mapsize / page_size;
  uint64_t in_use = 2;  // meta pages
  for (MDB_dbi dbi : {MDB_dbi{0} /* free list */, MDB_dbi{1} /* main */, records, expiry}) {
    MDB_stat st;
    rc = mdb_stat(txn, dbi, &st);
    if (rc != MDB_SUCCESS) return rc;
    in_use += st.ms_branch_pages + st.ms_leaf_pages + st.ms_overflow_pages;
  }
  const uint64_t headroom = std::clamp(map_pages / 32, kMinHeadroomPages, kMaxHeadroomPages);
  grow_budget = (static_cast<int64_t>(map_pages) - static_cast<int64_t>(in_use) -
                 static_cast<int64_t>(headroom)) *
                static_cast<int64_t>(page_size);
  headroom_bytes = static_cast<int64_t>(headroom * page_size);
  return MDB_SUCCESS;
}

int LmdbStore::Impl::put(MDB_txn* txn, const RecordId& id, const Record& rec, const Record* old) {
  const std::string bytes = encodeRecord(rec);
  // A compact outcome (not replayable, small) settles a key that is already reserved: it may use
  // the headroom, so that a reservation the store admitted can always get its outcome recorded
  // and the client its answer (the request core falls back to one when a full answer does not
  // fit).
  const bool compactOutcome = rec.state == RecordState::Completed &&
                              (rec.flags & kFlagNotReplayable) != 0 &&
                              bytes.size() <= kCompactOutcomeMaxBytes;
  return putEncoded(txn, id, bytes, rec.expires_at_ms, old, compactOutcome, true);
}

int LmdbStore::Impl::putEncoded(MDB_txn* txn, const RecordId& id, std::string_view bytes,
                                int64_t expires_at_ms, const Record* old, bool compact_outcome,
                                bool budget) {
  // Estimate in bytes: a small value shares a leaf page, a large one (over half a page) takes
  // whole overflow pages; plus both keys and node headers. Page splits and the paths copied
  // once per transaction are covered by the headroom.
  const size_t value = bytes.size() + 16;
  const int64_t need = static_cast<int64_t>(
      (value > page_size / 2 ? (value + page_size - 1) / page_size * page_size : value) +
      sizeof(RecordId) + sizeof(ExpiryKey) + 32);
  if (budget && need > grow_budget + (compact_outcome ? headroom_bytes : 0)) return MDB_MAP_FULL;
  int rc;
  if (old != nullptr && old->expires_at_ms != expires_at_ms) {
    ExpiryKey ok = expiryKey(old->expires_at_ms, id);
    MDB_val k = mdbVal(ok.data(), ok.size());
    rc = mdb_del(txn, expiry, &k, nullptr);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
  }
  if (old == nullptr || old->expires_at_ms != expires_at_ms) {
    ExpiryKey nk = expiryKey(expires_at_ms, id);
    MDB_val k = mdbVal(nk.data(), nk.size());
    MDB_val empty{0, nullptr};
    rc = mdb_put(txn, expiry, &k, &empty, 0);
    if (rc != MDB_SUCCESS) return rc;
  }
  MDB_val k = mdbVal(id);
  MDB_val v = mdbVal(bytes);
  rc = mdb_put(txn, records, &k, &v, 0);
  if (rc != MDB_SUCCESS) return rc;
  if (budget) grow_budget -= need;
  if (wal_file && !wal_replaying) wal::addPut(wal_pending, id, bytes);
  return MDB_SUCCESS;
}

int LmdbStore::Impl::erase(MDB_txn* txn, const RecordId& id, const Record* old) {
  MDB_val k = mdbVal(id);
  int rc = mdb_del(txn, records, &k, nullptr);
  if (rc != MDB_SUCCESS) return rc;
  if (wal_file && !wal_replaying) wal::addErase(wal_pending, id);
  if (old != nullptr) {
    ExpiryKey ek = expiryKey(old->expires_at_ms, id);
    MDB_val ik = mdbVal(ek.data(), ek.size());
    rc = mdb_del(txn, expiry, &ik, nullptr);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
  }
  return MDB_SUCCESS;
}

// ---------------------------------------------------------------------------------------------
// Operations (SPEC §1.4, §1.6)

struct LmdbStore::Impl::ReserveOp final : OpWith<ReserveResult> {
  bool grows() const override { return true; }
  bool flat() const override { return true; }
  ReserveOp(ReserveRequest r, std::function<void(ReserveResult)> d)
      : OpWith(std::move(d)), req(std::move(r)) {}

  int apply(Impl& s, MDB_txn* txn, int64_t now) override {
    if (bounds::skipStore()) {  // a benchmark bound (base/bounds.h): won, nothing stored
      result.status = ReserveStatus::Won;
      result.record.owner = req.owner;
      result.record.lease_until_ms = now + req.lease_ms;
      return MDB_SUCCESS;
    }
    Record cur;
    int rc = s.get(txn, req.id, cur);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    const bool found = rc == MDB_SUCCESS;

    if (!found || cur.expired(now)) {
      Record rec;
      rec.state = RecordState::InFlight;
      rec.reserved_at_ms = now;
      rec.lease_until_ms = now + req.lease_ms;
      rec.expires_at_ms = now + req.ttl_ms;
      rec.owner = req.owner;
      rec.fingerprint = req.fingerprint;
      rec.route = req.route;
      rec.key = req.key;
      rec.scope = req.scope;
      rec.lookup = req.lookup;
      rc = s.put(txn, req.id, rec, found ? &cur : nullptr);
      if (rc != MDB_SUCCESS) return rc;
      result.status = ReserveStatus::Won;
      result.record = std::move(rec);
      return MDB_SUCCESS;
    }
    if (cur.fingerprint != req.fingerprint) {
      result.status = ReserveStatus::Mismatch;
    } else if (cur.state == RecordState::Completed) {
      result.status = ReserveStatus::Completed;
    } else if (!cur.leasePassed(now)) {
      result.status = ReserveStatus::InFlight;
    } else if (req.retry_abandoned) {
      // The owner died: take the reservation over as if it were new.
      Record rec = cur;
      rec.owner = req.owner;
      rec.reserved_at_ms = now;
      rec.lease_until_ms = now + req.lease_ms;
      rec.expires_at_ms = now + req.ttl_ms;
      rc = s.put(txn, req.id, rec, &cur);
      if (rc != MDB_SUCCESS) return rc;
      result.status = ReserveStatus::Won;
      cur = std::move(rec);
    } else {
      // The owner died: its outcome is unknown, and that is what stands (and is replayed). The
      // owner is kept so that it may still replace this with the real outcome.
      Record rec = cur;
      rec.state = RecordState::Completed;
      rec.flags = kFlagProxyError | kFlagOutcomeUnknown;
      rec.answer = req.abandoned_answer;
      rc = s.put(txn, req.id, rec, &cur);
      if (rc != MDB_SUCCESS) return rc;
      result.status = ReserveStatus::Completed;
      cur = std::move(rec);
    }
    result.record = std::move(cur);
    return MDB_SUCCESS;
  }

  ReserveRequest req;
};

struct LmdbStore::Impl::RecordOp final : OpWith<RecordResult> {
  bool grows() const override { return true; }
  bool flat() const override { return true; }
  RecordOp(RecordRequest r, std::function<void(RecordResult)> d)
      : OpWith(std::move(d)), req(std::move(r)) {}

  int apply(Impl& s, MDB_txn* txn, int64_t) override {
    if (bounds::skipStore()) {  // a benchmark bound (base/bounds.h): recorded, nothing stored
      result.status = RecordStatus::Recorded;
      return MDB_SUCCESS;
    }
    Record cur;
    int rc = s.get(txn, req.id, cur);
    if (rc == MDB_NOTFOUND) {
      result.status = RecordStatus::Missing;
      return MDB_SUCCESS;
    }
    if (rc != MDB_SUCCESS) return rc;

    const bool mine = cur.owner == req.owner;
    const bool writable =
        mine && (cur.state == RecordState::InFlight || (cur.flags & kFlagOutcomeUnknown) != 0);
    if (!writable) {
      // Another outcome stands, or another owner took the reservation over.
      result.status = RecordStatus::AlreadyFinal;
      result.record = std::move(cur);
      return MDB_SUCCESS;
    }
    Record rec = cur;
    rec.state = RecordState::Completed;
    rec.flags = req.flags;
    rec.answer = req.answer;             // copied: apply may run again if the commit fails
    rc = s.put(txn, req.id, rec, &cur);  // same expires_at: the index is untouched
    if (rc != MDB_SUCCESS) return rc;
    result.status = RecordStatus::Recorded;
    result.record = std::move(rec);
    return MDB_SUCCESS;
  }

  RecordRequest req;
};

struct LmdbStore::Impl::ReleaseOp final : OpWith<WriteResult> {
  ReleaseOp(RecordId i, std::string o, std::function<void(WriteResult)> d)
      : OpWith(std::move(d)), id(i), owner(std::move(o)) {}

  int apply(Impl& s, MDB_txn* txn, int64_t) override {
    Record cur;
    int rc = s.get(txn, id, cur);
    if (rc == MDB_NOTFOUND) return MDB_SUCCESS;
    if (rc != MDB_SUCCESS) return rc;
    if (cur.state != RecordState::InFlight || cur.owner != owner) return MDB_SUCCESS;
    rc = s.erase(txn, id, &cur);
    if (rc != MDB_SUCCESS) return rc;
    result.changed = true;
    result.removed = 1;
    return MDB_SUCCESS;
  }

  RecordId id;
  std::string owner;
};

struct LmdbStore::Impl::ForgetOp final : OpWith<WriteResult> {
  ForgetOp(RecordId i, std::function<void(WriteResult)> d) : OpWith(std::move(d)), id(i) {}

  int apply(Impl& s, MDB_txn* txn, int64_t) override {
    Record cur;
    int rc = s.get(txn, id, cur);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    // An undecodable value reads as absent but is still deleted here.
    rc = s.erase(txn, id, rc == MDB_SUCCESS ? &cur : nullptr);
    if (rc == MDB_NOTFOUND) return MDB_SUCCESS;
    if (rc != MDB_SUCCESS) return rc;
    result.changed = true;
    result.removed = 1;
    return MDB_SUCCESS;
  }

  RecordId id;
};

struct LmdbStore::Impl::SweepOp final : OpWith<WriteResult> {
  SweepOp(size_t l, std::function<void(WriteResult)> d) : OpWith(std::move(d)), limit(l) {}

  int apply(Impl& s, MDB_txn* txn, int64_t now) override {
    // Free the reader slots of processes that died holding a read transaction: they would pin
    // old pages and keep the space this sweep frees from being reused.
    int dead = 0;
    mdb_reader_check(s.env, &dead);
    // Each attempt in its own nested transaction, so that a slice too large for the space left
    // can be retried smaller.
    for (size_t slice = limit;; slice /= 2) {
      MDB_txn* nested = nullptr;
      int rc = mdb_txn_begin(s.env, txn, 0, &nested);
      if (rc != MDB_SUCCESS) return rc;
      result = WriteResult{};
      const size_t logged = s.wal_pending.size();  // this slice's changes, if it is undone
      rc = sweepSlice(s, nested, now, slice);
      if (rc == MDB_SUCCESS) {
        rc = mdb_txn_commit(nested);
        if (rc != MDB_SUCCESS) s.wal_pending.resize(logged);
        return rc;
      }
      mdb_txn_abort(nested);
      s.wal_pending.resize(logged);
      if (rc != MDB_MAP_FULL || slice <= 1) return rc;
    }
  }

  int sweepSlice(Impl& s, MDB_txn* txn, int64_t now, size_t slice) {
    // Collect the due index entries first (copied out), then delete by key.
    std::vector<std::string> due;
    {
      Cursor cur;
      int rc = cur.open(txn, s.expiry);
      if (rc != MDB_SUCCESS) return rc;
      MDB_val k, v;
      rc = mdb_cursor_get(cur.get(), &k, &v, MDB_FIRST);
      while (rc == MDB_SUCCESS && due.size() < slice) {
        if (k.mv_size == sizeof(ExpiryKey) &&
            expiryTime(static_cast<const uint8_t*>(k.mv_data)) > now) {
          break;  // the index is in time order: nothing further is due
        }
        due.emplace_back(view(k));  // due, or malformed (dropped below)
        rc = mdb_cursor_get(cur.get(), &k, &v, MDB_NEXT);
      }
      if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    }
    for (const std::string& key : due) {
      if (key.size() == sizeof(ExpiryKey)) {
        RecordId id;
        std::memcpy(id.data(), key.data() + 8, id.size());
        Record rec;
        MDB_val rk = mdbVal(id);
        MDB_val rv;
        int rc = mdb_get(txn, s.records, &rk, &rv);
        if (rc == MDB_SUCCESS) {
          const DecodeError de = decodeRecord(view(rv), rec);
          if (de != DecodeError::None) s.decode_errors.fetch_add(1, std::memory_order_relaxed);
          // Delete if the record itself is due (a stale index entry of a renewed record is not
          // evidence) or if it cannot be read at all.
          if (de != DecodeError::None || rec.expired(now)) {
            rc = mdb_del(txn, s.records, &rk, nullptr);
            if (rc != MDB_SUCCESS) return rc;
            if (s.wal_file) wal::addErase(s.wal_pending, id);
            ++result.removed;
          }
        } else if (rc != MDB_NOTFOUND) {
          return rc;
        }
      }
      MDB_val ik = mdbVal(key);
      int rc = mdb_del(txn, s.expiry, &ik, nullptr);
      if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    }
    result.changed = result.removed > 0;
    return MDB_SUCCESS;
  }

  size_t limit;
};

// flush(): completes after everything queued before it has been committed (and, under relaxed
// durability, synced).
struct LmdbStore::Impl::BarrierOp final : Op {
  int apply(Impl&, MDB_txn*, int64_t) override { return MDB_SUCCESS; }
  void finish(StoreError) override { done.set_value(); }
  bool isBarrier() const override { return true; }
  std::promise<void> done;
};

// ---------------------------------------------------------------------------------------------
// Writer

void LmdbStore::Impl::start() {
  if (opts.read_only) return;
  writer = std::thread([this] {
    nameThisThread("idem-lmdb-write");
    writer_id = std::this_thread::get_id();
    writerLoop();
  });
  if (wal_file)
    checkpointer = std::thread([this] {
      nameThisThread("idem-checkpoint");
      checkpointerLoop();
    });
}

void LmdbStore::Impl::stop() {
  {
    std::lock_guard lock(ck_mu);
    ck_stopping = true;
  }
  ck_cv.notify_all();
  if (checkpointer.joinable()) checkpointer.join();
  {
    std::lock_guard lock(mu);
    stopping = true;
  }
  cv.notify_all();
  if (writer.joinable()) writer.join();
}

void LmdbStore::Impl::submit(std::unique_ptr<Op> op) {
  if (opts.read_only) {
    op->finish(StoreError::Io);
    return;
  }
  // A barrier's caller waits for it (flush, a checkpoint): woken at once, never deferred.
  const bool barrier = op->isBarrier();
  {
    std::lock_guard lock(mu);
    if (!stopping) {
      queue.push_back(std::move(op));
    }
  }
  if (op) {
    op->finish(StoreError::Closed);
    return;
  }
  if (barrier || !deferWake([](void* self) { static_cast<Impl*>(self)->cv.notify_one(); }, this)) {
    cv.notify_one();
  }
}

void LmdbStore::Impl::writerLoop() {
  using SteadyClock = std::chrono::steady_clock;
  const bool relaxed = opts.durability == Durability::Relaxed;
  auto next_sync = SteadyClock::now() + opts.relaxed_sync_interval;
  bool dirty = false;  // relaxed: committed but not yet synced
  std::vector<std::unique_ptr<Op>> batch;
  for (;;) {
    // (Asked before taking `mu`, which the event loops take to queue work.)
    const bool may_hold = open_txn && open_groups > 0 && opts.hold_when_idle && aloneOnStore();
    {
      std::unique_lock lock(mu);
      auto ready = [this] { return !queue.empty() || stopping; };
      if (may_hold && !ready()) {
        // Nobody else writes to the store: keep the transaction for the groups that follow,
        // until defer_for_alone from its start (mayDefer stops at defer_groups_alone).
        cv.wait_until(lock, open_since + opts.defer_for_alone, ready);
      }
      if (open_txn && !ready() && !plant_exit_holding_transaction) {
        // (Never wait for work holding the lock beyond that: another process may need it.)
        lock.unlock();
        commitOpenReporting();
        lock.lock();
      }
      if (relaxed && dirty) {
        cv.wait_until(lock, next_sync, ready);
      } else {
        cv.wait(lock, ready);
      }
      if (queue.empty() && stopping) break;
      while (!queue.empty() && batch.size() < opts.max_batch) {
        batch.push_back(std::move(queue.front()));
        queue.pop_front();
      }
    }
    if (!batch.empty()) {
      process(batch, dirty);
      batch.clear();
    }
    if (relaxed) {
      const auto now = SteadyClock::now();
      if (!dirty) {
        next_sync = now + opts.relaxed_sync_interval;
      } else if (now >= next_sync) {
        syncToDisk();
        dirty = false;
        next_sync = now + opts.relaxed_sync_interval;
      }
    }
  }
  commitOpenReporting();
  if (relaxed && dirty) syncToDisk();
}

void LmdbStore::Impl::process(std::span<const std::unique_ptr<Op>> batch, bool& dirty) {
  std::vector<Op*> work;
  work.reserve(batch.size());
  bool barrier = false;
  for (const auto& op : batch) {
    if (op->isBarrier()) {
      barrier = true;
    } else {
      work.push_back(op.get());
    }
  }
  for (size_t i = 0; i < work.size();) {
    i += runGroup(std::span<Op* const>(work).subspan(i), dirty);
  }
  if (barrier) {
    commitOpenReporting();  // what was queued before the barrier is committed when it completes
    if (opts.durability == Durability::Relaxed && dirty) {
      syncToDisk();
      dirty = false;
    }
    for (const auto& op : batch) {
      if (op->isBarrier()) op->finish(StoreError::None);
    }
  }
}

int LmdbStore::Impl::beginWrite(Txn& txn, std::shared_lock<std::shared_mutex>& map_lock) {
  for (;;) {
    std::shared_lock lock(map_mu);
    MDB_txn* raw = nullptr;
    int rc = MDB_SUCCESS;
    for (int attempt = 0;; ++attempt) {
      rc = mdb_txn_begin(env, nullptr, 0, &raw);
      if (rc != MDB_MAP_RESIZED || attempt == kResizeAttempts) break;
      lock.unlock();
      adoptMapSize();
      lock.lock();
    }
    if (rc != MDB_SUCCESS) return rc;
    Txn begun(raw);
    bool moved = false;
    if (wal_file) {
      rc = rollForward(begun.get(), moved);
      if (rc != MDB_SUCCESS) return rc;
    }
    if (!moved) {
      prepareGrowth();
      txn = std::move(begun);
      map_lock = std::move(lock);
      return MDB_SUCCESS;
    }
    // A group read back may be in the page cache only (its process died before its sync):
    // synced first, so that nothing is readable before it is durable. Then committed as it is,
    // one group per transaction (each may take pages; a full map stops only the rest).
    if (::fdatasync(wal_file->fd()) != 0) {
      wal_broken = true;
      return EIO;
    }
    rc = begun.commit();
    if (rc != MDB_SUCCESS) return rc;
    lmdb_commits.fetch_add(1, std::memory_order_relaxed);
  }
}

void LmdbStore::Impl::prepareGrowth() {
  // With the write lock held: nobody else writes past the last committed page meanwhile.
  MDB_envinfo info;
  if (mdb_env_info(env, &info) != MDB_SUCCESS) return;
  growth_ahead.prepare(data_fd, (static_cast<uint64_t>(info.me_last_pgno) + 1) * page_size,
                       kGrowthAhead, info.me_mapsize);
}

int LmdbStore::Impl::commitOpen() {
  if (!open_txn) return MDB_SUCCESS;
  const int rc = open_txn.commit();
  if (open_lock.owns_lock()) open_lock.unlock();
  open_groups = 0;
  open_ops = 0;
  if (rc == MDB_SUCCESS) lmdb_commits.fetch_add(1, std::memory_order_relaxed);
  return rc;
}

void LmdbStore::Impl::failedWrite(int rc) {
  health = classify(rc) == StoreError::Full ? Health::Full : Health::Failing;
}

void LmdbStore::Impl::commitOpenReporting() {
  // On failure its groups are in the log, and the next write transaction tries them again.
  if (const int rc = commitOpen(); rc != MDB_SUCCESS) failedWrite(rc);
}

void LmdbStore::Impl::abortOpen() {
  open_txn.abort();
  if (open_lock.owns_lock()) open_lock.unlock();
  open_groups = 0;
  open_ops = 0;
}

bool LmdbStore::Impl::aloneOnStore() {
  // Asked again once per hold at most (defer_for): a process that opens the store meanwhile
  // waits for the write lock about one hold before it is noticed, and then none.
  const auto now = std::chrono::steady_clock::now();
  if (now - alone_checked >= opts.defer_for) {
    alone = !presence.othersHold();
    alone_checked = now;
  }
  return alone;
}

size_t LmdbStore::Impl::deferGroups() {
  return aloneOnStore() ? opts.defer_groups_alone : opts.defer_groups;
}

std::chrono::microseconds LmdbStore::Impl::deferFor() {
  return aloneOnStore() ? opts.defer_for_alone : opts.defer_for;
}

bool LmdbStore::Impl::mayDefer(bool more_queued) {
  if (plant_exit_holding_transaction) return true;
  // (defer_groups 1: a commit per group, alone or not.)
  if (opts.durability != Durability::Full || opts.defer_groups <= 1 ||
      open_groups + 1 >= deferGroups() || open_ops >= opts.defer_ops) {
    return false;
  }
  if (!more_queued && !(opts.hold_when_idle && aloneOnStore())) return false;
  // Room for the groups to come without a commit: LMDB must not find the map full when the
  // transaction finally commits (its groups are acknowledged by then), and a checkpoint,
  // which needs it committed, must not be kept waiting.
  constexpr int64_t kDeferBudget = int64_t{8} << 20;
  if (grow_budget < kDeferBudget || wal_used > wal_file->capacity() / 2) return false;
  return std::chrono::steady_clock::now() - open_since < deferFor();
}

// Applies a prefix of `ops` in the write transaction, makes them durable, and completes them.
// Returns how many were consumed (at least one).
//
// With a log, while more operations are queued, the transaction stays open for the next group
// (open_txn): each group is acknowledged once its changes are synced to the log, and the
// transaction commits after a few groups (mayDefer), and always before the writer waits for
// work. Nothing in it is visible to a reader before it commits, so nothing is read before it
// is durable; reads that miss it fall through to reserve(), which runs here and sees it. If
// the transaction cannot commit (or is aborted: an operation failed, the log must start over),
// its groups are still in the log after the last committed one, and the next write
// transaction of any process applies and commits them first (beginWrite, rollForward): so a
// process that dies holding it loses nothing it acknowledged either.
size_t LmdbStore::Impl::runGroup(std::span<Op* const> ops, bool& dirty) {
  if (filesGone()) {
    abortOpen();
    health = Health::FilesGone;
    for (Op* op : ops) op->finish(StoreError::Io);
    return ops.size();
  }
  if (!open_txn) {
    int rc = beginWrite(open_txn, open_lock);
    if (rc == MDB_SUCCESS) rc = measureFreePages(open_txn.get());
    if (rc != MDB_SUCCESS) {
      abortOpen();
      // (Full: groups left in the log by a transaction that could not commit do not fit.)
      failedWrite(rc);
      for (Op* op : ops)
        op->finish(classify(rc) == StoreError::Full ? StoreError::Full : StoreError::Io);
      return ops.size();
    }
    open_since = std::chrono::steady_clock::now();
  }
  MDB_txn* const txn = open_txn.get();

  const int64_t now = clock.wallMs();
  std::vector<StoreError> errors;
  errors.reserve(ops.size());
  wal_pending.clear();
  size_t n = 0;
  int rc = MDB_SUCCESS;
  if (!nested_only && std::all_of(ops.begin(), ops.end(), [](Op* op) { return op->flat(); })) {
    // The usual group (reservations and records): every operation in the group's transaction
    // itself. A nested transaction per operation costs more than the operation (LMDB allocates
    // and merges a dirty-page list for each); it is needed only when one fails, because LMDB
    // then refuses to commit the transaction the failure happened in.
    for (; n < ops.size(); ++n) {
      ops[n]->reset();
      if (ops[n]->apply(*this, txn, now) != MDB_SUCCESS) break;
    }
    if (n < ops.size()) {
      abortOpen();  // groups acknowledged in it are rolled forward from the log
      nested_only = true;
      const size_t done = runGroup(ops, dirty);
      nested_only = false;
      return done;
    }
    errors.assign(n, StoreError::None);
  }
  for (; n < ops.size(); ++n) {
    const size_t logged = wal_pending.size();  // this op's changes, if it is undone
    MDB_txn* child = nullptr;
    rc = mdb_txn_begin(env, txn, 0, &child);
    if (rc == MDB_SUCCESS) {
      ops[n]->reset();
      rc = ops[n]->apply(*this, child, now);
      if (rc == MDB_SUCCESS) {
        rc = mdb_txn_commit(child);  // merges into the batch transaction
      } else {
        mdb_txn_abort(child);
      }
    }
    if (rc != MDB_SUCCESS) wal_pending.resize(logged);
    if (rc == MDB_TXN_FULL && n > 0) break;  // commit what we have; this op goes next time
    errors.push_back(classify(rc));
  }

  // Write-ahead log: this process's reader at its last checkpoint keeps LMDB from reusing the
  // pages freed since, so a full map may only need a checkpoint (which moves the reader up) to
  // have room again. Once per group, whether an operation or the commit found the map full.
  const bool can_retry =
      wal_file && pin != nullptr && !wal_retrying && mdb_txn_id(pin) + 1 < mdb_txn_id(txn);
  auto retryAfterCheckpoint = [&]() -> size_t {
    std::string error;
    if (!checkpointNow(false, error)) {
      for (size_t i = 0; i < n; ++i) ops[i]->finish(StoreError::Io);
      return n;
    }
    wal_retrying = true;
    const size_t done = runGroup(ops.first(n), dirty);
    wal_retrying = false;
    return done;
  };
  if (can_retry && std::any_of(errors.begin(), errors.end(),
                               [](StoreError e) { return e == StoreError::Full; })) {
    abortOpen();
    return retryAfterCheckpoint();
  }

  const auto t0 = std::chrono::steady_clock::now();
  if (plant_answer_before_commit) {
    // The planted bug (see the member's comment): answer first, commit later.
    for (size_t i = 0; i < n; ++i) ops[i]->finish(errors[i]);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    std::string ignored;
    if (wal_file && !wal_pending.empty() && !walAppend(txn, ignored)) {
      abortOpen();
      return n;
    }
    (void)commitOpen();
    dirty = true;
    return n;
  }
  // Write-ahead log: the group's changes are durable in the log before the transaction commits
  // (and so before any process can read them); the commit itself is not synced.
  const bool logged = wal_file && !wal_pending.empty();
  if (logged) {
    std::string error;
    if (!walAppend(txn, error)) {
      abortOpen();
      if (std::exchange(wal_needs_commit, false)) {
        // The log must start over, and the groups acknowledged in the transaction are only in
        // it: the rerun's beginWrite commits them (rolled forward from the log) first, and
        // this group then runs alone in its transaction, where the log may start over.
        return runGroup(ops.first(n), dirty);
      }
      health = Health::Failing;
      for (size_t i = 0; i < n; ++i) ops[i]->finish(StoreError::Io);
      return n;
    }
  }
  // (A group cut short by MDB_TXN_FULL commits: the next one would not fit in it.)
  const bool more_queued = n == ops.size() && [this] {
    std::lock_guard lock(mu);
    return !queue.empty();
  }();
  if (logged && mayDefer(more_queued)) {
    ++open_groups;  // acknowledged below; committed with a later group
    open_ops += n;
  } else {
    const bool earlier_groups = open_groups > 0;
    rc = commitOpen();
    if (rc != MDB_SUCCESS && logged) walForget();
    if (rc == MDB_MAP_FULL && can_retry) return retryAfterCheckpoint();
    if (rc == MDB_MAP_FULL && n > 1 && !earlier_groups) {
      // Saving the free list needed pages the map does not have. Run the ops one per
      // transaction so that only those that do not fit fail.
      for (size_t i = 0; i < n;) i += runGroup(ops.subspan(i, n - i).first(1), dirty);
      return n;
    }
    if (rc != MDB_SUCCESS) {
      failedWrite(rc);
      for (size_t i = 0; i < n; ++i) ops[i]->finish(classify(rc));
      return n;
    }
  }
  const auto took =
      std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0);

  dirty = true;
  // Full while a growing write did not fit; ready again once one does (a sweep made room).
  bool full = false;
  bool grew = false;
  for (size_t i = 0; i < n; ++i) {
    full |= errors[i] == StoreError::Full;
    grew |= errors[i] == StoreError::None && ops[i]->grows();
  }
  if (full) {
    health = Health::Full;
  } else if (grew || health.load() != Health::Full) {
    health = Health::Ok;
  }
  size_t applied = 0;
  for (StoreError e : errors) applied += e == StoreError::None ? 1 : 0;
  commits.fetch_add(1, std::memory_order_relaxed);
  operations.fetch_add(applied, std::memory_order_relaxed);
  {
    std::lock_guard lock(observer_mu);
    if (observer) observer(took, n);
  }
  for (size_t i = 0; i < n; ++i) ops[i]->finish(errors[i]);
  if (plant_exit_holding_transaction && open_txn && ++planted_groups == 3) std::_Exit(0);
  return n;
}

bool LmdbStore::Impl::filesGone() const {
  // One statx of the name per group, asking for the inode only (a stat that asks for the times
  // would make the kernel keep data.mdb's modification time to the nanosecond, multigrain
  // timestamps, Linux 6.13+, so that every commit's write would dirty its inode). The file is
  // gone if its name is gone or names another file: unlinked, renamed or replaced.
  struct statx named {};
  return ::statx(AT_FDCWD, data_path.c_str(), 0, STATX_INO, &named) != 0 ||
         FileIdentity{named.stx_ino, named.stx_dev_major, named.stx_dev_minor} != data_identity;
}

// ---------------------------------------------------------------------------------------------
// LmdbStore

std::unique_ptr<LmdbStore> openLmdbStore(const LmdbOptions& options, const Clock& clock,
                                         std::string& error) {
  auto impl = std::make_unique<LmdbStore::Impl>(options, clock);
  if (impl->opts.max_batch == 0) impl->opts.max_batch = 1;
  if (!impl->open(error)) return nullptr;
  if (!impl->opts.read_only && impl->opts.verify_at_open) {
    const VerifyReport rep = impl->verify();
    if (!rep.ok()) {
      error = "store " + impl->opts.path + " is damaged: " + rep.problems.front();
      if (rep.problems.size() > 1) {
        error += " (and " + std::to_string(rep.problems.size() - 1) +
                 " more problem(s); run "
                 "`idemproxy store verify`)";
      }
      error += ". To recover: ";
      error += kRestoreHint;
      return nullptr;
    }
  }
  impl->start();
  return std::make_unique<LmdbStore>(std::move(impl));
}

LmdbStore::LmdbStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LmdbStore::~LmdbStore() = default;  // Impl drains the queue, stops the writer, closes the env

void LmdbStore::reserve(ReserveRequest req, std::function<void(ReserveResult)> done) {
  impl_->submit(std::make_unique<Impl::ReserveOp>(std::move(req), std::move(done)));
}

void LmdbStore::record(RecordRequest req, std::function<void(RecordResult)> done) {
  impl_->submit(std::make_unique<Impl::RecordOp>(std::move(req), std::move(done)));
}

void LmdbStore::release(RecordId id, std::string owner, std::function<void(WriteResult)> done) {
  impl_->submit(std::make_unique<Impl::ReleaseOp>(id, std::move(owner), std::move(done)));
}

void LmdbStore::forget(RecordId id, std::function<void(WriteResult)> done) {
  impl_->submit(std::make_unique<Impl::ForgetOp>(id, std::move(done)));
}

void LmdbStore::sweep(size_t limit, std::function<void(WriteResult)> done) {
  impl_->submit(std::make_unique<Impl::SweepOp>(limit, std::move(done)));
}

std::optional<Record> LmdbStore::lookup(const RecordId& id) {
  std::optional<Record> out;
  impl_->withRead([&](MDB_txn* txn) {
    Record rec;
    int rc = impl_->get(txn, id, rec);
    if (rc == MDB_SUCCESS && !rec.expired(impl_->clock.wallMs())) out = std::move(rec);
    return rc;
  });
  return out;
}

bool LmdbStore::visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) {
  bool found = false;
  impl_->withRead([&](MDB_txn* txn) {
    MDB_val k = mdbVal(id);
    MDB_val v;
    int rc = mdb_get(txn, impl_->records, &k, &v);
    if (rc != MDB_SUCCESS) return rc;
    RecordView rec;
    if (decodeRecordView(view(v), rec) != DecodeError::None) {
      impl_->decode_errors.fetch_add(1, std::memory_order_relaxed);
      return MDB_NOTFOUND;
    }
    if (rec.expired(impl_->clock.wallMs())) return MDB_NOTFOUND;
    found = true;
    fn(rec);
    return MDB_SUCCESS;
  });
  return found;
}

std::vector<std::pair<RecordId, Record>> LmdbStore::list() {
  std::vector<std::pair<RecordId, Record>> out;
  impl_->withRead([&](MDB_txn* txn) {
    Cursor cur;
    int rc = cur.open(txn, impl_->records);
    if (rc != MDB_SUCCESS) return rc;
    MDB_val k, v;
    for (rc = mdb_cursor_get(cur.get(), &k, &v, MDB_FIRST); rc == MDB_SUCCESS;
         rc = mdb_cursor_get(cur.get(), &k, &v, MDB_NEXT)) {
      Record rec;
      if (k.mv_size != RecordId{}.size() || decodeRecord(view(v), rec) != DecodeError::None) {
        impl_->decode_errors.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      RecordId id;
      std::memcpy(id.data(), k.mv_data, id.size());
      out.emplace_back(id, std::move(rec));
    }
    return rc == MDB_NOTFOUND ? MDB_SUCCESS : rc;
  });
  return out;
}

StoreStats LmdbStore::stats() {
  StoreStats s;
  impl_->withRead([&](MDB_txn* txn) {
    MDB_stat st;
    int rc = mdb_stat(txn, impl_->records, &st);
    if (rc == MDB_SUCCESS) s.records = st.ms_entries;
    return rc;
  });
  {
    std::shared_lock lock(impl_->map_mu);
    MDB_envinfo info;
    MDB_stat est;
    if (mdb_env_info(impl_->env, &info) == MDB_SUCCESS &&
        mdb_env_stat(impl_->env, &est) == MDB_SUCCESS) {
      s.bytes_used = (static_cast<uint64_t>(info.me_last_pgno) + 1) * est.ms_psize;
      s.map_size = info.me_mapsize;
    }
  }
  s.commits = impl_->commits.load(std::memory_order_relaxed);
  s.operations = impl_->operations.load(std::memory_order_relaxed);
  s.decode_errors = impl_->decode_errors.load(std::memory_order_relaxed);
  return s;
}

void LmdbStore::flush() {
  if (impl_->opts.read_only) return;
  // A completion callback runs on the writer: waiting there for the writer would never end.
  if (std::this_thread::get_id() == impl_->writer_id.load()) return;
  auto barrier = std::make_unique<Impl::BarrierOp>();
  auto done = barrier->done.get_future();
  impl_->submit(std::move(barrier));
  done.wait();
}

void LmdbStore::setCommitObserver(CommitObserver observer) {
  std::lock_guard lock(impl_->observer_mu);
  impl_->observer = std::move(observer);
}

}  // namespace idem

namespace idem {

std::string LmdbStore::unavailableReason() {
  switch (impl_->health.load()) {
    case Impl::Health::Ok:
      break;
    case Impl::Health::Full:
      return "the store is full";
    case Impl::Health::Failing:
      return "the store's last write failed";
    case Impl::Health::FilesGone:
      return "the store's files were deleted or replaced while open";
  }
  return impl_->filesGone() ? "the store's files were deleted or replaced while open" : "";
}

}  // namespace idem
