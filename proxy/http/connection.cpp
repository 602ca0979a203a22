#include "http/connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>

#include "base/http_types.h"
#include "http/front_server.h"

// What libhttp-parser 2.9.4 (Debian's build, HTTP_PARSER_STRICT) refuses by itself, as the unit
// tests check: Transfer-Encoding whose final coding is not chunked (xchunked, identity, gzip —
// but NOT "gzip, chunked" nor a second Transfer-Encoding field), Content-Length with
// Transfer-Encoding chunked, Content-Length that is not 1*DIGIT (`+2`, `1,2`, empty) or repeated
// (even with the same value), bad chunk sizes and a chunk not followed by CRLF, NUL, CR and
// other controls anywhere in the head, non-token characters in field names except SP, request
// targets with invalid characters, lower-case or unknown methods.
//
// What it lets through and this file refuses (checkHead, cbField, cbValue, parse):
// whitespace before the colon (it keeps "Content-Length " as a name), any Transfer-Encoding
// other than one field saying exactly `chunked`, Transfer-Encoding in HTTP/1.0, two Host
// fields, no Host in HTTP/1.1, HTTP versions other than 1.0 and 1.1, obs-fold continuation
// lines, CONNECT, heads over max_head (its own cap is process-wide and 80 KiB), more fields than
// max_fields, chunk framing (size line, extensions, leading zeros, trailers) longer than
// max_chunk_line, bodies over max_request_body.

namespace idem {
namespace {

constexpr size_t kReadChunk = 16 * 1024;
constexpr size_t kInitialBuffer = 4096;
constexpr size_t kMaxLingerBytes = 1024 * 1024;
constexpr std::chrono::milliseconds kMaxLinger{2000};
// The refusal detail of a client that left while sent `100 Continue`: it is closed, not answered.
constexpr const char kClientGone[] = "client gone";
constexpr size_t kKeepCapacity = 64 * 1024;  // larger per-request buffers are released

bool isTchar(unsigned char c) {
  if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return true;
  return std::strchr("!#$%&'*+-.^_`|~", c) != nullptr && c != '\0';
}

std::string_view trimOwsView(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

const char* reasonPhrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
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
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
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

timeval toTimeval(std::chrono::milliseconds ms) {
  timeval tv{};
  tv.tv_sec = static_cast<time_t>(ms.count() / 1000);
  tv.tv_usec = static_cast<suseconds_t>((ms.count() % 1000) * 1000);
  return tv;
}

}  // namespace

FrontConnection::FrontConnection(FrontServer& server, int fd, const sockaddr* peer)
    : server_(&server), fd_(fd) {
  if (peer->sa_family == AF_INET) {
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(peer)->sin_addr, peer_, sizeof peer_);
  } else if (peer->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(peer)->sin6_addr, peer_,
              sizeof peer_);
  }
  event_base* base = server.base();
  read_ev_.reset(event_new(base, fd, EV_READ | EV_PERSIST, &onReadable, this));
  write_ev_.reset(event_new(base, fd, EV_WRITE | EV_PERSIST, &onWritable, this));
  timer_ev_.reset(evtimer_new(base, &onTimer, this));
  resume_ev_.reset(event_new(base, -1, 0, &onResume, this));
  fields_.reserve(16);
}

FrontConnection::~FrontConnection() {
  if (fd_ >= 0) ::close(fd_);
}

void FrontConnection::start() {
  self_ = shared_from_this();
  if (!read_ev_ || !write_ev_ || !timer_ev_ || !resume_ev_) {
    closeNow();
    return;
  }
  wantRead(true);
  armTimer(server_->limits().idle_timeout);
}

void FrontConnection::closeNow() {
  if (fd_ < 0) return;
  read_ev_.reset();
  write_ev_.reset();
  timer_ev_.reset();
  resume_ev_.reset();
  reading_ = writing_ = false;
  ::close(fd_);
  fd_ = -1;
  if (server_ != nullptr) server_->connectionClosed(this);
  server_ = nullptr;
  if (writable_) {
    auto writer = std::move(writable_);
    writer();  // a streamed answer's writer learns the client is gone
  }
  auto last = std::move(self_);  // may destroy *this on return: nothing may follow
}

