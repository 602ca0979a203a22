// Wake-ups across processes: one listening connection per store (the I/O thread's), LISTEN on
// the records table's channel; each notification names a key whose in-flight record settled,
// and wakes the requests watching it.
//
// No lost wake-up between a reserve and its watch: every notification and every (re)connect of
// the listener advances `wake_seq`; a reserve carries the sequence of when it was sent. A
// settle that the reserve did not see committed after the reserve ran, so after it was sent,
// and its notification (delivered only after that commit) is counted after that sequence. So
// watch(id, since) fires at once when a notification for id, or a reconnect, came after
// `since`, or when `recent` no longer reaches back that far; otherwise it waits for the next.
// While the listener is down nothing is promised (notifies() is false): waiters poll.
#include <poll.h>

#include "base/log.h"
#include "store/postgres/postgres_impl.h"

namespace idem {

namespace {

bool parseHexId(const char* hex, RecordId& id) {
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < id.size(); ++i) {
    if (hex[2 * i] == '\0' || hex[2 * i + 1] == '\0') return false;
    const int hi = nibble(hex[2 * i]);
    const int lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    id[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return hex[2 * id.size()] == '\0';
}

}  // namespace

void PostgresStore::Impl::listenStep(Steady::time_point now) {
  Listener& l = listener;
  if (l.state == Listener::State::Down) {
    // schema_ready first: `channel` is written before it is set (by the opener thread).
    if (!schema_ready.load() || channel.empty() || now < l.retry_at) return;
    l.pg.reset(PQconnectStart(opts.conninfo.c_str()));
    l.deadline = now + opts.timeout;
    if (!l.pg || PQstatus(l.pg.get()) == CONNECTION_BAD) {
      dropListener(now, pgio::lastError(l.pg.get()));
      return;
    }
    l.state = Listener::State::Connecting;
    l.polling = PGRES_POLLING_WRITING;
  } else if (l.state != Listener::State::Listening && now >= l.deadline) {
    dropListener(now, "listen timed out");
  }
}

short PostgresStore::Impl::listenEvents() const {
  switch (listener.state) {
    case Listener::State::Down:
      return 0;
    case Listener::State::Connecting:
      return listener.polling == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    case Listener::State::Subscribing:
      return static_cast<short>(POLLIN | (listener.flushing ? POLLOUT : 0));
    case Listener::State::Listening:
      return POLLIN;
  }
  return 0;
}

void PostgresStore::Impl::onListen(Steady::time_point now) {
  Listener& l = listener;
  PGconn* c = l.pg.get();
  if (l.state == Listener::State::Connecting) {
    l.polling = PQconnectPoll(c);
    if (l.polling == PGRES_POLLING_FAILED) {
      dropListener(now, pgio::lastError(c));
      return;
    }
    if (l.polling != PGRES_POLLING_OK) return;
    char* quoted = PQescapeIdentifier(c, channel.data(), channel.size());
    const bool sent = quoted != nullptr && PQsetnonblocking(c, 1) == 0 &&
                      PQsendQuery(c, ("LISTEN " + std::string(quoted)).c_str()) == 1;
    if (quoted != nullptr) PQfreemem(quoted);
    const int f = sent ? PQflush(c) : -1;
    if (f < 0) {
      dropListener(now, pgio::lastError(c));
      return;
    }
    l.flushing = f == 1;
    l.state = Listener::State::Subscribing;
    return;
  }
  if (l.flushing) {
    const int f = PQflush(c);
    if (f < 0) {
      dropListener(now, pgio::lastError(c));
      return;
    }
    l.flushing = f == 1;
  }
  if (PQconsumeInput(c) == 0 || PQstatus(c) == CONNECTION_BAD) {
    dropListener(now, pgio::lastError(c));
    return;
  }
  if (l.state == Listener::State::Subscribing) {
    while (PQisBusy(c) == 0) {
      pgio::ResultPtr r(PQgetResult(c));
      if (!r) {
        l.state = Listener::State::Listening;
        if (l.backoff.count() > 0) log::info("store-listening", {});
        l.backoff = std::chrono::milliseconds(0);
        listening = true;
        notified(nullptr);  // anything settled before now was not heard: look again
        break;
      }
      if (PQresultStatus(r.get()) != PGRES_COMMAND_OK) {
        dropListener(now, PQresultErrorMessage(r.get()));
        return;
      }
    }
  }
  while (PGnotify* n = PQnotifies(c)) {
    RecordId id{};
    if (parseHexId(n->extra, id)) notified(&id);
    PQfreemem(n);
  }
}

void PostgresStore::Impl::dropListener(Steady::time_point now, const std::string& why) {
  Listener& l = listener;
  const bool was = l.state == Listener::State::Listening;
  if (was || l.backoff.count() == 0) {
    log::warn("store-listen-failed", {{"error", why}});
  }
  listening = false;
  l.pg.reset();
  l.state = Listener::State::Down;
  l.flushing = false;
  l.backoff = std::min(opts.max_backoff, std::max(std::chrono::milliseconds(50), l.backoff * 2));
  l.retry_at = now + l.backoff;
}

void PostgresStore::Impl::notified(const RecordId* id) {
  std::vector<std::function<void()>> wake;
  {
    std::lock_guard lock(watch_mu);
    ++wake_seq;
    recent.emplace_back(wake_seq, id != nullptr ? std::optional<RecordId>(*id) : std::nullopt);
    if (recent.size() > kRecentNotifications) {
      forgotten_upto = recent.front().first;
      recent.pop_front();
    }
    auto take = [&wake](std::vector<Watcher>& ws) {
      for (Watcher& w : ws) wake.push_back(std::move(w.wake));
    };
    if (id == nullptr) {
      for (auto& [key, ws] : watchers) take(ws);
      watchers.clear();
    } else if (auto it = watchers.find(*id); it != watchers.end()) {
      take(it->second);
      watchers.erase(it);
    }
  }
  if (id != nullptr) notifications.fetch_add(1, std::memory_order_relaxed);
  for (auto& w : wake) w();
}

uint64_t PostgresStore::Impl::watch(const RecordId& id, uint64_t since,
                                    std::function<void()> wake) {
  bool now = false;
  uint64_t handle = 0;
  {
    std::lock_guard lock(watch_mu);
    now = since < forgotten_upto;
    for (auto it = recent.rbegin(); !now && it != recent.rend() && it->first > since; ++it) {
      now = !it->second || *it->second == id;
    }
    if (!now) {
      handle = next_handle++;
      watchers[id].push_back({handle, std::move(wake)});
    }
  }
  if (now) wake();
  return handle;
}

void PostgresStore::Impl::unwatch(const RecordId& id, uint64_t handle) {
  std::lock_guard lock(watch_mu);
  auto it = watchers.find(id);
  if (it == watchers.end()) return;
  auto& ws = it->second;
  ws.erase(std::remove_if(ws.begin(), ws.end(),
                          [handle](const Watcher& w) { return w.handle == handle; }),
           ws.end());
  if (ws.empty()) watchers.erase(it);
}

}  // namespace idem
