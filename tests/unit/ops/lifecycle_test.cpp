#include "ops/lifecycle.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "base/c_handles.h"

namespace idem {
namespace {

// A datagram socket standing in for systemd's notification socket: a temp dir, a socket in it,
// NOTIFY_SOCKET pointing at it. Restores the environment afterwards.
class FakeNotifySocket {
 public:
  FakeNotifySocket() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "idemproxy-notify-XXXXXX");
    if (mkdtemp(tmpl.data()) == nullptr) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    dir_ = tmpl;
    path_ = dir_ + "/notify";
    fd_ = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path_.c_str(), sizeof addr.sun_path - 1);
    if (bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
      ADD_FAILURE() << "bind: " << std::strerror(errno);
    }
    setenv("NOTIFY_SOCKET", path_.c_str(), 1);
  }
  ~FakeNotifySocket() {
    unsetenv("NOTIFY_SOCKET");
    close(fd_);
    std::filesystem::remove_all(dir_);
  }
  int fd() const { return fd_; }

  // The next datagram already queued, if any (never blocks).
  std::optional<std::string> next() {
    char buf[4096];
    const ssize_t n = recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    return std::string(buf, static_cast<size_t>(n));
  }

 private:
  std::string dir_;
  std::string path_;
  int fd_ = -1;
};

// Sets environment variables for one test.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    setenv(name, value.c_str(), 1);
  }
  ~ScopedEnv() { unsetenv(name_); }

 private:
  const char* name_;
};

uint64_t monotonicUsec() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<uint64_t>(ts.tv_sec) * 1'000'000u + static_cast<uint64_t>(ts.tv_nsec) / 1000u;
}

// Stops `base` after `ms` even if the test's condition never comes true.
EventPtr deadline(event_base* base, int ms) {
  EventPtr ev(evtimer_new(
      base,
      [](evutil_socket_t, short, void* b) { event_base_loopbreak(static_cast<event_base*>(b)); },
      base));
  timeval tv{ms / 1000, (ms % 1000) * 1000};
  evtimer_add(ev.get(), &tv);
  return ev;
}

TEST(Notifier, WithoutNotifySocketEverythingIsANoOp) {
  unsetenv("NOTIFY_SOCKET");
  unsetenv("WATCHDOG_USEC");
  Notifier n;
  EXPECT_FALSE(n.ready());
  EXPECT_FALSE(n.status("x"));
  EventBasePtr base(event_base_new());
  EXPECT_FALSE(n.startWatchdog(base.get()));
  EXPECT_EQ(n.watchdogInterval().count(), 0);
}

TEST(Notifier, SendsStatesInOrder) {
  FakeNotifySocket sock;
  Notifier n;
  const uint64_t before = monotonicUsec();
  EXPECT_TRUE(n.ready());
  EXPECT_TRUE(n.reloading());
  const uint64_t after = monotonicUsec();
  EXPECT_TRUE(n.ready());
  EXPECT_TRUE(n.status("draining 3 exchanges\nINJECTED=1"));
  EXPECT_TRUE(n.stopping());

  EXPECT_EQ(sock.next(), "READY=1");
  auto reloading = sock.next();
  ASSERT_TRUE(reloading);
  ASSERT_TRUE(reloading->starts_with("RELOADING=1\nMONOTONIC_USEC=")) << *reloading;
  const uint64_t usec = std::stoull(reloading->substr(std::strlen("RELOADING=1\nMONOTONIC_USEC=")));
  EXPECT_GE(usec, before);
  EXPECT_LE(usec, after);
  EXPECT_EQ(sock.next(), "READY=1");
  EXPECT_EQ(sock.next(), "STATUS=draining 3 exchanges INJECTED=1");  // no second assignment
  EXPECT_EQ(sock.next(), "STOPPING=1");
  EXPECT_EQ(sock.next(), std::nullopt);
}

struct WatchdogProbe {
  FakeNotifySocket* sock;
  event_base* base;
  int pings = 0;
  std::vector<std::string> others;
};

