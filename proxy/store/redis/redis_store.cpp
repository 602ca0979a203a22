#include "store/redis/redis_store.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "base/log.h"
#include "base/thread_name.h"
#include "store/redis/redis_impl.h"

// Threads: callers queue operations under `mu` and wake the I/O thread through an eventfd; the
// I/O thread owns both links, the operations it has taken from the queue and the list of lost
// reservations. It never holds `mu` or `wmu` while running a completion or a wake-up, so either
// may call the store again.
//
// Links: each is Down (waiting out its back-off), Resolving (a name, on a thread of its own),
// Connecting, Handshake (AUTH, SELECT; SUBSCRIBE for the subscriber) or Up. The command link
// pipelines: every operation sent is an Expect in order. A link that breaks, or whose oldest
// operation outlives its deadline (a hung server), or whose connect outlives `timeout`, is
// closed and retried with back-off (doubling to max_backoff). An operation whose answer was lost
// that way completes with Io; if it was a reserve, its owner goes on the lost list and is
// released (by owner, so a record since completed is untouched) as soon as the link is up
// again, before any queued operation.
//
// Fail fast: while the command link is down and not coming up, queued operations complete with
// Io at once, so a stopped Redis answers 503 without waiting out `timeout`.

namespace idem {
namespace {

constexpr size_t kMaxPipelined = 512;  // operations in flight on the command link
constexpr size_t kRecentWakes = 4096;  // wake-up messages remembered for late watchers

std::string idArg(const RecordId& id) {
  return std::string(reinterpret_cast<const char*>(id.data()), id.size());
}

}  // namespace

namespace {

template <typename Result>
struct OpWith : RedisStore::Impl::Op {
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
  bool parse(const redisReply* r) override {
    int64_t code = -1;
    if (!redis::readScriptRecord(r, code, result.record) || code < 0 || code > 3) return false;
    static constexpr ReserveStatus kStatus[] = {ReserveStatus::Won, ReserveStatus::Completed,
                                                ReserveStatus::InFlight, ReserveStatus::Mismatch};
    result.status = kStatus[code];
    result.wake_seq = token;
    return true;
  }
  const ReserveRequest* reservation() const override { return &req; }
  ReserveRequest req;
  uint64_t token = 0;
};

struct RecordOp final : OpWith<RecordResult> {
  bool parse(const redisReply* r) override {
    int64_t code = -1;
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 2) {
      result.status = RecordStatus::Missing;
      return true;
    }
    if (!redis::readScriptRecord(r, code, result.record) || (code != 0 && code != 1)) {
      return false;
    }
    result.status = code == 0 ? RecordStatus::Recorded : RecordStatus::AlreadyFinal;
    return true;
  }
};

struct ClaimOp final : OpWith<ClaimResult> {
  bool parse(const redisReply* r) override {
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER && r->element[0]->integer == 3) {
      result.status = ClaimStatus::Missing;
      return true;
    }
    int64_t code = -1;
    if (!redis::readScriptRecord(r, code, result.record) || code < 0 || code > 2) return false;
    static constexpr ClaimStatus kStatus[] = {ClaimStatus::Claimed, ClaimStatus::Busy,
                                              ClaimStatus::NotUncertain};
    result.status = kStatus[code];
    return true;
  }
};

struct SettleOp final : OpWith<SettleResult> {
  bool parse(const redisReply* r) override {
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1 &&
        r->element[0]->type == REDIS_REPLY_INTEGER) {
      const long long code = r->element[0]->integer;
      if (code != 2 && code != 3) return false;
      result.status = code == 2 ? SettleStatus::Settled : SettleStatus::Lost;
      result.exists = false;
      return true;
    }
    int64_t code = -1;
    if (!redis::readScriptRecord(r, code, result.record) || (code != 0 && code != 1)) {
      return false;
    }
    result.status = code == 0 ? SettleStatus::Settled : SettleStatus::Lost;
    result.exists = true;
    return true;
  }
};

