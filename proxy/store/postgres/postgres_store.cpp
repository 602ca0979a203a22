#include "store/postgres/postgres_store.h"

#include <libpq-fe.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <thread>
#include <utility>

#include "base/log.h"
#include "store/postgres/postgres_reconcile.h"
#include "store/postgres/postgres_sql.h"

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
// idle connection, before any queued operation.
//
// Fail fast: while no connection is up or being made, queued operations complete with Io at
// once, so a stopped database answers 503 without waiting out `timeout`.

namespace idem {
namespace {

using Steady = std::chrono::steady_clock;

struct ConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using ConnPtr = std::unique_ptr<PGconn, ConnDeleter>;
struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

std::string lastError(PGconn* c) {
  std::string e = c != nullptr ? PQerrorMessage(c) : "out of memory";
  std::replace(e.begin(), e.end(), '\n', ' ');
  while (!e.empty() && e.back() == ' ') e.pop_back();
  return e;
}

std::string idParam(const RecordId& id) {
  return std::string(reinterpret_cast<const char*>(id.data()), id.size());
}

int64_t affected(const PGresult* res) {
  const char* n = PQcmdTuples(const_cast<PGresult*>(res));
  return n != nullptr && *n != '\0' ? std::atoll(n) : 0;
}

}  // namespace

struct PostgresStore::Impl {
  struct Op {
    virtual ~Op() = default;
    // A result with status TUPLES_OK or COMMAND_OK; false when it is malformed (→ Io).
    [[nodiscard]] virtual bool parse(const PGresult* res) = 0;
    virtual void finish(StoreError error) = 0;
    // A reserve: the reservation its lost answer may have made.
    virtual const ReserveRequest* reservation() const { return nullptr; }
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
      result.removed = static_cast<size_t>(affected(res));
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
  };

  explicit Impl(PostgresOptions o) : opts(std::move(o)), conns(std::max(1u, opts.connections)) {}
  ~Impl() { stop(); }

  void start();
  void stop();
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
  void fail(std::unique_ptr<Op> op, bool sent);
  void done(const Op& op);
  std::unique_ptr<Op> releaseLost(RecordId id, std::string owner, Steady::time_point now);

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
  std::vector<std::pair<RecordId, std::string>> lost;
  std::atomic<size_t> lost_count{0};

  std::atomic<int> connected{0};
  std::atomic<uint64_t> operations{0};
  std::atomic<uint64_t> records{0};
  std::atomic<uint64_t> bytes{0};
  std::mutex observer_mu;
  CommitObserver observer;

