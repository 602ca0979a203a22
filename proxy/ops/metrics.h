#pragma once
// A small thread-safe metrics registry rendered in the Prometheus text exposition format 0.0.4.
//
// Threads: any thread may register or update; the admin thread renders. Registration takes a
// mutex and is meant to happen once (at startup or on config load): keep the returned handle
// and update it on the hot path, where every update is a relaxed atomic operation:
//
//   Counter& forwarded = registry.counter(metric::kRequestsTotal, metric::kRequestsTotalHelp,
//                                         {{"route", route.name}, {"outcome", "forwarded"}});
//   forwarded.inc();
//
// Handles stay valid for the registry's lifetime (series are never removed, except callback
// gauges, whose Registration owns them). Registering an existing series returns the same
// handle. Misuse that is a programming error — an invalid metric or label name, a name reused
// with another type, help or label set, unsorted histogram bounds — aborts (STYLE: broken
// invariants abort); label *values* may be any bytes.
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace idem {

// Label name → value, e.g. {{"route", "payments"}, {"outcome", "forwarded"}}. The order given
// does not matter: series are identified and rendered with labels sorted by name.
using Labels = std::vector<std::pair<std::string, std::string>>;

// A monotonically increasing count.
class alignas(64) Counter {
 public:
  void inc(uint64_t n = 1) noexcept { value_.fetch_add(n, std::memory_order_relaxed); }
  uint64_t value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> value_{0};
};

// A value that goes up and down (set explicitly; see MetricsRegistry::gaugeCallback for values
// sampled at render time).
class alignas(64) Gauge {
 public:
  void set(double v) noexcept { value_.store(v, std::memory_order_relaxed); }
  void add(double d) noexcept { value_.fetch_add(d, std::memory_order_relaxed); }
  void inc() noexcept { add(1.0); }
  void dec() noexcept { add(-1.0); }
  double value() const noexcept { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0.0};
};

// Observations counted into fixed buckets. Bounds are upper bounds, inclusive ("le"), finite
// and strictly increasing; an implicit +Inf bucket catches the rest.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double v) noexcept;

  struct Snapshot {
    std::vector<double> bounds;
    std::vector<uint64_t> cumulative;  // bounds.size() + 1 entries; the last is +Inf
    uint64_t count = 0;                // == cumulative.back()
    double sum = 0.0;
  };
  // Reads without stopping writers: each bucket is exact, the set is a near-instant view; the
  // count is derived from the buckets so that count == the +Inf bucket always holds.
  Snapshot snapshot() const;
  const std::vector<double>& bounds() const noexcept { return bounds_; }

 private:
  const std::vector<double> bounds_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // bounds_.size() + 1, not cumulative
  std::atomic<double> sum_{0.0};
};

// Bucket helpers: start, start*factor, … (count bounds); start, start+width, … (count bounds).
std::vector<double> exponentialBuckets(double start, double factor, int count);
std::vector<double> linearBuckets(double start, double width, int count);

class MetricsRegistry;

// Owns a callback gauge series; destroying it removes the series (so the callback can never
// run after what it samples is gone). Move-only.
class GaugeCallbackRegistration {
 public:
  GaugeCallbackRegistration() = default;
  GaugeCallbackRegistration(GaugeCallbackRegistration&& other) noexcept;
  GaugeCallbackRegistration& operator=(GaugeCallbackRegistration&& other) noexcept;
  GaugeCallbackRegistration(const GaugeCallbackRegistration&) = delete;
  GaugeCallbackRegistration& operator=(const GaugeCallbackRegistration&) = delete;
  ~GaugeCallbackRegistration();
  void reset();

 private:
  friend class MetricsRegistry;
  GaugeCallbackRegistration(MetricsRegistry* registry, std::string name, Labels labels,
                            uint64_t generation)
      : registry_(registry),
        name_(std::move(name)),
        labels_(std::move(labels)),
        generation_(generation) {}
  MetricsRegistry* registry_ = nullptr;
  std::string name_;
  Labels labels_;  // sorted
  uint64_t generation_ = 0;
};

class MetricsRegistry {
 public:
  MetricsRegistry();
  ~MetricsRegistry();
  MetricsRegistry(const MetricsRegistry&) = delete;
  MetricsRegistry& operator=(const MetricsRegistry&) = delete;

  Counter& counter(std::string_view name, std::string_view help, Labels labels = {});
  Gauge& gauge(std::string_view name, std::string_view help, Labels labels = {});
  // All series of one histogram family share `bounds`.
  Histogram& histogram(std::string_view name, std::string_view help, std::vector<double> bounds,
                       Labels labels = {});
  // A gauge whose value is `sample()`, called on the rendering thread while the registry lock
  // is held: it must be thread-safe, quick, and must not call back into this registry.
  // Registering the same series again replaces the callback (and the old registration then
  // removes nothing).
  [[nodiscard]] GaugeCallbackRegistration gaugeCallback(std::string_view name,
                                                        std::string_view help, Labels labels,
                                                        std::function<double()> sample);

