#pragma once
// The ProxyObserver that feeds the metrics registry and the JSON log. Counters are registered
// per route and outcome when a config snapshot is installed, so the hot path is one lookup in an
// immutable table plus a relaxed atomic add.
#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <string>

#include "base/snapshot.h"
#include "config/config.h"
#include "ops/metrics.h"
#include "request/observer.h"

namespace idem {

class Telemetry final : public ProxyObserver {
 public:
  explicit Telemetry(MetricsRegistry& metrics);
  // Register the series a snapshot's routes and upstreams need (idempotent; call on reload).
  void install(const Config& config);

  void requestDone(const RequestReport& report) override;
  void upstreamDone(std::string_view upstream, std::chrono::microseconds latency,
                    bool failed) override;
  void event(std::string_view name, std::string_view route, std::string_view detail) override;
  void waitWoken(std::string_view how) override;
  // idemproxy_reconcile_total{route,result}; reconciles are rare, so the series is looked up
  // in the registry each time.
  void reconcileDone(std::string_view route, std::string_view result) override;
  void frontRefused(FrontRefusal why) override;
  void frontConnections(int delta) override;

 private:
  static constexpr size_t kOutcomes = 8;
  struct Table {
    std::map<std::string, std::array<Counter*, kOutcomes>, std::less<>> requests;
    std::map<std::string, Histogram*, std::less<>> upstream_latency;
    std::map<std::string, Counter*, std::less<>> upstream_failures;
  };
  std::array<Counter*, kOutcomes> routeCounters(const std::string& route);

  MetricsRegistry& metrics_;
  Snapshot<Table> table_;
  Counter& woken_owner_;
  Counter& woken_notify_;
  Counter& woken_poll_;
  // idemproxy_front_refusals_total, indexed by FrontRefusal.
  std::array<Counter*, 4> refusals_{};
  Gauge& front_connections_;
};

}  // namespace idem
