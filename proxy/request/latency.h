#pragma once
// How long a route's upstream exchanges usually take, for a 409's Retry-After (SPEC §1.4).
//
// Per route, a smoothed estimate of the forwarded exchange's duration in the manner of TCP's
// retransmission timer (RFC 6298): srtt ← 7/8·srtt + 1/8·d, rttvar ← 3/4·rttvar + 1/4·|srtt − d|,
// and the exchange is expected to be over by srtt + 4·rttvar. Every exchange that was sent counts
// (answers, timeouts and failures alike; not one that never left). Process-wide, thread-safe.
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

namespace idem {

class LatencyEstimates {
 public:
  void observe(std::string_view route, std::chrono::microseconds duration);
  // srtt + 4·rttvar in milliseconds, or nothing before the route's first exchange.
  std::optional<int64_t> expectedMs(std::string_view route) const;

 private:
  struct Estimate {
    double srtt_ms = 0;
    double rttvar_ms = 0;
  };
  mutable std::mutex mu_;
  std::map<std::string, Estimate, std::less<>> routes_;
};

// The Retry-After of a 409 (whole seconds): what the owner's exchange is expected to take still
// (`expectedMs` minus `elapsedMs`, the time since the owner reserved the key), rounded up; at
// least 1; never more than the lease's remaining time (rounded up), which is also the answer
// when nothing is known yet about the route's upstream.
int retryAfterSeconds(std::optional<int64_t> expectedMs, int64_t elapsedMs, int64_t leaseLeftMs);

}  // namespace idem
