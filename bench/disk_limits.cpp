// The durable-write limits of the disk under a directory, for bench/profile.py disk.
//   disk_limits DIR [SECONDS_PER_PROBE]
// Prints a markdown table: per probe the latency of one durable commit (p50, p99) and how
// many commits and records per second that allows when commits run back to back.
//
// Probes:
//  - append+fdatasync: a 128-byte append to a growing file, then fdatasync (each sync also
//    writes the inode's new size);
//  - overwrite+fdatasync: a 128-byte pwrite into a preallocated, already-synced region, then
//    fdatasync (no metadata to write: the cheapest durable write a log can make);
//  - group of N: N 640-byte records appended with one write, then one fdatasync (group commit);
//  - LMDB N puts: one write transaction of N puts of random 32-byte keys with ~600-byte values
//    into a store already holding 20,000 such records, committed with the default flags
//    (data pages synced, then the meta page: two syncs) and with MDB_NOMETASYNC (one).
#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

struct Result {
  double p50_us, p99_us, per_s;
  size_t n;
};

Result measure(double seconds, const std::function<void()>& once) {
  std::vector<double> us;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  const auto t0 = Clock::now();
  while (Clock::now() < end || us.size() < 5) {
    const auto a = Clock::now();
    once();
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
  }
  const double total = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<double> s = us;
  std::sort(s.begin(), s.end());
  return {s[s.size() / 2], s[std::min(s.size() - 1, s.size() * 99 / 100)], us.size() / total,
          us.size()};
}

void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

void row(const char* name, size_t records, const Result& r) {
  std::printf("| %s | %zu | %.0f | %.0f | %.0f | %.0f | %zu |\n", name, records, r.p50_us, r.p99_us,
              r.per_s, r.per_s * records, r.n);
  std::fflush(stdout);
}

void check(int rc, const char* what) {
  if (rc != 0) {
    std::fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
    std::exit(1);
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: disk_limits DIR [SECONDS]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const double secs = argc > 2 ? std::atof(argv[2]) : 2.0;
  std::printf(
      "| probe | records per commit | p50 µs | p99 µs | commits/s | records/s | samples |\n");
  std::printf("|---|--:|--:|--:|--:|--:|--:|\n");

  // Appends to a growing file.
  {
    const std::string path = dir + "/append.log";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_APPEND, 0644);
    if (fd < 0) die("open");
    char rec[128];
    std::memset(rec, 'a', sizeof rec);
    row("append 128 B + fdatasync", 1, measure(secs, [&] {
          if (::write(fd, rec, sizeof rec) != static_cast<ssize_t>(sizeof rec)) die("write");
          if (::fdatasync(fd) != 0) die("fdatasync");
        }));
    for (size_t n : {8, 32, 128}) {
      std::string group(640 * n, 'g');
      char name[64];
      std::snprintf(name, sizeof name, "group commit: %zu × 640 B append + fdatasync", n);
      row(name, n, measure(secs, [&] {
            if (::write(fd, group.data(), group.size()) != static_cast<ssize_t>(group.size())) {
              die("write");
            }
            if (::fdatasync(fd) != 0) die("fdatasync");
          }));
    }
    ::close(fd);
    ::unlink(path.c_str());
  }

  // Overwrites inside a preallocated, synced file: a log that reuses its space.
  {
    const std::string path = dir + "/prealloc.log";
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) die("open");
    const off_t size = 64 << 20;
    std::vector<char> zero(1 << 20, 0);
    for (off_t o = 0; o < size; o += static_cast<off_t>(zero.size())) {
      if (::pwrite(fd, zero.data(), zero.size(), o) != static_cast<ssize_t>(zero.size())) {
        die("pwrite");
      }
    }
    if (::fsync(fd) != 0) die("fsync");
    char rec[128];
    std::memset(rec, 'p', sizeof rec);
    off_t at = 0;
    row("overwrite 128 B in place + fdatasync", 1, measure(secs, [&] {
          if (::pwrite(fd, rec, sizeof rec, at) != static_cast<ssize_t>(sizeof rec)) die("pwrite");
          if (::fdatasync(fd) != 0) die("fdatasync");
          at = (at + 4096) % size;
        }));
    ::close(fd);
    ::unlink(path.c_str());
  }

  // LMDB write transactions.
  for (const bool noMetaSync : {false, true}) {
    const std::string path = dir + (noMetaSync ? "/lmdb-nometasync" : "/lmdb-default");
    ::mkdir(path.c_str(), 0755);
    MDB_env* env = nullptr;
    check(mdb_env_create(&env), "mdb_env_create");
    check(mdb_env_set_mapsize(env, size_t{1} << 30), "mapsize");
    check(mdb_env_open(env, path.c_str(), noMetaSync ? MDB_NOMETASYNC : 0, 0644), "mdb_env_open");
    MDB_dbi dbi;
    std::mt19937_64 rng(42);
    std::string value(600, 'v');
    auto putRandom = [&](MDB_txn* txn) {
      uint64_t k[4] = {rng(), rng(), rng(), rng()};
      MDB_val key{sizeof k, k};
      MDB_val val{value.size(), value.data()};
      check(mdb_put(txn, dbi, &key, &val, 0), "mdb_put");
    };
    {
      MDB_txn* txn = nullptr;
      check(mdb_txn_begin(env, nullptr, 0, &txn), "begin");
      check(mdb_dbi_open(txn, nullptr, 0, &dbi), "dbi");
      for (int i = 0; i < 20000; ++i) putRandom(txn);
      check(mdb_txn_commit(txn), "commit");
    }
    for (size_t n : {1, 8, 32, 128}) {
      char name[96];
      std::snprintf(name, sizeof name, "LMDB commit, %zu random puts of 600 B%s", n,
                    noMetaSync ? ", MDB_NOMETASYNC" : "");
      row(name, n, measure(secs, [&] {
            MDB_txn* txn = nullptr;
            check(mdb_txn_begin(env, nullptr, 0, &txn), "begin");
            for (size_t i = 0; i < n; ++i) putRandom(txn);
            check(mdb_txn_commit(txn), "commit");
          }));
    }
    mdb_env_close(env);
    ::unlink((path + "/data.mdb").c_str());
    ::unlink((path + "/lock.mdb").c_str());
    ::rmdir(path.c_str());
  }
  return 0;
}
