// An answer past max_response_body, streamed to the first client (SPEC: "passed to the client
// and recorded as response-not-replayable"). By the time streamAnswer runs its outcome is
// settled: the compact record is durable (or the key released, for a released status). The
// upstream is read only while the client takes what is queued, so memory stays bounded however
// large the body and however slow the client; a client that goes away ends the exchange (the
// upstream connection is closed, never pooled mid-body) without touching the record.
#include <charconv>

#include "request/request.h"

namespace idem {

void ProxyRequest::streamAnswer(const HttpAnswer& answer, Outcome outcome,
                                std::string_view detail) {
  if (state_ == RequestState::Responded) return;
  setState(RequestState::Streaming);
  // The upstream's Content-Length (no transfer coding) frames the streamed body too; otherwise
  // it goes out chunked.
  int64_t length = Downstream::kUnknownLength;
  client_->beginReply(answer.status);
  for (const auto& h : answer.headers) {
    if (iequals(h.name, "Content-Length")) {
      const std::string_view v = h.value;
      int64_t n = 0;
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec == std::errc() && p == v.data() + v.size() && n >= 0) length = n;
      continue;
    }
    client_->addField(h.name, h.value);
  }
  report(answer.status, outcome, detail);
  std::weak_ptr<ProxyRequest> weak = weak_from_this();
  client_->startBody(length, shared_.draining(), [weak] {
    if (auto self = weak.lock()) self->onClientWritable();
  });
  if (client_->gone()) {
    endStream(false, "the client went away");
    return;
  }
  bool paused = false;
  if (!answer.body.empty() && !client_->writeBody(answer.body)) {
    if (client_->gone()) {
      endStream(false, "the client went away");
      return;
    }
    paused = true;
  }
  // The callbacks keep this request alive while the stream runs (rest_ is dropped at its end).
  rest_->start([self = shared_from_this()](std::string_view piece) { self->onStreamData(piece); },
               [self = shared_from_this()](bool complete, std::string_view why) {
                 self->onStreamEnd(complete, why);
               });
  if (paused) rest_->pause();
}

void ProxyRequest::onStreamData(std::string_view piece) {
  if (state_ != RequestState::Streaming) return;
  if (client_->writeBody(piece)) return;
  if (client_->gone()) {
    endStream(false, "the client went away");
    return;
  }
  rest_->pause();  // resumed by onClientWritable once the client took what is queued
}

void ProxyRequest::onClientWritable() {
  if (state_ != RequestState::Streaming) return;
  if (client_->gone()) {
    endStream(false, "the client went away");
    return;
  }
  rest_->resume();
}

void ProxyRequest::onStreamEnd(bool complete, std::string_view detail) {
  if (state_ != RequestState::Streaming) return;
  client_->endBody(complete);
  endStream(complete, detail);
}

void ProxyRequest::endStream(bool complete, std::string_view why) {
  setState(RequestState::Responded);
  if (!complete) {
    shared_.observer().event("stream-cut-short", route_->name, why);
    client_->endBody(false);  // a no-op when the client is gone or it was ended already
  }
  rest_.reset();  // closes the upstream connection if the body is not over
}

}  // namespace idem