// A plain command (no script): SCAN one page of the prefix, or INFO memory.
struct CommandOp final : OpWith<WriteResult> {
  bool parse(const redisReply* r) override {
    if (r->type == REDIS_REPLY_STRING) {  // INFO memory
      const std::string_view text(r->str, r->len);
      const size_t at = text.find("used_memory:");
      if (at == std::string_view::npos) return false;
      result.removed = static_cast<size_t>(std::strtoull(r->str + at + 12, nullptr, 10));
      return true;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[0]->type != REDIS_REPLY_STRING || r->element[1]->type != REDIS_REPLY_ARRAY) {
      return false;
    }
    cursor.assign(r->element[0]->str, r->element[0]->len);
    result.removed = r->element[1]->elements;
    return true;
  }
  std::string cursor;
};

struct ProbeOp final : OpWith<WriteResult> {
  bool parse(const redisReply*) override { return true; }
};

struct DeleteOp final : OpWith<WriteResult> {
  bool parse(const redisReply* r) override {
    if (r->type != REDIS_REPLY_INTEGER) return false;
    result.removed = r->integer > 0 ? 1 : 0;
    result.changed = result.removed > 0;
    return true;
  }
};

}  // namespace

void RedisStore::Impl::start() {
  wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  io = std::thread([this] {
    nameThisThread("idem-redis-io");
    io_id = std::this_thread::get_id();
    run();
  });
}

void RedisStore::Impl::stop() {
  {
    std::lock_guard lock(mu);
    stopping = true;
  }
  if (io.joinable()) {
    wakeIo();
    io.join();
  }
  if (wake_fd >= 0) ::close(wake_fd);
  wake_fd = -1;
}

void RedisStore::Impl::wakeIo() const {
  const uint64_t one = 1;
  [[maybe_unused]] ssize_t n = ::write(wake_fd, &one, sizeof one);
}

void RedisStore::Impl::submit(std::unique_ptr<Op> op) {
  op->deadline = Steady::now() + opts.timeout;
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
  wakeIo();
}

void RedisStore::Impl::done(const Op& op) {
  if (op.internal) return;
  std::lock_guard lock(mu);
  if (--outstanding == 0) cv.notify_all();
}

void RedisStore::Impl::fail(std::unique_ptr<Op> op, StoreError error, bool sent) {
  if (sent) {
    if (const ReserveRequest* r = op->reservation()) {
      lost.emplace_back(r->id, r->owner);
      lost_count = lost.size();
    }
  }
  op->finish(error);
  done(*op);
}

std::unique_ptr<RedisStore::Impl::Op> RedisStore::Impl::releaseLost(RecordId id, std::string owner,
                                                                    Steady::time_point now) {
  auto op = std::make_unique<DeleteOp>();
  op->script = &redis::releaseScript();
  op->args = {redis::recordKey(opts.key_prefix, id), owner, channel, redis::hexId(id)};
  op->internal = true;
  op->deadline = now + opts.timeout;
  op->done = [this, id, owner = std::move(owner)](WriteResult r) {
    if (r.error != StoreError::None) {
      lost.emplace_back(id, owner);  // try again later, or on the next connection
      lost_retry_at = Steady::now() + std::chrono::milliseconds(250);
    } else if (r.changed) {
      log::info("store-lost-reservation-released", {{"owner", owner}});
    }
    lost_count = lost.size();
  };
  return op;
}

// ---- links ----

void RedisStore::Impl::startLink(Link& l, Steady::time_point now) {
  l.state = Link::State::Resolving;
  l.deadline = now + opts.timeout;
  l.resolution = redis::Resolution::start(url);
}

void RedisStore::Impl::connectNext(Link& l, Steady::time_point now) {
  std::string error;
  while (!l.addrs.empty()) {
    const redis::Address a = l.addrs.front();
    l.addrs.erase(l.addrs.begin());
    auto c = std::make_unique<redis::Connection>();
    if (!c->start(a, error)) continue;
    l.conn = std::move(c);
    l.state = Link::State::Connecting;
    if (!l.conn->connecting()) {
      onLinkEvent(l, POLLOUT, now);
    }
    return;
  }
  drop(l, now, error.empty() ? "no address to connect to" : error);
}

void RedisStore::Impl::drop(Link& l, Steady::time_point now, const std::string& why) {
  const bool wasUp = l.state == Link::State::Up;
  if (&l == &cmd && wasUp) up = false;
  if (&l == &sub) setSubscribed(false);
  if (wasUp || l.backoff.count() == 0) {
    log::warn(wasUp ? "store-connection-lost" : "store-connect-failed",
              {{"link", l.name}, {"error", why}});
  }
  l.conn.reset();
  l.resolution.reset();
  l.addrs.clear();
  l.state = Link::State::Down;
  l.backoff = std::min(opts.max_backoff, std::max(std::chrono::milliseconds(50), l.backoff * 2));
  l.retry_at = now + l.backoff;
  std::deque<Expect> gone = std::move(l.expects);
  l.expects.clear();
  for (Expect& e : gone) {
    if (e.op) fail(std::move(e.op), StoreError::Io, true);
  }
}

