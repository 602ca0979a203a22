#include "request/context.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <random>

namespace idem {

namespace {

std::string bootId() {
  std::ifstream f("/proc/sys/kernel/random/boot_id");
  std::string id;
  std::getline(f, id);
  if (id.size() > 8) id.resize(8);
  return id.empty() ? "noboot" : id;
}

}  // namespace

RequestShared::RequestShared(Store& store, ProxyObserver& observer, const Clock& clock)
    : store_(store), observer_(observer), clock_(clock) {
  // boot id + pid + a random nonce: containers on one host share the boot id and often the
  // pid (1), and a restarted process must not mistake its predecessor's reservations for its own.
  std::random_device rd;
  char nonce[9];
  std::snprintf(nonce, sizeof nonce, "%08x", rd());
  owner_prefix_ = bootId() + ":" + std::to_string(getpid()) + ":" + nonce + ":";
}

std::string RequestShared::newOwnerToken() {
  return owner_prefix_ + std::to_string(owner_seq_.fetch_add(1, std::memory_order_relaxed));
}

bool RequestShared::ownsToken(std::string_view owner) const {
  return owner.substr(0, owner_prefix_.size()) == owner_prefix_;
}

}  // namespace idem
