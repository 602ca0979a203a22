#include "upstream/http1_response.h"

#include <algorithm>
#include <string_view>

#include "upstream/upstream_backend.h"

namespace idem::upstream_detail {
namespace {

constexpr size_t kMaxHeaderBytes = 64 * 1024;  // a response header block (and trailers)

Http1ResponseReader* readerOf(http_parser* p) {
  return static_cast<Http1ResponseReader*>(p->data);
}

}  // namespace

Http1ResponseReader::Http1ResponseReader() {
  reset(false, 0);
}

void Http1ResponseReader::reset(bool headRequest, size_t bodyLimit) {
  http_parser_init(&parser_, HTTP_RESPONSE);
  parser_.data = this;
  // RFC 9112 §6.3: with both, chunked wins (the Content-Length is dropped from the answer).
  parser_.allow_chunked_length = 1;
  answer_ = nullptr;
  head_ = headRequest;
  limit_ = bodyLimit;
  headBytes_ = 0;
  field_.clear();
  value_.clear();
  inValue_ = false;
  headersDone_ = false;
  done_ = false;
  overLimit_ = false;
  spill_.clear();
  problem_.clear();
  closeAfter_ = false;
  chunked_ = false;
}

void Http1ResponseReader::unlimit() {
  limit_ = static_cast<size_t>(-1);
  overLimit_ = false;
  http_parser_pause(&parser_, 0);
}

const http_parser_settings& Http1ResponseReader::settings() {
  static const http_parser_settings s = [] {
    http_parser_settings v{};
    v.on_message_begin = &onMessageBegin;
    v.on_header_field = &onHeaderField;
    v.on_header_value = &onHeaderValue;
    v.on_headers_complete = &onHeadersComplete;
    v.on_body = &onBody;
    v.on_message_complete = &onMessageComplete;
    return v;
  }();
  return s;
}

bool Http1ResponseReader::countHead(size_t n) {
  headBytes_ += n;
  if (headBytes_ <= kMaxHeaderBytes) return true;
  problem_ =
      headersDone_ ? "upstream trailers over 64 KiB" : "upstream response header block over 64 KiB";
  return false;
}

void Http1ResponseReader::endField() {
  // A name the parser took that is still not a token (its lenient table allows a space, and
  // the pre-pass may see a line end where the parser does not) is dropped here too.
  if (inValue_ && !headersDone_ && isToken(field_)) {
    answer_->headers.push_back({field_, std::string(trimOws(value_))});
  }
  field_.clear();
  value_.clear();
  inValue_ = false;
}

int Http1ResponseReader::onMessageBegin(http_parser* p) {
  Http1ResponseReader* r = readerOf(p);
  r->answer_->headers.clear();      // a new answer (after a 1xx): start over
  r->answer_->headers.reserve(16);  // answers carry ~5–15 fields: one allocation, not five
  r->headBytes_ = 0;
  return 0;
}

int Http1ResponseReader::onHeaderField(http_parser* p, const char* at, size_t n) {
  Http1ResponseReader* r = readerOf(p);
  if (r->inValue_) r->endField();
  // ": " and CRLF count too, so many tiny fields cannot pass the cap either.
  if (!r->countHead(n + (r->field_.empty() ? 4 : 0))) return 1;
  if (!r->headersDone_) r->field_.append(at, n);
  return 0;
}

int Http1ResponseReader::onHeaderValue(http_parser* p, const char* at, size_t n) {
  Http1ResponseReader* r = readerOf(p);
  if (!r->countHead(n)) return 1;
  r->inValue_ = true;
  if (!r->headersDone_) {
    // The head is parsed from one contiguous buffer, so a second piece of a value is an
    // obs-fold continuation (RFC 9112 §5.2): joined with one space, as libcurl's are here.
    std::string_view piece(at, n);
    if (!r->value_.empty()) {
      piece = trimOws(piece);
      while (!r->value_.empty() && (r->value_.back() == ' ' || r->value_.back() == '\t')) {
        r->value_.pop_back();
      }
      if (!piece.empty() && !r->value_.empty()) r->value_ += ' ';
    }
    r->value_.append(piece);
  }
  return 0;
}

int Http1ResponseReader::onHeadersComplete(http_parser* p) {
  Http1ResponseReader* r = readerOf(p);
  r->endField();
  const int status = static_cast<int>(p->status_code);
  if (p->http_major != 1 || status < 100) {
    r->problem_ = "malformed status line from upstream";
    return -1;
  }
  if (status < 200) {
    if (status == 101) {
      r->problem_ = "unexpected 101 Switching Protocols from upstream";
      return -1;
    }
    return 0;  // an interim answer: the final one follows (onMessageComplete skips it)
  }
  HttpAnswer& answer = *r->answer_;
  answer.status = status;
  r->headersDone_ = true;
  r->chunked_ = (p->flags & F_CHUNKED) != 0;
  if (r->head_ || status == 204 || status == 304) return 1;  // no body, whatever is announced
  if (std::string refusal = unsupportedTransferCoding(answer.headers); !refusal.empty()) {
    r->problem_ = std::move(refusal);
    return -1;
  }
  if ((p->flags & F_CONTENTLENGTH) && !r->chunked_ && p->content_length > r->limit_) {
    r->overLimit_ = true;  // known from the head: not a byte of the body is buffered
    http_parser_pause(p, 1);
    return 0;
  }
  if ((p->flags & F_CONTENTLENGTH) && !r->chunked_) {
    answer.body.reserve(std::min<uint64_t>(p->content_length, 1 << 20));
  }
  return 0;
}

int Http1ResponseReader::onBody(http_parser* p, const char* at, size_t n) {
  Http1ResponseReader* r = readerOf(p);
  std::string& body = r->answer_->body;
  if (body.size() + n > r->limit_) {
    // Keep what passed the limit for the caller's stream, stop here; the rest stays unread.
    r->spill_.assign(at, n);
    r->overLimit_ = true;
    http_parser_pause(p, 1);
    return 0;
  }
  body.append(at, n);
  return 0;
}

int Http1ResponseReader::onMessageComplete(http_parser* p) {
  Http1ResponseReader* r = readerOf(p);
  // Paused either way: after an interim answer, feed checks the next head before parsing it;
  // after the final one, what follows belongs to no request of ours.
  http_parser_pause(p, 1);
  if (!r->headersDone_) return 0;
  r->done_ = true;
  r->closeAfter_ = http_should_keep_alive(p) == 0;
  return 0;
}

size_t Http1ResponseReader::execute(const char* data, size_t n) {
  return http_parser_execute(&parser_, &settings(), data, n);
}

Http1ResponseReader::Result Http1ResponseReader::outcome(std::string& problem) {
  const http_errno err = HTTP_PARSER_ERRNO(&parser_);
  if (err != HPE_OK && err != HPE_PAUSED) {
    problem = !problem_.empty()
                  ? problem_
                  : std::string("malformed answer from upstream: ") + http_errno_description(err);
    return Result::Malformed;
  }
  if (done_) return Result::Done;
  if (overLimit_) return Result::OverLimit;
  return Result::NeedMore;
}

Http1ResponseReader::Result Http1ResponseReader::feed(evbuffer* in, HttpAnswer& answer,
                                                      std::string& problem) {
  answer_ = &answer;
  if (!spill_.empty()) {
    answer.body.append(spill_);  // the first piece of the streamed rest
    spill_.clear();
  }
  if (!headersDone_ && !dropBadFieldLines(in, kMaxHeaderBytes)) {
    if (evbuffer_get_length(in) < kMaxHeaderBytes) return Result::NeedMore;
    problem = "upstream response header block over 64 KiB";
    return Result::Malformed;
  }
  while (evbuffer_get_length(in) > 0 && !done_ && !overLimit_) {
    evbuffer_iovec v;
    if (evbuffer_peek(in, -1, nullptr, &v, 1) < 1) break;
    const size_t n = execute(static_cast<const char*>(v.iov_base), v.iov_len);
    evbuffer_drain(in, n);
    const http_errno err = HTTP_PARSER_ERRNO(&parser_);
    if (err == HPE_PAUSED && !done_ && !overLimit_) {
      // An interim answer ended: the next head is checked for bad field lines first.
      http_parser_pause(&parser_, 0);
      if (!dropBadFieldLines(in, kMaxHeaderBytes)) break;
      continue;
    }
    if (err != HPE_OK) break;
  }
  const Result r = outcome(problem);
  if (r == Result::NeedMore && !headersDone_ && evbuffer_get_length(in) >= kMaxHeaderBytes) {
    problem = "upstream response header block over 64 KiB";
    return Result::Malformed;
  }
  return r;
}

Http1ResponseReader::Result Http1ResponseReader::finish(HttpAnswer& answer, std::string& problem) {
  answer_ = &answer;
  if (done_) return Result::Done;
  execute(nullptr, 0);  // EOF: ends a body that runs until close, else an error
  const Result r = outcome(problem);
  if (r == Result::Done) return r;
  if (r != Result::Malformed) problem = "upstream closed the connection before a complete answer";
  return Result::Malformed;
}

bool dropBadFieldLines(evbuffer* in, size_t maxHead) {
  const size_t len = evbuffer_get_length(in);
  if (len == 0) return false;
  const size_t look = std::min(len, maxHead);
  const char* data =
      reinterpret_cast<const char*>(evbuffer_pullup(in, static_cast<ev_ssize_t>(look)));
  if (data == nullptr) return false;
  const std::string_view buf(data, look);
  // The head's end: the first empty line after the status line.
  size_t end = std::string_view::npos;
  bool bad = false;
  bool lastWasStatus = false;
  for (size_t pos = 0; pos < buf.size();) {
    const size_t nl = buf.find('\n', pos);
    if (nl == std::string_view::npos) break;
    std::string_view line = buf.substr(pos, nl - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (pos > 0 && line.empty()) {
      end = nl + 1;
      break;
    }
    if (pos > 0 && line.front() != ' ' && line.front() != '\t') {
      const size_t colon = line.find(':');
      bad = bad || colon == std::string_view::npos || !isToken(line.substr(0, colon));
    } else if (pos > 0 && lastWasStatus) {
      bad = true;  // a continuation of the status line: no field to continue
    }
    lastWasStatus = pos == 0;
    pos = nl + 1;
  }
  if (end == std::string_view::npos) return false;
  if (!bad) return true;
  // Rewrite the head without them. A name with spaces around it (RFC 9112 §5.1: a proxy
  // removes them) is kept, trimmed; one that is still not a token is dropped.
  // A continuation line goes with its field: kept after a kept one, dropped otherwise.
  std::string head;
  head.reserve(end);
  bool keptLast = false;  // the last field line was kept
  for (size_t pos = 0; pos < end;) {
    const size_t nl = buf.find('\n', pos);
    std::string_view line = buf.substr(pos, nl + 1 - pos);
    pos = nl + 1;
    std::string_view text = line;
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r')) text.remove_suffix(1);
    if (head.empty() || text.empty()) {
      head.append(line);  // the status line, the blank line
      continue;
    }
    if (text.front() == ' ' || text.front() == '\t') {
      if (keptLast) head.append(line);  // an obs-fold continuation
      continue;
    }
    const size_t colon = text.find(':');
    const std::string_view name =
        colon == std::string_view::npos ? std::string_view() : trimOws(text.substr(0, colon));
    keptLast = isToken(name);
    if (!keptLast) continue;
    head.append(name);
    head.append(":");
    head.append(text.substr(colon + 1));
    head.append("\r\n");
  }
  evbuffer_drain(in, end);
  return evbuffer_prepend(in, head.data(), head.size()) == 0;
}

}  // namespace idem::upstream_detail
