#pragma once
// An immutable value shared between threads and replaced whole (a config-derived table read per
// request, swapped on reload). A reader takes a reference under a short lock; the lock is held
// for a pointer copy only, never while the value is used.
//
// Why not std::atomic<std::shared_ptr>: libstdc++ 12 implements it with a lock bit inside the
// control-block pointer that ThreadSanitizer cannot see, so every reload racing a request is
// reported as a data race. A plain mutex costs the same uncontended and is understood by every
// tool.
#include <memory>
#include <mutex>
#include <utility>

namespace idem {

template <typename T>
class Snapshot {
 public:
  Snapshot() = default;
  explicit Snapshot(std::shared_ptr<const T> value) : value_(std::move(value)) {}
  Snapshot(const Snapshot&) = delete;
  Snapshot& operator=(const Snapshot&) = delete;

  std::shared_ptr<const T> load() const {
    std::lock_guard lock(mutex_);
    return value_;
  }

  void store(std::shared_ptr<const T> value) {
    std::shared_ptr<const T> old;
    {
      std::lock_guard lock(mutex_);
      old = std::exchange(value_, std::move(value));
    }
    // `old` is released here, outside the lock: its destructor may be arbitrarily expensive.
  }

 private:
  mutable std::mutex mutex_;
  std::shared_ptr<const T> value_;
};

}  // namespace idem
