#pragma once
// Injectable time: wall-clock milliseconds for values other processes read (TTL, lease),
// monotonic time for local timers.
#include <atomic>
#include <chrono>
#include <cstdint>

namespace idem {

class Clock {
 public:
  virtual ~Clock() = default;
  // Milliseconds since the Unix epoch.
  virtual int64_t wallMs() const = 0;
};

class SystemClock final : public Clock {
 public:
  int64_t wallMs() const override {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  static const SystemClock& instance() {
    static const SystemClock clock;
    return clock;
  }
};

// For tests: time moves only when told to.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t startMs = 1'700'000'000'000) : now_(startMs) {}
  int64_t wallMs() const override { return now_.load(); }
  void advance(std::chrono::milliseconds d) { now_ += d.count(); }
  void set(int64_t ms) { now_ = ms; }

 private:
  std::atomic<int64_t> now_;
};

}  // namespace idem
