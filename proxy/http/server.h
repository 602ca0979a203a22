#pragma once
// The HTTP front: one listening socket shared by N worker threads, each with its own
// event_base, evhttp and upstream clients. A request lives and dies on one worker.
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "config/config.h"
#include "store/store.h"
#include "request/waiters.h"

namespace idem {

// What happened to a request, for metrics (SPEC §7 outcome label).
enum class Outcome {
  Forwarded,
  Replayed,
  Conflict,
  Mismatch,
  Invalid,
  Passthrough,
  Released,
  Error
};
const char* toString(Outcome o);

struct RequestReport {
  std::string_view route;  // "" when no route matched
  std::string_view method;
  std::string_view path;
  int status = 0;
  Outcome outcome = Outcome::Error;
  double duration_ms = 0;
  // The raw key ("" when none): an observer that logs it must hash it (keyHashForLog), so
  // the hash is only computed when a log line is actually written.
  std::string_view key;
  std::string_view detail;  // short reason for errors, never a body or secret
};

// Telemetry seam: the server reports, the wiring (metrics, logs) listens. Called on worker
// threads; implementations must be thread-safe and cheap.
class ProxyObserver {
 public:
  virtual ~ProxyObserver() = default;
  virtual void requestDone(const RequestReport& report) = 0;
  virtual void upstreamDone(std::string_view upstream, std::chrono::microseconds latency,
                            bool failed) = 0;
  virtual void event(std::string_view name, std::string_view route, std::string_view detail) = 0;
};

class Worker;

class Proxy {
 public:
  Proxy(ConfigPtr config, Store& store, ProxyObserver& observer,
        const Clock& clock = SystemClock::instance());
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Binds the listener and starts the workers. False with `error` set on failure.
  bool start(std::string& error);
  uint16_t port() const { return port_; }

  // Swap in a new snapshot; requests already running keep the one they started with.
  void reload(ConfigPtr config);
  ConfigPtr config() const;

  // Stop accepting new connections and close the listening socket once no worker watches it
  // (drain begins; answers now carry Connection: close).
  void stopAccepting();
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  // Requests received and not yet finished (recorded and answered).
  size_t active() const { return active_.load(); }
  size_t parkedWaiters() const { return waiters_.parked(); }
  size_t upstreamInFlight() const { return upstream_in_flight_.load(); }
  // Every worker loop ticked within `maxSilence` (the systemd watchdog asks this).
  bool healthy(std::chrono::milliseconds maxSilence = std::chrono::milliseconds(5000)) const;
  // Stop the workers' loops and join them. In-flight work is abandoned: drain first. The
  // workers themselves live until the Proxy is destroyed (after the store has drained).
  void stop();
  // A worker stopped accepting (called on that worker's thread).
  void listenerRemoved();

  // Shared by the workers.
  Store& store() { return store_; }
  ProxyObserver& observer() { return observer_; }
  const Clock& clock() const { return clock_; }
  WaiterRegistry& waiters() { return waiters_; }
  std::string newOwnerToken();
  bool ownsToken(std::string_view owner) const;
  // Used by requests to track liveness.
  std::atomic<size_t>& activeCounter() { return active_; }
  std::atomic<size_t>& upstreamCounter() { return upstream_in_flight_; }
  Worker* worker(size_t i) { return workers_[i].get(); }
  size_t workerCount() const { return workers_.size(); }

 private:
  void closeListener();

  mutable std::mutex config_mu_;
  ConfigPtr config_;
  Store& store_;
  ProxyObserver& observer_;
  const Clock& clock_;
  WaiterRegistry waiters_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<int> listen_fd_{-1};
  std::atomic<bool> stopped_{false};
  uint16_t port_ = 0;
  std::string owner_prefix_;
  std::atomic<uint64_t> owner_seq_{0};
  std::atomic<size_t> active_{0};
  std::atomic<size_t> upstream_in_flight_{0};
  std::atomic<bool> draining_{false};
  std::atomic<size_t> listeners_open_{0};
};

// Opens a listening TCP socket (non-blocking, SO_REUSEADDR) on `addr`. Returns -1 with `error`.
int openListener(const ListenAddress& addr, std::string& error, uint16_t* boundPort = nullptr);

}  // namespace idem
