#include "ops/telemetry.h"

#include <iterator>

#include "base/digest.h"
#include "base/log.h"

namespace idem {

namespace {
constexpr Outcome kAllOutcomes[] = {Outcome::Forwarded, Outcome::Replayed, Outcome::Conflict,
                                    Outcome::Mismatch,  Outcome::Invalid,  Outcome::Passthrough,
                                    Outcome::Released,  Outcome::Error};
constexpr FrontRefusal kAllFrontRefusals[] = {FrontRefusal::Malformed, FrontRefusal::TooLarge,
                                              FrontRefusal::Timeout, FrontRefusal::AnswerTimeout};
}  // namespace

Telemetry::Telemetry(MetricsRegistry& metrics)
    : metrics_(metrics),
      woken_owner_(
          metrics.counter(metric::kWaitWakeups, metric::kWaitWakeupsHelp, {{"by", "owner"}})),
      woken_notify_(
          metrics.counter(metric::kWaitWakeups, metric::kWaitWakeupsHelp, {{"by", "notify"}})),
      woken_poll_(
          metrics.counter(metric::kWaitWakeups, metric::kWaitWakeupsHelp, {{"by", "poll"}})),
      front_connections_(metrics.gauge(metric::kFrontConnections, metric::kFrontConnectionsHelp)) {
  static_assert(std::size(kAllFrontRefusals) == std::tuple_size_v<decltype(refusals_)>);
  for (FrontRefusal r : kAllFrontRefusals) {
    refusals_[static_cast<size_t>(r)] = &metrics.counter(
        metric::kFrontRefusals, metric::kFrontRefusalsHelp, {{"reason", toString(r)}});
  }
  table_.store(std::make_shared<const Table>());
}

void Telemetry::frontRefused(FrontRefusal why) {
  refusals_[static_cast<size_t>(why)]->inc();
}

void Telemetry::frontConnections(int delta) {
  front_connections_.add(delta);
}

std::array<Counter*, Telemetry::kOutcomes> Telemetry::routeCounters(const std::string& route) {
  std::array<Counter*, kOutcomes> out{};
  for (Outcome o : kAllOutcomes) {
    out[static_cast<size_t>(o)] =
        &metrics_.counter(metric::kRequestsTotal, metric::kRequestsTotalHelp,
                          {{"route", route}, {"outcome", toString(o)}});
  }
  return out;
}

void Telemetry::install(const Config& config) {
  auto t = std::make_shared<Table>();
  t->requests.emplace("", routeCounters(""));  // requests no route matched
  for (const auto& r : config.routes) t->requests.emplace(r.name, routeCounters(r.name));
  for (const auto& [name, u] : config.upstreams) {
    t->upstream_latency.emplace(
        name, &metrics_.histogram(metric::kUpstreamLatency, metric::kUpstreamLatencyHelp,
                                  metric::latencyBuckets(), {{"upstream", name}}));
    t->upstream_failures.emplace(
        name, &metrics_.counter("idemproxy_upstream_failures_total",
                                "Exchanges that ended without a complete upstream answer.",
                                {{"upstream", name}}));
  }
  table_.store(std::move(t));
}

void Telemetry::requestDone(const RequestReport& r) {
  auto t = table_.load();
  auto it = t->requests.find(r.route);
  if (it != t->requests.end()) it->second[static_cast<size_t>(r.outcome)]->inc();
  if (!log::enabled(LogLevel::Info)) return;
  // The access line: formatted into this worker's log buffer and written in batches by the
  // log's own thread (log.h), so a request pays for the formatting only.
  log::FieldView f[8] = {{"route", r.route},
                         {"method", r.method},
                         {"path", r.path},
                         {"status", r.status},
                         {"outcome", toString(r.outcome)},
                         {"duration_ms", r.duration_ms}};
  size_t n = 6;
  char keyHash[16];
  if (!r.key.empty()) {
    keyHashForLog(r.key, keyHash);
    f[n++] = {"key_hash", std::string_view(keyHash, sizeof keyHash)};
  }
  if (!r.detail.empty()) f[n++] = {"detail", r.detail};
  log::deferred(LogLevel::Info, "request", std::span<const log::FieldView>(f, n));
}

void Telemetry::upstreamDone(std::string_view upstream, std::chrono::microseconds latency,
                             bool failed) {
  auto t = table_.load();
  if (auto it = t->upstream_latency.find(upstream); it != t->upstream_latency.end()) {
    it->second->observe(static_cast<double>(latency.count()) / 1e6);
  }
  if (failed) {
    if (auto it = t->upstream_failures.find(upstream); it != t->upstream_failures.end()) {
      it->second->inc();
    }
  }
}

void Telemetry::waitWoken(std::string_view how) {
  if (how == "owner") {
    woken_owner_.inc();
  } else if (how == "notify") {
    woken_notify_.inc();
  } else {
    woken_poll_.inc();
  }
}

void Telemetry::event(std::string_view name, std::string_view route, std::string_view detail) {
  log::warn(name, {{"route", route}, {"detail", detail}});
}

}  // namespace idem

namespace idem {

void Telemetry::reconcileDone(std::string_view route, std::string_view result) {
  metrics_
      .counter(metric::kReconcileTotal, metric::kReconcileTotalHelp,
               {{"route", std::string(route)}, {"result", std::string(result)}})
      .inc();
  log::info("reconcile", {{"route", route}, {"result", result}});
}

}  // namespace idem