  std::mutex sync_mu;  // the blocking connection of lookup()/list()
  ConnPtr sync;
};

void PostgresStore::Impl::start() {
  wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  io = std::thread([this] {
    io_id = std::this_thread::get_id();
    run();
  });
}

void PostgresStore::Impl::stop() {
  {
    std::lock_guard lock(mu);
    stopping = true;
  }
  if (io.joinable()) {
    wake();
    io.join();
  }
  if (wake_fd >= 0) ::close(wake_fd);
  wake_fd = -1;
}

void PostgresStore::Impl::submit(std::unique_ptr<Op> op) {
  op->deadline = Steady::now() + opts.timeout;
  op->params.finish();
  {
    std::lock_guard lock(mu);
    if (!stopping) {
      ++outstanding;
      queue.push_back(std::move(op));
    }
  }
  if (op) {
    op->finish(StoreError::Closed);
    return;
  }
  wake();
}

void PostgresStore::Impl::done(const Op& op) {
  if (op.internal) return;
  std::lock_guard lock(mu);
  if (--outstanding == 0) cv.notify_all();
}

void PostgresStore::Impl::fail(std::unique_ptr<Op> op, bool sent) {
  if (sent) {
    if (const ReserveRequest* r = op->reservation()) {
      lost.emplace_back(r->id, r->owner);
      lost_count = lost.size();
    }
  }
  op->finish(StoreError::Io);
  done(*op);
}

std::unique_ptr<PostgresStore::Impl::Op> PostgresStore::Impl::releaseLost(RecordId id,
                                                                          std::string owner,
                                                                          Steady::time_point now) {
  auto op = std::make_unique<DeleteOp>();
  op->sql = pg::kReleaseSql;
  op->params.add(pg::kByteaOid, idParam(id)).add(pg::kTextOid, owner);
  op->params.finish();
  op->internal = true;
  op->deadline = now + opts.timeout;
  op->done = [this, id, owner = std::move(owner)](WriteResult r) {
    if (r.error != StoreError::None) {
      lost.emplace_back(id, owner);  // try again on the next connection
    } else if (r.changed) {
      log::info("store-lost-reservation-released", {{"owner", owner}});
    }
    lost_count = lost.size();
  };
  return op;
}

void PostgresStore::Impl::startConnect(Conn& c, Steady::time_point now) {
  c.pg.reset(PQconnectStart(opts.conninfo.c_str()));
  c.deadline = now + opts.timeout;
  if (!c.pg || PQstatus(c.pg.get()) == CONNECTION_BAD) {
    drop(c, now, lastError(c.pg.get()));
    return;
  }
  c.state = Conn::State::Connecting;
  c.polling = PGRES_POLLING_WRITING;
}

void PostgresStore::Impl::onConnecting(Conn& c, Steady::time_point now) {
  c.polling = PQconnectPoll(c.pg.get());
  if (c.polling == PGRES_POLLING_FAILED) {
    drop(c, now, lastError(c.pg.get()));
  } else if (c.polling == PGRES_POLLING_OK) {
    if (PQsetnonblocking(c.pg.get(), 1) != 0) {
      drop(c, now, lastError(c.pg.get()));
      return;
    }
    if (c.backoff.count() > 0) log::info("store-connected", {});
    c.state = Conn::State::Idle;
    c.backoff = std::chrono::milliseconds(0);
    connected.fetch_add(1);
  }
}

void PostgresStore::Impl::drop(Conn& c, Steady::time_point now, const std::string& why) {
  const bool wasUp = c.state == Conn::State::Idle || c.state == Conn::State::Busy;
  if (wasUp) connected.fetch_sub(1);
  if (wasUp || c.backoff.count() == 0) {
    log::warn(wasUp ? "store-connection-lost" : "store-connect-failed", {{"error", why}});
  }
  c.pg.reset();
  c.result.reset();
  c.state = Conn::State::Down;
  c.flushing = false;
  c.backoff = std::min(opts.max_backoff, std::max(std::chrono::milliseconds(50), c.backoff * 2));
  c.retry_at = now + c.backoff;
  if (c.op) fail(std::move(c.op), true);
}

void PostgresStore::Impl::send(Conn& c, std::unique_ptr<Op> op, Steady::time_point now) {
  const pg::Params& p = op->params;
  if (PQsendQueryParams(c.pg.get(), op->sql, p.count(), p.types.data(), p.pointers.data(),
                        p.lengths.data(), p.formats.data(), 1) == 0) {
    pending.push_front(std::move(op));  // not sent: another connection may take it
    drop(c, now, lastError(c.pg.get()));
    return;
  }
  c.state = Conn::State::Busy;
  c.deadline = op->deadline;
  c.started = now;
  c.op = std::move(op);
  const int f = PQflush(c.pg.get());
  if (f < 0) {
    drop(c, now, lastError(c.pg.get()));
    return;
  }
  c.flushing = f == 1;
}

void PostgresStore::Impl::onBusy(Conn& c, short revents, Steady::time_point now) {
  if (c.flushing && (revents & (POLLOUT | POLLERR | POLLHUP)) != 0) {
    const int f = PQflush(c.pg.get());
    if (f < 0) {
      drop(c, now, lastError(c.pg.get()));
      return;
    }
    c.flushing = f == 1;
  }
  if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) return;
  if (PQconsumeInput(c.pg.get()) == 0) {
    drop(c, now, lastError(c.pg.get()));
    return;
  }
  while (PQisBusy(c.pg.get()) == 0) {
    PGresult* r = PQgetResult(c.pg.get());
    if (r == nullptr) {
      complete(c, now);
      return;
    }
    if (!c.result) {
      c.result.reset(r);
    } else {
      PQclear(r);
    }
  }
}