  // Prometheus text exposition format 0.0.4; families sorted by name, series by labels.
  std::string renderPrometheus() const;
  static constexpr std::string_view kContentType = "text/plain; version=0.0.4; charset=utf-8";

 private:
  friend class GaugeCallbackRegistration;
  enum class Type { Counter, Gauge, Histogram };
  struct Family;
  struct Series;
  // Finds or creates the series (labels are sorted in place); called with mu_ held.
  Series& seriesLocked(std::string_view name, std::string_view help, Type type, Labels& labels,
                       const std::vector<double>* bounds);
  void removeCallback(const std::string& name, const Labels& labels, uint64_t generation);

  mutable std::mutex mu_;
  std::map<std::string, std::unique_ptr<Family>, std::less<>> families_;
  uint64_t nextGeneration_ = 1;
};

// The names and buckets SPEC §7 promises, so every part registers them the same way.
namespace metric {
inline constexpr std::string_view kRequestsTotal = "idemproxy_requests_total";
inline constexpr std::string_view kRequestsTotalHelp =
    "Requests handled, by route and outcome (forwarded, replayed, conflict, mismatch, invalid, "
    "passthrough, released, error).";
inline constexpr std::string_view kUpstreamLatency = "idemproxy_upstream_latency_seconds";
inline constexpr std::string_view kUpstreamLatencyHelp =
    "Time from sending a request upstream to the end of the exchange (answer or failure).";
inline constexpr std::string_view kStoreCommitLatency = "idemproxy_store_commit_latency_seconds";
inline constexpr std::string_view kStoreCommitLatencyHelp =
    "Duration of one store write transaction, commit (and fsync) included.";
inline constexpr std::string_view kStoreCommitBatch = "idemproxy_store_commit_batch_size";
inline constexpr std::string_view kStoreCommitBatchHelp =
    "Write operations committed together in one store transaction.";
inline constexpr std::string_view kStoreOperation = "idemproxy_store_operation_seconds";
inline constexpr std::string_view kStoreOperationHelp =
    "Duration of one store operation (reserve, record, release, forget, sweep) by backend, from "
    "the call to its completion: queueing, commit or round trip, failures included.";
inline constexpr std::string_view kStoreErrors = "idemproxy_store_errors_total";
inline constexpr std::string_view kStoreErrorsHelp =
    "Store operations that failed, by backend, operation and error (full, io, closed).";
inline constexpr std::string_view kRecordsHeld = "idemproxy_store_records";
inline constexpr std::string_view kRecordsHeldHelp = "Records held in the store.";
inline constexpr std::string_view kStoreBytes = "idemproxy_store_bytes_used";
inline constexpr std::string_view kStoreBytesHelp =
    "Bytes of the store's map used so far (high-water mark: freed pages are reused, not "
    "returned).";

inline constexpr std::string_view kWaitWakeups = "idemproxy_wait_wakeups_total";
inline constexpr std::string_view kWaitWakeupsHelp =
    "Times a request waiting for a key's owner looked at the store again, by why: owner (the "
    "owner in this process finished), notify (the store reported that an owner elsewhere "
    "settled the key), poll (the fallback poll interval passed).";
inline constexpr std::string_view kReconcileTotal = "idemproxy_reconcile_total";
inline constexpr std::string_view kReconcileTotalHelp =
    "Reconcile lookups of uncertain outcomes, by route and result (found, not_found, other, "
    "failed, skipped).";

inline constexpr std::string_view kFrontRefusals = "idemproxy_front_refusals_total";
inline constexpr std::string_view kFrontRefusalsHelp =
    "Requests the HTTP server answered or dropped itself before routing, by reason: malformed "
    "(400), too_large (413), timeout (408: not received within client_timeout), answer_timeout "
    "(the client did not take its answer in time; closed).";
inline constexpr std::string_view kFrontConnections = "idemproxy_front_connections";
inline constexpr std::string_view kFrontConnectionsHelp =
    "Client connections open on the data port (idle, reading, waiting or writing).";

// 0.5ms … 60s: payment backends are slow; a few buckets below 1ms show local hops.
std::vector<double> latencyBuckets();
// 50µs … ~13s: an fsync on a good disk is well under 1ms, on a bad one tens of ms.
std::vector<double> commitLatencyBuckets();
// 1, 2, 4, … 1024 operations per commit.
std::vector<double> batchSizeBuckets();
}  // namespace metric

}  // namespace idem
