#pragma once
// The PostgreSQL store's internals, shared by postgres_store.cpp (the Store interface, the
// blocking reads of the command line) and postgres_io.cpp (the I/O thread). Not for other parts.
#include <libpq-fe.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "store/postgres/postgres_reconcile.h"
#include "store/postgres/postgres_sql.h"
#include "store/postgres/postgres_store.h"

// Threads: callers queue operations under `mu` and wake the I/O thread through an eventfd; the
// I/O thread owns the connections, the operations it has taken from the queue and the list of
// lost reservations. It never holds `mu` while running a completion, so a completion may queue
// another operation.
//
// Connections: each is Down (waiting out its back-off), Connecting (PQconnectStart/
// PQconnectPoll), Idle, or Busy with one operation. A connection that breaks, or whose
// operation or connect outlives its deadline, is closed (PQfinish never blocks on a
// non-blocking connection) and retried with back-off (doubling to max_backoff). An operation
// whose answer was lost that way completes with Io; if it was a reserve, its owner goes on the
// lost list and is released (by owner, so a record since completed is untouched) on the next
// idle connection, before any queued operation. Closing the connection does not stop its
// server process: the reserve may still be running there (waiting for a row lock, or simply
// not yet aware that the client left) and commit after a plain release, leaving a reservation
// nobody owns until its lease ends. So the release (idemproxy_release_lost) first ends that
// backend, by the pid the connection had, and waits until it is gone.
//
// Fail fast: while no connection is up or being made, queued operations complete with Io at
// once, so a stopped database answers 503 without waiting out `timeout`.
//
// Opening: the schema is created or checked on a blocking connection (`sync`, later the command
// line's) before the pool connects. When the database cannot be reached at start and the caller
// allows it, the opener thread retries that with back-off while the I/O thread keeps the pool
// down (so every operation fails fast and ready() is false); once the schema is there it sets
// `schema_ready`, wakes the I/O thread and ends.

namespace idem {
namespace pgio {
using Steady = std::chrono::steady_clock;

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;
struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

inline std::string lastError(PGconn* c) {
  std::string e = c != nullptr ? PQerrorMessage(c) : "out of memory";
  std::replace(e.begin(), e.end(), '\n', ' ');
  while (!e.empty() && e.back() == ' ') e.pop_back();
  return e;
}

inline std::string idParam(const RecordId& id) {
  return std::string(reinterpret_cast<const char*>(id.data()), id.size());
}

inline int64_t affected(const PGresult* res) {
  const char* n = PQcmdTuples(const_cast<PGresult*>(res));
  return n != nullptr && *n != '\0' ? std::atoll(n) : 0;
}

}  // namespace pgio

struct PostgresStore::Impl {
  using Steady = pgio::Steady;
  using ConnPtr = pgio::ConnPtr;
  using ResultPtr = pgio::ResultPtr;

  struct Op {
    virtual ~Op() = default;
    // A result with status TUPLES_OK or COMMAND_OK; false when it is malformed (→ Io).
    [[nodiscard]] virtual bool parse(const PGresult* res) = 0;
    virtual void finish(StoreError error) = 0;
    // A reserve: the reservation its lost answer may have made.
    virtual const ReserveRequest* reservation() const { return nullptr; }
    // Sent to the server while the wake-up sequence stood at `wake_seq`.
    virtual void sent(uint64_t /*wake_seq*/) {}
    const char* sql = nullptr;
    pg::Params params;
    Steady::time_point deadline;
    bool internal = false;  // a release of a lost reservation: not the caller's, not flushed
  };
  template <typename Result>
  struct OpWith : Op {
    void finish(StoreError error) override {
      if (error != StoreError::None) {
        result = Result{};
        result.error = error;
      }
      if (done) done(std::move(result));
    }
    std::function<void(Result)> done;
    Result result;
  };

