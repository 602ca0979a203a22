// The LMDB environment: creating a store (atomically), opening and checking it, syncing,
// adopting another process's map size, and the pool of read transactions.
#include <errno.h>
#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include "store/lmdb/lmdb_impl.h"

namespace idem {
using namespace lmdb;  // NOLINT: the store's own helpers
namespace {

// Creates `path` and any missing parents with mode 0700; existing directories are left alone.
bool makeDirectories(const std::string& path, std::string& error) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0700) != 0 && errno != EEXIST) {
      error = "cannot create directory " + prefix + ": " + std::strerror(errno);
      return false;
    }
  }
  return true;
}

// Creates an empty store atomically when `dir` has no data.mdb yet: the environment is built and
// synced in a private directory, then linked into place and the directory synced. A crash
// while creating leaves either no data.mdb or a complete one, never a half-written file that
// LMDB would refuse ("not an LMDB file"). link() fails if another process won the race; its
// store is used then.
bool createIfMissing(const std::string& dir, uint64_t max_size, std::string& error) {
  const std::string target = dir + "/data.mdb";
  struct stat st {};
  if (::stat(target.c_str(), &st) == 0) return true;
  if (errno != ENOENT) {
    error = target + ": " + std::strerror(errno);
    return false;
  }
  const std::string tmp = dir + "/.creating-" + std::to_string(::getpid());
  std::error_code ec;
  std::filesystem::remove_all(tmp, ec);  // left by an earlier crash of this pid number
  if (::mkdir(tmp.c_str(), 0700) != 0) {
    error = "cannot create " + tmp + ": " + std::strerror(errno);
    return false;
  }
  MDB_env* env = nullptr;
  MDB_txn* txn = nullptr;
  MDB_dbi dbi = 0;
  int rc = mdb_env_create(&env);
  if (rc == MDB_SUCCESS) rc = mdb_env_set_maxdbs(env, 4);
  if (rc == MDB_SUCCESS) rc = mdb_env_set_mapsize(env, static_cast<size_t>(max_size));
  if (rc == MDB_SUCCESS) rc = mdb_env_open(env, tmp.c_str(), 0, 0600);
  if (rc == MDB_SUCCESS) rc = mdb_txn_begin(env, nullptr, 0, &txn);
  if (rc == MDB_SUCCESS) rc = mdb_dbi_open(txn, "records", MDB_CREATE, &dbi);
  if (rc == MDB_SUCCESS) rc = mdb_dbi_open(txn, "expiry", MDB_CREATE, &dbi);
  if (rc == MDB_SUCCESS) {
    rc = mdb_txn_commit(txn);  // synced: the environment is not MDB_NOSYNC
  } else if (txn != nullptr) {
    mdb_txn_abort(txn);
  }
  if (env != nullptr) mdb_env_close(env);
  if (rc != MDB_SUCCESS) {
    std::filesystem::remove_all(tmp, ec);
    error = "cannot create a store: " + mdbError(rc);
    return false;
  }
  const std::string made = tmp + "/data.mdb";
  const bool linked = ::link(made.c_str(), target.c_str()) == 0;
  const int link_errno = errno;
  std::filesystem::remove_all(tmp, ec);
  if (!linked && link_errno != EEXIST) {
    error = "cannot create " + target + ": " + std::strerror(link_errno);
    return false;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || ::fsync(dfd) != 0) {
    error = "cannot sync " + dir + ": " + std::strerror(errno);
    if (dfd >= 0) ::close(dfd);
    return false;
  }
  ::close(dfd);
  return true;
}
}  // namespace

