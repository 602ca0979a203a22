// The Proxy's worker plumbing: start/stop, health of the worker loops (the watchdog's input).
#include "http/server.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>
#include <vector>

#include "base/digest.h"
#include "http/worker.h"
#include "store/lmdb/lmdb_store.h"

namespace idem {
namespace {

class NullObserver final : public ProxyObserver {
 public:
  void requestDone(const RequestReport&) override {}
  void upstreamDone(std::string_view, std::chrono::microseconds, bool) override {}
  void event(std::string_view, std::string_view, std::string_view) override {}
};

class ProxyTest : public ::testing::Test {
 protected:
  void SetUp() override { init("127.0.0.1:0"); }

  void init(const std::string& listen) {
    store_.reset();
    if (!dir_.empty()) std::filesystem::remove_all(dir_);
    char tmpl[] = "/tmp/idemproxy-server-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    ConfigResult cr = parseConfig(R"(
server: {listen: ")" + listen + R"(", workers: 2}
store: {path: )" + dir_ + R"(/store}
upstreams: {u: {url: "http://127.0.0.1:9", timeout: 1s}}
routes: [{name: r, path: "/*", upstream: u}]
)",
                                  "test.yaml");
    ASSERT_TRUE(cr.ok()) << (cr.errors.empty() ? "" : cr.errors[0].str());
    config_ = cr.config;
    LmdbOptions so;
    so.path = dir_ + "/store";
    so.max_size = 16 << 20;
    std::string error;
    store_ = openLmdbStore(so, SystemClock::instance(), error);
    ASSERT_TRUE(store_) << error;
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  template <typename F>
  static bool eventually(F pred, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
    const auto end = std::chrono::steady_clock::now() + limit;
    while (std::chrono::steady_clock::now() < end) {
      if (pred()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    return pred();
  }

  std::string dir_;
  ConfigPtr config_;
  std::unique_ptr<LmdbStore> store_;
  NullObserver observer_;
};

TEST_F(ProxyTest, StartsOnAnEphemeralPortAndStops) {
  Proxy proxy(config_, *store_, observer_);
  std::string error;
  ASSERT_TRUE(proxy.start(error)) << error;
  EXPECT_NE(proxy.port(), 0);
  EXPECT_EQ(proxy.workerCount(), 2u);
  EXPECT_TRUE(proxy.healthy());
  proxy.stop();
  EXPECT_FALSE(proxy.healthy());
}

TEST_F(ProxyTest, AStuckWorkerLoopMakesTheProxyUnhealthy) {
  Proxy proxy(config_, *store_, observer_);
  std::string error;
  ASSERT_TRUE(proxy.start(error)) << error;
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  proxy.worker(1)->post([&] {
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return release; });
  });
  const auto silence = std::chrono::milliseconds(1500);
  EXPECT_TRUE(eventually([&] { return !proxy.healthy(silence); }));
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  EXPECT_TRUE(eventually([&] { return proxy.healthy(silence); }));
  proxy.stop();
}

ReserveRequest reserveFor(const std::string& key) {
  ReserveRequest r;
  r.id = recordId("payments", {}, key);
  r.fingerprint.fill(1);
  r.route = "payments";
  r.key = key;
  r.owner = "A";
  r.ttl_ms = 60'000;
  r.lease_ms = 10'000;
  return r;
}

// A worker's callbacks may queue many store writes; the writer is woken once, after the
// callbacks due in that loop iteration, so it takes them as one group (on a shared core a wake
// per write lets it preempt the loop, take one, and sleep on the disk while the rest queue).
TEST_F(ProxyTest, StoreWritesQueuedByOneLoopCallbackWakeTheWriterOnceAfterIt) {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<size_t> groups;
  store_->setCommitObserver([&](std::chrono::microseconds, size_t ops) {
    std::lock_guard lock(mu);
    groups.push_back(ops);
  });
  struct Unobserve {
    LmdbStore& store;
    ~Unobserve() { store.setCommitObserver({}); }
  } unobserve{*store_};
  Proxy proxy(config_, *store_, observer_);
  std::string error;
  ASSERT_TRUE(proxy.start(error)) << error;
  // The writer has started and gone back to waiting for work (a barrier it completed): only a
  // wake sends it to the queue from now on.
  store_->flush();
  constexpr int kWrites = 64;
  std::atomic<int> done{0};
  bool completed_inside = false;
  proxy.worker(0)->post([&] {
    for (int i = 0; i < kWrites; ++i) {
      store_->reserve(reserveFor("batched-" + std::to_string(i)), [&](ReserveResult r) {
        EXPECT_EQ(r.error, StoreError::None);
        std::lock_guard lock(mu);
        ++done;
        cv.notify_all();
      });
    }
    // Had the first write woken the writer, it would complete writes while this runs.
    std::unique_lock lock(mu);
    completed_inside =
        cv.wait_for(lock, std::chrono::milliseconds(300), [&] { return done.load() > 0; });
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return done == kWrites; }));
    EXPECT_FALSE(completed_inside);
    EXPECT_EQ(groups, std::vector<size_t>{kWrites});
  }
  proxy.stop();
}