void FrontConnection::closeIfIdle() {
  if (phase_ == Phase::Idle && parse_ == end_) closeNow();
}

// ---- Events ----

void FrontConnection::onReadable(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<FrontConnection*>(arg);
  auto keep = self->self_;
  self->readInput();
  if (!self->closed()) self->process();
}

void FrontConnection::onWritable(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<FrontConnection*>(arg);
  auto keep = self->self_;
  while (self->out_off_ < self->out_.size()) {
    const ssize_t n = ::send(self->fd_, self->out_.data() + self->out_off_,
                             self->out_.size() - self->out_off_, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    if (n <= 0) {
      self->closeNow();
      return;
    }
    self->out_off_ += static_cast<size_t>(n);
  }
  self->out_.clear();
  self->out_off_ = 0;
  if (self->out_.capacity() > kKeepCapacity) std::string().swap(self->out_);
  self->wantWrite(false);
  self->flushed();
}

void FrontConnection::onTimer(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<FrontConnection*>(arg);
  auto keep = self->self_;
  const Phase phase = self->phase_;
  if ((phase == Phase::Head || phase == Phase::Body) && self->server_ != nullptr &&
      self->out_off_ == self->out_.size()) {
    // The whole-request deadline passed with a request begun: a 408 tells the client that
    // nothing was done with it (it never reached the proxy's core), so it may retry. Written
    // only if it goes out at once: a client that does not read is not given more time.
    self->answerProblem(Problem::RequestTimeout,
                        "the request was not received within server.client_timeout");
    if (self->fd_ >= 0 && self->out_off_ < self->out_.size()) self->closeNow();
    return;
  }
  if ((phase == Phase::Writing || phase == Phase::Streaming) && self->server_ != nullptr) {
    self->server_->refused(FrontRefusal::AnswerTimeout);
  }
  // Idle keep-alive over, answer not taken in time, or the lingering close is over: the
  // connection is given up.
  self->closeNow();
}

void FrontConnection::onResume(evutil_socket_t, short, void* arg) {
  auto* self = static_cast<FrontConnection*>(arg);
  auto keep = self->self_;
  self->process();
}

void FrontConnection::wantRead(bool on) {
  if (on == reading_ || fd_ < 0) return;
  reading_ = on;
  if (on) {
    event_add(read_ev_.get(), nullptr);
  } else {
    event_del(read_ev_.get());
  }
}

void FrontConnection::wantWrite(bool on) {
  if (on == writing_ || fd_ < 0) return;
  writing_ = on;
  if (on) {
    event_add(write_ev_.get(), nullptr);
  } else {
    event_del(write_ev_.get());
  }
}

void FrontConnection::armTimer(std::chrono::milliseconds after) {
  if (fd_ < 0) return;
  const timeval tv = toTimeval(after);
  event_add(timer_ev_.get(), &tv);
}

void FrontConnection::resumeSoon() {
  if (fd_ >= 0) event_active(resume_ev_.get(), EV_TIMEOUT, 0);
}

// ---- Reading ----

void FrontConnection::readInput() {
  if (phase_ == Phase::Lingering) {
    char sink[16384];
    const ssize_t n = ::recv(fd_, sink, sizeof sink, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) return;
    lingered_ += n > 0 ? static_cast<size_t>(n) : 0;
    if (n <= 0 || lingered_ > kMaxLingerBytes) closeNow();
    return;
  }
  if (end_ == cap_) {
    // While a request is out with the handler its views point into the buffer: no growing.
    const bool mayGrow = phase_ == Phase::Idle || phase_ == Phase::Head || phase_ == Phase::Body;
    const size_t maxCap = server_->limits().max_head + kReadChunk;
    if (!mayGrow || cap_ >= maxCap) {
      wantRead(false);  // resumed once this buffer is parsed
      return;
    }
    const size_t next = std::min(maxCap, std::max(kInitialBuffer, cap_ * 2));
    auto grown = std::make_unique_for_overwrite<char[]>(next);
    if (end_ > 0) std::memcpy(grown.get(), buf_.get(), end_);
    buf_ = std::move(grown);
    cap_ = next;
  }
  const ssize_t n = ::recv(fd_, buf_.get() + end_, cap_ - end_, 0);
  if (n > 0) {
    end_ += static_cast<size_t>(n);
  } else if (n == 0) {
    peer_eof_ = true;
    wantRead(false);
  } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
    closeNow();  // reset: the client is gone
  }
}