  struct ReserveOp final : OpWith<ReserveResult> {
    bool parse(const PGresult* res) override {
      if (PQntuples(res) != 1) return false;
      const int64_t r = pg::readInt(res, 0, 0);
      if (r < 0 || r > 3) return false;
      static constexpr ReserveStatus kStatus[] = {ReserveStatus::Won, ReserveStatus::Completed,
                                                  ReserveStatus::InFlight, ReserveStatus::Mismatch};
      result.status = kStatus[r];
      return pg::readRecord(res, 0, 1, result.record) &&
             pg::readReconcileColumns(res, 0, 14, result.record);
    }
    const ReserveRequest* reservation() const override { return &req; }
    void sent(uint64_t seq) override { result.wake_seq = seq; }
    ReserveRequest req;
  };

  struct RecordOp final : OpWith<RecordResult> {
    bool parse(const PGresult* res) override {
      if (PQntuples(res) == 0) {
        result.status = RecordStatus::Missing;
        return true;
      }
      result.status =
          pg::readInt(res, 0, 0) == 0 ? RecordStatus::Recorded : RecordStatus::AlreadyFinal;
      return pg::readRecord(res, 0, 1, result.record);
    }
  };

  // An operation whose result another file parses (postgres_reconcile.cpp).
  template <typename Result>
  struct ParsedOp final : OpWith<Result> {
    bool (*parser)(const PGresult*, Result&) = nullptr;
    bool parse(const PGresult* res) override { return parser(res, this->result); }
  };

  struct DeleteOp final : OpWith<WriteResult> {
    bool parse(const PGresult* res) override {
      result.removed = static_cast<size_t>(pgio::affected(res));
      result.changed = result.removed > 0;
      return true;
    }
  };

  struct SweepOp final : OpWith<WriteResult> {
    explicit SweepOp(Impl& s) : store(s) {}
    bool parse(const PGresult* res) override {
      if (PQntuples(res) != 1 || PQnfields(res) != 3) return false;
      result.removed = static_cast<size_t>(pg::readInt(res, 0, 0));
      result.changed = result.removed > 0;
      const int64_t before = pg::readInt(res, 0, 1);  // the statement's snapshot
      store.records.store(static_cast<uint64_t>(
          std::max<int64_t>(0, before - static_cast<int64_t>(result.removed))));
      store.bytes.store(static_cast<uint64_t>(pg::readInt(res, 0, 2)));
      return true;
    }
    Impl& store;
  };

  // idemproxy_release_lost(): one row, the rows deleted.
  struct ReleaseLostOp final : OpWith<WriteResult> {
    bool parse(const PGresult* res) override {
      if (PQntuples(res) != 1 || PQnfields(res) != 1) return false;
      result.removed = static_cast<size_t>(pg::readInt(res, 0, 0));
      result.changed = result.removed > 0;
      return true;
    }
  };

  // The record count and table size for stats() (the metrics' gauges).
  struct CountOp final : OpWith<WriteResult> {
    explicit CountOp(Impl& s) : store(s) {}
    bool parse(const PGresult* res) override {
      if (PQntuples(res) != 1 || PQnfields(res) != 2) return false;
      store.records.store(static_cast<uint64_t>(pg::readInt(res, 0, 0)));
      store.bytes.store(static_cast<uint64_t>(pg::readInt(res, 0, 1)));
      return true;
    }
    Impl& store;
  };

  struct Conn {
    enum class State { Down, Connecting, Idle, Busy };
    State state = State::Down;
    ConnPtr pg;
    PostgresPollingStatusType polling = PGRES_POLLING_WRITING;
    bool flushing = false;  // PQflush has more to send
    std::unique_ptr<Op> op;
    ResultPtr result;             // the operation's first result
    Steady::time_point deadline;  // Connecting: the attempt's; Busy: the operation's
    Steady::time_point started;   // Busy: when the operation was sent
    Steady::time_point retry_at;  // Down: next attempt
    std::chrono::milliseconds backoff{0};
    int backend_pid = 0;  // Idle, Busy: the server process (PQbackendPID)
  };

