#pragma once
// One client connection of the FrontServer: its socket, its input buffer, the parser and the
// answer being written. Internal to the front door (front_server.cpp is the only user).
//
// A request's method, target and fields are views into the input buffer, kept as offsets while
// the head is read (the buffer may still grow then) and turned into views when the request is
// complete. While the request is out with the handler the buffer neither moves nor grows, so
// the views hold; the connection object itself is shared with the request's Downstream, which
// keeps the memory alive after the socket is gone.
#include <http_parser.h>
#include <sys/socket.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "base/c_handles.h"
#include "request/downstream.h"
#include "request/problem.h"

namespace idem {

class FrontServer;

class FrontConnection : public std::enable_shared_from_this<FrontConnection> {
 public:
  FrontConnection(FrontServer& server, int fd, const sockaddr* peer);
  ~FrontConnection();
  FrontConnection(const FrontConnection&) = delete;
  FrontConnection& operator=(const FrontConnection&) = delete;

  // Registers the events; the connection owns itself until it closes.
  void start();
  // Close at once (no answer). Safe to call twice; the server forgets the connection.
  void closeNow();
  // Drain: close now if no request is in progress.
  void closeIfIdle();
  bool closed() const { return fd_ < 0; }

  // ---- The request being served (for FrontRequest) ----
  std::string_view method() const { return method_; }
  std::string_view target() const { return view(url_); }
  void forEachField(FieldVisitor fn) const;
  std::string_view body() const { return body_; }
  std::string_view peer() const { return peer_; }
  uint64_t requestSeq() const { return seq_; }
  void beginReply(uint64_t seq, int status);
  void addField(uint64_t seq, std::string_view name, std::string_view value);
  void endReply(uint64_t seq, std::string_view body, bool close);
  // A streamed answer (connection_stream.cpp; Downstream::startBody says how it behaves).
  void startBody(uint64_t seq, int64_t length, bool close, std::function<void()> writable);
  bool writeBody(uint64_t seq, std::string_view piece);
  void endBody(uint64_t seq, bool complete);
  // The Downstream died without an answer: nothing sensible can be said on this connection.
  void abandoned(uint64_t seq);

  // The server's intrusive list of open connections.
  FrontConnection* prev_ = nullptr;
  FrontConnection* next_ = nullptr;

 private:
  // Where the connection is between requests. Transitions happen in the read path (Idle →
  // Head → Body → Dispatched), in endReply (Dispatched → Idle or Writing) and when writes
  // finish (Writing → Idle, or Lingering when the connection is to close).
  enum class Phase {
    Idle,        // no byte of the next request parsed yet (idle_timeout)
    Head,        // reading the request line and fields (client_timeout deadline running)
    Body,        // reading the body (the same deadline)
    Dispatched,  // the handler has the request; waiting for endReply
    Writing,     // the answer is partly written; nothing else is parsed until it is out
    Streaming,   // a streamed answer's head is out; its body comes piece by piece
    Lingering,   // answered and shut down for writing; discarding input until EOF, then close
  };
  struct Span {
    uint32_t off = 0;
    uint32_t len = 0;
  };
  struct Field {
    Span name;
    Span value;
  };
  enum class Last { None, Url, Name, Value };

  static void onReadable(evutil_socket_t, short, void* arg);
  static void onWritable(evutil_socket_t, short, void* arg);
  static void onTimer(evutil_socket_t, short, void* arg);
  static void onResume(evutil_socket_t, short, void* arg);
  static const http_parser_settings& settings();
  static int cbUrl(http_parser* p, const char* at, size_t n);
  static int cbField(http_parser* p, const char* at, size_t n);
  static int cbValue(http_parser* p, const char* at, size_t n);
  static int cbHeadersComplete(http_parser* p);
  static int cbBody(http_parser* p, const char* at, size_t n);
  static int cbMessageComplete(http_parser* p);

