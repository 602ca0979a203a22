// The embedded store's commit latency, without HTTP: one thread reserves a new key and records
// its answer (what a new key costs the store), back to back, for a few seconds; or C threads
// at once (group commit); bench/README.md has figures.
//   store_latency DIR SECONDS CLIENTS wal|pages
// Prints p50/p99 of one operation (µs) and operations per second. Built with the release preset
// (build/release/store_latency); CK_MS=N in the environment
// sets the write-ahead log's checkpoint interval (ms), CK_PAGES=N its growth trigger (pages).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "store/lmdb/lmdb_store.h"

using namespace idem;

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: store_latency DIR SECONDS CLIENTS wal|pages\n");
    return 2;
  }
  LmdbOptions o;
  o.path = argv[1];
  o.max_size = 4ull << 30;
  o.wal = std::string(argv[4]) != "pages";
  if (const char* ci = std::getenv("CK_MS"))
    o.checkpoint_interval = std::chrono::milliseconds(std::atoi(ci));
  if (const char* cg = std::getenv("CK_PAGES"))
    o.checkpoint_growth_pages = static_cast<size_t>(std::atoll(cg));
  const double seconds = std::atof(argv[2]);
  const int clients = std::atoi(argv[3]);
  std::string error;
  auto store = openLmdbStore(o, SystemClock::instance(), error);
  if (!store) {
    std::fprintf(stderr, "%s\n", error.c_str());
    return 1;
  }
  using Clock = std::chrono::steady_clock;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  std::vector<std::vector<double>> lat(static_cast<size_t>(clients));
  std::vector<std::thread> ts;
  for (int c = 0; c < clients; ++c) {
    ts.emplace_back([&, c] {
      const std::string body(64, 'b');
      for (int i = 0; Clock::now() < end; ++i) {
        const std::string key = std::to_string(c) + "-" + std::to_string(i) + "-" +
                                std::to_string(Clock::now().time_since_epoch().count());
        ReserveRequest r;
        r.id = recordId("pay", {"t"}, key);
        r.route = "pay";
        r.key = key;
        r.scope = {"t"};
        r.owner = "bench";
        r.ttl_ms = 86'400'000;
        r.lease_ms = 30'000;
        r.abandoned_answer.status = 502;
        r.abandoned_answer.body = std::string(300, 'a');
        auto t0 = Clock::now();
        if (reserveSync(*store, r).status != ReserveStatus::Won) std::abort();
        auto t1 = Clock::now();
        RecordRequest q;
        q.id = r.id;
        q.owner = "bench";
        q.answer.status = 201;
        q.answer.headers = {{"Content-Type", "application/json"}};
        q.answer.body = body;
        if (recordSync(*store, q).status != RecordStatus::Recorded) std::abort();
        auto t2 = Clock::now();
        lat[static_cast<size_t>(c)].push_back(
            std::chrono::duration<double, std::micro>(t1 - t0).count());
        lat[static_cast<size_t>(c)].push_back(
            std::chrono::duration<double, std::micro>(t2 - t1).count());
      }
    });
  }
  for (auto& t : ts) t.join();
  std::vector<double> all;
  for (auto& v : lat) all.insert(all.end(), v.begin(), v.end());
  std::sort(all.begin(), all.end());
  const auto pct = [&](double p) { return all[static_cast<size_t>(p * (all.size() - 1))]; };
  const auto w = store->walStats();
  std::printf(
      "%s clients=%d ops=%zu ops/s=%.0f p50=%.0f p90=%.0f p99=%.0f max=%.0f checkpoints=%llu\n",
      argv[4], clients, all.size(), all.size() / seconds, pct(0.5), pct(0.9), pct(0.99), all.back(),
      static_cast<unsigned long long>(w.checkpoints));
  return 0;
}