void RedisStore::Impl::onLinkEvent(Link& l, short revents, Steady::time_point now) {
  std::string error;
  if (l.state == Link::State::Resolving) {
    if (!l.resolution->done()) return;
    l.addrs = l.resolution->take(error);
    l.resolution.reset();
    if (l.addrs.empty()) {
      drop(l, now, error);
      return;
    }
    connectNext(l, now);
    return;
  }
  if (l.state == Link::State::Connecting) {
    if ((revents & (POLLOUT | POLLERR | POLLHUP)) == 0) return;
    if (!l.conn->finishConnect(error)) {
      l.conn.reset();
      if (!l.addrs.empty()) {
        connectNext(l, now);
      } else {
        drop(l, now, error);
      }
      return;
    }
    l.state = Link::State::Handshake;
    if (!url.password.empty()) {
      std::vector<std::string_view> auth{"AUTH"};
      if (!url.user.empty()) auth.push_back(url.user);
      auth.push_back(url.password);
      l.conn->append(auth);
      l.expects.push_back({Expect::Kind::Handshake, nullptr});
    }
    if (&l == &sub) {
      l.conn->append({"SUBSCRIBE", channel});
      l.expects.push_back({Expect::Kind::Subscribe, nullptr});
    } else {
      const std::string db = std::to_string(url.db);
      l.conn->append({"SELECT", db});
      l.expects.push_back({Expect::Kind::Handshake, nullptr});
    }
    revents = POLLOUT;
  }
  if ((revents & (POLLOUT | POLLERR | POLLHUP)) != 0 && l.conn->wantsWrite()) {
    if (!l.conn->flush(error)) {
      drop(l, now, error);
      return;
    }
  }
  if ((revents & (POLLIN | POLLERR | POLLHUP)) == 0) return;
  if (!l.conn->read(error)) {
    drop(l, now, error);
    return;
  }
  for (;;) {
    redis::ReplyPtr r;
    if (!l.conn->next(r, error)) {
      drop(l, now, error);
      return;
    }
    if (!r) return;
    onReply(l, std::move(r), now);
    if (l.state == Link::State::Down) return;
  }
}

void RedisStore::Impl::onReply(Link& l, redis::ReplyPtr r, Steady::time_point now) {
  if (l.expects.empty()) {
    if (&l == &sub) {
      onMessage(r.get());
    } else {
      drop(l, now, "a reply nobody asked for");
    }
    return;
  }
  Expect e = std::move(l.expects.front());
  l.expects.pop_front();
  switch (e.kind) {
    case Expect::Kind::Handshake:
      if (r->type == REDIS_REPLY_ERROR) {
        drop(l, now, "handshake refused: " + redis::errorText(r.get()));
        return;
      }
      if (l.expects.empty()) {
        if (l.backoff.count() > 0) log::info("store-connected", {{"link", l.name}});
        l.state = Link::State::Up;
        l.backoff = std::chrono::milliseconds(0);
        if (&l == &cmd) up = true;
      }
      return;
    case Expect::Kind::Subscribe:
      if (r->type != REDIS_REPLY_ARRAY) {
        drop(l, now, "SUBSCRIBE refused: " + redis::errorText(r.get()));
        return;
      }
      if (l.backoff.count() > 0) log::info("store-connected", {{"link", l.name}});
      l.state = Link::State::Up;
      l.backoff = std::chrono::milliseconds(0);
      setSubscribed(true);
      return;
    case Expect::Kind::Script:
      onScriptReply(l, std::move(e.op), r.get(), now);
      return;
    case Expect::Kind::Wait:
      onWaitReply(std::move(e.op), r.get(), now);
      return;
  }
}

