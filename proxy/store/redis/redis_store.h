#pragma once
// The Redis store: one key space for proxies on many hosts (SPEC §5, §7).
//
// One I/O thread per store drives two non-blocking connections with poll(): one for commands
// (pipelined), one subscribed to the wake-up channel. Every operation is one Lua script
// (EVALSHA, EVAL when the server has forgotten it) that classifies and writes in one atomic
// step, the owner checked in the same step, deadlines from the server's TIME, expiry native
// (PEXPIREAT). Completions run on that thread, like the LMDB writer's. Every operation is
// bounded by `timeout`: past it, or when no connection can be made, it completes with
// StoreError::Io (out of memory: StoreError::Full) and the request gets 503 store-unavailable
// without being forwarded. A reserve whose answer was lost may still have happened on the
// server; its owner is released once a connection is back.
#include <chrono>
#include <memory>
#include <string>

#include "store/store.h"

namespace idem {

struct RedisOptions {
  std::string url;  // redis://… or unix://… (config/redis_url.h)
  std::string key_prefix = "idemproxy:";
  std::chrono::milliseconds timeout{1'000};      // one operation, queueing included; also connects
  unsigned min_replicas = 0;                     // WAIT after every write
  std::chrono::milliseconds max_backoff{1'000};  // reconnect back-off cap
  bool check_settings = true;  // log a warning for server settings that can lose records
};

struct RedisStoreConfig;
// The options of a store.redis block.
RedisOptions redisOptions(const RedisStoreConfig& config);

class RedisStore;
// Connects, checks the server (Redis 7 or later; its durability settings where CONFIG GET is
// allowed), loads the scripts and starts the I/O thread. Blocking (start-up and the command
// line). On failure returns nullptr with `error` (which never contains the password).
[[nodiscard]] std::unique_ptr<RedisStore> openRedisStore(const RedisOptions& options,
                                                         std::string& error);

class RedisStore : public Store {
 public:
  ~RedisStore() override;
  void reserve(ReserveRequest req, std::function<void(ReserveResult)> done) override;
  void record(RecordRequest req, std::function<void(RecordResult)> done) override;
  void release(RecordId id, std::string owner, std::function<void(WriteResult)> done) override;
  void forget(RecordId id, std::function<void(WriteResult)> done) override;
  // Each one script on the record (claim_reconcile, settle_reconcile): atomic on the server.
  void claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) override;
  void settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) override;
  // Expiry is Redis's own (PEXPIREAT): nothing to sweep. Completes at once.
  void sweep(size_t limit, std::function<void(WriteResult)> done) override;
  std::string unavailableReason() override;
  bool localReads() const override { return false; }
  bool ready() const override;
  // While the wake-up subscription is established.
  bool notifies() const override;
  uint64_t watch(const RecordId& id, uint64_t since, std::function<void()> wake) override;
  void unwatch(const RecordId& id, uint64_t handle) override;
  // Blocking reads on a connection of their own (the command line; never an event loop).
  std::optional<Record> lookup(const RecordId& id) override;
  bool visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) override;
  std::vector<std::pair<RecordId, Record>> list() override;
  CheckedList listChecked() override;
  // Never blocks: counters only (Redis keeps no per-prefix count).
  StoreStats stats() override;
  void flush() override;
  void setCommitObserver(CommitObserver observer) override;

  // Owners of reserves whose answer was lost, not yet released (tests, metrics).
  size_t pendingReleases() const;
  // Wake-up messages received (tests, metrics).
  uint64_t wakeMessages() const;

  struct Impl;
  explicit RedisStore(std::unique_ptr<Impl> impl);

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace idem
