#pragma once
// The admin listener (SPEC §7): /healthz, /readyz, /metrics. Runs on the main thread's loop;
// knows nothing of request semantics.
#include <functional>
#include <string>

#include "base/c_handles.h"
#include "config/config.h"
#include "ops/metrics.h"

namespace idem {

class AdminServer {
 public:
  // `ready` answers /readyz (store open, config loaded, not draining).
  AdminServer(event_base* base, MetricsRegistry& metrics, std::function<bool()> ready);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  bool start(const ListenAddress& address, std::string& error);
  uint16_t port() const { return port_; }

 private:
  static void onRequest(evhttp_request* req, void* arg);

  event_base* base_;
  MetricsRegistry& metrics_;
  std::function<bool()> ready_;
  EvhttpPtr http_;
  uint16_t port_ = 0;
};

}  // namespace idem
