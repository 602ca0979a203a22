#pragma once
// Internal to the built-in HTTP/1.1 client: reads one response from a connection's input
// buffer, incrementally (status line, fields, body by Content-Length / chunked / until close),
// into an HttpAnswer. Strict: a transfer coding other than a lone "chunked" is refused rather
// than passed on undecoded, and a body past the exchange's limit stops being buffered.
#include <event2/buffer.h>

#include <cstddef>
#include <string>

#include "base/http_types.h"

namespace idem::upstream_detail {

class Http1ResponseReader {
 public:
  enum class Result {
    NeedMore,   // every buffered byte was consumed; the answer is not complete yet
    Done,       // a complete answer; bytes after it (if any) stay in the buffer
    Malformed,  // not an acceptable HTTP/1.1 answer: `problem` says why
    OverLimit,  // the body passed the limit; the head (status, fields) is complete and the
                // body bytes that would pass it are left in the buffer
  };

  // Ready for the answer to a new request. `headRequest`: the answer has no body.
  void reset(bool headRequest, size_t bodyLimit);
  // Past the limit the caller streams the rest: from now on every body byte is taken (the
  // caller empties `answer.body` after each feed), where the answer left off.
  void unlimit() { limit_ = static_cast<size_t>(-1); }
  // Consumes what `in` holds into `answer`.
  Result feed(evbuffer* in, HttpAnswer& answer, std::string& problem);
  // The body runs until the upstream closes the connection: EOF completes it.
  bool untilClose() const { return phase_ == Phase::UntilClose; }
  // The upstream asked to close, or the framing requires it.
  bool closeAfter() const { return closeAfter_; }
  // The body was chunked (so a Content-Length next to it never described it).
  bool chunked() const { return chunked_; }

 private:
  enum class Phase { Head, Body, ChunkSize, ChunkData, ChunkEnd, Trailers, UntilClose };

  Result feedHead(evbuffer* in, HttpAnswer& answer, std::string& problem);
  // Moves up to `max` buffered body bytes into `body`; false when the body passed the limit.
  bool takeBody(evbuffer* in, std::string& body, size_t max, size_t& taken);

  Phase phase_ = Phase::Head;
  bool head_ = false;
  size_t limit_ = 0;
  size_t remaining_ = 0;  // body or chunk bytes still to read
  size_t trailerBytes_ = 0;
  bool closeAfter_ = false;
  bool chunked_ = false;
};

}  // namespace idem::upstream_detail
