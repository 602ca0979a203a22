#pragma once
// Process lifecycle (SPEC §7): systemd notifications (Type=notify), the watchdog, and the
// signals that stop (SIGTERM, SIGINT) and reload (SIGHUP) the daemon. Knows nothing of
// requests: main wires the callbacks to drain and reload.
//
// Typical wiring, all on the main thread's event_base:
//   Notifier notifier;
//   SignalHandlers::Callbacks cb;
//   cb.terminate = [&] { notifier.stopping(); beginDrain(); };
//   cb.reload = [&] { notifier.reloading(); reloadConfig(); notifier.ready(); };
//   auto signals = SignalHandlers::install(base, std::move(cb));
//   notifier.startWatchdog(base, [&] { return workersAlive(); });
//   notifier.ready();
//   event_base_dispatch(base);
#include <event2/event.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string_view>

#include "base/c_handles.h"

namespace idem {

// Sends sd_notify(3) messages to $NOTIFY_SOCKET. Without systemd (the variable unset) every
// call is a cheap no-op returning false, so main needs no "under systemd?" branches.
// Not thread-safe: use from the thread that runs the watchdog's event_base.
class Notifier {
 public:
  Notifier() = default;
  ~Notifier();
  Notifier(const Notifier&) = delete;
  Notifier& operator=(const Notifier&) = delete;

  // Each returns true when the message was sent, false when there is no NOTIFY_SOCKET or the
  // send failed (nothing a daemon can do about it but carry on).
  bool ready();  // "READY=1": also after a reload finished, whether it succeeded or not
  // "RELOADING=1" + "MONOTONIC_USEC=<CLOCK_MONOTONIC µs>" (systemd ≥ 253 needs the latter for
  // Type=notify-reload; older versions ignore it). Follow with ready() when done.
  bool reloading();
  bool stopping();                     // "STOPPING=1"
  bool status(std::string_view text);  // "STATUS=<text>", newlines replaced by spaces
  // Sends raw assignments ("A=1\nB=2"); the methods above are built on it.
  bool notify(std::string_view state);

  // When the service manager asked for a watchdog (WATCHDOG_USEC set and WATCHDOG_PID, if
  // present, is this process), pings "WATCHDOG=1" every half interval with a persistent timer
  // on `base`, so a stuck event loop stops the pings. `healthy`, if given, is asked before each
  // ping (e.g. "every worker loop ticked recently"); false skips the ping, and systemd restarts
  // the service once the interval passes. Returns true when the timer is armed. Calling it
  // again re-arms on the new base. `base` must outlive the timer (stopWatchdog or ~Notifier).
  bool startWatchdog(event_base* base, std::function<bool()> healthy = {});
  void stopWatchdog();
  // The interval systemd expects pings within; zero when no watchdog is running.
  std::chrono::microseconds watchdogInterval() const { return watchdogInterval_; }
  uint64_t watchdogPings() const { return pings_; }

 private:
  static void onWatchdogTimer(evutil_socket_t, short, void* self);

  EventPtr watchdogTimer_;
  std::function<bool()> healthy_;
  std::chrono::microseconds watchdogInterval_{0};
  uint64_t pings_ = 0;
};

// SIGTERM and SIGINT → terminate; SIGHUP → reload; delivered as events on `base` (never in
// signal context), so the callbacks may do anything the loop thread may. A second SIGTERM
// calls terminate again: the callback decides whether that means "exit now".
// libevent routes a signal to one base only: install on the main thread's base, once.
// Destroying the object restores the previous dispositions.
class SignalHandlers {
 public:
  struct Callbacks {
    std::function<void()> terminate;
    std::function<void()> reload;
  };
  // nullptr when libevent cannot register the signals.
  [[nodiscard]] static std::unique_ptr<SignalHandlers> install(event_base* base,
                                                               Callbacks callbacks);
  ~SignalHandlers() = default;
  SignalHandlers(const SignalHandlers&) = delete;
  SignalHandlers& operator=(const SignalHandlers&) = delete;

 private:
  explicit SignalHandlers(Callbacks callbacks) : callbacks_(std::move(callbacks)) {}
  static void onSignal(evutil_socket_t signo, short, void* self);

  Callbacks callbacks_;
  EventPtr term_;
  EventPtr intr_;
  EventPtr hup_;
};

// A server must not die of SIGPIPE when a peer closes early; call once at startup.
void ignoreSigpipe();

}  // namespace idem