void PostgresStore::Impl::complete(Conn& c, Steady::time_point now) {
  std::unique_ptr<Op> op = std::move(c.op);
  ResultPtr res = std::move(c.result);
  const ExecStatusType st = res ? PQresultStatus(res.get()) : PGRES_FATAL_ERROR;
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK) {
    const std::string why = res ? PQresultErrorMessage(res.get()) : lastError(c.pg.get());
    if (PQstatus(c.pg.get()) == CONNECTION_BAD) {
      c.op = std::move(op);
      drop(c, now, why);
      return;
    }
    c.state = Conn::State::Idle;
    // The statement failed and its transaction rolled back: nothing happened on the server.
    log::error("store-statement-failed", {{"error", why}});
    op->finish(StoreError::Io);
    done(*op);
    return;
  }
  c.state = Conn::State::Idle;
  const bool ok = op->parse(res.get());
  if (ok) {
    operations.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(observer_mu);
    if (observer) {
      observer(std::chrono::duration_cast<std::chrono::microseconds>(now - c.started), 1);
    }
  } else {
    log::error("store-bad-result", {{"statement", op->sql}});
  }
  op->finish(ok ? StoreError::None : StoreError::Io);
  done(*op);
}

void PostgresStore::Impl::run() {
  std::vector<pollfd> fds;
  for (;;) {
    bool stop_now = false;
    {
      std::lock_guard lock(mu);
      while (!queue.empty()) {
        pending.push_back(std::move(queue.front()));
        queue.pop_front();
      }
      if (stopping && pending.empty()) {
        stop_now = std::none_of(conns.begin(), conns.end(),
                                [](const Conn& c) { return c.op && !c.op->internal; });
      }
    }
    if (stop_now) break;
    Steady::time_point now = Steady::now();
    for (Conn& c : conns) {
      if (c.state == Conn::State::Down && now >= c.retry_at) startConnect(c, now);
      if ((c.state == Conn::State::Connecting || c.state == Conn::State::Busy) &&
          now >= c.deadline) {
        drop(c, now, c.state == Conn::State::Busy ? "operation timed out" : "connect timed out");
      }
    }
    // Operations that cannot be served: past their deadline, or no connection up or coming.
    const bool hope = std::any_of(conns.begin(), conns.end(),
                                  [](const Conn& c) { return c.state != Conn::State::Down; });
    for (auto it = pending.begin(); it != pending.end();) {
      if (!hope || now >= (*it)->deadline) {
        std::unique_ptr<Op> op = std::move(*it);
        it = pending.erase(it);
        fail(std::move(op), false);
      } else {
        ++it;
      }
    }
    for (Conn& c : conns) {
      if (c.state != Conn::State::Idle) continue;
      if (!lost.empty()) {
        auto [id, owner] = std::move(lost.back());
        lost.pop_back();
        send(c, releaseLost(id, std::move(owner), now), now);
      } else if (!pending.empty()) {
        std::unique_ptr<Op> op = std::move(pending.front());
        pending.pop_front();
        send(c, std::move(op), now);
      }
    }

    fds.clear();
    fds.push_back({wake_fd, POLLIN, 0});
    Steady::time_point wake_at = now + std::chrono::seconds(1);
    for (Conn& c : conns) {
      short events = 0;
      if (c.state == Conn::State::Connecting) {
        events = c.polling == PGRES_POLLING_READING ? POLLIN : POLLOUT;
      } else if (c.state == Conn::State::Busy) {
        events = static_cast<short>(POLLIN | (c.flushing ? POLLOUT : 0));
      } else if (c.state == Conn::State::Idle) {
        events = POLLIN;  // notices, or the server closing the connection
      }
      fds.push_back({events != 0 ? PQsocket(c.pg.get()) : -1, events, 0});
      if (c.state == Conn::State::Down) wake_at = std::min(wake_at, c.retry_at);
      if (c.state == Conn::State::Connecting || c.state == Conn::State::Busy) {
        wake_at = std::min(wake_at, c.deadline);
      }
    }
    for (const auto& op : pending) wake_at = std::min(wake_at, op->deadline);
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wake_at - now);
    ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, wait.count()) + 1));
    if (fds[0].revents != 0) {
      uint64_t n;
      [[maybe_unused]] ssize_t r = ::read(wake_fd, &n, sizeof n);
    }
    now = Steady::now();
    for (size_t i = 0; i < conns.size(); ++i) {
      Conn& c = conns[i];
      const short rev = fds[i + 1].revents;
      if (rev == 0) continue;
      if (c.state == Conn::State::Connecting) {
        onConnecting(c, now);
      } else if (c.state == Conn::State::Busy) {
        onBusy(c, rev, now);
      } else if (c.state == Conn::State::Idle) {
        if (PQconsumeInput(c.pg.get()) == 0 || PQstatus(c.pg.get()) == CONNECTION_BAD) {
          drop(c, now, lastError(c.pg.get()));
        }
      }
    }
  }
  const auto now = Steady::now();
  for (Conn& c : conns) {
    if (c.op) c.op->internal = true;  // an abandoned internal release: nothing to complete
    c.op.reset();
    if (c.state != Conn::State::Down) drop(c, now, "store closed");
  }
}