void FrontConnection::process() {
  while (!closed()) {
    if (phase_ == Phase::Dispatched || phase_ == Phase::Writing || phase_ == Phase::Streaming ||
        phase_ == Phase::Lingering) {
      return;
    }
    if (parse_ == end_) {
      if (peer_eof_) {
        closeNow();  // between requests, or a request cut short: nothing to answer
      } else {
        wantRead(true);
      }
      return;
    }
    const Parse r = parse();
    if (r == Parse::Refused) return;
    if (r == Parse::Complete) {
      dispatch();
      continue;
    }
    if (peer_eof_) {
      closeNow();
      return;
    }
    wantRead(true);
    return;
  }
}

void FrontConnection::startMessage() {
  if (parse_ > 0) {
    std::memmove(buf_.get(), buf_.get() + parse_, end_ - parse_);
    end_ -= parse_;
    parse_ = 0;
  }
  http_parser_init(&parser_, HTTP_REQUEST);
  parser_.data = this;
  last_ = Last::None;
  url_ = {};
  fields_.clear();
  head_done_ = false;
  keep_end_ = 0;
  frame_mark_ = 0;
  discarded_ = 0;
  if (body_.capacity() > kKeepCapacity) {
    std::string().swap(body_);
  } else {
    body_.clear();
  }
  method_ = {};
  keep_alive_ = false;
  http10_ = false;
  head_method_ = false;
  refusal_ = Problem::BadRequest;
  refusal_detail_ = nullptr;
  phase_ = Phase::Head;
  armTimer(server_->limits().client_timeout);  // one deadline for the whole request
}

FrontConnection::Parse FrontConnection::parse() {
  if (phase_ == Phase::Idle) startMessage();
  const FrontLimits& lim = server_->limits();
  while (parse_ < end_) {
    size_t avail = end_ - parse_;
    if (!head_done_) {
      if (parse_ >= lim.max_head) {
        answerProblem(Problem::BadRequest, "request head too large");
        return Parse::Refused;
      }
      avail = std::min(avail, lim.max_head - parse_);
    }
    const size_t n = http_parser_execute(&parser_, &settings(), buf_.get() + parse_, avail);
    parse_ += n;
    const auto err = HTTP_PARSER_ERRNO(&parser_);
    if (err != HPE_OK && err != HPE_PAUSED) {
      if (refusal_detail_ == kClientGone) {  // nobody to answer, and not a refusal
        closeNow();
        return Parse::Refused;
      }
      answerProblem(refusal_,
                    refusal_detail_ != nullptr ? refusal_detail_ : http_errno_description(err));
      return Parse::Refused;
    }
    if (head_done_) {
      if ((parser_.flags & F_CHUNKED) != 0 &&
          discarded_ + parse_ - frame_mark_ > lim.max_chunk_line) {
        answerProblem(Problem::BadRequest, "chunk framing line too long");
        return Parse::Refused;
      }
      // Body bytes are in body_ now: cut them out, so the buffer holds only the head.
      if (parse_ > keep_end_) {
        std::memmove(buf_.get() + keep_end_, buf_.get() + parse_, end_ - parse_);
        discarded_ += parse_ - keep_end_;
        end_ -= parse_ - keep_end_;
        parse_ = keep_end_;
      }
      if (phase_ == Phase::Head) phase_ = Phase::Body;
    }
    if (err == HPE_PAUSED) return Parse::Complete;
  }
  return Parse::NeedMore;
}