void RedisStore::Impl::onScriptReply(Link& l, std::unique_ptr<Op> op, const redisReply* r,
                                     Steady::time_point now) {
  if (r->type == REDIS_REPLY_ERROR) {
    const std::string why = redis::errorText(r);
    if (why.starts_with("NOSCRIPT") && !op->full_body) {
      op->full_body = true;  // the server forgot it (SCRIPT FLUSH, restart): send it whole
      send(l, std::move(op));
      return;
    }
    // The script did not run (refused before its first write): nothing happened.
    if (op->script == nullptr) {
      op->finish(StoreError::Io);
      return;
    }
    if (why.starts_with("OOM")) {
      if (!oom.exchange(true)) log::error("store-out-of-memory", {{"error", why}});
      op->finish(StoreError::Full);
      done(*op);
      return;
    }
    log::error("store-script-failed", {{"script", op->script->name}, {"error", why}});
    op->finish(StoreError::Io);
    done(*op);
    return;
  }
  if (!op->parse(r)) {
    log::error("store-bad-result", {{"script", op->script != nullptr ? op->script->name : "-"}});
    fail(std::move(op), StoreError::Io, true);
    return;
  }
  if (op->script != nullptr) oom = false;
  if (opts.min_replicas > 0 && !op->internal) {
    // Acknowledged by enough replicas before anyone acts on it (forwarding, answering).
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(op->deadline - now);
    const std::string n = std::to_string(opts.min_replicas);
    // Redis answers WAIT by its own timeout, before ours would take the link for hung.
    const int64_t margin = std::max<int64_t>(50, left.count() / 5);
    const std::string ms = std::to_string(std::max<int64_t>(1, left.count() - margin));
    l.conn->append({"WAIT", n, ms});
    l.expects.push_back({Expect::Kind::Wait, std::move(op)});
    return;
  }
  complete(std::move(op), now);
}

void RedisStore::Impl::onWaitReply(std::unique_ptr<Op> op, const redisReply* r,
                                   Steady::time_point now) {
  if (r->type == REDIS_REPLY_INTEGER && r->integer >= static_cast<long long>(opts.min_replicas)) {
    complete(std::move(op), now);
    return;
  }
  log::error("store-replicas-missing",
             {{"wanted", static_cast<int64_t>(opts.min_replicas)},
              {"acknowledged",
               r->type == REDIS_REPLY_INTEGER ? static_cast<int64_t>(r->integer) : int64_t{-1}},
              {"error", redis::errorText(r)}});
  // Written on the primary only: a reservation taken is given back (by owner).
  fail(std::move(op), StoreError::Io, true);
}

void RedisStore::Impl::complete(std::unique_ptr<Op> op, Steady::time_point now) {
  operations.fetch_add(1, std::memory_order_relaxed);
  if (!op->internal) {
    std::lock_guard lock(observer_mu);
    if (observer) {
      observer(std::chrono::duration_cast<std::chrono::microseconds>(now - op->started), 1);
    }
  }
  op->finish(StoreError::None);
  done(*op);
}

void RedisStore::Impl::send(Link& l, std::unique_ptr<Op> op) {
  std::vector<std::string_view> argv;
  if (op->script == nullptr) {  // a plain command
    for (const auto& a : op->args) argv.push_back(a);
    l.conn->append(argv);
    l.expects.push_back({Expect::Kind::Script, std::move(op)});
    return;
  }
  argv.reserve(op->args.size() + 3);
  argv.push_back(op->full_body ? "EVAL" : "EVALSHA");
  argv.push_back(op->full_body ? op->script->body : op->script->sha1);
  argv.push_back(op->args.empty() ? "0" : "1");  // KEYS[1], when there are arguments
  for (const auto& a : op->args) argv.push_back(a);
  l.conn->append(argv);
  if (op->started == Steady::time_point{}) op->started = Steady::now();
  l.expects.push_back({Expect::Kind::Script, std::move(op)});
}

// ---- wake-ups ----

void RedisStore::Impl::onMessage(const redisReply* r) {
  // ["message", channel, hex id]
  if (r->type != REDIS_REPLY_ARRAY || r->elements != 3 ||
      r->element[0]->type != REDIS_REPLY_STRING || r->element[2]->type != REDIS_REPLY_STRING ||
      std::string_view(r->element[0]->str, r->element[0]->len) != "message") {
    return;
  }
  RecordId id{};
  if (!redis::parseHexId({r->element[2]->str, r->element[2]->len}, id)) return;
  messages.fetch_add(1, std::memory_order_relaxed);
  std::vector<Watcher> due;
  {
    std::lock_guard lock(wmu);
    recent.emplace_back(++wake_seq, id);
    while (recent.size() > kRecentWakes) {
      dropped_upto = recent.front().first;
      recent.pop_front();
    }
    auto it = watchers.find(id);
    if (it != watchers.end()) {
      due = std::move(it->second);
      watchers.erase(it);
      for (const Watcher& w : due) watch_ids.erase(w.handle);
    }
  }
  for (Watcher& w : due) w.wake();
}

