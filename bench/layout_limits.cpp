// What the records table's layout costs per new key, for bench/profile.py layout.
//   layout_limits DIR [PREFILL]
// Prints a markdown table: for each layout and transaction shape, the LMDB pages a request's
// writes add to the data file (a reservation and its recorded answer) and the writer's CPU per
// request (the puts, deletes and commits, with MDB_NOSYNC: the copy into the page cache, no
// flush).
//
// Layouts:
//  - hash (the store's today): records keyed by the 32-byte record id (a hash) → ~600-byte
//    record; expiry keyed by time ‖ id. Every new key lands on a random leaf.
//  - arrival: records keyed by an arrival number (MDB_INTEGERKEY, appended) → id ‖ record; an
//    index id → number; expiry keyed by time ‖ number. A transaction's new records share the
//    last leaves; only the index entry (40 bytes) lands on a random leaf.
//
// The store is first filled with PREFILL completed records (250,000 by default, about what a
// bench.py run leaves). Then a read transaction pins it, as the write-ahead log's checkpoint does
// between checkpoints, so that no freed page is reused and the pages a transaction writes are
// the data file's growth. The data file is grown ahead of LMDB and read into the cache as single
// pages, as the store does (page_cache.h), so that large folios do not weigh on either layout.
// Request shapes: requests per transaction, and whether a request's answer is recorded in the
// same transaction as its reservation (lag 0) or in the next one (lag 1).
#include <fcntl.h>
#include <lmdb.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <deque>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

namespace {

void check(int rc, const char* what) {
  if (rc != MDB_SUCCESS) {
    std::fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
    std::exit(1);
  }
}

void putBe64(uint8_t* p, uint64_t v) {
  for (int i = 7; i >= 0; --i) {
    p[i] = static_cast<uint8_t>(v);
    v >>= 8;
  }
}

struct Request {
  uint8_t id[32];
  uint64_t number;
  int64_t lease_until;
};

class Store {
 public:
  Store(const std::string& dir, bool arrival) : arrival_(arrival) {
    check(mdb_env_create(&env_), "mdb_env_create");
    check(mdb_env_set_maxdbs(env_, 4), "mdb_env_set_maxdbs");
    check(mdb_env_set_mapsize(env_, size_t{16} << 30), "mdb_env_set_mapsize");
    check(mdb_env_open(env_, dir.c_str(), MDB_NOSYNC, 0600), "mdb_env_open");
    check(mdb_env_get_fd(env_, &fd_), "mdb_env_get_fd");
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(env_, nullptr, 0, &txn), "mdb_txn_begin");
    check(mdb_dbi_open(txn, "records", MDB_CREATE | (arrival ? MDB_INTEGERKEY : 0), &records_),
          "records");
    check(mdb_dbi_open(txn, "expiry", MDB_CREATE, &expiry_), "expiry");
    if (arrival) check(mdb_dbi_open(txn, "index", MDB_CREATE, &index_), "index");
    check(mdb_txn_commit(txn), "commit");
  }
  ~Store() { mdb_env_close(env_); }

  MDB_env* env() { return env_; }

  // Grows the data file 4 MiB ahead of the last page and reads the hole in as single pages.
  void growAhead() {
    MDB_envinfo info;
    mdb_env_info(env_, &info);
    const uint64_t used = (static_cast<uint64_t>(info.me_last_pgno) + 1) * 4096;
    if (used + (2 << 20) <= prepared_) return;
    const uint64_t target = used + (4 << 20);
    if (::ftruncate(fd_, static_cast<off_t>(target)) != 0) return;
    for (uint64_t at = std::max(prepared_, used); at < target; at += 64 << 10) {
      ::posix_fadvise(fd_, static_cast<off_t>(at), 64 << 10, POSIX_FADV_WILLNEED);
    }
    prepared_ = target;
  }

  void reserve(MDB_txn* txn, Request& r, std::mt19937_64& rng, int64_t now) {
    for (auto& b : r.id) b = static_cast<uint8_t>(rng());
    r.number = next_++;
    r.lease_until = now + 30'000;
    write(txn, r, reservation_, r.lease_until, nullptr);
  }
  void record(MDB_txn* txn, const Request& r, int64_t now) {
    write(txn, r, answer_, now + 86'400'000, &r.lease_until);
  }

