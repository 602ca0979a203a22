#include "store/metered_store.h"

#include <utility>

namespace idem {

const char* toString(StoreOp op) {
  switch (op) {
    case StoreOp::Reserve:
      return "reserve";
    case StoreOp::Record:
      return "record";
    case StoreOp::Release:
      return "release";
    case StoreOp::Forget:
      return "forget";
    case StoreOp::Sweep:
      return "sweep";
  }
  return "?";
}

const char* errorLabel(StoreError e) {
  switch (e) {
    case StoreError::None:
      return "none";
    case StoreError::Full:
      return "full";
    case StoreError::Io:
      return "io";
    case StoreError::Closed:
      return "closed";
  }
  return "?";
}

template <typename Result>
std::function<void(Result)> MeteredStore::timed(StoreOp op, std::function<void(Result)> done) {
  return [this, op, start = std::chrono::steady_clock::now(), done = std::move(done)](Result r) {
    observer_(op,
              std::chrono::duration_cast<std::chrono::microseconds>(
                  std::chrono::steady_clock::now() - start),
              r.error);
    if (done) done(std::move(r));
  };
}

void MeteredStore::reserve(ReserveRequest req, std::function<void(ReserveResult)> done) {
  inner_.reserve(std::move(req), timed(StoreOp::Reserve, std::move(done)));
}

void MeteredStore::record(RecordRequest req, std::function<void(RecordResult)> done) {
  inner_.record(std::move(req), timed(StoreOp::Record, std::move(done)));
}

void MeteredStore::release(RecordId id, std::string owner, std::function<void(WriteResult)> done) {
  inner_.release(id, std::move(owner), timed(StoreOp::Release, std::move(done)));
}

void MeteredStore::forget(RecordId id, std::function<void(WriteResult)> done) {
  inner_.forget(id, timed(StoreOp::Forget, std::move(done)));
}

void MeteredStore::sweep(size_t limit, std::function<void(WriteResult)> done) {
  inner_.sweep(limit, timed(StoreOp::Sweep, std::move(done)));
}

}  // namespace idem
