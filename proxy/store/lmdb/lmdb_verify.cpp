// Integrity of the LMDB store: the whole-store walk behind `idemproxy store verify` and the
// check at open, and the listing that reports damage instead of skipping it.
#include <sys/stat.h>

#include <cerrno>
#include <string>

#include "base/digest.h"
#include "store/lmdb/lmdb_impl.h"

namespace idem {
using namespace lmdb;  // NOLINT: the store's own helpers

namespace {

constexpr size_t kMaxProblems = 100;  // a badly damaged store would list every record

void add(std::vector<std::string>& problems, std::string what) {
  if (problems.size() < kMaxProblems) {
    problems.push_back(std::move(what));
  } else if (problems.size() == kMaxProblems) {
    problems.push_back("(further problems not listed)");
  }
}

RecordId idOf(const MDB_val& k) {
  RecordId id{};
  std::memcpy(id.data(), k.mv_data, id.size());
  return id;
}

}  // namespace

// The data file must hold every page the newest meta page claims: a shorter file means that
// pages written before the meta page were lost, and reading them would fault (SIGBUS).
void LmdbStore::Impl::checkFileSize(std::vector<std::string>& problems) {
  std::shared_lock lock(map_mu);
  MDB_envinfo info;
  MDB_stat est;
  if (mdb_env_info(env, &info) != MDB_SUCCESS || mdb_env_stat(env, &est) != MDB_SUCCESS) {
    add(problems, "cannot read the environment's header");
    return;
  }
  const std::string file = opts.path + "/data.mdb";
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    add(problems, file + ": " + std::strerror(errno));
    return;
  }
  const uint64_t need = (static_cast<uint64_t>(info.me_last_pgno) + 1) * est.ms_psize;
  if (static_cast<uint64_t>(st.st_size) < need) {
    add(problems, file + " is " + std::to_string(st.st_size) + " bytes but its last page ends at " +
                      std::to_string(need) + " (pages written before the last commit are lost)");
  }
}

VerifyReport LmdbStore::Impl::verify() {
  VerifyReport rep;
  checkFileSize(rep.problems);
  if (!rep.ok()) return rep;  // walking would read pages that are not in the file
  const int rc = withRead([&](MDB_txn* txn) {
    {
      Cursor cur;
      int rc2 = cur.open(txn, records);
      if (rc2 != MDB_SUCCESS) return rc2;
      MDB_val k, v;
      for (rc2 = mdb_cursor_get(cur.get(), &k, &v, MDB_FIRST); rc2 == MDB_SUCCESS;
           rc2 = mdb_cursor_get(cur.get(), &k, &v, MDB_NEXT)) {
        ++rep.records;
        if (k.mv_size != sizeof(RecordId)) {
          add(rep.problems, "main table: a key of " + std::to_string(k.mv_size) +
                                " bytes (record ids have " + std::to_string(sizeof(RecordId)) +
                                ")");
          continue;
        }
        const RecordId id = idOf(k);
        Record rec;
        const DecodeError de = decodeRecord(view(v), rec);
        if (de != DecodeError::None) {
          add(rep.problems, "record " + toHex(id) + ": does not decode (" + toString(de) + ")");
          continue;
        }
        ExpiryKey ek = expiryKey(rec.expires_at_ms, id);
        MDB_val ik = mdbVal(ek.data(), ek.size());
        MDB_val iv;
        const int g = mdb_get(txn, expiry, &ik, &iv);
        if (g == MDB_NOTFOUND) {
          add(rep.problems, "record " + toHex(id) + ": no expiry index entry for its expiry");
        } else if (g != MDB_SUCCESS) {
          return g;
        }
      }
      if (rc2 != MDB_NOTFOUND) return rc2;
    }
    Cursor cur;
    int rc2 = cur.open(txn, expiry);
    if (rc2 != MDB_SUCCESS) return rc2;
    MDB_val k, v;
    for (rc2 = mdb_cursor_get(cur.get(), &k, &v, MDB_FIRST); rc2 == MDB_SUCCESS;
         rc2 = mdb_cursor_get(cur.get(), &k, &v, MDB_NEXT)) {
      ++rep.index_entries;
      if (k.mv_size != sizeof(ExpiryKey)) {
        add(rep.problems, "expiry index: a key of " + std::to_string(k.mv_size) + " bytes");
        continue;
      }
      const auto* bytes = static_cast<const uint8_t*>(k.mv_data);
      RecordId id{};
      std::memcpy(id.data(), bytes + 8, id.size());
      MDB_val rk = mdbVal(id);
      MDB_val rv;
      const int g = mdb_get(txn, records, &rk, &rv);
      if (g == MDB_NOTFOUND) {
        add(rep.problems, "expiry index: an entry for record " + toHex(id) + ", which is absent");
        continue;
      }
      if (g != MDB_SUCCESS) return g;
      Record rec;
      if (decodeRecord(view(rv), rec) == DecodeError::None &&
          rec.expires_at_ms != expiryTime(bytes)) {
        add(rep.problems, "expiry index: a stale entry for record " + toHex(id));
      }
    }
    return rc2 == MDB_NOTFOUND ? MDB_SUCCESS : rc2;
  });
  if (rc != MDB_SUCCESS) add(rep.problems, "LMDB: " + mdbError(rc));
  return rep;
}

CheckedList LmdbStore::Impl::listChecked() {
  CheckedList out;
  checkFileSize(out.problems);
  if (!out.problems.empty()) return out;
  const int rc = withRead([&](MDB_txn* txn) {
    Cursor cur;
    int rc2 = cur.open(txn, records);
    if (rc2 != MDB_SUCCESS) return rc2;
    MDB_val k, v;
    for (rc2 = mdb_cursor_get(cur.get(), &k, &v, MDB_FIRST); rc2 == MDB_SUCCESS;
         rc2 = mdb_cursor_get(cur.get(), &k, &v, MDB_NEXT)) {
      Record rec;
      if (k.mv_size != sizeof(RecordId)) {
        add(out.problems, "main table: a key of " + std::to_string(k.mv_size) + " bytes");
        continue;
      }
      const DecodeError de = decodeRecord(view(v), rec);
      if (de != DecodeError::None) {
        add(out.problems, "record " + toHex(idOf(k)) + ": does not decode (" + toString(de) + ")");
        continue;
      }
      out.records.emplace_back(idOf(k), std::move(rec));
    }
    return rc2 == MDB_NOTFOUND ? MDB_SUCCESS : rc2;
  });
  if (rc != MDB_SUCCESS) add(out.problems, "LMDB: " + mdbError(rc));
  return out;
}

VerifyReport LmdbStore::verify() {
  return impl_->verify();
}

CheckedList LmdbStore::listChecked() {
  return impl_->listChecked();
}

}  // namespace idem