  // The listening connection (postgres_listen.cpp): LISTEN on `channel`, then notifications.
  struct Listener {
    enum class State { Down, Connecting, Subscribing, Listening };
    State state = State::Down;
    ConnPtr pg;
    PostgresPollingStatusType polling = PGRES_POLLING_WRITING;
    bool flushing = false;
    Steady::time_point deadline;  // Connecting, Subscribing
    Steady::time_point retry_at;  // Down
    std::chrono::milliseconds backoff{0};
  };
  struct Watcher {
    uint64_t handle;
    std::function<void()> wake;
  };
  // Notifications remembered for watch() calls that come after them (see notified()).
  static constexpr size_t kRecentNotifications = 1024;

  explicit Impl(PostgresOptions o) : opts(std::move(o)), conns(std::max(1u, opts.connections)) {}
  ~Impl() { stop(); }

  void start();
  void stop();
  // Opens the blocking connection (bounded by connect_timeout) into `sync`; false with `error`.
  bool connectSync(std::string& error);
  // The opener thread: connectSync + ensureSchema with back-off until both succeed or stop().
  void openInBackground();
  // Sets `channel` from the blocking connection, once the schema is there.
  void findChannel();
  void submit(std::unique_ptr<Op> op);
  void wake() const {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof one);
  }
  void run();
  void startConnect(Conn& c, Steady::time_point now);
  void onConnecting(Conn& c, Steady::time_point now);
  void onBusy(Conn& c, short revents, Steady::time_point now);
  void send(Conn& c, std::unique_ptr<Op> op, Steady::time_point now);
  void complete(Conn& c, Steady::time_point now);
  void drop(Conn& c, Steady::time_point now, const std::string& why);
  // `sent` on the connection to backend `pid`: a reserve's reservation may stand (→ lost).
  void fail(std::unique_ptr<Op> op, bool sent, int pid = 0);
  void done(const Op& op);
  // A reserve whose answer was lost on the connection to backend `pid` (0: unknown).
  struct Lost {
    RecordId id;
    std::string owner;
    int pid = 0;
  };
  std::unique_ptr<Op> releaseLost(Lost l, Steady::time_point now);

  // Wake-ups (postgres_listen.cpp), I/O thread except watch/unwatch.
  void listenStep(Steady::time_point now);  // connect when due; deadlines
  short listenEvents() const;               // what to poll the listener's socket for
  void onListen(Steady::time_point now);
  void dropListener(Steady::time_point now, const std::string& why);
  // A notification for `id`, or (nullptr) for every key: wake-ups were interrupted and
  // notifications may have been missed (the listener (re)connected).
  void notified(const RecordId* id);
  uint64_t watch(const RecordId& id, uint64_t since, std::function<void()> wake);
  void unwatch(const RecordId& id, uint64_t handle);

  PostgresOptions opts;
  std::vector<Conn> conns;
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
  std::vector<Lost> lost;
  std::atomic<size_t> lost_count{0};

  std::atomic<int> connected{0};
  std::atomic<bool> unreachable{false};    // no connection up, and the last attempt failed
  std::atomic<Steady::rep> counted_at{0};  // when stats() last asked for a count
  std::atomic<uint64_t> operations{0};
  std::atomic<uint64_t> records{0};
  std::atomic<uint64_t> bytes{0};
  std::mutex observer_mu;
  CommitObserver observer;

  std::mutex sync_mu;  // the blocking connection of lookup()/list()
  ConnPtr sync;
  std::atomic<bool> schema_ready{false};  // the pool may connect
  std::string channel;  // set before schema_ready; empty: no wake-ups (polling only)
  Listener listener;    // I/O thread
  std::atomic<bool> listening{false};
  std::atomic<uint64_t> notifications{0};
  std::mutex watch_mu;
  uint64_t wake_seq = 0;  // under watch_mu; written by the I/O thread only
  std::deque<std::pair<uint64_t, std::optional<RecordId>>> recent;  // nullopt: every key
  uint64_t forgotten_upto = 0;  // notifications up to this sequence left `recent`
  std::unordered_map<RecordId, std::vector<Watcher>, DigestHash> watchers;
  uint64_t next_handle = 1;
  std::thread opener;  // opening in the background (start_unreachable)
};

}  // namespace idem
