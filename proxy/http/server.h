#pragma once
// The HTTP front: one listening socket shared by N worker threads, each with its own
// event_base, FrontServer and upstream clients. A request lives and dies on one worker.
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
#include "request/context.h"
#include "request/observer.h"
#include "store/store.h"

namespace idem {

class Worker;

class Proxy {
 public:
  Proxy(ConfigPtr config, Store& store, ProxyObserver& observer,
        const Clock& clock = SystemClock::instance());
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  // Binds the listener and starts the workers. False with `error` set on failure.
  [[nodiscard]] bool start(std::string& error);
  uint16_t port() const { return port_; }

  // Swap in a new snapshot; requests already running keep the one they started with.
  void reload(ConfigPtr config);
  ConfigPtr config() const;

  // Stop accepting new connections and close the listening socket once no worker watches it
  // (drain begins; answers now carry Connection: close).
  void stopAccepting();
  bool draining() const { return shared_.draining(); }
  // Requests received and not yet finished (recorded and answered).
  size_t active() const { return shared_.active.load(); }
  size_t parkedWaiters() { return shared_.waiters().parked(); }
  size_t upstreamInFlight() const { return shared_.upstream_in_flight.load(); }
  // Every worker loop ticked within `maxSilence` (the systemd watchdog asks this).
  bool healthy(std::chrono::milliseconds maxSilence = std::chrono::milliseconds(5000)) const;
  // Stop the workers' loops and join them. In-flight work is abandoned: drain first. The
  // workers themselves live until the Proxy is destroyed (after the store has drained).
  void stop();
  // A worker stopped accepting (called on that worker's thread).
  void listenerRemoved();

  // Shared by the workers and their requests.
  RequestShared& shared() { return shared_; }
  ProxyObserver& observer() { return shared_.observer(); }
  std::string newOwnerToken() { return shared_.newOwnerToken(); }
  bool ownsToken(std::string_view owner) const { return shared_.ownsToken(owner); }
  Worker* worker(size_t i) { return workers_[i].get(); }
  size_t workerCount() const { return workers_.size(); }

 private:
  void closeListener();

  mutable std::mutex config_mu_;
  ConfigPtr config_;
  RequestShared shared_;
  std::vector<std::unique_ptr<Worker>> workers_;
  std::atomic<int> listen_fd_{-1};
  std::atomic<bool> stopped_{false};
  uint16_t port_ = 0;
  std::atomic<size_t> listeners_open_{0};
};

// Opens a listening TCP socket (non-blocking, SO_REUSEADDR) on `addr`. Returns -1 with `error`.
[[nodiscard]] int openListener(const ListenAddress& addr, std::string& error,
                               uint16_t* boundPort = nullptr);

}  // namespace idem
