#pragma once
// One event-loop thread: its event_base, a FrontServer on the shared listening socket, its
// upstream clients and a mailbox through which other threads (the store writer, waiters) post
// work.
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/c_handles.h"
#include "base/wake_batch.h"
#include "config/config.h"
#include "http/front_server.h"
#include "request/context.h"
#include "upstream/upstream.h"

namespace idem {

class Proxy;

class Worker final : public RequestLoop {
 public:
  Worker(Proxy& proxy, unsigned workerCount, ConfigPtr config);
  ~Worker() override;
  Worker(const Worker&) = delete;
  Worker& operator=(const Worker&) = delete;

  // Creates the loop and the HTTP server on `listenFd` (shared, not owned).
  [[nodiscard]] bool init(int listenFd, std::string& error);
  void startThread(unsigned index);  // the thread is named idem-worker-INDEX
  void join();

  // Thread-safe: run `fn` on this worker's loop.
  void post(std::function<void()> fn) override;
  // Thread-safe.
  void reload(ConfigPtr config);
  void stopAccepting();
  void stop();

  // Loop thread only.
  event_base* base() override { return base_.get(); }
  Proxy& proxy() { return proxy_; }
  const ConfigPtr& config() const override { return config_; }
  std::shared_ptr<Upstream> upstream(const std::string& name) override;
  RequestShared& shared() override;

  // Thread-safe: steady-clock milliseconds of the loop's last heartbeat (every second).
  int64_t lastBeatMs() const { return last_beat_ms_.load(std::memory_order_relaxed); }
  static int64_t steadyMs();

 private:
  void onRequest(std::unique_ptr<Downstream> client);
  static void onMailbox(evutil_socket_t, short, void* arg);
  static void onHeartbeat(evutil_socket_t, short, void* arg);
  static void onWakes(evutil_socket_t, short, void* arg);
  void rebuildUpstreams();

  Proxy& proxy_;
  unsigned worker_count_;
  ConfigPtr config_;
  EventBasePtr base_;
  std::unique_ptr<FrontServer> front_;
  bool accepting_ = false;
  int mailbox_fd_ = -1;  // eventfd: the mailbox went from empty to not
  EventPtr mailbox_event_;
  EventPtr heartbeat_;
  EventPtr wakes_event_;  // runs wake_batch_ after the callbacks due in this iteration
  WakeBatch wake_batch_;
  std::atomic<int64_t> last_beat_ms_{0};
  std::mutex mailbox_mu_;
  std::vector<std::function<void()>> mailbox_;
  std::map<std::string, std::shared_ptr<Upstream>> upstreams_;
  std::thread thread_;
};

}  // namespace idem
