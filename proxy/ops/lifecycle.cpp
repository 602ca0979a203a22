#include "ops/lifecycle.h"

#include <signal.h>
#include <sys/time.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdio>
#include <exception>
#include <string>

#include "base/log.h"

namespace idem {

// ---- Notifier -------------------------------------------------------------------------------

Notifier::~Notifier() {
  stopWatchdog();
}

bool Notifier::notify(std::string_view state) {
  const std::string msg(state);
  return sd_notify(0, msg.c_str()) > 0;
}

bool Notifier::ready() {
  return notify("READY=1");
}

bool Notifier::reloading() {
  struct timespec ts {};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  const auto usec = static_cast<unsigned long long>(ts.tv_sec) * 1'000'000ull +
                    static_cast<unsigned long long>(ts.tv_nsec) / 1'000ull;
  char buf[64];
  std::snprintf(buf, sizeof buf, "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
  return notify(buf);
}

bool Notifier::stopping() {
  return notify("STOPPING=1");
}

bool Notifier::status(std::string_view text) {
  std::string msg = "STATUS=";
  for (char c : text) msg += (c == '\n' || c == '\r' || c == '\0') ? ' ' : c;
  return notify(msg);
}

bool Notifier::startWatchdog(event_base* base, std::function<bool()> healthy) {
  stopWatchdog();
  uint64_t usec = 0;
  // > 0: enabled for this process (checks WATCHDOG_PID against getpid()).
  if (base == nullptr || sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) return false;
  EventPtr timer(event_new(base, -1, EV_PERSIST, &Notifier::onWatchdogTimer, this));
  if (!timer) return false;
  const uint64_t half = usec / 2;
  struct timeval tv {};
  tv.tv_sec = static_cast<time_t>(half / 1'000'000);
  tv.tv_usec = static_cast<suseconds_t>(half % 1'000'000);
  if (event_add(timer.get(), &tv) != 0) return false;
  watchdogTimer_ = std::move(timer);
  healthy_ = std::move(healthy);
  watchdogInterval_ = std::chrono::microseconds(usec);
  log::info("watchdog_started", {{"interval_ms", usec / 1000}});
  return true;
}

void Notifier::stopWatchdog() {
  watchdogTimer_.reset();  // event_free deletes a pending event
  healthy_ = nullptr;
  watchdogInterval_ = std::chrono::microseconds(0);
}

void Notifier::onWatchdogTimer(evutil_socket_t, short, void* self) {
  auto* n = static_cast<Notifier*>(self);
  bool ok = true;
  if (n->healthy_) {
    try {
      ok = n->healthy_();
    } catch (const std::exception& e) {  // no exception crosses a libevent callback
      log::error("watchdog_health_check_threw", {{"what", e.what()}});
      ok = false;
    } catch (...) {
      ok = false;
    }
  }
  if (!ok) {
    log::warn("watchdog_ping_skipped", {{"reason", "unhealthy"}});
    return;
  }
  if (n->notify("WATCHDOG=1")) ++n->pings_;
}

// ---- SignalHandlers -------------------------------------------------------------------------

std::unique_ptr<SignalHandlers> SignalHandlers::install(event_base* base, Callbacks callbacks) {
  if (base == nullptr) return nullptr;
  std::unique_ptr<SignalHandlers> h(new SignalHandlers(std::move(callbacks)));
  auto make = [&](int signo, EventPtr& slot) {
    slot.reset(evsignal_new(base, signo, &SignalHandlers::onSignal, h.get()));
    return slot && event_add(slot.get(), nullptr) == 0;
  };
  if (!make(SIGTERM, h->term_) || !make(SIGINT, h->intr_) || !make(SIGHUP, h->hup_)) {
    return nullptr;
  }
  return h;
}

void SignalHandlers::onSignal(evutil_socket_t signo, short, void* self) {
  auto* h = static_cast<SignalHandlers*>(self);
  const bool reload = signo == SIGHUP;
  log::info("signal", {{"signal", reload ? "SIGHUP" : signo == SIGTERM ? "SIGTERM" : "SIGINT"}});
  const std::function<void()>& cb = reload ? h->callbacks_.reload : h->callbacks_.terminate;
  if (!cb) return;
  try {
    cb();
  } catch (const std::exception& e) {  // no exception crosses a libevent callback
    log::error("signal_handler_threw", {{"signal", static_cast<int>(signo)}, {"what", e.what()}});
  } catch (...) {
    log::error("signal_handler_threw", {{"signal", static_cast<int>(signo)}});
  }
}

void ignoreSigpipe() {
  struct sigaction sa {};
  sa.sa_handler = SIG_IGN;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGPIPE, &sa, nullptr);
}

}  // namespace idem
