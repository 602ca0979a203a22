#pragma once
// RedisStore's insides, shared by redis_store.cpp (the I/O thread) and redis_open.cpp (start-up
// and the blocking reads of the command line).
#include <poll.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "config/redis_url.h"
#include "store/redis/redis_conn.h"
#include "store/redis/redis_scripts.h"
#include "store/redis/redis_store.h"

namespace idem {

using Steady = std::chrono::steady_clock;

struct RedisStore::Impl {
  struct Op {
    virtual ~Op() = default;
    // A script's answer (not an error reply); false when malformed (→ Io).
    [[nodiscard]] virtual bool parse(const redisReply* r) = 0;
    virtual void finish(StoreError error) = 0;
    // A reserve: the reservation its lost answer may have made.
    virtual const ReserveRequest* reservation() const { return nullptr; }
    const redis::Script* script = nullptr;
    std::vector<std::string> args;  // KEYS[1], then ARGV
    Steady::time_point deadline;
    Steady::time_point started;
    bool full_body = false;  // sent as EVAL after a NOSCRIPT
    bool internal = false;   // a release of a lost reservation: not the caller's, not flushed
  };

  // A reply the connection awaits, in order.
  struct Expect {
    enum class Kind { Handshake, Script, Wait, Subscribe };
    Kind kind;
    std::unique_ptr<Op> op;  // Script, Wait
  };

  struct Link {
    enum class State { Down, Resolving, Connecting, Handshake, Up };
    explicit Link(const char* n) : name(n) {}
    const char* name;
    State state = State::Down;
    std::shared_ptr<redis::Resolution> resolution;
    std::vector<redis::Address> addrs;
    std::unique_ptr<redis::Connection> conn;
    std::deque<Expect> expects;
    Steady::time_point deadline;  // Resolving, Connecting, Handshake
    Steady::time_point retry_at;  // Down
    std::chrono::milliseconds backoff{0};
  };

  Impl(RedisOptions o, RedisUrl u)
      : opts(std::move(o)), url(std::move(u)), channel(redis::wakeChannel(opts.key_prefix)) {}
  ~Impl() { stop(); }

  void start();
  void stop();
  void submit(std::unique_ptr<Op> op);
  void wakeIo() const;
  void run();
  // I/O thread:
  void startLink(Link& l, Steady::time_point now);
  void connectNext(Link& l, Steady::time_point now);
  void onLinkEvent(Link& l, short revents, Steady::time_point now);
  void onReply(Link& l, redis::ReplyPtr r, Steady::time_point now);
  void onScriptReply(Link& l, std::unique_ptr<Op> op, const redisReply* r, Steady::time_point now);
  void onWaitReply(std::unique_ptr<Op> op, const redisReply* r, Steady::time_point now);
  void onMessage(const redisReply* r);
  void send(Link& l, std::unique_ptr<Op> op);
  void complete(std::unique_ptr<Op> op, Steady::time_point now);
  void drop(Link& l, Steady::time_point now, const std::string& why);
  void fail(std::unique_ptr<Op> op, StoreError error, bool sent);
  void done(const Op& op);
  std::unique_ptr<Op> releaseLost(RecordId id, std::string owner, Steady::time_point now);
  void setSubscribed(bool on);
  uint64_t wakeToken();

  RedisOptions opts;
  RedisUrl url;
  std::string channel;
  Link cmd{"command"};
  Link sub{"subscriber"};
  int wake_fd = -1;
  std::thread io;
  std::atomic<std::thread::id> io_id{};

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::unique_ptr<Op>> queue;
  size_t outstanding = 0;  // caller operations submitted and not completed
  bool stopping = false;

  // I/O thread only.
  std::deque<std::unique_ptr<Op>> pending;
  std::vector<std::pair<RecordId, std::string>> lost;
  Steady::time_point lost_retry_at;  // a release failed: not again before this
  Steady::time_point next_probe;     // out of memory: when to try a write again
  std::atomic<size_t> lost_count{0};

  std::atomic<bool> up{false};
  std::atomic<bool> oom{false};  // the last script was refused for memory, none passed since
  std::atomic<uint64_t> operations{0};
  // The records gauge: a SCAN of the prefix in the background, at most every 200 ms, started
  // by stats() (the previous count is what a scrape sees), and the server's used_memory.
  void countRecords(std::string cursor, uint64_t sofar);
  std::atomic<uint64_t> records{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<bool> counting{false};
  std::atomic<int64_t> counted_at_ms{0};
  std::mutex observer_mu;
  CommitObserver observer;

  // Wake-ups: the subscriber's messages, numbered; a watch registered with a token older than a
  // message for its key (or than the last (re)subscription) fires at once.
  struct Watcher {
    uint64_t handle;
    std::function<void()> wake;
  };
  mutable std::mutex wmu;
  bool subscribed = false;
  uint64_t wake_seq = 0;
  uint64_t lost_before = 0;   // tokens below this may have missed a message
  uint64_t dropped_upto = 0;  // messages up to this one left the `recent` window
  std::deque<std::pair<uint64_t, RecordId>> recent;
  std::unordered_map<RecordId, std::vector<Watcher>, DigestHash> watchers;
  std::unordered_map<uint64_t, RecordId> watch_ids;
  uint64_t next_handle = 1;
  std::atomic<uint64_t> messages{0};

  std::mutex sync_mu;  // the blocking connection of lookup()/list()
  std::unique_ptr<redis::SyncClient> sync;
};

}  // namespace idem