  std::string_view view(Span s) const { return {buf_.get() + s.off, s.len}; }
  uint32_t offsetOf(const char* at) const { return static_cast<uint32_t>(at - buf_.get()); }
  bool extend(Span& s, const char* at, size_t n);
  int refuse(Problem p, const char* detail);  // for callbacks: records, returns nonzero
  int checkHead();

  void readInput();
  void process();
  enum class Parse { NeedMore, Complete, Refused };
  Parse parse();
  void startMessage();
  void dispatch();
  void answerProblem(Problem p, std::string_view detail);
  void startHead(int status);
  void putField(std::string_view name, std::string_view value);
  void finish(std::string_view body, bool close);
  void endHead(bool close);  // Date, Connection and the blank line
  void appendLength(size_t n);
  bool send(std::string_view head, std::string_view body);  // false: the client is gone
  void flushed();
  void lingerClose();
  void armTimer(std::chrono::milliseconds after);
  void wantRead(bool on);
  void wantWrite(bool on);
  void resumeSoon();

  FrontServer* server_;
  int fd_;
  char peer_[64] = {};
  EventPtr read_ev_, write_ev_, timer_ev_, resume_ev_;
  bool reading_ = false;
  bool writing_ = false;
  std::shared_ptr<FrontConnection> self_;  // set while open
  Phase phase_ = Phase::Idle;

  // Input: [0, parse_) parsed, [parse_, end_) not yet; a message always starts at offset 0.
  std::unique_ptr<char[]> buf_;
  size_t cap_ = 0;
  size_t end_ = 0;
  size_t parse_ = 0;
  bool peer_eof_ = false;
  size_t discarded_ = 0;  // body bytes cut out of the buffer in this message

  // The message being parsed.
  http_parser parser_{};
  Last last_ = Last::None;
  Span url_;
  std::vector<Field> fields_;
  bool head_done_ = false;
  uint32_t keep_end_ = 0;    // end of the last span the request's views need
  uint64_t frame_mark_ = 0;  // message position where chunk framing last gave way to data
  std::string body_;
  std::string_view method_;
  bool keep_alive_ = false;
  bool http10_ = false;
  bool head_method_ = false;
  Problem refusal_ = Problem::BadRequest;
  const char* refusal_detail_ = nullptr;

  // The answer.
  uint64_t seq_ = 0;  // of the request out with the handler
  bool dispatching_ = false;
  int status_ = 0;
  std::string head_;
  std::string given_length_;  // a HEAD or 304 answer's own Content-Length
  bool has_given_length_ = false;
  bool has_date_ = false;
  std::string out_;  // what a partial write left over
  size_t out_off_ = 0;
  bool close_after_ = false;
  size_t lingered_ = 0;
  // A streamed answer: the writer's wake-up, and the framing of its body.
  std::function<void()> writable_;
  bool chunked_out_ = false;
  bool first_chunk_ = true;
};

// The Downstream the handler gets: a handle on one request of one connection.
class FrontRequest final : public Downstream {
 public:
  explicit FrontRequest(std::shared_ptr<FrontConnection> conn)
      : conn_(std::move(conn)), seq_(conn_->requestSeq()) {}
  ~FrontRequest() override;
  // From a small per-thread free list (connection.cpp): no malloc per request.
  static void* operator new(size_t n);
  static void operator delete(void* p, size_t n) noexcept;
  std::string_view method() const override { return conn_->method(); }
  std::string_view target() const override { return conn_->target(); }
  void forEachField(FieldVisitor fn) const override { conn_->forEachField(fn); }
  std::string_view body() const override { return conn_->body(); }
  std::string_view peer() const override { return conn_->peer(); }
  void beginReply(int status) override;
  void addField(std::string_view name, std::string_view value) override;
  void endReply(std::string_view body, bool close) override;
  void startBody(int64_t length, bool close, std::function<void()> writable) override;
  bool writeBody(std::string_view piece) override;
  void endBody(bool complete) override;
  bool gone() const override { return replied_ || conn_->closed() || conn_->requestSeq() != seq_; }

 private:
  std::shared_ptr<FrontConnection> conn_;
  uint64_t seq_;
  bool replied_ = false;
};

}  // namespace idem
