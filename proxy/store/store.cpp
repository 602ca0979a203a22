#include "store/store.h"

#include <future>
#include <utility>

#include "base/wake_batch.h"

namespace idem {

const char* toString(StoreError e) {
  switch (e) {
    case StoreError::None:
      return "none";
    case StoreError::Full:
      return "store full";
    case StoreError::Io:
      return "store i/o error";
    case StoreError::Closed:
      return "store closed";
  }
  return "?";
}

namespace {

// Runs one asynchronous store call and waits for its completion. Every Store implementation
// runs each completion exactly once (with StoreError::Closed at shutdown), so this never hangs.
// Must not be called from a completion callback (it would wait on the thread that completes).
// On a loop thread the store is woken at once, not after the callback (base/wake_batch.h): the
// callback is what waits.
template <typename Result, typename Call>
Result waitFor(Call&& call) {
  std::promise<Result> promise;
  auto future = promise.get_future();
  WakeBatch* const batch = std::exchange(tl_wake_batch, nullptr);
  call([&promise](Result r) { promise.set_value(std::move(r)); });
  tl_wake_batch = batch;
  return future.get();
}

}  // namespace

ReserveResult reserveSync(Store& store, ReserveRequest req) {
  return waitFor<ReserveResult>([&](auto done) { store.reserve(std::move(req), std::move(done)); });
}

RecordResult recordSync(Store& store, RecordRequest req) {
  return waitFor<RecordResult>([&](auto done) { store.record(std::move(req), std::move(done)); });
}

WriteResult releaseSync(Store& store, const RecordId& id, std::string owner) {
  return waitFor<WriteResult>(
      [&](auto done) { store.release(id, std::move(owner), std::move(done)); });
}

WriteResult forgetSync(Store& store, const RecordId& id) {
  return waitFor<WriteResult>([&](auto done) { store.forget(id, std::move(done)); });
}

WriteResult sweepSync(Store& store, size_t limit) {
  return waitFor<WriteResult>([&](auto done) { store.sweep(limit, std::move(done)); });
}

ClaimResult claimReconcileSync(Store& store, ClaimRequest req) {
  return waitFor<ClaimResult>(
      [&](auto done) { store.claimReconcile(std::move(req), std::move(done)); });
}

SettleResult settleReconcileSync(Store& store, SettleRequest req) {
  return waitFor<SettleResult>(
      [&](auto done) { store.settleReconcile(std::move(req), std::move(done)); });
}

}  // namespace idem
