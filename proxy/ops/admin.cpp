#include "ops/admin.h"

#include <event2/listener.h>

#include "http/server.h"

namespace idem {

AdminServer::AdminServer(event_base* base, MetricsRegistry& metrics, std::function<bool()> ready)
    : base_(base), metrics_(metrics), ready_(std::move(ready)) {}

AdminServer::~AdminServer() = default;

bool AdminServer::start(const ListenAddress& address, std::string& error) {
  int fd = openListener(address, error, &port_);
  if (fd < 0) return false;
  http_.reset(evhttp_new(base_));
  evhttp_set_allowed_methods(http_.get(), EVHTTP_REQ_GET | EVHTTP_REQ_HEAD);
  evhttp_set_default_content_type(http_.get(), nullptr);
  evhttp_set_gencb(http_.get(), &AdminServer::onRequest, this);
  evconnlistener* listener =
      evconnlistener_new(base_, nullptr, nullptr, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 0, fd);
  if (listener == nullptr || evhttp_bind_listener(http_.get(), listener) == nullptr) {
    error = "cannot attach the admin listener";
    return false;
  }
  return true;
}

void AdminServer::onRequest(evhttp_request* req, void* arg) {
  auto* self = static_cast<AdminServer*>(arg);
  const evhttp_uri* uri = evhttp_request_get_evhttp_uri(req);
  const char* p = uri ? evhttp_uri_get_path(uri) : nullptr;
  const std::string path = p ? p : "";
  evkeyvalq* out = evhttp_request_get_output_headers(req);
  evbuffer* body = evhttp_request_get_output_buffer(req);
  int status = 200;
  if (path == "/metrics") {
    const std::string text = self->metrics_.renderPrometheus();
    evhttp_add_header(out, "Content-Type", std::string(MetricsRegistry::kContentType).c_str());
    evbuffer_add(body, text.data(), text.size());
  } else if (path == "/healthz") {
    evhttp_add_header(out, "Content-Type", "text/plain");
    evbuffer_add_printf(body, "ok\n");
  } else if (path == "/readyz") {
    const bool ready = self->ready_();
    status = ready ? 200 : 503;
    evhttp_add_header(out, "Content-Type", "text/plain");
    evbuffer_add_printf(body, ready ? "ready\n" : "not ready\n");
  } else {
    status = 404;
    evhttp_add_header(out, "Content-Type", "text/plain");
    evbuffer_add_printf(body, "not found\n");
  }
  evhttp_send_reply(req, status,
                    status == 200   ? "OK"
                    : status == 503 ? "Service Unavailable"
                                    : "Not Found",
                    nullptr);
}

}  // namespace idem
