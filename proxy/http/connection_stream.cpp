// A streamed answer on a FrontConnection: the head goes out at once, the body piece by piece as
// the handler writes it, with back-pressure (the handler is told to wait while more than
// kStreamBound bytes are queued for a slow client, and woken when they are taken).
#include <sys/socket.h>

#include <charconv>

#include "http/connection.h"
#include "http/front_server.h"

namespace idem {
namespace {

// Bytes queued for the client beyond which the writer waits: memory per streamed answer.
constexpr size_t kStreamBound = 256 * 1024;

}  // namespace

void FrontConnection::startBody(uint64_t seq, int64_t length, bool close,
                                std::function<void()> writable) {
  if (closed() || seq != seq_ || phase_ != Phase::Dispatched) return;
  if (status_ == 0) startHead(500);
  chunked_out_ = false;
  first_chunk_ = true;
  if (length >= 0) {
    appendLength(static_cast<size_t>(length));
  } else if (!http10_) {
    head_.append("Transfer-Encoding: chunked\r\n");
    chunked_out_ = true;
  } else {
    close = true;  // HTTP/1.0 without a length: the body ends where the connection does
  }
  endHead(close);
  phase_ = Phase::Streaming;
  if (!send(head_, {})) {
    closeNow();  // before `writable_` is set: the writer sees gone() on its next call
    return;
  }
  writable_ = std::move(writable);
  if (out_off_ < out_.size()) {
    wantWrite(true);
    armTimer(server_->limits().client_timeout);
  }
}

bool FrontConnection::writeBody(uint64_t seq, std::string_view piece) {
  if (closed() || seq != seq_ || phase_ != Phase::Streaming) return false;
  if (!piece.empty()) {
    // A chunk's size line carries the CRLF that ends the previous chunk.
    char line[32];
    char* p = line;
    if (chunked_out_ && !first_chunk_) {
      *p++ = '\r';
      *p++ = '\n';
    }
    if (chunked_out_) {
      p = std::to_chars(p, line + sizeof line - 2, piece.size(), 16).ptr;
      *p++ = '\r';
      *p++ = '\n';
      first_chunk_ = false;
    }
    if (!send(std::string_view(line, static_cast<size_t>(p - line)), piece)) {
      writable_ = nullptr;  // not called back from inside this call: gone() tells
      closeNow();
      return false;
    }
    if (out_off_ < out_.size()) {
      wantWrite(true);
      // The client has client_timeout to take what is queued, counted from the last piece.
      armTimer(server_->limits().client_timeout);
    }
  }
  return out_.size() - out_off_ < kStreamBound;
}

void FrontConnection::endBody(uint64_t seq, bool complete) {
  if (closed() || seq != seq_ || phase_ != Phase::Streaming) return;
  writable_ = nullptr;
  if (!complete) {
    close_after_ = true;  // no end of framing: the client sees the body cut short
  } else if (chunked_out_) {
    const std::string_view last = first_chunk_ ? "0\r\n\r\n" : "\r\n0\r\n\r\n";
    if (!send(last, {})) {
      closeNow();
      return;
    }
  }
  phase_ = Phase::Writing;
  if (out_off_ < out_.size()) {
    wantWrite(true);
    armTimer(server_->limits().client_timeout);
  } else {
    flushed();
  }
}

void FrontRequest::startBody(int64_t length, bool close, std::function<void()> writable) {
  if (!replied_) conn_->startBody(seq_, length, close, std::move(writable));
}

bool FrontRequest::writeBody(std::string_view piece) {
  return !replied_ && conn_->writeBody(seq_, piece);
}

void FrontRequest::endBody(bool complete) {
  if (replied_) return;
  replied_ = true;
  conn_->endBody(seq_, complete);
}

}  // namespace idem