#pragma once
// In-process waiters for keys whose reservation this process holds (SPEC §1.4 concurrent: wait).
// A request that finds a key in flight parks here; when the owner's outcome lands (or the key is
// released) every parked waiter is woken on its own worker. No polling within one process.
#include <cstdint>
#include <functional>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "store/record.h"

namespace idem {

class WaiterRegistry {
 public:
  // `wake` is called from the completing thread; it must post to the waiter's own loop.
  using Wake = std::function<void()>;

  // The owner (this process) took the reservation.
  void ownerStarted(const RecordId& id);
  // The owner is done with the key (recorded or released): wake everyone parked on it.
  void ownerFinished(const RecordId& id);

  // Park on `id`. Returns false, without parking, when this process does not hold the key in
  // flight (then the caller must look at the store again: the outcome may already be there).
  bool park(const RecordId& id, uint64_t ticket, Wake wake);
  // Remove a parked waiter (its wait timed out). No-op if it was already woken.
  void cancel(const RecordId& id, uint64_t ticket);

  size_t parked() const;
  // Shutdown: forget every waiter without waking it.
  void clear();

 private:
  struct Waiter {
    uint64_t ticket;
    Wake wake;
  };
  mutable std::mutex mu_;
  std::unordered_map<RecordId, unsigned, DigestHash> owned_;  // id → reservations held here
  std::unordered_map<RecordId, std::vector<Waiter>, DigestHash> waiters_;
  size_t parked_ = 0;
};

}  // namespace idem
