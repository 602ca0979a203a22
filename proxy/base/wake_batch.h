#pragma once
// Wake-ups of another thread sent once per event-loop batch instead of once per queued item.
//
// An event-loop thread that installs a WakeBatch (Worker does) runs many callbacks per
// iteration, and each may queue work for another thread (a store's writer). Waking that thread
// at the first item lets it preempt the loop on a shared core and take one item, then sleep on
// the disk while the rest of the batch queues behind it. With a WakeBatch, deferWake() keeps one
// wake per target and the loop sends them after the callbacks already due in this iteration.
#include <functional>
#include <utility>
#include <vector>

namespace idem {

struct WakeBatch {
  using Fn = void (*)(void*);
  std::vector<std::pair<Fn, void*>> wakes;
  std::function<void()> arm;  // the loop runs run() after the callbacks due now
  void run() {
    std::vector<std::pair<Fn, void*>> due;
    due.swap(wakes);
    for (const auto& [fn, target] : due) fn(target);
  }
};

// The calling thread's batch (null on threads without one).
inline thread_local WakeBatch* tl_wake_batch = nullptr;

// Queues fn(target) for the end of the calling loop's batch; false if this thread has no batch
// (then the caller wakes at once). The item the wake is for must already be queued, and the
// caller must not wait for it before its callback returns (a blocking call wakes at once).
inline bool deferWake(WakeBatch::Fn fn, void* target) {
  WakeBatch* b = tl_wake_batch;
  if (b == nullptr) return false;
  for (const auto& w : b->wakes) {
    if (w.first == fn && w.second == target) return true;
  }
  if (b->wakes.empty()) b->arm();
  b->wakes.emplace_back(fn, target);
  return true;
}

}  // namespace idem
