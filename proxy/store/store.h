#pragma once
// The backend-neutral store interface (SPEC §1 steps 2–7).
//
// Writes are asynchronous: they are queued to the store's writer, which commits them in groups,
// and each completion callback runs on the writer thread once the commit is durable (under
// durability full). Callers that live on an event loop post the completion back to their loop;
// the store itself knows nothing of event loops. Reads are synchronous and safe from any thread.
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "base/function_ref.h"
#include "store/record.h"

namespace idem {

enum class StoreError {
  None,
  Full,    // the map is full: nothing was written (→ 503 store-unavailable)
  Io,      // the backend failed (disk, corruption): nothing was written
  Closed,  // the store is shutting down
};
const char* toString(StoreError e);

struct ReserveRequest {
  RecordId id{};
  Fingerprint fingerprint{};
  std::string route;
  std::string key;
  std::vector<std::string> scope;
  std::string owner;  // reservation token of the caller
  int64_t ttl_ms = 0;
  int64_t lease_ms = 0;
  // What to do with an in-flight record whose lease has passed (its owner died):
  bool retry_abandoned = false;  // true: take the reservation over and forward again
  // false: record this answer as the key's outcome (flags kFlagProxyError|kFlagOutcomeUnknown)
  HttpAnswer abandoned_answer;
};

enum class ReserveStatus {
  Won,        // the caller holds a fresh in-flight reservation and must forward
  Completed,  // same fingerprint, an outcome is recorded: replay `record`
  InFlight,   // same fingerprint, another owner holds a live lease: wait or reject
  Mismatch,   // the key is held (in flight or completed) with another fingerprint → 422
};

struct ReserveResult {
  StoreError error = StoreError::None;  // when not None, status is meaningless
  ReserveStatus status = ReserveStatus::Won;
  Record record;  // the record as it stands after the operation
  // A store with wake-ups (Store::notifies): its wake-up sequence when the reserve was sent, for
  // Store::watch, so that an owner settling the key between this reserve and the watch still
  // wakes the watcher.
  uint64_t wake_seq = 0;
};

struct RecordRequest {
  RecordId id{};
  std::string owner;  // must be the reservation's owner
  HttpAnswer answer;
  uint32_t flags = kFlagNone;
};

enum class RecordStatus {
  Recorded,      // the answer is now the key's outcome
  AlreadyFinal,  // another outcome stands (record holds it); the caller's answer was not written
  Missing,       // no record (forgotten or swept meanwhile); nothing written
};

struct RecordResult {
  StoreError error = StoreError::None;
  RecordStatus status = RecordStatus::Recorded;
  Record record;  // the record that stands
};

struct WriteResult {
  StoreError error = StoreError::None;
  bool changed = false;  // release/forget: a record was removed; sweep: see `removed`
  size_t removed = 0;    // sweep: records deleted
};

struct StoreStats {
  uint64_t records = 0;        // entries in the main table
  uint64_t bytes_used = 0;     // pages in use × page size
  uint64_t map_size = 0;       // configured limit
  uint64_t commits = 0;        // write transactions committed by this process
  uint64_t operations = 0;     // write operations applied by this process
  uint64_t decode_errors = 0;  // stored values that failed to decode (read as absent)
};

// Called after every commit with the commit's duration and how many operations it carried.
using CommitObserver = std::function<void(std::chrono::microseconds, size_t ops)>;

// Every record with its id, or what stopped the walk: `problems` names each record that does not
// decode and any error of the walk (it stops there).
struct CheckedList {
  std::vector<std::pair<RecordId, Record>> records;
  std::vector<std::string> problems;
};

class Store {
 public:
  virtual ~Store() = default;

