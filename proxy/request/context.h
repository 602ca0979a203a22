#pragma once
// What the request core needs around it, as two small seams:
//   RequestShared — process-wide: the store, telemetry, time, waiters, owner tokens, counters;
//   RequestLoop   — the event loop one request lives on: timers, a mailbox, its config snapshot
//                   and its upstream clients.
// The server's Proxy owns a RequestShared and each Worker is a RequestLoop; unit tests build
// both over fakes (a fake Store, Upstream and Clock) and drive the core through every state.
#include <event2/event.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include "base/clock.h"
#include "config/config.h"
#include "request/latency.h"
#include "request/observer.h"
#include "request/waiters.h"
#include "store/store.h"
#include "upstream/upstream.h"

namespace idem {

class RequestShared {
 public:
  RequestShared(Store& store, ProxyObserver& observer, const Clock& clock);
  RequestShared(const RequestShared&) = delete;
  RequestShared& operator=(const RequestShared&) = delete;

  Store& store() { return store_; }
  ProxyObserver& observer() { return observer_; }
  const Clock& clock() const { return clock_; }
  WaiterRegistry& waiters() { return waiters_; }
  // How long each route's upstream exchanges take (a 409's Retry-After).
  LatencyEstimates& latency() { return latency_; }

  // A reservation token unique to this process: "<boot id>:<pid>:<nonce>:<sequence>".
  std::string newOwnerToken();
  // Whether `owner` was issued by this process (so its waiters can park here).
  bool ownsToken(std::string_view owner) const;

  // A waiter ticket unique in this process: a waiter cancels its own entry and no other.
  uint64_t newWaitTicket() { return wait_seq_.fetch_add(1, std::memory_order_relaxed) + 1; }

  // Draining: answers carry Connection: close so keep-alive clients move on.
  bool draining() const { return draining_.load(std::memory_order_relaxed); }
  void setDraining() { draining_.store(true, std::memory_order_relaxed); }

  // Requests received and not yet finished (recorded and answered).
  std::atomic<size_t> active{0};
  // Upstream exchanges running.
  std::atomic<size_t> upstream_in_flight{0};

 private:
  Store& store_;
  ProxyObserver& observer_;
  const Clock& clock_;
  WaiterRegistry waiters_;
  LatencyEstimates latency_;
  std::string owner_prefix_;
  std::atomic<uint64_t> owner_seq_{0};
  std::atomic<uint64_t> wait_seq_{0};
  std::atomic<bool> draining_{false};
};

class RequestLoop {
 public:
  virtual ~RequestLoop() = default;
  // The loop's base, for the request's timers. Loop thread only.
  virtual event_base* base() = 0;
  // Thread-safe: run `fn` on this loop (completions from the store writer or an owner).
  virtual void post(std::function<void()> fn) = 0;
  // The configuration snapshot new requests start with. Loop thread only.
  virtual const ConfigPtr& config() const = 0;
  // This loop's client for the named upstream of the current snapshot, or nullptr.
  virtual std::shared_ptr<Upstream> upstream(const std::string& name) = 0;
  virtual RequestShared& shared() = 0;
};

}  // namespace idem