 private:
  void write(MDB_txn* txn, const Request& r, const std::string& value, int64_t expires,
             const int64_t* old_expires) {
    MDB_val empty{0, nullptr};
    uint8_t ek[40];
    const size_t id_len = arrival_ ? 8 : 32;
    uint8_t num[8];
    std::memcpy(num, &r.number, 8);  // MDB_INTEGERKEY: native order
    const uint8_t* expiry_id = arrival_ ? num : r.id;
    if (old_expires != nullptr) {
      putBe64(ek, static_cast<uint64_t>(*old_expires));
      std::memcpy(ek + 8, expiry_id, id_len);
      MDB_val k{8 + id_len, ek};
      check(mdb_del(txn, expiry_, &k, nullptr), "expiry del");
    }
    putBe64(ek, static_cast<uint64_t>(expires));
    std::memcpy(ek + 8, expiry_id, id_len);
    MDB_val k{8 + id_len, ek};
    check(mdb_put(txn, expiry_, &k, &empty, 0), "expiry put");
    if (!arrival_) {
      MDB_val rk{32, const_cast<uint8_t*>(r.id)};
      MDB_val rv{value.size(), const_cast<char*>(value.data())};
      check(mdb_put(txn, records_, &rk, &rv, 0), "records put");
      return;
    }
    std::string v(reinterpret_cast<const char*>(r.id), 32);
    v += value;
    MDB_val rk{8, num};
    MDB_val rv{v.size(), v.data()};
    if (old_expires == nullptr) {
      check(mdb_put(txn, records_, &rk, &rv, MDB_APPEND), "records append");
      MDB_val ik{32, const_cast<uint8_t*>(r.id)};
      MDB_val iv{8, num};
      check(mdb_put(txn, index_, &ik, &iv, 0), "index put");
    } else {
      // The answer: the index says where the record is (a read), the record is rewritten.
      MDB_val ik{32, const_cast<uint8_t*>(r.id)};
      MDB_val found;
      check(mdb_get(txn, index_, &ik, &found), "index get");
      check(mdb_put(txn, records_, &rk, &rv, 0), "records put");
    }
  }

  bool arrival_;
  MDB_env* env_ = nullptr;
  int fd_ = -1;
  MDB_dbi records_ = 0, expiry_ = 0, index_ = 0;
  uint64_t next_ = 1;
  uint64_t prepared_ = 0;
  const std::string reservation_ = std::string(600, 'r');
  const std::string answer_ = std::string(650, 'a');
};

struct Shape {
  int per_txn;
  int lag;
  int txns;
};

void run(const std::string& dir, bool arrival, long prefill, const Shape& shape) {
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::mt19937_64 rng(42);
  int64_t now = 1'000'000'000;
  Store store(dir, arrival);
  for (long done = 0; done < prefill; done += 1000) {
    MDB_txn* txn = nullptr;
    store.growAhead();
    check(mdb_txn_begin(store.env(), nullptr, 0, &txn), "begin");
    for (int i = 0; i < 1000; ++i) {
      Request r;
      store.reserve(txn, r, rng, now);
      store.record(txn, r, now);
    }
    check(mdb_txn_commit(txn), "commit");
    ++now;
  }
  MDB_txn* pin = nullptr;
  check(mdb_txn_begin(store.env(), nullptr, MDB_RDONLY, &pin), "pin");
  MDB_envinfo before;
  mdb_env_info(store.env(), &before);
  std::deque<std::vector<Request>> waiting;
  long requests = 0;
  double cpu_s = 0;
  for (int t = 0; t < shape.txns; ++t) {
    store.growAhead();  // outside the timed part: the store does it once per 2 MiB
    const std::clock_t c0 = std::clock();
    MDB_txn* txn = nullptr;
    check(mdb_txn_begin(store.env(), nullptr, 0, &txn), "begin");
    std::vector<Request> batch(static_cast<size_t>(shape.per_txn));
    for (auto& r : batch) store.reserve(txn, r, rng, now);
    waiting.push_back(std::move(batch));
    if (static_cast<int>(waiting.size()) > shape.lag) {
      for (const auto& r : waiting.front()) store.record(txn, r, now);
      requests += static_cast<long>(waiting.front().size());
      waiting.pop_front();
    }
    check(mdb_txn_commit(txn), "commit");
    cpu_s += static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    now += 5;
  }
  MDB_envinfo after;
  mdb_env_info(store.env(), &after);
  mdb_txn_abort(pin);
  std::printf(
      "| %s | %d | %s | %.2f | %.1f |\n", arrival ? "arrival" : "hash", shape.per_txn,
      shape.lag == 0 ? "same transaction" : "next transaction",
      static_cast<double>(after.me_last_pgno - before.me_last_pgno) / static_cast<double>(requests),
      cpu_s * 1e6 / static_cast<double>(requests));
  std::fflush(stdout);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: layout_limits DIR [PREFILL]\n");
    return 2;
  }
  const std::string base = argv[1];
  const long prefill = argc > 2 ? std::atol(argv[2]) : 250'000;
  std::printf("Store prefilled with %ld completed records; pages and writer CPU per request.\n\n",
              prefill);
  std::printf(
      "| layout | requests per transaction | answer recorded | pages/request | CPU µs/request |\n");
  std::printf("|---|--:|---|--:|--:|\n");
  // c1 with the idle hold (~8 requests per commit, reservation and answer together); c50
  // (~160 requests per commit, most answers in the reservation's transaction, some in the next).
  const Shape shapes[] = {{8, 0, 2000}, {160, 0, 200}, {160, 1, 200}};
  for (const Shape& s : shapes) {
    for (bool arrival : {false, true}) run(base + "/store", arrival, prefill, s);
  }
  std::filesystem::remove_all(base + "/store");
  return 0;
}
