#pragma once
// Internal to the built-in HTTP/1.1 client: reads one response from a connection's input
// buffer, incrementally, with libhttp-parser (the front server's parser, in response mode):
// status line, fields, body by Content-Length / chunked / until close, interim 1xx answers
// skipped, trailers dropped. Strict: a transfer coding other than a lone "chunked" is refused
// rather than passed on undecoded, and a body past the exchange's limit stops being buffered.
#include <event2/buffer.h>
#include <http_parser.h>

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
                // body bytes past it are kept for the caller (see unlimit)
  };

  Http1ResponseReader();

  // Ready for the answer to a new request. `headRequest`: the answer has no body.
  void reset(bool headRequest, size_t bodyLimit);
  // Past the limit the caller streams the rest: from now on every body byte is taken (the
  // caller empties `answer.body` after each feed), starting with the bytes that passed it.
  void unlimit();
  // Consumes what `in` holds into `answer`.
  Result feed(evbuffer* in, HttpAnswer& answer, std::string& problem);
  // The upstream closed the connection: Done when that ends the answer (a body without
  // Content-Length or chunked framing), else Malformed.
  Result finish(HttpAnswer& answer, std::string& problem);
  // The upstream asked to close, or the framing requires it (valid once Done).
  bool closeAfter() const { return closeAfter_; }
  // The body was chunked (so a Content-Length next to it never described it).
  bool chunked() const { return chunked_; }

 private:
  static const http_parser_settings& settings();
  static int onMessageBegin(http_parser* p);
  static int onHeaderField(http_parser* p, const char* at, size_t n);
  static int onHeaderValue(http_parser* p, const char* at, size_t n);
  static int onHeadersComplete(http_parser* p);
  static int onBody(http_parser* p, const char* at, size_t n);
  static int onMessageComplete(http_parser* p);

  // Runs the parser over `data`; returns the bytes it consumed.
  size_t execute(const char* data, size_t n);
  Result outcome(std::string& problem);
  bool countHead(size_t n);  // false (and a problem) past the head's cap
  void endField();

  http_parser parser_{};
  HttpAnswer* answer_ = nullptr;  // during feed/finish
  bool head_ = false;
  size_t limit_ = 0;
  size_t headBytes_ = 0;  // the head's fields (and trailers) so far, against the 64 KiB cap
  std::string field_;
  std::string value_;
  bool inValue_ = false;
  bool headersDone_ = false;  // the final answer's fields are complete: later ones are trailers
  bool done_ = false;
  bool overLimit_ = false;
  std::string spill_;  // body bytes that passed the limit, not yet handed to the caller
  std::string problem_;
  bool closeAfter_ = false;
  bool chunked_ = false;
};

// Removes the field lines whose name is not a token (a space, a control character …) from the
// head at the start of `in`, once the head is complete there (its blank line is found in the
// first `maxHead` bytes): libhttp-parser would refuse the whole answer for one such line, while
// both clients drop the field. Returns false when the head is not complete yet.
bool dropBadFieldLines(evbuffer* in, size_t maxHead);

}  // namespace idem::upstream_detail
