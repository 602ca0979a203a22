#pragma once
// The PostgreSQL store: one key space for proxies on many hosts (SPEC §5, §7).
//
// One I/O thread per store drives a small pool of non-blocking libpq connections with poll():
// every operation is one statement (a function call or a DELETE, atomic on the server, the
// owner checked in the same statement) sent with PQsendQueryParams, so one round trip each.
// Completions run on that thread, like the LMDB writer's. Every operation is bounded by
// `timeout`: past it, or when no connection can be made, it completes with StoreError::Io (the
// request gets 503 store-unavailable and is not forwarded). A reserve whose answer was lost may
// still have happened on the server; its owner is released once a connection is back.
#include <chrono>
#include <memory>
#include <string>

#include "store/store.h"

namespace idem {

struct PostgresOptions {
  std::string conninfo;  // any libpq connection string or URI
  unsigned connections = 4;
  std::chrono::milliseconds timeout{2'000};      // one operation, queueing included; also connects
  std::chrono::milliseconds max_backoff{1'000};  // reconnect back-off cap
  // When the database cannot be reached at start: false → fail (the command line); true → open
  // anyway, not ready (every operation fails with Io), and keep trying in the background with
  // back-off; the schema is created or checked once it answers (the daemon).
  bool start_unreachable = false;
};

class PostgresStore;
// Connects, creates the schema if absent (refusing an unknown version) and starts the I/O
// thread. Blocking (start-up and the command line). On failure returns nullptr with `error`
// (which never contains the password). With `start_unreachable`, a database that cannot be
// reached is not a failure: `error` says why and the store starts not ready (see above); a
// schema the database refuses still is.
[[nodiscard]] std::unique_ptr<PostgresStore> openPostgresStore(const PostgresOptions& options,
                                                               std::string& error);

class PostgresStore : public Store {
 public:
  ~PostgresStore() override;
  void reserve(ReserveRequest req, std::function<void(ReserveResult)> done) override;
  void record(RecordRequest req, std::function<void(RecordResult)> done) override;
  void release(RecordId id, std::string owner, std::function<void(WriteResult)> done) override;
  void forget(RecordId id, std::function<void(WriteResult)> done) override;
  void sweep(size_t limit, std::function<void(WriteResult)> done) override;
  bool localReads() const override { return false; }
  bool ready() const override;
  // LISTEN/NOTIFY on one connection of its own (postgres_listen.cpp).
  bool notifies() const override;
  uint64_t watch(const RecordId& id, uint64_t since, std::function<void()> wake) override;
  void unwatch(const RecordId& id, uint64_t handle) override;
  // Blocking reads on a connection of their own (the command line; never an event loop).
  std::optional<Record> lookup(const RecordId& id) override;
  bool visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) override;
  std::vector<std::pair<RecordId, Record>> list() override;
  // Never blocks: counters, plus the record count and table size as of the last sweep.
  StoreStats stats() override;
  void flush() override;
  void setCommitObserver(CommitObserver observer) override;

  // Owners of reserves whose answer was lost, not yet released (tests, metrics).
  size_t pendingReleases() const;
  // Notifications heard for a key (tests, metrics).
  uint64_t notificationsHeard() const;

  struct Impl;
  explicit PostgresStore(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace idem
