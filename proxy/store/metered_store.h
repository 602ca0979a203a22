#pragma once
// A Store that times every asynchronous operation of the store it wraps, from the call to its
// completion (queueing, the round trip or commit, and any reconnect included), and reports it
// with the operation's error. Backend-neutral: the daemon wraps whichever store it opened and
// feeds the reports to the metrics (idemproxy_store_operation_seconds,
// idemproxy_store_errors_total). Everything else is passed through unchanged.
#include <chrono>
#include <functional>

#include "store/store.h"

namespace idem {

enum class StoreOp { Reserve, Record, Release, Forget, Sweep };
inline constexpr StoreOp kAllStoreOps[] = {StoreOp::Reserve, StoreOp::Record, StoreOp::Release,
                                           StoreOp::Forget, StoreOp::Sweep};
const char* toString(StoreOp op);  // reserve, record, release, forget, sweep
// The label value of an error: none, full, io, closed.
const char* errorLabel(StoreError e);

// Called on the store's completion thread, before the caller's completion; must be cheap.
using OperationObserver =
    std::function<void(StoreOp op, std::chrono::microseconds took, StoreError error)>;

class MeteredStore final : public Store {
 public:
  MeteredStore(Store& inner, OperationObserver observer)
      : inner_(inner), observer_(std::move(observer)) {}

  void reserve(ReserveRequest req, std::function<void(ReserveResult)> done) override;
  void record(RecordRequest req, std::function<void(RecordResult)> done) override;
  void release(RecordId id, std::string owner, std::function<void(WriteResult)> done) override;
  void forget(RecordId id, std::function<void(WriteResult)> done) override;
  void sweep(size_t limit, std::function<void(WriteResult)> done) override;

  std::string unavailableReason() override { return inner_.unavailableReason(); }
  bool localReads() const override { return inner_.localReads(); }
  bool ready() const override { return inner_.ready(); }
  bool notifies() const override { return inner_.notifies(); }
  uint64_t watch(const RecordId& id, uint64_t since, std::function<void()> wake) override {
    return inner_.watch(id, since, std::move(wake));
  }
  void unwatch(const RecordId& id, uint64_t handle) override { inner_.unwatch(id, handle); }
  std::optional<Record> lookup(const RecordId& id) override { return inner_.lookup(id); }
  bool visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) override {
    return inner_.visit(id, fn);
  }
  std::vector<std::pair<RecordId, Record>> list() override { return inner_.list(); }
  CheckedList listChecked() override { return inner_.listChecked(); }
  StoreStats stats() override { return inner_.stats(); }
  void flush() override { inner_.flush(); }
  void setCommitObserver(CommitObserver observer) override {
    inner_.setCommitObserver(std::move(observer));
  }

 private:
  // Wraps `done` so that the observer hears of the operation first.
  template <typename Result>
  std::function<void(Result)> timed(StoreOp op, std::function<void(Result)> done);

  Store& inner_;
  OperationObserver observer_;
};

}  // namespace idem
