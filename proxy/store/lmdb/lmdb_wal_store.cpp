// The LMDB store's write-ahead log (store.wal): one sequential append and one fdatasync per
// group of operations instead of LMDB's two syncs of scattered pages.
//
// Files: DIR/wal (lmdb_wal.h: two checkpoint slots, then groups) and DIR/wal.lock.
//
// Commit (runGroup): the group's operations are applied in the write transaction (which holds
// LMDB's write lock, shared by every process on the store); their changes to the records table
// (a record's encoded bytes, or its removal) are appended to the log as one group and synced;
// only then is the transaction committed, with MDB_NOSYNC. So no process reads an operation
// before it is durable, and every completed operation is in the log or in a synced data file.
// Where the next group goes is kept in the transaction itself (the key kStateKey in LMDB's main
// table: checkpoint number, end offset, next sequence number), so every process appends after
// the last committed group. While more operations are queued, the transaction stays open for
// the next groups (a few, for a few ms): each group is acknowledged once it is synced, and the
// transaction commits later, so several groups share one LMDB commit. Every write transaction,
// of any process, begins by applying and committing the groups valid in the log after the last
// committed one (rollForward): those of a process that died holding the transaction, or whose
// commit failed. A group that was synced but whose transaction then did not commit has its
// header overwritten (walForget) before anyone is told, unless it was acknowledged.
//
// Checkpoint: with the write lock held (no commit can happen), a read transaction is begun
// (so it sees transaction C, the newest) and kept: LMDB reuses no page that a reader may still
// need, so the pages of C stay as they are on disk until the next checkpoint of this process
// releases it. The data file is synced (C's pages and meta page are then on disk), the first
// bytes of both meta pages are copied into a checkpoint slot of the log with a new salt, and
// the log is synced. Groups after it start at the log's beginning again; groups of the old
// salt are never read. Every writing process checkpoints when it opens, so each holds a reader
// at or before the newest checkpoint: one dying never frees the pages of the newest one. The
// checkpointer thread syncs the data file ahead of a checkpoint (outside the lock, where the
// bulk of the writing happens) every checkpoint_interval, and when the log is half full.
//
// Recovery: a process that opens the store alone (wal.lock: nobody else has it open for
// writing) and finds the newest checkpoint not clean cannot trust the data file beyond it (an
// MDB_NOSYNC commit may have reached the disk in part): it writes the checkpoint's meta pages
// back (LMDB then opens transaction C, whose pages are intact), replays every valid group after
// the checkpoint in order, and checkpoints. The last process to close writes a clean checkpoint
// after a final sync, so a clean store opens without replaying, also read-only.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <random>

#include "store/lmdb/lmdb_impl.h"

