#include "request/latency.h"

#include <algorithm>
#include <cmath>

namespace idem {

void LatencyEstimates::observe(std::string_view route, std::chrono::microseconds duration) {
  const double d = static_cast<double>(duration.count()) / 1000.0;
  std::lock_guard lock(mu_);
  auto it = routes_.find(route);
  if (it == routes_.end()) {
    // RFC 6298 §2.2: the first measurement sets srtt = d, rttvar = d/2.
    routes_.emplace(std::string(route), Estimate{d, d / 2});
    return;
  }
  Estimate& e = it->second;
  e.rttvar_ms = 0.75 * e.rttvar_ms + 0.25 * std::fabs(e.srtt_ms - d);
  e.srtt_ms = 0.875 * e.srtt_ms + 0.125 * d;
}

std::optional<int64_t> LatencyEstimates::expectedMs(std::string_view route) const {
  std::lock_guard lock(mu_);
  auto it = routes_.find(route);
  if (it == routes_.end()) return std::nullopt;
  return static_cast<int64_t>(std::ceil(it->second.srtt_ms + 4 * it->second.rttvar_ms));
}

int retryAfterSeconds(std::optional<int64_t> expectedMs, int64_t elapsedMs, int64_t leaseLeftMs) {
  const int64_t leaseS = std::max<int64_t>(1, (leaseLeftMs + 999) / 1000);
  if (!expectedMs) return static_cast<int>(std::min<int64_t>(leaseS, 1'000'000));
  const int64_t left = *expectedMs - std::max<int64_t>(0, elapsedMs);
  const int64_t s = std::max<int64_t>(1, (left + 999) / 1000);
  return static_cast<int>(std::min(s, leaseS));
}

}  // namespace idem
