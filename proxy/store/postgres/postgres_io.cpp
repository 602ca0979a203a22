// The PostgreSQL store's I/O thread: the connection pool, the queue of operations, timeouts
// and the release of lost reservations (postgres_impl.h describes the threads).
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "base/log.h"
#include "base/thread_name.h"
#include "store/postgres/postgres_impl.h"
#include "store/postgres/postgres_reconcile.h"

namespace idem {

using namespace pgio;

void PostgresStore::Impl::start() {
  wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  io = std::thread([this] {
    nameThisThread("idem-pg-io");
    io_id = std::this_thread::get_id();
    run();
  });
}

void PostgresStore::Impl::stop() {
  {
    std::lock_guard lock(mu);
    stopping = true;
  }
  cv.notify_all();  // the opener's back-off
  // An opener inside a connection attempt finishes it first (at most connect_timeout).
  if (opener.joinable()) opener.join();
  if (io.joinable()) {
    wake();
    io.join();
  }
  if (wake_fd >= 0) ::close(wake_fd);
  wake_fd = -1;
}

bool PostgresStore::Impl::connectSync(std::string& error) {
  // connect_timeout first: a value in the connection string itself overrides it.
  const auto secs = std::max<int64_t>(
      2, std::chrono::duration_cast<std::chrono::seconds>(opts.timeout).count() + 1);
  const std::string timeout = std::to_string(secs);
  const char* keys[] = {"connect_timeout", "dbname", nullptr};
  const char* values[] = {timeout.c_str(), opts.conninfo.c_str(), nullptr};
  ConnPtr c(PQconnectdbParams(keys, values, 1));
  if (!c || PQstatus(c.get()) != CONNECTION_OK) {
    error = "cannot connect to PostgreSQL (" + pg::maskConninfo(opts.conninfo) +
            "): " + lastError(c.get());
    return false;
  }
  std::lock_guard lock(sync_mu);
  sync = std::move(c);
  return true;
}

void PostgresStore::Impl::findChannel() {
  std::string error;
  std::lock_guard lock(sync_mu);
  if (!pg::wakeupChannel(sync.get(), channel, error)) {
    channel.clear();
    log::warn("store-no-wakeups", {{"error", error}});  // waiters poll
  }
}

void PostgresStore::Impl::openInBackground() {
  auto backoff = std::chrono::milliseconds(50);
  std::string reported;
  for (;;) {
    {
      std::unique_lock lock(mu);
      if (cv.wait_for(lock, backoff, [this] { return stopping; })) return;
    }
    backoff = std::min(opts.max_backoff, backoff * 2);
    std::string error;
    if (!connectSync(error)) {
      if (error != reported) log::warn("store-connect-failed", {{"error", error}});
      reported = error;
      continue;
    }
    bool ok;
    {
      std::lock_guard lock(sync_mu);
      ok = pg::ensureSchema(sync.get(), error) && pg::ensureReconcileSchema(sync.get(), error);
    }
    if (!ok) {
      // Connected, and the schema is refused (an unknown version, no permission): the operator
      // must act; keep trying, saying so once per distinct reason.
      if (error != reported) log::error("store-schema-failed", {{"error", error}});
      reported = error;
      continue;
    }
    findChannel();
    schema_ready = true;
    log::info("store-schema-ready", {});
    wake();
    return;
  }
}

void PostgresStore::Impl::submit(std::unique_ptr<Op> op) {
  op->deadline = Steady::now() + opts.timeout;
  op->params.finish();
  {
    std::lock_guard lock(mu);
    if (!stopping) {
      if (!op->internal) ++outstanding;
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

void PostgresStore::Impl::fail(std::unique_ptr<Op> op, bool sent, int pid) {
  if (sent) {
    if (const ReserveRequest* r = op->reservation()) {
      lost.push_back({r->id, r->owner, pid});
      lost_count = lost.size();
    }
  }
  op->finish(StoreError::Io);
  done(*op);
}

std::unique_ptr<PostgresStore::Impl::Op> PostgresStore::Impl::releaseLost(Lost l,
                                                                          Steady::time_point now) {
  auto op = std::make_unique<ReleaseLostOp>();
  op->sql = pg::kReleaseLostSql;
  // The lost reserve's backend is ended first (its statement could still commit after a plain
  // release): within half the timeout, leaving the other half for the release itself.
  const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(opts.timeout / 2);
  op->params.add(pg::kByteaOid, idParam(l.id))
      .add(pg::kTextOid, l.owner)
      .add(pg::kInt4Oid, pg::int4Param(l.pid))
      .add(pg::kInt4Oid, pg::int4Param(static_cast<int32_t>(wait.count())));
  op->params.finish();
  op->internal = true;
  op->deadline = now + opts.timeout;
  op->done = [this, l = std::move(l)](WriteResult r) {
    if (r.error != StoreError::None) {
      lost.push_back(l);  // try again on the next connection
    } else if (r.changed) {
      log::info("store-lost-reservation-released", {{"owner", l.owner}});
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
    unreachable = false;
    c.backend_pid = PQbackendPID(c.pg.get());
  }
}

void PostgresStore::Impl::drop(Conn& c, Steady::time_point now, const std::string& why) {
  const bool wasUp = c.state == Conn::State::Idle || c.state == Conn::State::Busy;
  if (wasUp) connected.fetch_sub(1);
  if (connected.load() == 0) unreachable = true;
  if (wasUp || c.backoff.count() == 0) {
    log::warn(wasUp ? "store-connection-lost" : "store-connect-failed", {{"error", why}});
  }
  c.pg.reset();
  c.result.reset();
  c.state = Conn::State::Down;
  c.flushing = false;
  c.backoff = std::min(opts.max_backoff, std::max(std::chrono::milliseconds(50), c.backoff * 2));
  c.retry_at = now + c.backoff;
  if (c.op) fail(std::move(c.op), true, c.backend_pid);
  c.backend_pid = 0;
}

void PostgresStore::Impl::send(Conn& c, std::unique_ptr<Op> op, Steady::time_point now) {
  const pg::Params& p = op->params;
  if (PQsendQueryParams(c.pg.get(), op->sql, p.count(), p.types.data(), p.pointers.data(),
                        p.lengths.data(), p.formats.data(), 1) == 0) {
    pending.push_front(std::move(op));  // not sent: another connection may take it
    drop(c, now, lastError(c.pg.get()));
    return;
  }
  {
    std::lock_guard lock(watch_mu);
    op->sent(wake_seq);
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
    const bool open = schema_ready.load();
    for (Conn& c : conns) {
      if (open && c.state == Conn::State::Down && now >= c.retry_at) startConnect(c, now);
      if ((c.state == Conn::State::Connecting || c.state == Conn::State::Busy) &&
          now >= c.deadline) {
        drop(c, now, c.state == Conn::State::Busy ? "operation timed out" : "connect timed out");
      }
    }
    listenStep(now);
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
        Lost l = std::move(lost.back());
        lost.pop_back();
        send(c, releaseLost(std::move(l), now), now);
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
      if (open && c.state == Conn::State::Down) wake_at = std::min(wake_at, c.retry_at);
      if (c.state == Conn::State::Connecting || c.state == Conn::State::Busy) {
        wake_at = std::min(wake_at, c.deadline);
      }
    }
    const short listen = listenEvents();
    fds.push_back({listen != 0 ? PQsocket(listener.pg.get()) : -1, listen, 0});
    if (listener.state == Listener::State::Down && open && !channel.empty()) {
      wake_at = std::min(wake_at, listener.retry_at);
    } else if (listener.state == Listener::State::Connecting ||
               listener.state == Listener::State::Subscribing) {
      wake_at = std::min(wake_at, listener.deadline);
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
    if (fds[conns.size() + 1].revents != 0 && listener.state != Listener::State::Down) {
      onListen(now);
    }
  }
  const auto now = Steady::now();
  listening = false;
  listener.pg.reset();
  for (Conn& c : conns) {
    if (c.op) c.op->internal = true;  // an abandoned internal release: nothing to complete
    c.op.reset();
    if (c.state != Conn::State::Down) drop(c, now, "store closed");
  }
}

}  // namespace idem