  // Atomically: absent or expired → new in-flight record (Won); otherwise report what stands.
  // An abandoned lease is handled per ReserveRequest::retry_abandoned in the same transaction.
  virtual void reserve(ReserveRequest req, std::function<void(ReserveResult)> done) = 0;
  // Write the outcome of a reservation (once; unknown → known is the one allowed overwrite).
  virtual void record(RecordRequest req, std::function<void(RecordResult)> done) = 0;
  // Delete an in-flight record held by `owner` (a released status, or nothing was sent).
  virtual void release(RecordId id, std::string owner, std::function<void(WriteResult)> done) = 0;
  // Delete a record whatever its state (operator action).
  virtual void forget(RecordId id, std::function<void(WriteResult)> done) = 0;
  // Delete up to `limit` expired records, oldest first, using the expiry index.
  virtual void sweep(size_t limit, std::function<void(WriteResult)> done) = 0;

  // Why the store cannot take writes right now ("" when it can): full, failing, its files gone.
  // /readyz reports not ready while this is not empty. Cheap; safe from any thread.
  virtual std::string unavailableReason() { return {}; }

  // True when lookup() and visit() are local reads an event loop may call (LMDB's mapped file).
  // A network store returns false: the request core then never reads it directly, and reserve()
  // doubles as the read (Completed carries the record to replay; InFlight the lease to wait on).
  // lookup(), visit() and list() may then block: they are for the command line.
  virtual bool localReads() const { return true; }
  // False while the store cannot serve (a network store with no connection): /readyz.
  virtual bool ready() const { return true; }

  // Wake-ups from owners in other processes, for a shared store that can push them (PostgreSQL
  // LISTEN/NOTIFY). True while it can (its listening connection is up); waiters then poll the
  // store only as a fallback, slowly.
  virtual bool notifies() const { return false; }
  // Calls `wake` once, on the store's thread (it must post to the caller's loop), when the
  // record `id`, in flight at the reserve whose result carried `since` (ReserveResult::wake_seq),
  // may have settled since: recorded or deleted by its owner, or wake-ups were interrupted. That
  // may be at once, on the calling thread. Returns a handle for unwatch().
  virtual uint64_t watch(const RecordId& /*id*/, uint64_t /*since*/, std::function<void()> wake) {
    wake();
    return 0;
  }
  // Removes a watch that has not fired (no-op when it has).
  virtual void unwatch(const RecordId& /*id*/, uint64_t /*handle*/) {}

  // Read the record; an expired record reads as absent. Safe from any thread; never blocks on
  // the writer.
  virtual std::optional<Record> lookup(const RecordId& id) = 0;
  // Zero-copy read: when the record exists and has not expired, calls `fn` with a view of it
  // and returns true; otherwise returns false without calling `fn`. The view points into the
  // store's mapped memory and is valid only until `fn` returns (the read transaction ends
  // then); `fn` must not call the store. Safe from any thread; never blocks on the writer.
  virtual bool visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) = 0;
  // Every record (expired ones included, so an operator sees them), in id order.
  virtual std::vector<std::pair<RecordId, Record>> list() = 0;
  // list() for the command line, saying what it could not read instead of skipping it.
  virtual CheckedList listChecked() { return {list(), {}}; }
  virtual StoreStats stats() = 0;

  // Block until everything queued so far is committed (used at shutdown and by tests). Under
  // relaxed durability it also syncs to disk. Called from a completion callback (the writer
  // thread) it returns at once: waiting there could never end.
  virtual void flush() = 0;
  virtual void setCommitObserver(CommitObserver observer) = 0;
};

// Synchronous helpers over the asynchronous interface, for the CLI and tests.
[[nodiscard]] ReserveResult reserveSync(Store& store, ReserveRequest req);
[[nodiscard]] RecordResult recordSync(Store& store, RecordRequest req);
[[nodiscard]] WriteResult releaseSync(Store& store, const RecordId& id, std::string owner);
[[nodiscard]] WriteResult forgetSync(Store& store, const RecordId& id);
[[nodiscard]] WriteResult sweepSync(Store& store, size_t limit);

}  // namespace idem