// ---------------------------------------------------------------------------------------------
// PostgresStore

std::unique_ptr<PostgresStore> openPostgresStore(const PostgresOptions& options,
                                                 std::string& error) {
  auto impl = std::make_unique<PostgresStore::Impl>(options);
  // connect_timeout first: a value in the connection string itself overrides it.
  const auto secs = std::max<int64_t>(
      2, std::chrono::duration_cast<std::chrono::seconds>(options.timeout).count() + 1);
  const std::string timeout = std::to_string(secs);
  const char* keys[] = {"connect_timeout", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), options.conninfo.c_str(), nullptr};
  impl->sync.reset(PQconnectdbParams(keys, values, 1));
  if (!impl->sync || PQstatus(impl->sync.get()) != CONNECTION_OK) {
    error = "cannot connect to PostgreSQL (" + pg::maskConninfo(options.conninfo) +
            "): " + lastError(impl->sync.get());
    return nullptr;
  }
  if (!pg::ensureSchema(impl->sync.get(), error) ||
      !pg::ensureReconcileSchema(impl->sync.get(), error)) {
    error = "PostgreSQL store: " + error;
    return nullptr;
  }
  impl->start();
  return std::make_unique<PostgresStore>(std::move(impl));
}

PostgresStore::PostgresStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PostgresStore::~PostgresStore() = default;  // Impl completes what is queued, then disconnects