TEST(Notifier, WatchdogPingsAtHalfTheInterval) {
  FakeNotifySocket sock;
  ScopedEnv usec("WATCHDOG_USEC", "100000");
  ScopedEnv pid("WATCHDOG_PID", std::to_string(getpid()));
  EventBasePtr base(event_base_new());
  Notifier n;
  // Timers never fire early, so measured from before the watchdog starts, three pings at half
  // the interval take at least 150ms however slow the machine is.
  const uint64_t start = monotonicUsec();
  ASSERT_TRUE(n.startWatchdog(base.get()));
  EXPECT_EQ(n.watchdogInterval().count(), 100000);

  WatchdogProbe probe{&sock, base.get(), 0, {}};
  EventPtr reader(event_new(
      base.get(), sock.fd(), EV_READ | EV_PERSIST,
      [](evutil_socket_t, short, void* p) {
        auto* pr = static_cast<WatchdogProbe*>(p);
        while (auto msg = pr->sock->next()) {
          if (*msg == "WATCHDOG=1") {
            ++pr->pings;
          } else {
            pr->others.push_back(*msg);
          }
        }
        if (pr->pings >= 3) event_base_loopbreak(pr->base);
      },
      &probe));
  event_add(reader.get(), nullptr);
  EventPtr stop = deadline(base.get(), 5000);
  event_base_dispatch(base.get());
  const uint64_t elapsed = monotonicUsec() - start;

  EXPECT_EQ(probe.pings, 3);
  EXPECT_TRUE(probe.others.empty());
  EXPECT_EQ(n.watchdogPings(), 3u);
  // Three pings every 50ms: about 150ms, well under the 5s deadline.
  EXPECT_GE(elapsed, 145'000u);
  EXPECT_LT(elapsed, 4'000'000u);
}

TEST(Notifier, WatchdogForAnotherPidIsNotOurs) {
  FakeNotifySocket sock;
  ScopedEnv usec("WATCHDOG_USEC", "100000");
  ScopedEnv pid("WATCHDOG_PID", std::to_string(getpid() + 1));
  EventBasePtr base(event_base_new());
  Notifier n;
  EXPECT_FALSE(n.startWatchdog(base.get()));
}

TEST(Notifier, UnhealthySkipsPings) {
  FakeNotifySocket sock;
  ScopedEnv usec("WATCHDOG_USEC", "20000");
  ScopedEnv pid("WATCHDOG_PID", std::to_string(getpid()));
  EventBasePtr base(event_base_new());
  Notifier n;
  int asked = 0;
  ASSERT_TRUE(n.startWatchdog(base.get(), [&] {
    if (++asked == 3) event_base_loopbreak(base.get());
    return false;
  }));
  EventPtr stop = deadline(base.get(), 5000);
  event_base_dispatch(base.get());
  EXPECT_EQ(asked, 3);
  EXPECT_EQ(n.watchdogPings(), 0u);
  EXPECT_EQ(sock.next(), std::nullopt);
  n.stopWatchdog();
  EXPECT_EQ(n.watchdogInterval().count(), 0);
}

TEST(SignalHandlers, SighupReloadsAndSigtermTerminates) {
  EventBasePtr base(event_base_new());
  int reloads = 0;
  int terminates = 0;
  auto handlers = SignalHandlers::install(base.get(), {.terminate = [&] { ++terminates; },
                                                       .reload =
                                                           [&] {
                                                             ++reloads;
                                                             event_base_loopbreak(base.get());
                                                           }});
  ASSERT_NE(handlers, nullptr);
  EventPtr stop = deadline(base.get(), 5000);
  ASSERT_EQ(raise(SIGHUP), 0);  // libevent's handler only queues it; the callback runs in the loop
  EXPECT_EQ(reloads, 0);
  event_base_dispatch(base.get());
  EXPECT_EQ(reloads, 1);
  EXPECT_EQ(terminates, 0);

  // SIGTERM and SIGINT both terminate.
  handlers.reset();
  auto again = SignalHandlers::install(base.get(), {.terminate =
                                                        [&] {
                                                          ++terminates;
                                                          event_base_loopbreak(base.get());
                                                        },
                                                    .reload = nullptr});
  ASSERT_NE(again, nullptr);
  ASSERT_EQ(raise(SIGTERM), 0);
  event_base_dispatch(base.get());
  EXPECT_EQ(terminates, 1);
  ASSERT_EQ(raise(SIGINT), 0);
  event_base_dispatch(base.get());
  EXPECT_EQ(terminates, 2);
}

TEST(SignalHandlers, ThrowingCallbackDoesNotEscapeTheLoop) {
  EventBasePtr base(event_base_new());
  bool called = false;
  auto handlers = SignalHandlers::install(base.get(), {.terminate = nullptr, .reload = [&] {
                                                         called = true;
                                                         event_base_loopbreak(base.get());
                                                         throw std::runtime_error("boom");
                                                       }});
  ASSERT_NE(handlers, nullptr);
  EventPtr stop = deadline(base.get(), 5000);
  ASSERT_EQ(raise(SIGHUP), 0);
  event_base_dispatch(base.get());
  EXPECT_TRUE(called);
}

}  // namespace
}  // namespace idem