// A blocking store call made on a loop thread (a barrier, a *Sync helper) wakes the writer at
// once: deferred to the end of the callback that waits for it, it would never come.
TEST_F(ProxyTest, BlockingStoreCallsOnALoopThreadDoNotWaitForTheBatchsEnd) {
  Proxy proxy(config_, *store_, observer_);
  std::string error;
  ASSERT_TRUE(proxy.start(error)) << error;
  std::mutex mu;
  std::condition_variable cv;
  bool returned = false;
  ReserveResult got;
  proxy.worker(0)->post([&] {
    store_->flush();
    ReserveResult r = reserveSync(*store_, reserveFor("blocking"));
    std::lock_guard lock(mu);
    got = r;
    returned = true;
    cv.notify_all();
  });
  {
    std::unique_lock lock(mu);
    ASSERT_TRUE(cv.wait_for(lock, std::chrono::seconds(10), [&] { return returned; }))
        << "the loop thread is stuck waiting for its own store call";
    EXPECT_EQ(got.error, StoreError::None);
    EXPECT_EQ(got.status, ReserveStatus::Won);
  }
  proxy.stop();
}

// Sends one request over IPv6 loopback and returns the status line.
std::string statusLineOverIpv6(uint16_t port) {
  int fd = socket(AF_INET6, SOCK_STREAM, 0);
  sockaddr_in6 addr{};
  addr.sin6_family = AF_INET6;
  addr.sin6_port = htons(port);
  inet_pton(AF_INET6, "::1", &addr.sin6_addr);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
    close(fd);
    return "connect failed";
  }
  const std::string req = "GET /x HTTP/1.1\r\nHost: v6\r\nConnection: close\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "write failed";
  }
  std::string got;
  char buf[4096];
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
  close(fd);
  return got.substr(0, got.find("\r\n"));
}

TEST_F(ProxyTest, ServesOnIpv6Loopback) {
  init("[::1]:0");
  Proxy proxy(config_, *store_, observer_);
  std::string error;
  ASSERT_TRUE(proxy.start(error)) << error;
  // The upstream (port 9) refuses: the answer proves the request was parsed and routed.
  EXPECT_EQ(statusLineOverIpv6(proxy.port()), "HTTP/1.1 502 Bad Gateway");
  proxy.stop();
}

TEST_F(ProxyTest, OwnerTokensAreUniqueAndRecognised) {
  Proxy proxy(config_, *store_, observer_);
  const std::string a = proxy.newOwnerToken();
  const std::string b = proxy.newOwnerToken();
  EXPECT_NE(a, b);
  EXPECT_TRUE(proxy.ownsToken(a));
  EXPECT_FALSE(proxy.ownsToken("deadbeef:1:0"));
}

}  // namespace
}  // namespace idem