void RedisStore::Impl::setSubscribed(bool on) {
  std::vector<Watcher> due;
  {
    std::lock_guard lock(wmu);
    if (subscribed == on) return;
    subscribed = on;
    if (on) {
      // Messages published while we were not subscribed are gone: everyone looks again.
      lost_before = ++wake_seq;
      for (auto& [id, list] : watchers) {
        for (Watcher& w : list) due.push_back(std::move(w));
      }
      watchers.clear();
      watch_ids.clear();
    }
  }
  for (Watcher& w : due) w.wake();
}

uint64_t RedisStore::Impl::wakeToken() {
  std::lock_guard lock(wmu);
  return wake_seq;
}

// ---- the loop ----

void RedisStore::Impl::run() {
  std::vector<pollfd> fds;
  Link* links[] = {&cmd, &sub};
  for (;;) {
    bool stop_now = false;
    {
      std::lock_guard lock(mu);
      while (!queue.empty()) {
        pending.push_back(std::move(queue.front()));
        queue.pop_front();
      }
      if (stopping && pending.empty()) {
        stop_now = std::none_of(cmd.expects.begin(), cmd.expects.end(),
                                [](const Expect& e) { return e.op && !e.op->internal; });
      }
    }
    if (stop_now) break;
    Steady::time_point now = Steady::now();
    for (Link* l : links) {
      if (l->state == Link::State::Down && now >= l->retry_at) startLink(*l, now);
      if (l->state == Link::State::Resolving && l->resolution->done()) onLinkEvent(*l, 0, now);
      const bool connecting = l->state == Link::State::Resolving ||
                              l->state == Link::State::Connecting ||
                              l->state == Link::State::Handshake;
      if (connecting && now >= l->deadline) drop(*l, now, "connect timed out");
    }
    if (cmd.state == Link::State::Up && !cmd.expects.empty() && cmd.expects.front().op &&
        now >= cmd.expects.front().op->deadline) {
      drop(cmd, now, "operation timed out");
    }
    // Operations that cannot be served: past their deadline, or no connection up or coming.
    const bool hope = cmd.state != Link::State::Down;
    for (auto it = pending.begin(); it != pending.end();) {
      if (!hope || now >= (*it)->deadline) {
        std::unique_ptr<Op> op = std::move(*it);
        it = pending.erase(it);
        fail(std::move(op), StoreError::Io, false);
      } else {
        ++it;
      }
    }
    if (cmd.state == Link::State::Up) {
      if (oom && now >= next_probe) {
        // Nobody may be sending writes (not ready: the balancer sent traffic elsewhere): probe.
        auto probe = std::make_unique<ProbeOp>();
        probe->script = &redis::probeScript();
        probe->full_body = true;
        probe->internal = true;
        probe->deadline = now + opts.timeout;
        send(cmd, std::move(probe));
        next_probe = now + std::chrono::seconds(1);
      }
      while (!lost.empty() && now >= lost_retry_at && cmd.expects.size() < kMaxPipelined) {
        auto [id, owner] = std::move(lost.back());
        lost.pop_back();
        send(cmd, releaseLost(id, std::move(owner), now));
      }
      while (!pending.empty() && cmd.expects.size() < kMaxPipelined) {
        std::unique_ptr<Op> op = std::move(pending.front());
        pending.pop_front();
        send(cmd, std::move(op));
      }
      std::string error;
      if (cmd.conn->wantsWrite() && !cmd.conn->flush(error)) drop(cmd, now, error);
    }

    fds.clear();
    fds.push_back({wake_fd, POLLIN, 0});
    Steady::time_point wake_at = now + std::chrono::seconds(1);
    for (Link* l : links) {
      int fd = -1;
      short events = 0;
      if (l->state == Link::State::Resolving) {
        fd = l->resolution->fd();
        events = POLLIN;
      } else if (l->conn) {
        fd = l->conn->fd();
        events = static_cast<short>(POLLIN | (l->conn->wantsWrite() ? POLLOUT : 0));
      }
      fds.push_back({fd, events, 0});
      if (l->state == Link::State::Down) {
        wake_at = std::min(wake_at, l->retry_at);
      } else if (l->state != Link::State::Up) {
        wake_at = std::min(wake_at, l->deadline);
      }
    }
    if (!cmd.expects.empty() && cmd.expects.front().op) {
      wake_at = std::min(wake_at, cmd.expects.front().op->deadline);
    }
    for (const auto& op : pending) wake_at = std::min(wake_at, op->deadline);
    if (!lost.empty()) wake_at = std::min(wake_at, std::max(now, lost_retry_at));
    if (oom) wake_at = std::min(wake_at, std::max(now, next_probe));
    const auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(wake_at - now);
    ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, wait.count()) + 1));
    if (fds[0].revents != 0) {
      uint64_t n;
      [[maybe_unused]] ssize_t r = ::read(wake_fd, &n, sizeof n);
    }
    now = Steady::now();
    for (size_t i = 0; i < 2; ++i) {
      if (fds[i + 1].revents != 0 && links[i]->state != Link::State::Down) {
        onLinkEvent(*links[i], fds[i + 1].revents, now);
      }
    }
  }
  for (Link* l : links) {
    l->expects.clear();  // only internal releases are left: abandoned, nothing to complete
    l->conn.reset();
    l->resolution.reset();
    l->state = Link::State::Down;
  }
  up = false;
  setSubscribed(false);
}