bool LmdbStore::Impl::open(std::string& error) {
  const std::string where = "store " + opts.path + ": ";
  if (opts.path.empty()) {
    error = "store path is empty";
    return false;
  }
  if (const char* plant = std::getenv("IDEMPROXY_TEST_PLANT"); plant != nullptr) {
    plant_answer_before_commit = std::string_view(plant) == "answer-before-commit";
    plant_exit_holding_transaction = std::string_view(plant) == "exit-holding-transaction";
  }
  if (!opts.read_only && !makeDirectories(opts.path, error)) return false;
  struct stat st {};
  if (::stat(opts.path.c_str(), &st) != 0) {
    error = where + std::strerror(errno);
    return false;
  }
  if (!S_ISDIR(st.st_mode)) {
    error = where + "not a directory";
    return false;
  }
  if (!opts.read_only && !createIfMissing(opts.path, opts.max_size, error)) {
    error = where + error;
    return false;
  }
  bool use_wal = false;
  bool create_wal = false;
  if (!opts.read_only && !walPrepare(use_wal, create_wal, error)) {
    error = where + error;
    return false;
  }
  if (opts.read_only && !readableWithoutReplay(error)) {
    error = where + error;
    return false;
  }

  int rc = mdb_env_create(&env);
  if (rc != MDB_SUCCESS) {
    error = where + "mdb_env_create: " + mdbError(rc);
    return false;
  }
  unsigned flags = MDB_NOTLS;
  if (opts.read_only) flags |= MDB_RDONLY;
  // relaxed: every commit still syncs its data pages before it writes the meta page, so a crash
  // can lose the newest commit(s) but never leaves a meta page pointing at pages that are not on
  // disk (MDB_NOSYNC could, and did: torn trees). The periodic sync makes the meta page durable.
  if (opts.durability == Durability::Relaxed && !opts.read_only) flags |= MDB_NOMETASYNC;
  // With a write-ahead log every group is durable in the log before it commits.
  if (use_wal) flags |= MDB_NOSYNC;
  if ((rc = mdb_env_set_maxreaders(env, kMaxReaders)) != MDB_SUCCESS ||
      (rc = mdb_env_set_maxdbs(env, 4)) != MDB_SUCCESS ||
      (rc = mdb_env_set_mapsize(env, static_cast<size_t>(opts.max_size))) != MDB_SUCCESS ||
      (rc = mdb_env_open(env, opts.path.c_str(), flags, 0600)) != MDB_SUCCESS) {
    error = where + "cannot open LMDB environment: " + mdbError(rc);
    return false;
  }
  // Before any page is read: a data file shorter than its meta page claims would fault.
  std::vector<std::string> lost;
  checkFileSize(lost);
  if (!lost.empty()) {
    error = where + "damaged: " + lost.front() + ". To recover: " + kRestoreHint;
    return false;
  }
  // The open data file's identity, which never changes (filesGone compares the name with it).
  struct statx open_file {};
  if (mdb_env_get_fd(env, &data_fd) != MDB_SUCCESS ||
      ::statx(data_fd, "", AT_EMPTY_PATH, STATX_INO, &open_file) != 0) {
    error = where + "cannot stat data.mdb: " + std::strerror(errno);
    return false;
  }
  data_identity = {open_file.stx_ino, open_file.stx_dev_major, open_file.stx_dev_minor};
  data_path = opts.path + "/data.mdb";
  int dead = 0;
  if ((rc = mdb_reader_check(env, &dead)) != MDB_SUCCESS) {
    error = where + "mdb_reader_check: " + mdbError(rc);
    return false;
  }

  MDB_txn* raw = nullptr;
  for (int attempt = 0;; ++attempt) {
    rc = mdb_txn_begin(env, nullptr, opts.read_only ? MDB_RDONLY : 0, &raw);
    if (rc != MDB_MAP_RESIZED || attempt == kResizeAttempts) break;
    mdb_env_set_mapsize(env, 0);
  }
  if (rc != MDB_SUCCESS) {
    error = where + "mdb_txn_begin: " + mdbError(rc);
    return false;
  }
  Txn txn(raw);
  const unsigned dbi_flags = opts.read_only ? 0 : MDB_CREATE;
  if ((rc = mdb_dbi_open(txn.get(), "records", dbi_flags, &records)) != MDB_SUCCESS ||
      (rc = mdb_dbi_open(txn.get(), "expiry", dbi_flags, &expiry)) != MDB_SUCCESS) {
    error = where + (rc == MDB_NOTFOUND ? std::string("no idemproxy store here yet")
                                        : "mdb_dbi_open: " + mdbError(rc));
    return false;
  }
  if ((rc = txn.commit()) != MDB_SUCCESS) {
    error = where + "cannot initialise: " + mdbError(rc);
    return false;
  }
  // A fresh environment (or one whose last meta page was not synced) is made durable now, not
  // at the first periodic sync.
  if (!opts.read_only && (rc = mdb_env_sync(env, 1)) != MDB_SUCCESS) {
    error = where + "mdb_env_sync: " + mdbError(rc);
    return false;
  }
  MDB_stat est;
  if ((rc = mdb_env_stat(env, &est)) != MDB_SUCCESS) {
    error = where + "mdb_env_stat: " + mdbError(rc);
    return false;
  }
  page_size = est.ms_psize;
  if (!opts.read_only && !walStart(create_wal, error)) {
    error = where + error;
    return false;
  }
  return true;
}

