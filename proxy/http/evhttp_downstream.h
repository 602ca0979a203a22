#pragma once
// The Downstream seam over libevent's evhttp: one evhttp_request as the request core's client.
#include <event2/http.h>

#include <string>

#include "request/downstream.h"
#include "request/problem.h"

namespace idem {

class EvhttpDownstream final : public Downstream {
 public:
  explicit EvhttpDownstream(evhttp_request* req);
  ~EvhttpDownstream() override;
  EvhttpDownstream(const EvhttpDownstream&) = delete;
  EvhttpDownstream& operator=(const EvhttpDownstream&) = delete;

  std::string_view method() const override;
  std::string_view target() const override;
  void forEachField(FieldVisitor fn) const override;
  std::string_view body() const override { return body_; }
  std::string_view peer() const override { return peer_; }

  void beginReply(int status) override;
  void addField(std::string_view name, std::string_view value) override;
  void endReply(std::string_view body, bool close) override;

  // Framing evhttp accepts but RFC 9112 §6.3 says to refuse (conflicting Content-Length
  // fields, Content-Length with Transfer-Encoding): the reason, or "" when the framing is sound.
  static std::string framingError(evhttp_request* req);

 private:
  evhttp_request* req_;  // nullptr once answered
  std::string_view body_;
  std::string peer_;
  int status_ = 0;
  std::string field_;  // "name\0value\0" for evhttp's NUL-terminated API
};

// Answers `req` with a problem body at once (for refusals before a request exists).
void sendEvhttpProblem(evhttp_request* req, Problem p, std::string_view detail, bool close);

}  // namespace idem