void FrontConnection::dispatch() {
  http_parser_pause(&parser_, 0);
  phase_ = Phase::Dispatched;
  event_del(timer_ev_.get());
  method_ = http_method_str(static_cast<http_method>(parser_.method));
  keep_alive_ = http_should_keep_alive(&parser_) != 0;
  ++seq_;
  status_ = 0;
  auto request = std::make_unique<FrontRequest>(shared_from_this());
  dispatching_ = true;
  server_->dispatch(std::move(request));
  dispatching_ = false;
}

// ---- Parser callbacks ----

const http_parser_settings& FrontConnection::settings() {
  static const http_parser_settings s = [] {
    http_parser_settings v{};
    v.on_url = &cbUrl;
    v.on_header_field = &cbField;
    v.on_header_value = &cbValue;
    v.on_headers_complete = &cbHeadersComplete;
    v.on_body = &cbBody;
    v.on_message_complete = &cbMessageComplete;
    return v;
  }();
  return s;
}

int FrontConnection::refuse(Problem p, const char* detail) {
  refusal_ = p;
  refusal_detail_ = detail;
  return -1;  // any value but 0, 1 and 2 is an error for on_headers_complete too
}

bool FrontConnection::extend(Span& s, const char* at, size_t n) {
  if (offsetOf(at) != s.off + s.len) return false;
  s.len += static_cast<uint32_t>(n);
  keep_end_ = std::max(keep_end_, s.off + s.len);
  return true;
}

int FrontConnection::cbUrl(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<FrontConnection*>(p->data);
  if (self->last_ == Last::Url && self->extend(self->url_, at, n)) return 0;
  self->url_ = {self->offsetOf(at), static_cast<uint32_t>(n)};
  self->keep_end_ = self->url_.off + self->url_.len;
  self->last_ = Last::Url;
  return 0;
}

int FrontConnection::cbField(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<FrontConnection*>(p->data);
  if (self->head_done_) return 0;  // trailer fields are read and dropped
  for (size_t i = 0; i < n; ++i) {
    // The parser takes SP as part of a name; RFC 9112 §5.1: whitespace before the colon → 400.
    if (!isTchar(static_cast<unsigned char>(at[i]))) {
      return self->refuse(Problem::BadRequest, "invalid character in field name");
    }
  }
  if (self->last_ == Last::Name && self->extend(self->fields_.back().name, at, n)) return 0;
  if (self->fields_.size() >= self->server_->limits().max_fields) {
    return self->refuse(Problem::BadRequest, "too many header fields");
  }
  Field f;
  f.name = {self->offsetOf(at), static_cast<uint32_t>(n)};
  f.value = {f.name.off + f.name.len, 0};
  self->fields_.push_back(f);
  self->keep_end_ = f.name.off + f.name.len;
  self->last_ = Last::Name;
  return 0;
}

int FrontConnection::cbValue(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<FrontConnection*>(p->data);
  if (self->head_done_) return 0;
  if (self->fields_.empty()) return self->refuse(Problem::BadRequest, "field value without name");
  Span& v = self->fields_.back().value;
  if (self->last_ == Last::Value) {
    if (self->extend(v, at, n)) return 0;
    // A second piece that does not continue the first: an obs-fold line (RFC 9112 §5.2).
    return self->refuse(Problem::BadRequest, "obsolete line folding");
  }
  v = {self->offsetOf(at), static_cast<uint32_t>(n)};
  self->keep_end_ = v.off + v.len;
  self->last_ = Last::Value;
  return 0;
}

int FrontConnection::cbHeadersComplete(http_parser* p) {
  return static_cast<FrontConnection*>(p->data)->checkHead();
}