namespace idem {
using namespace lmdb;  // NOLINT: the store's own helpers
namespace {

constexpr std::string_view kStateKey = "idemproxy-wal";
// Growth of the data file (in pages) since the checkpoint that asks for the next one: an eighth
// of the file, at least 1 MiB and at most 32 MiB of 4 KiB pages.
size_t checkpointGrowthPages(size_t last_page) {
  return std::clamp<size_t>(last_page / 8, 256, 8192);
}
constexpr MDB_dbi kMainDbi = 1;

struct LogState {
  uint64_t checkpoint = 0;
  uint64_t end = 0;
  uint64_t next_seq = 0;
};

uint64_t getLe64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

// The log position committed with the newest transaction (not found in a new log).
bool readState(MDB_txn* txn, LogState& out) {
  MDB_val k = mdbVal(kStateKey);
  MDB_val v;
  if (mdb_get(txn, kMainDbi, &k, &v) != MDB_SUCCESS || v.mv_size != 24) return false;
  const auto* p = static_cast<const char*>(v.mv_data);
  out = LogState{getLe64(p), getLe64(p + 8), getLe64(p + 16)};
  return true;
}

int writeState(MDB_txn* txn, const LogState& s) {
  char buf[24];
  const uint64_t f[3] = {s.checkpoint, s.end, s.next_seq};
  for (int j = 0; j < 3; ++j) {
    for (int i = 0; i < 8; ++i) buf[j * 8 + i] = static_cast<char>(f[j] >> (8 * i));
  }
  MDB_val k = mdbVal(kStateKey);
  MDB_val v = mdbVal(buf, sizeof buf);
  return mdb_put(txn, kMainDbi, &k, &v, 0);
}

// Where the group after the last committed one goes: the position committed with `txn` if it
// belongs to checkpoint `c`, else the start of the log.
void nextGroup(MDB_txn* txn, const wal::Checkpoint& c, uint64_t& at, uint64_t& seq) {
  LogState st;
  if (readState(txn, st) && st.checkpoint == c.number) {
    at = st.end;
    seq = st.next_seq;
  } else {
    at = wal::kLogStart;
    seq = c.next_seq;
  }
}

// The first bytes of both meta pages and the data file's inode, into a checkpoint.
int readMetaPages(int fd, wal::Checkpoint& c) {
  if (!wal::fileIdentity(fd, c.data_inode, c.data_born)) return errno;
  for (int i = 0; i < 2; ++i) {
    c.meta[i].assign(wal::kMetaBytes, '\0');
    if (::pread(fd, c.meta[i].data(), wal::kMetaBytes, static_cast<off_t>(i) * c.page_size) !=
        static_cast<ssize_t>(wal::kMetaBytes)) {
      return errno != 0 ? errno : EIO;
    }
  }
  return 0;
}

uint64_t newSalt() {
  std::random_device rd;
  return (uint64_t{rd()} << 32) ^ rd();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Opening and closing

bool LmdbStore::Impl::walPrepare(bool& use_wal, bool& create_wal, std::string& error) {
  use_wal = false;
  create_wal = false;
  if (!presence.enter(opts.path, error)) return false;
  wal_alone = presence.joinAlone();
  auto file = std::make_unique<wal::LogFile>();
  bool missing = false;
  std::string open_error;
  if (!file->open(opts.path, opts.wal_size, missing, open_error)) {
    if (!missing) {
      error = open_error;
      return false;
    }
    // A log is added only by a process alone with the store: one that commits without a log
    // may still be running otherwise, and its synced commits are not in the log.
    create_wal = opts.wal && opts.durability == Durability::Full && wal_alone;
    return true;
  }
  use_wal = true;
  wal_file = std::move(file);
  lmdb::keepSmallPages(wal_file->fd());  // this process writes to it (page_cache.h)
  if (!wal_alone) return true;
  const auto c = wal_file->readCheckpoint();
  if (!c) {
    error = "damaged: the write-ahead log has no valid checkpoint";
    return false;
  }
  if (c->clean) return true;
  // Not closed cleanly: the data file is trusted only as far as the checkpoint.
  const std::string data = opts.path + "/data.mdb";
  const int fd = ::open(data.c_str(), O_RDWR | O_CLOEXEC);
  uint64_t inode = 0;
  uint64_t born = 0;
  if (fd >= 0 && opts.wal_check_identity && wal::fileIdentity(fd, inode, born) &&
      (inode != c->data_inode || born != c->data_born)) {
    ::close(fd);
    error = "the write-ahead log " + opts.path +
            "/wal was not closed cleanly and belongs to another data.mdb (a restored backup?): "
            "applying it would damage this one. To start from data.mdb alone, stop every "
            "idemproxy process on the store and move wal and wal.lock aside";
    return false;
  }
  bool ok = fd >= 0 && c->page_size >= wal::kMetaBytes;
  for (int i = 0; ok && i < 2; ++i) {
    ok = ::pwrite(fd, c->meta[i].data(), c->meta[i].size(), static_cast<off_t>(i) * c->page_size) ==
         static_cast<ssize_t>(c->meta[i].size());
  }
  ok = ok && ::fdatasync(fd) == 0;
  if (fd >= 0) ::close(fd);
  if (!ok) {
    error = "cannot restore the data file to the write-ahead log's checkpoint: " +
            std::string(std::strerror(errno));
    return false;
  }
  return true;
}

bool LmdbStore::Impl::walStart(bool create_wal, std::string& error) {
  if (wal_file) {
    if (wal_alone) {
      const auto c = wal_file->readCheckpoint();
      if (c && !c->clean && !replayLog(*c, error)) return false;
    }
  } else if (create_wal) {
    // The first checkpoint goes into the new file: the data file as it is now (synced).
    MDB_txn* w = nullptr;
    int rc = mdb_txn_begin(env, nullptr, 0, &w);
    if (rc != MDB_SUCCESS) {
      error = "cannot begin the write-ahead log: " + mdbError(rc);
      return false;
    }
    Txn txn(w);
    MDB_txn* reader = nullptr;
    rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &reader);
    wal::Checkpoint c;
    c.number = 1;
    c.salt = newSalt();
    c.next_seq = 1;
    c.page_size = static_cast<uint32_t>(page_size);
    int fd = -1;
    if (rc == MDB_SUCCESS) c.txnid = mdb_txn_id(reader);
    if (rc == MDB_SUCCESS) rc = mdb_env_sync(env, 1);
    if (rc == MDB_SUCCESS) rc = mdb_env_get_fd(env, &fd);
    if (rc == MDB_SUCCESS) rc = readMetaPages(fd, c);
    auto file = std::make_unique<wal::LogFile>();
    if (rc != MDB_SUCCESS || !file->create(opts.path, c, opts.wal_size, error)) {
      if (reader != nullptr) mdb_txn_abort(reader);
      if (rc != MDB_SUCCESS) error = "cannot begin the write-ahead log: " + mdbError(rc);
      return false;
    }
    pin = reader;
    wal_file = std::move(file);
    lmdb::keepSmallPages(wal_file->fd());  // as for an opened log (walPrepare)
    mdb_env_set_flags(env, MDB_NOSYNC, 1);
  }
  if (wal_file) {
    std::string ck_error;
    if (!checkpointNow(false, ck_error)) {
      error = ck_error;
      return false;
    }
  }
  if (wal_alone) presence.share();
  presence.leave();
  wal_started = true;
  return true;
}

bool LmdbStore::Impl::replayLog(const wal::Checkpoint& c, std::string& error) {
  MDB_txn* w = nullptr;
  int rc = mdb_txn_begin(env, nullptr, 0, &w);
  if (rc != MDB_SUCCESS) {
    error = "cannot replay the write-ahead log: " + mdbError(rc);
    return false;
  }
  Txn txn(w);
  wal_replaying = true;
  uint64_t end = 0;
  uint64_t next_seq = 0;
  size_t replayed = 0;
  const bool read = wal_file->replay(c, end, next_seq, [&](const std::vector<wal::Change>& cs) {
    rc = applyChanges(txn.get(), cs);
    replayed += rc == MDB_SUCCESS ? cs.size() : 0;
    return rc == MDB_SUCCESS;
  });
  wal_replaying = false;
  if (!read) {
    error = "cannot replay the write-ahead log: " + mdbError(rc);
    return false;
  }
  rc = writeState(txn.get(), LogState{c.number, end, next_seq});
  if (rc == MDB_SUCCESS) rc = txn.commit();
  if (rc != MDB_SUCCESS) {
    error = "cannot replay the write-ahead log: " + mdbError(rc);
    return false;
  }
  replayed_at_open = replayed;
  return true;
}

int LmdbStore::Impl::applyChanges(MDB_txn* txn, const std::vector<wal::Change>& changes) {
  for (const wal::Change& ch : changes) {
    Record old;
    int rc = get(txn, ch.id, old);
    if (rc != MDB_SUCCESS && rc != MDB_NOTFOUND) return rc;
    const Record* prev = rc == MDB_SUCCESS ? &old : nullptr;
    if (ch.put) {
      Record rec;
      if (decodeRecord(ch.bytes, rec) != DecodeError::None) return MDB_CORRUPTED;
      rc = putEncoded(txn, ch.id, ch.bytes, rec.expires_at_ms, prev, false, false);
    } else {
      rc = erase(txn, ch.id, prev);
      if (rc == MDB_NOTFOUND) rc = MDB_SUCCESS;
    }
    if (rc != MDB_SUCCESS) return rc;
  }
  return MDB_SUCCESS;
}

int LmdbStore::Impl::rollForward(MDB_txn* txn, bool& moved) {
  moved = false;
  if (wal_broken) return EIO;  // a failed sync: what the log reads back is not trusted
  // Every write transaction begins here, so walAppend can use what it reads: only a holder of
  // the write lock writes a checkpoint.
  held_checkpoint = wal_file->readCheckpoint();
  const auto& c = held_checkpoint;
  if (!c) return MDB_SUCCESS;  // the next append reports the damaged log
  uint64_t start = 0;
  uint64_t seq = 0;
  nextGroup(txn, *c, start, seq);
  uint64_t end = start;
  uint64_t next_seq = seq;
  int rc = MDB_SUCCESS;
  wal_replaying = true;  // applied, not logged again
  const bool read =
      wal_file->replayFrom(c->salt, start, seq, end, next_seq, [&](const auto& changes) {
        if (std::exchange(moved, true)) return false;  // one group per call
        rc = applyChanges(txn, changes);
        if (rc == MDB_SUCCESS) rolled_forward.fetch_add(changes.size(), std::memory_order_relaxed);
        return rc == MDB_SUCCESS;
      });
  wal_replaying = false;
  if (!read && rc != MDB_SUCCESS) return rc;
  return moved ? writeState(txn, LogState{c->number, end, next_seq}) : MDB_SUCCESS;
}

void LmdbStore::Impl::walClose() {
  if (pin != nullptr && !wal_started) mdb_txn_abort(std::exchange(pin, nullptr));
  // A store that did not finish opening (a replay that failed, say) is never marked clean.
  if (!wal_file || opts.read_only || !wal_started) return;
  std::string error;
  if (presence.enterAgain() && presence.tryAlone()) {
    // The last one out: sync everything and say so, so the next open replays nothing.
    checkpointNow(true, error);
  }
  if (pin != nullptr) mdb_txn_abort(std::exchange(pin, nullptr));
}

// ---------------------------------------------------------------------------------------------
// Appending

bool LmdbStore::Impl::walAppend(MDB_txn* txn, std::string& error) {
  if (wal_broken) {
    error = "the write-ahead log failed earlier";
    return false;
  }
  // As this write transaction read it when it began (rollForward, which every one runs).
  auto c = held_checkpoint;
  if (!c) {
    wal_broken = true;
    error = "the write-ahead log has no valid checkpoint";
    return false;
  }
  uint64_t end = 0;
  uint64_t seq = 0;
  nextGroup(txn, *c, end, seq);
  const uint64_t length = wal::kGroupHeader + wal_pending.size();
  if (end > wal::kLogStart && end + length > wal::kLogStart + wal_file->capacity()) {
    if (open_groups > 0) {
      // The groups already in this transaction are acknowledged but only in the log, which a
      // checkpoint would start over: they must be committed first (runGroup does).
      wal_needs_commit = true;
      error = "the write-ahead log is full";
      return false;
    }
    // The log is full: checkpoint now (in this transaction, which holds the lock) and start
    // from its beginning. (The checkpointer normally comes first, at half full.)
    if (!checkpoint(txn, false, error)) return false;
    c = held_checkpoint;
    if (!c) {
      wal_broken = true;
      error = "the write-ahead log has no valid checkpoint";
      return false;
    }
    end = wal::kLogStart;
    seq = c->next_seq;
  }
  // The position first: a failure then leaves nothing to take back.
  int rc = writeState(txn, LogState{c->number, end + length, seq + 1});
  if (rc != MDB_SUCCESS) {
    error = "cannot record the write-ahead log position: " + mdbError(rc);
    return false;
  }
  uint64_t written = 0;
  if (!wal_file->append(end, c->salt, seq, wal_pending, written, error)) {
    wal_broken = true;  // a failed fdatasync may have dropped pages: nothing more is trusted
    // The group may still read back whole from the page cache: unmade there at least, so that
    // no process rolls forward what was never durable (best effort: the log already failed).
    std::string ignored;
    wal_file->invalidate(end, ignored);
    return false;
  }
  wal_group_at = end;
  wal_used = end + written - wal::kLogStart;
  wal_dirty = true;
  // While this process's reader holds the checkpoint, LMDB writes new pages instead of reusing
  // freed ones: a checkpoint soon also bounds that growth (and what the next one must sync).
  MDB_envinfo info;
  const bool grown =
      mdb_env_info(env, &info) == MDB_SUCCESS &&
      info.me_last_pgno > pin_last_page + (opts.checkpoint_growth_pages != 0
                                               ? opts.checkpoint_growth_pages
                                               : checkpointGrowthPages(pin_last_page));
  if (grown || wal_used > wal_file->capacity() / 2) {
    std::lock_guard lock(ck_mu);
    if (!ck_wanted) {
      ck_wanted = true;
      ck_cv.notify_one();
    }
  }
  return true;
}

void LmdbStore::Impl::walForget() {
  std::string error;
  if (!wal_file->invalidate(wal_group_at, error)) wal_broken = true;
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

bool LmdbStore::Impl::checkpoint(MDB_txn* txn, bool clean, std::string& error) {
  const auto old = wal_file->readCheckpoint();
  if (!old) {
    wal_broken = true;
    error = "the write-ahead log has no valid checkpoint";
    return false;
  }
  MDB_txn* reader = nullptr;
  int rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &reader);
  wal::Checkpoint c;
  c.number = old->number + 1;
  c.salt = newSalt();
  c.page_size = static_cast<uint32_t>(page_size);
  c.clean = clean;
  LogState st;
  c.next_seq = readState(txn, st) && st.checkpoint == old->number ? st.next_seq : old->next_seq;
  int fd = -1;
  if (rc == MDB_SUCCESS) c.txnid = mdb_txn_id(reader);
  if (rc == MDB_SUCCESS) rc = mdb_env_sync(env, 1);
  if (rc == MDB_SUCCESS) rc = mdb_env_get_fd(env, &fd);
  if (rc == MDB_SUCCESS) rc = readMetaPages(fd, c);
  if (rc != MDB_SUCCESS) {
    if (reader != nullptr) mdb_txn_abort(reader);
    // A failed sync of the data file: the pages may be gone, and a later sync would not say.
    wal_broken = true;
    error = "cannot checkpoint the write-ahead log: " + mdbError(rc);
    return false;
  }
  if (!wal_file->writeCheckpoint(c, error)) {
    mdb_txn_abort(reader);
    wal_broken = true;
    return false;
  }
  held_checkpoint = c;
  if (pin != nullptr) mdb_txn_abort(pin);
  pin = reader;  // C's pages stay as they are until the next checkpoint of this process
  MDB_envinfo info;
  if (mdb_env_info(env, &info) == MDB_SUCCESS) pin_last_page = info.me_last_pgno;
  wal_used = 0;
  wal_dirty = false;
  checkpoints.fetch_add(1, std::memory_order_relaxed);
  return true;
}

bool LmdbStore::Impl::checkpointNow(bool clean, std::string& error) {
  if (open_txn) commitOpen();  // (the writer commits before it checkpoints; this is a guard)
  std::shared_lock<std::shared_mutex> map_lock;
  Txn txn;  // aborted: the checkpoint changes nothing in LMDB
  // beginWrite first commits what the log holds beyond the last commit: a checkpoint starts
  // the log over.
  const int rc = beginWrite(txn, map_lock);
  if (rc != MDB_SUCCESS) {
    error = "cannot checkpoint the write-ahead log: " + mdbError(rc);
    return false;
  }
  return checkpoint(txn.get(), clean, error);
}

struct LmdbStore::Impl::CheckpointOp final : Op {
  explicit CheckpointOp(Impl& s) : impl(s) {}
  int apply(Impl&, MDB_txn*, int64_t) override { return MDB_SUCCESS; }
  // Runs on the writer once the operations queued before it are committed (like flush()).
  void finish(StoreError error) override {
    std::string why;
    if (error == StoreError::None && impl.wal_dirty && !impl.checkpointNow(false, why)) {
      impl.health = Health::Failing;
    }
  }
  bool isBarrier() const override { return true; }
  Impl& impl;
};

void LmdbStore::Impl::checkpointerLoop() {
  for (;;) {
    {
      std::unique_lock lock(ck_mu);
      ck_cv.wait_for(lock, opts.checkpoint_interval, [this] { return ck_stopping || ck_wanted; });
      if (ck_stopping) return;
      ck_wanted = false;
    }
    if (!wal_dirty) continue;
    {
      // The bulk of the data file's writing, outside the write lock; the checkpoint's own sync
      // then has only what was committed meanwhile.
      std::shared_lock map_lock(map_mu);
      mdb_env_sync(env, 1);
    }
    submit(std::make_unique<CheckpointOp>(*this));
  }
}

LmdbStore::WalStats LmdbStore::walStats() const {
  WalStats w;
  w.active = impl_->wal_file != nullptr;
  w.checkpoints = impl_->checkpoints.load(std::memory_order_relaxed);
  w.replayed_at_open = impl_->replayed_at_open;
  w.groups = impl_->commits.load(std::memory_order_relaxed);
  w.lmdb_commits = impl_->lmdb_commits.load(std::memory_order_relaxed);
  w.rolled_forward = impl_->rolled_forward.load(std::memory_order_relaxed);
  return w;
}

}  // namespace idem