// ---------------------------------------------------------------------------------------------
// RedisStore

RedisStore::RedisStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

RedisStore::~RedisStore() = default;  // Impl completes what is queued, then disconnects

void RedisStore::reserve(ReserveRequest req, std::function<void(ReserveResult)> done) {
  auto op = std::make_unique<ReserveOp>();
  op->script = &redis::reserveScript();
  const HttpAnswer& ab = req.abandoned_answer;
  op->args = {redis::recordKey(impl_->opts.key_prefix, req.id),
              idArg(req.fingerprint),
              req.owner,
              req.route,
              req.key,
              encodeStringList(req.scope),
              std::to_string(req.ttl_ms),
              std::to_string(req.lease_ms),
              req.retry_abandoned ? "1" : "0",
              std::to_string(ab.status),
              encodeHeaderList(ab.headers),
              ab.body,
              impl_->channel,
              redis::hexId(req.id),
              encodeStringList(req.lookup)};
  op->token = impl_->wakeToken();  // before it is sent: no later message can be missed
  op->req = std::move(req);
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void RedisStore::record(RecordRequest req, std::function<void(RecordResult)> done) {
  auto op = std::make_unique<RecordOp>();
  op->script = &redis::recordScript();
  op->args = {redis::recordKey(impl_->opts.key_prefix, req.id),
              std::move(req.owner),
              std::to_string(req.flags),
              std::to_string(req.answer.status),
              encodeHeaderList(req.answer.headers),
              std::move(req.answer.body),
              impl_->channel,
              redis::hexId(req.id)};
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void RedisStore::release(RecordId id, std::string owner, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<DeleteOp>();
  op->script = &redis::releaseScript();
  op->args = {redis::recordKey(impl_->opts.key_prefix, id), std::move(owner), impl_->channel,
              redis::hexId(id)};
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void RedisStore::forget(RecordId id, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<DeleteOp>();
  op->script = &redis::forgetScript();
  op->args = {redis::recordKey(impl_->opts.key_prefix, id), impl_->channel, redis::hexId(id)};
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void RedisStore::claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) {
  auto op = std::make_unique<ClaimOp>();
  op->script = &redis::claimReconcileScript();
  op->args = {redis::recordKey(impl_->opts.key_prefix, req.id), std::move(req.claimer),
              std::to_string(req.lease_ms)};
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void RedisStore::settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) {
  static constexpr const char* kKind[] = {"0", "1", "2"};  // SettleKind, in order
  auto op = std::make_unique<SettleOp>();
  op->script = &redis::settleReconcileScript();
  op->args = {redis::recordKey(impl_->opts.key_prefix, req.id),
              std::move(req.claimer),
              kKind[static_cast<int>(req.kind)],
              std::to_string(req.answer.status),
              encodeHeaderList(req.answer.headers),
              std::move(req.answer.body),
              std::move(req.owner),
              std::to_string(req.lease_ms),
              std::to_string(req.ttl_ms)};
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void RedisStore::sweep(size_t, std::function<void(WriteResult)> done) {
  done(WriteResult{});
}

std::string RedisStore::unavailableReason() {
  if (impl_->oom.load()) return "Redis refuses writes: used memory is over maxmemory";
  return {};
}

bool RedisStore::ready() const {
  return impl_->up.load();
}

uint64_t RedisStore::watch(const RecordId& id, uint64_t since, std::function<void()> wake) {
  Impl& s = *impl_;
  std::unique_lock lock(s.wmu);
  if (!s.subscribed) {
    lock.unlock();
    wake();  // no wake-ups now: look again (the caller polls)
    return 0;
  }
  bool missed = since < s.lost_before || since < s.dropped_upto;
  for (auto it = s.recent.rbegin(); !missed && it != s.recent.rend() && it->first > since; ++it) {
    missed = it->second == id;
  }
  const uint64_t handle = s.next_handle++;
  if (!missed) {
    s.watchers[id].push_back({handle, std::move(wake)});
    s.watch_ids.emplace(handle, id);
    return handle;
  }
  // A message for it came after the reserve was sent: wake now, outside the lock.
  lock.unlock();
  wake();
  return handle;
}

void RedisStore::unwatch(const RecordId&, uint64_t handle) {
  Impl& s = *impl_;
  std::function<void()> gone;
  {
    std::lock_guard lock(s.wmu);
    auto it = s.watch_ids.find(handle);
    if (it == s.watch_ids.end()) return;
    auto w = s.watchers.find(it->second);
    s.watch_ids.erase(it);
    if (w == s.watchers.end()) return;
    auto& list = w->second;
    for (auto x = list.begin(); x != list.end(); ++x) {
      if (x->handle == handle) {
        gone = std::move(x->wake);
        list.erase(x);
        break;
      }
    }
    if (list.empty()) s.watchers.erase(w);
  }
  // `gone` is destroyed here, outside the lock, on the caller's thread.
}

size_t RedisStore::pendingReleases() const {
  return impl_->lost_count.load();
}

uint64_t RedisStore::wakeMessages() const {
  return impl_->messages.load();
}

bool RedisStore::notifies() const {
  std::lock_guard lock(impl_->wmu);
  return impl_->subscribed;
}

void RedisStore::Impl::countRecords(std::string cursor, uint64_t sofar) {
  auto op = std::make_unique<CommandOp>();
  op->internal = true;
  const bool info = cursor.empty();  // the SCAN is done: the server's memory
  op->args = info ? std::vector<std::string>{"INFO", "memory"}
                  : std::vector<std::string>{"SCAN",  cursor, "MATCH", opts.key_prefix + "{*}",
                                             "COUNT", "1000"};
  CommandOp* self = op.get();
  op->done = [this, self, info, sofar](WriteResult r) {
    if (r.error != StoreError::None) {
      counting = false;
    } else if (info) {
      bytes = r.removed;
      counting = false;
    } else if (self->cursor == "0") {
      records = sofar + r.removed;
      countRecords({}, 0);
    } else {
      countRecords(self->cursor, sofar + r.removed);
    }
  };
  submit(std::move(op));
}

StoreStats RedisStore::stats() {
  const int64_t now =
      std::chrono::duration_cast<std::chrono::milliseconds>(Steady::now().time_since_epoch())
          .count();
  if (now - impl_->counted_at_ms.load() >= 200 && !impl_->counting.exchange(true)) {
    impl_->counted_at_ms = now;
    impl_->countRecords("0", 0);
  }
  StoreStats s;
  s.records = impl_->records.load();
  s.bytes_used = impl_->bytes.load();
  s.operations = impl_->operations.load();
  s.commits = s.operations;  // every script is its own atomic step
  return s;
}

void RedisStore::flush() {
  if (std::this_thread::get_id() == impl_->io_id.load()) return;
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [this] { return impl_->outstanding == 0; });
}

void RedisStore::setCommitObserver(CommitObserver observer) {
  std::lock_guard lock(impl_->observer_mu);
  impl_->observer = std::move(observer);
}

}  // namespace idem