int FrontConnection::checkHead() {
  const FrontLimits& lim = server_->limits();
  if (parser_.http_major != 1 || parser_.http_minor > 1) {
    return refuse(Problem::BadRequest, "HTTP version not supported");
  }
  http10_ = parser_.http_minor == 0;
  if (parser_.method == HTTP_CONNECT) return refuse(Problem::BadRequest, "CONNECT not supported");
  head_method_ = parser_.method == HTTP_HEAD;
  int hosts = 0;
  int codings = 0;
  std::string_view coding;
  std::string_view expect;
  for (const Field& f : fields_) {
    const std::string_view name = view(f.name);
    if (iequals(name, "Host")) {
      if (++hosts > 1) return refuse(Problem::BadRequest, "more than one Host field");
    } else if (iequals(name, "Transfer-Encoding")) {
      ++codings;
      coding = trimOwsView(view(f.value));
    } else if (iequals(name, "Expect")) {
      expect = trimOwsView(view(f.value));
    }
  }
  if (hosts == 0 && !http10_) return refuse(Problem::BadRequest, "missing Host field");
  if (codings > 0) {
    // RFC 9112 §6.3: only a final chunked frames a request; we accept no other coding at all.
    if (codings > 1 || !iequals(coding, "chunked")) {
      return refuse(Problem::BadRequest, "unsupported Transfer-Encoding");
    }
    if (http10_) return refuse(Problem::BadRequest, "Transfer-Encoding in an HTTP/1.0 request");
    if ((parser_.flags & F_CONTENTLENGTH) != 0) {
      return refuse(Problem::BadRequest, "Content-Length with Transfer-Encoding");
    }
  }
  const bool chunked = (parser_.flags & F_CHUNKED) != 0;
  if (chunked && codings == 0) return refuse(Problem::BadRequest, "unexpected chunked body");
  const uint64_t declared = (parser_.flags & F_CONTENTLENGTH) != 0 ? parser_.content_length : 0;
  if (declared > lim.max_request_body) {
    return refuse(Problem::RequestTooLarge, "request body is larger than the limit");
  }
  head_done_ = true;
  frame_mark_ = keep_end_;
  if (!expect.empty() && iequals(expect, "100-continue") && !http10_ && (declared > 0 || chunked)) {
    static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
    if (!send(kContinue, {})) return refuse(Problem::BadRequest, kClientGone);
    if (out_off_ < out_.size()) wantWrite(true);
  }
  body_.reserve(declared);
  return 0;
}

int FrontConnection::cbBody(http_parser* p, const char* at, size_t n) {
  auto* self = static_cast<FrontConnection*>(p->data);
  if (self->body_.size() + n > self->server_->limits().max_request_body) {
    return self->refuse(Problem::RequestTooLarge, "request body is larger than the limit");
  }
  // The chunk-size line before this data (parse() checks lines that have not ended yet).
  const uint64_t dataStart = self->discarded_ + self->offsetOf(at);
  if ((p->flags & F_CHUNKED) != 0 &&
      dataStart - self->frame_mark_ > self->server_->limits().max_chunk_line) {
    return self->refuse(Problem::BadRequest, "chunk framing line too long");
  }
  self->body_.append(at, n);
  self->frame_mark_ = dataStart + n;
  return 0;
}

int FrontConnection::cbMessageComplete(http_parser* p) {
  http_parser_pause(p, 1);  // the next request waits until this one is answered
  return 0;
}

// ---- The request as the handler sees it ----

void FrontConnection::forEachField(FieldVisitor fn) const {
  for (const Field& f : fields_) fn(view(f.name), trimOwsView(view(f.value)));
}

void FrontConnection::beginReply(uint64_t seq, int status) {
  if (closed() || seq != seq_ || phase_ != Phase::Dispatched) return;
  startHead(status);
}

void FrontConnection::addField(uint64_t seq, std::string_view name, std::string_view value) {
  if (closed() || seq != seq_ || phase_ != Phase::Dispatched || status_ == 0) return;
  putField(name, value);
}

void FrontConnection::endReply(uint64_t seq, std::string_view body, bool close) {
  if (closed() || seq != seq_ || phase_ != Phase::Dispatched) return;
  if (status_ == 0) startHead(500);
  finish(body, close);
}

void FrontConnection::abandoned(uint64_t seq) {
  if (closed() || seq != seq_) return;
  writable_ = nullptr;  // its writer is the one going away
  if (phase_ == Phase::Dispatched || phase_ == Phase::Streaming) closeNow();
}