void PostgresStore::reserve(ReserveRequest req, std::function<void(ReserveResult)> done) {
  auto op = std::make_unique<Impl::ReserveOp>();
  op->sql = pg::kReserveWithLookupSql;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kByteaOid, idParam(req.fingerprint))
      .add(pg::kTextOid, req.owner)
      .add(pg::kTextOid, req.route)
      .add(pg::kTextOid, req.key)
      .add(pg::kByteaOid, pg::encodeStrings(req.scope))
      .add(pg::kInt8Oid, pg::int8Param(req.ttl_ms))
      .add(pg::kInt8Oid, pg::int8Param(req.lease_ms))
      .add(pg::kBoolOid, pg::boolParam(req.retry_abandoned))
      .add(pg::kInt4Oid, pg::int4Param(req.abandoned_answer.status))
      .add(pg::kByteaOid, pg::encodeHeaders(req.abandoned_answer.headers))
      .add(pg::kByteaOid, req.abandoned_answer.body)
      .add(pg::kByteaOid, pg::encodeStrings(req.lookup));
  op->req = std::move(req);
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::record(RecordRequest req, std::function<void(RecordResult)> done) {
  auto op = std::make_unique<Impl::RecordOp>();
  op->sql = pg::kRecordSql;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kTextOid, std::move(req.owner))
      .add(pg::kInt4Oid, pg::int4Param(static_cast<int32_t>(req.flags)))
      .add(pg::kInt4Oid, pg::int4Param(req.answer.status))
      .add(pg::kByteaOid, pg::encodeHeaders(req.answer.headers))
      .add(pg::kByteaOid, std::move(req.answer.body));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::release(RecordId id, std::string owner, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<Impl::DeleteOp>();
  op->sql = pg::kReleaseSql;
  op->params.add(pg::kByteaOid, idParam(id)).add(pg::kTextOid, std::move(owner));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::forget(RecordId id, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<Impl::DeleteOp>();
  op->sql = pg::kForgetSql;
  op->params.add(pg::kByteaOid, idParam(id));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::sweep(size_t limit, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<Impl::SweepOp>(*impl_);
  op->sql = pg::kSweepSql;
  op->params.add(pg::kInt8Oid, pg::int8Param(static_cast<int64_t>(limit)));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) {
  auto op = std::make_unique<Impl::ParsedOp<ClaimResult>>();
  op->sql = pg::kClaimReconcileSql;
  op->parser = &pg::parseClaimResult;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kTextOid, std::move(req.claimer))
      .add(pg::kInt8Oid, pg::int8Param(req.lease_ms));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) {
  auto op = std::make_unique<Impl::ParsedOp<SettleResult>>();
  op->sql = pg::kSettleReconcileSql;
  op->parser = &pg::parseSettleResult;
  const int32_t kind = req.kind == SettleKind::Found ? 0 : req.kind == SettleKind::NotFound ? 1 : 2;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kTextOid, std::move(req.claimer))
      .add(pg::kInt4Oid, pg::int4Param(kind))
      .add(pg::kInt4Oid, pg::int4Param(req.answer.status))
      .add(pg::kByteaOid, pg::encodeHeaders(req.answer.headers))
      .add(pg::kByteaOid, std::move(req.answer.body))
      .add(pg::kTextOid, std::move(req.owner))
      .add(pg::kInt8Oid, pg::int8Param(req.lease_ms))
      .add(pg::kInt8Oid, pg::int8Param(req.ttl_ms));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

bool PostgresStore::ready() const {
  return impl_->connected.load() > 0;
}

size_t PostgresStore::pendingReleases() const {
  return impl_->lost_count.load();
}

namespace {

// Runs a read on the blocking connection, reconnecting once if it broke. nullptr on failure.
ResultPtr syncQuery(PGconn* conn, const char* sql, pg::Params params) {
  params.finish();
  for (int attempt = 0; attempt < 2; ++attempt) {
    ResultPtr res(PQexecParams(conn, sql, params.count(), params.types.data(),
                               params.pointers.data(), params.lengths.data(), params.formats.data(),
                               1));
    if (res && PQresultStatus(res.get()) == PGRES_TUPLES_OK) return res;
    if (PQstatus(conn) != CONNECTION_BAD) {
      log::error("store-statement-failed", {{"error", lastError(conn)}});
      return nullptr;
    }
    PQreset(conn);
  }
  log::error("store-statement-failed", {{"error", lastError(conn)}});
  return nullptr;
}

}  // namespace

std::optional<Record> PostgresStore::lookup(const RecordId& id) {
  std::lock_guard lock(impl_->sync_mu);
  pg::Params p;
  p.add(pg::kByteaOid, idParam(id));
  ResultPtr res = syncQuery(impl_->sync.get(), pg::kLookupSql, std::move(p));
  Record rec;
  if (!res || PQntuples(res.get()) != 1 || !pg::readRecord(res.get(), 0, 0, rec)) {
    return std::nullopt;
  }
  return rec;
}

bool PostgresStore::visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) {
  std::optional<Record> rec = lookup(id);
  if (!rec) return false;
  const std::string bytes = encodeRecord(*rec);
  RecordView view;
  if (decodeRecordView(bytes, view) != DecodeError::None) return false;
  fn(view);
  return true;
}

std::vector<std::pair<RecordId, Record>> PostgresStore::list() {
  std::vector<std::pair<RecordId, Record>> out;
  std::lock_guard lock(impl_->sync_mu);
  ResultPtr res = syncQuery(impl_->sync.get(), pg::kListSql, pg::Params{});
  if (!res) return out;
  for (int row = 0; row < PQntuples(res.get()); ++row) {
    const std::string_view idBytes = pg::readBytes(res.get(), row, 0);
    Record rec;
    RecordId id{};
    if (idBytes.size() != id.size() || !pg::readRecord(res.get(), row, 1, rec)) continue;
    std::memcpy(id.data(), idBytes.data(), id.size());
    out.emplace_back(id, std::move(rec));
  }
  return out;
}

StoreStats PostgresStore::stats() {
  StoreStats s;
  s.records = impl_->records.load();
  s.bytes_used = impl_->bytes.load();
  s.operations = impl_->operations.load();
  s.commits = s.operations;  // every operation is its own transaction
  return s;
}

void PostgresStore::flush() {
  if (std::this_thread::get_id() == impl_->io_id.load()) return;
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [this] { return impl_->outstanding == 0; });
}

void PostgresStore::setCommitObserver(CommitObserver observer) {
  std::lock_guard lock(impl_->observer_mu);
  impl_->observer = std::move(observer);
}

}  // namespace idem
