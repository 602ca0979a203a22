#pragma once
// The client side of one request, as the request core sees it: the parsed request and a sink for
// the one answer it gets. The front server implements it on its connections; unit tests
// implement it with a recorder. The core never sees sockets, parsers or framing.
#include <cstdint>
#include <functional>
#include <string_view>

#include "base/function_ref.h"

namespace idem {

using FieldVisitor = FunctionRef<void(std::string_view name, std::string_view value)>;

class Downstream {
 public:
  virtual ~Downstream() = default;

  // ---- The request. Views stay valid until endReply() returns (or the Downstream dies). ----
  virtual std::string_view method() const = 0;  // e.g. "POST"
  // The request-target exactly as it came on the request line (origin-form "/a/b?q" or
  // absolute-form "http://h/a/b?q"); the core splits and checks it.
  virtual std::string_view target() const = 0;
  // Every header field in wire order, repeats kept; names as sent (compare case-insensitively).
  virtual void forEachField(FieldVisitor fn) const = 0;
  virtual std::string_view body() const = 0;  // de-chunked; empty when none
  virtual std::string_view peer() const = 0;  // the client's address, e.g. "127.0.0.1"

  // ---- The answer: beginReply, addField per field in order, endReply; once per request. ----
  // Framing is the sink's own: it writes Content-Length from the body (a HEAD answer keeps the
  // Content-Length field it is given instead and sends no body), a Date field when none is
  // given, and `Connection: close` (then closes after the write) when `close` is set or the
  // server decides so itself. A client that is gone by now makes these calls no-ops. The core
  // answers every request it is given, so a Downstream is never destroyed unanswered.
  virtual void beginReply(int status) = 0;
  virtual void addField(std::string_view name, std::string_view value) = 0;
  virtual void endReply(std::string_view body, bool close) = 0;

  // ---- A streamed answer (a body too large to hold): beginReply, addField per field, then
  // startBody instead of endReply, writeBody per piece as the body comes, endBody once. ----
  static constexpr int64_t kUnknownLength = -1;
  // Sends the head. `length`: the body's size when known (sent as Content-Length), else
  // kUnknownLength (sent chunked; to an HTTP/1.0 client, ended by closing the connection).
  // `writable` runs from the loop, never inside these calls: each time the client has taken
  // what was queued after writeBody returned false, and once if the client goes away (gone()
  // is true then). It is dropped by endBody.
  virtual void startBody(int64_t length, bool close, std::function<void()> writable) = 0;
  // Queues a piece. False: the client's queue is over its bound (memory stays bounded) or the
  // client is gone; write again when `writable` runs.
  virtual bool writeBody(std::string_view piece) = 0;
  // The body is over. Not `complete` (cut short): the client must see it is incomplete, so the
  // connection closes without the framing's end.
  virtual void endBody(bool complete) = 0;
  // The client's connection is closed: nothing written reaches anyone.
  virtual bool gone() const = 0;
};

}  // namespace idem