// ---- Writing ----

void FrontConnection::startHead(int status) {
  status_ = status;
  has_date_ = false;
  has_given_length_ = false;
  head_.clear();
  // "HTTP/1.1 201 Created\r\n": the status is three digits (the core never gives another).
  const unsigned code = status >= 100 && status <= 999 ? static_cast<unsigned>(status) : 500u;
  const char digits[4] = {static_cast<char>('0' + code / 100),
                          static_cast<char>('0' + code / 10 % 10),
                          static_cast<char>('0' + code % 10), ' '};
  head_.append("HTTP/1.1 ");
  head_.append(digits, sizeof digits);
  head_.append(reasonPhrase(status));
  head_.append("\r\n");
}

void FrontConnection::putField(std::string_view name, std::string_view value) {
  // Framing is ours; a field that could split the answer is dropped.
  if (name.find_first_of("\r\n:", 0) != std::string_view::npos || name.empty() ||
      value.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos) {
    return;
  }
  if (iequals(name, "Content-Length")) {
    given_length_.assign(value);
    has_given_length_ = true;
    return;
  }
  if (iequals(name, "Transfer-Encoding") || iequals(name, "Connection") ||
      iequals(name, "Keep-Alive")) {
    return;
  }
  if (iequals(name, "Date")) has_date_ = true;
  head_.append(name);
  head_.append(": ");
  head_.append(value);
  head_.append("\r\n");
}

void FrontConnection::appendLength(size_t n) {
  char num[24];
  const auto r = std::to_chars(num, num + sizeof num, n);
  head_.append("Content-Length: ");
  head_.append(num, static_cast<size_t>(r.ptr - num));
  head_.append("\r\n");
}

void FrontConnection::finish(std::string_view body, bool close) {
  const bool noBody = status_ < 200 || status_ == 204 || status_ == 304;
  const bool bodyless = noBody || head_method_;
  if (status_ == 304 || (head_method_ && !noBody)) {
    // A HEAD (or 304) answer describes a body it does not carry: keep the length given.
    if (has_given_length_) {
      head_.append("Content-Length: ");
      head_.append(given_length_);
      head_.append("\r\n");
    } else if (head_method_) {
      appendLength(body.size());
    }
  } else if (!noBody) {
    appendLength(body.size());
  }
  endHead(close);
  phase_ = Phase::Writing;
  if (!send(head_, bodyless ? std::string_view() : body)) {
    closeNow();
    return;
  }
  if (out_off_ < out_.size()) {
    wantWrite(true);
    armTimer(server_->limits().client_timeout);
  } else {
    flushed();
  }
}

void FrontConnection::endHead(bool close) {
  if (!has_date_ && server_ != nullptr) {
    head_.append("Date: ");
    head_.append(server_->httpDate());
    head_.append("\r\n");
  }
  close = close || server_ == nullptr || server_->draining() || !keep_alive_ ||
          (peer_eof_ && parse_ == end_);
  if (close) {
    head_.append("Connection: close\r\n");
  } else if (http10_) {
    head_.append("Connection: keep-alive\r\n");
  }
  head_.append("\r\n");
  close_after_ = close;
}

bool FrontConnection::send(std::string_view head, std::string_view body) {
  if (out_off_ < out_.size()) {
    out_.append(head);
    out_.append(body);
    return true;
  }
  iovec iov[2] = {{const_cast<char*>(head.data()), head.size()},
                  {const_cast<char*>(body.data()), body.size()}};
  msghdr msg{};
  msg.msg_iov = iov;
  msg.msg_iovlen = body.empty() ? 1 : 2;
  ssize_t n;
  do {
    n = ::sendmsg(fd_, &msg, MSG_NOSIGNAL);
  } while (n < 0 && errno == EINTR);
  if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) return false;
  size_t sent = n < 0 ? 0 : static_cast<size_t>(n);
  out_.clear();
  out_off_ = 0;
  if (sent < head.size()) {
    out_.append(head.substr(sent));
    out_.append(body);
  } else if (sent - head.size() < body.size()) {
    out_.append(body.substr(sent - head.size()));
  }
  return true;
}

