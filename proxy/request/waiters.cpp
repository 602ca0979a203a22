#include "request/waiters.h"

namespace idem {

void WaiterRegistry::ownerStarted(const RecordId& id) {
  std::lock_guard lock(mu_);
  ++owned_[id];
}

void WaiterRegistry::ownerFinished(const RecordId& id) {
  std::vector<Waiter> woken;
  {
    std::lock_guard lock(mu_);
    auto it = owned_.find(id);
    if (it != owned_.end() && --it->second == 0) owned_.erase(it);
    auto w = waiters_.find(id);
    if (w != waiters_.end()) {
      woken = std::move(w->second);
      waiters_.erase(w);
      parked_ -= woken.size();
    }
  }
  for (auto& w : woken) w.wake();
}

bool WaiterRegistry::park(const RecordId& id, uint64_t ticket, Wake wake) {
  std::lock_guard lock(mu_);
  if (owned_.find(id) == owned_.end()) return false;
  waiters_[id].push_back({ticket, std::move(wake)});
  ++parked_;
  return true;
}

void WaiterRegistry::cancel(const RecordId& id, uint64_t ticket) {
  std::lock_guard lock(mu_);
  auto w = waiters_.find(id);
  if (w == waiters_.end()) return;
  auto& list = w->second;
  for (auto it = list.begin(); it != list.end(); ++it) {
    if (it->ticket == ticket) {
      list.erase(it);
      --parked_;
      break;
    }
  }
  if (list.empty()) waiters_.erase(w);
}

void WaiterRegistry::clear() {
  decltype(waiters_) dropped;
  {
    std::lock_guard lock(mu_);
    dropped.swap(waiters_);
    owned_.clear();
    parked_ = 0;
  }
}

size_t WaiterRegistry::parked() const {
  std::lock_guard lock(mu_);
  return parked_;
}

}  // namespace idem
