#include "http/evhttp_downstream.h"

#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

#include "base/http_types.h"

namespace idem {

namespace {

const char* reasonPhrase(int status) {
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 202:
      return "Accepted";
    case 204:
      return "No Content";
    case 301:
      return "Moved Permanently";
    case 302:
      return "Found";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 402:
      return "Payment Required";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 409:
      return "Conflict";
    case 413:
      return "Content Too Large";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    default:
      return "Status";
  }
}

}  // namespace

EvhttpDownstream::EvhttpDownstream(evhttp_request* req) : req_(req) {
  evbuffer* body = evhttp_request_get_input_buffer(req_);
  const size_t n = evbuffer_get_length(body);
  // Left in evhttp's buffer (made contiguous): copied only when the request is forwarded.
  if (n > 0) body_ = std::string_view(reinterpret_cast<const char*>(evbuffer_pullup(body, -1)), n);
  char* addr = nullptr;
  ev_uint16_t port = 0;
  if (evhttp_connection* conn = evhttp_request_get_connection(req_)) {
    evhttp_connection_get_peer(conn, &addr, &port);
  }
  if (addr != nullptr) peer_ = addr;
}

EvhttpDownstream::~EvhttpDownstream() {
  // Every request is answered; should one not be, evhttp must still free it.
  if (req_ != nullptr) evhttp_send_reply(req_, 500, "Internal Server Error", nullptr);
}

std::string_view EvhttpDownstream::method() const {
  switch (evhttp_request_get_command(req_)) {
    case EVHTTP_REQ_GET:
      return "GET";
    case EVHTTP_REQ_POST:
      return "POST";
    case EVHTTP_REQ_HEAD:
      return "HEAD";
    case EVHTTP_REQ_PUT:
      return "PUT";
    case EVHTTP_REQ_DELETE:
      return "DELETE";
    case EVHTTP_REQ_OPTIONS:
      return "OPTIONS";
    case EVHTTP_REQ_TRACE:
      return "TRACE";
    case EVHTTP_REQ_CONNECT:
      return "CONNECT";
    case EVHTTP_REQ_PATCH:
      return "PATCH";
  }
  return "GET";
}

std::string_view EvhttpDownstream::target() const {
  const char* uri = evhttp_request_get_uri(req_);
  return uri != nullptr ? uri : "";
}

void EvhttpDownstream::forEachField(FieldVisitor fn) const {
  const evkeyvalq* in = evhttp_request_get_input_headers(req_);
  for (const evkeyval* kv = in->tqh_first; kv != nullptr; kv = kv->next.tqe_next) {
    fn(kv->key, kv->value);
  }
}

void EvhttpDownstream::beginReply(int status) {
  status_ = status;
}

void EvhttpDownstream::addField(std::string_view name, std::string_view value) {
  if (req_ == nullptr) return;
  field_.assign(name);
  field_.push_back('\0');
  field_.append(value);
  evhttp_add_header(evhttp_request_get_output_headers(req_), field_.c_str(),
                    field_.c_str() + name.size() + 1);
}

void EvhttpDownstream::endReply(std::string_view body, bool close) {
  if (req_ == nullptr) return;
  if (close) evhttp_add_header(evhttp_request_get_output_headers(req_), "Connection", "close");
  evbuffer_add(evhttp_request_get_output_buffer(req_), body.data(), body.size());
  evhttp_send_reply(req_, status_, reasonPhrase(status_), nullptr);
  req_ = nullptr;
}

std::string EvhttpDownstream::framingError(evhttp_request* req) {
  const evkeyvalq* in = evhttp_request_get_input_headers(req);
  const char* contentLength = nullptr;
  bool conflicting = false;
  bool transferEncoding = false;
  for (const evkeyval* kv = in->tqh_first; kv != nullptr; kv = kv->next.tqe_next) {
    if (iequals(kv->key, "Content-Length")) {
      conflicting |= contentLength != nullptr && std::string_view(contentLength) != kv->value;
      contentLength = kv->value;
    } else if (iequals(kv->key, "Transfer-Encoding")) {
      transferEncoding = true;
    }
  }
  if (conflicting || (transferEncoding && contentLength != nullptr)) {
    return "the request's message framing is ambiguous";
  }
  return {};
}

void sendEvhttpProblem(evhttp_request* req, Problem p, std::string_view detail, bool close) {
  EvhttpDownstream d(req);
  const HttpAnswer a = problemAnswer(p, detail);
  d.beginReply(a.status);
  for (const Header& h : a.headers) d.addField(h.name, h.value);
  d.endReply(a.body, close);
}

}  // namespace idem