void FrontConnection::flushed() {
  if (phase_ == Phase::Streaming) {
    if (auto writer = writable_) writer();  // a copy: the writer may end the body
    return;
  }
  if (phase_ != Phase::Writing) return;  // a 100 Continue went out; the body is still read
  if (close_after_) {
    lingerClose();
    return;
  }
  phase_ = Phase::Idle;
  armTimer(server_->limits().idle_timeout);
  if (!dispatching_) resumeSoon();  // else the read path that dispatched carries on
}

void FrontConnection::lingerClose() {
  // Shut down our side and read what the client still sends before closing, so a close with
  // unread input does not reset the connection before the client has read the answer.
  ::shutdown(fd_, SHUT_WR);
  phase_ = Phase::Lingering;
  wantWrite(false);
  if (peer_eof_) {
    closeNow();
    return;
  }
  wantRead(true);
  armTimer(std::min(kMaxLinger, server_->limits().client_timeout));
}

void FrontConnection::answerProblem(Problem p, std::string_view detail) {
  // Every answer the server writes itself is a refusal; counted here, once.
  server_->refused(p == Problem::RequestTooLarge  ? FrontRefusal::TooLarge
                   : p == Problem::RequestTimeout ? FrontRefusal::Timeout
                                                  : FrontRefusal::Malformed);
  const HttpAnswer a = problemAnswer(p, detail, server_->limits().error_body.get());
  startHead(a.status);
  for (const Header& h : a.headers) putField(h.name, h.value);
  finish(a.body, true);
}

// ---- FrontRequest ----

namespace {
// FrontRequests are recycled through a per-thread free list: one is made and dropped per
// request, always on the connection's loop thread, and a malloc/free pair each time showed up
// in the allocation counts. The list is bounded; a sanitizer build uses the heap directly so
// that a use after free is still caught.
struct FreeRequests {
  void* head = nullptr;
  size_t count = 0;
  FreeRequests() = default;
  FreeRequests(const FreeRequests&) = delete;
  FreeRequests& operator=(const FreeRequests&) = delete;
  ~FreeRequests() {
    while (head != nullptr) {
      void* next = *static_cast<void**>(head);
      ::operator delete(head);
      head = next;
    }
  }
};
thread_local FreeRequests tFreeRequests;
constexpr size_t kMaxFreeRequests = 1024;
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kRecycleRequests = false;
#elif defined(__has_feature)  // clang says it this way
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
constexpr bool kRecycleRequests = false;
#else
constexpr bool kRecycleRequests = true;
#endif
#else
constexpr bool kRecycleRequests = true;
#endif
}  // namespace

void* FrontRequest::operator new(size_t n) {
  FreeRequests& f = tFreeRequests;
  if (kRecycleRequests && n == sizeof(FrontRequest) && f.head != nullptr) {
    void* p = f.head;
    f.head = *static_cast<void**>(p);
    --f.count;
    return p;
  }
  return ::operator new(n);
}

void FrontRequest::operator delete(void* p, size_t n) noexcept {
  FreeRequests& f = tFreeRequests;
  if (kRecycleRequests && n == sizeof(FrontRequest) && f.count < kMaxFreeRequests) {
    *static_cast<void**>(p) = f.head;
    f.head = p;
    ++f.count;
    return;
  }
  ::operator delete(p);
}

FrontRequest::~FrontRequest() {
  if (!replied_) conn_->abandoned(seq_);
}

void FrontRequest::beginReply(int status) {
  if (!replied_) conn_->beginReply(seq_, status);
}

void FrontRequest::addField(std::string_view name, std::string_view value) {
  if (!replied_) conn_->addField(seq_, name, value);
}

void FrontRequest::endReply(std::string_view body, bool close) {
  if (replied_) return;
  replied_ = true;
  conn_->endReply(seq_, body, close);
}

}  // namespace idem