// A read-only open takes no part in the write-ahead log, so it cannot replay it: a store whose
// log was not closed cleanly and that nobody has open (a power loss, or the last process
// killed) is refused until a writing process has opened it.
bool LmdbStore::Impl::readableWithoutReplay(std::string& error) {
  wal::LogFile file;
  bool missing = false;
  std::string ignored;
  if (!file.open(opts.path, opts.wal_size, missing, ignored))
    return true;  // no log (or unreadable: LMDB says)
  wal::Presence probe;
  if (!probe.enter(opts.path, error)) return false;
  if (!probe.nobodyHolds()) return true;  // a running process keeps the data file current
  const auto c = file.readCheckpoint();
  if (!c || !c->clean) {
    error =
        "the store was not closed cleanly and its write-ahead log has not been replayed yet; "
        "start idemproxy on it (or run `idemproxy keys forget` for any key) first";
    return false;
  }
  return true;
}

LmdbStore::Impl::~Impl() {
  stop();
  for (MDB_txn* t : read_pool) mdb_txn_abort(t);
  read_pool.clear();
  if (env != nullptr) walClose();
  if (env != nullptr) {
    if (opts.durability == Durability::Relaxed && !opts.read_only) mdb_env_sync(env, 1);
    mdb_env_close(env);
  }
}

void LmdbStore::Impl::syncToDisk() {
  std::shared_lock lock(map_mu);
  mdb_env_sync(env, 1);
}

void LmdbStore::Impl::adoptMapSize() {
  std::unique_lock lock(map_mu);
  mdb_env_set_mapsize(env, 0);
}

int LmdbStore::Impl::withRead(FunctionRef<int(MDB_txn*)> fn) {
  for (int attempt = 0;; ++attempt) {
    std::shared_lock lock(map_mu);
    MDB_txn* txn = nullptr;
    {
      std::lock_guard pool_lock(pool_mu);
      if (!read_pool.empty()) {
        txn = read_pool.back();
        read_pool.pop_back();
      }
    }
    int rc;
    if (txn != nullptr) {
      rc = mdb_txn_renew(txn);
      if (rc != MDB_SUCCESS) {
        mdb_txn_abort(txn);
        txn = nullptr;
      }
    } else {
      rc = mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn);
    }
    if (rc == MDB_MAP_RESIZED && attempt < kResizeAttempts) {
      lock.unlock();
      adoptMapSize();
      continue;
    }
    if (rc != MDB_SUCCESS) return rc;

    rc = fn(txn);

    mdb_txn_reset(txn);
    std::lock_guard pool_lock(pool_mu);
    if (read_pool.size() < kMaxPooledReadTxns) {
      read_pool.push_back(txn);
    } else {
      mdb_txn_abort(txn);
    }
    return rc;
  }
}

}  // namespace idem
