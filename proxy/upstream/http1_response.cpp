#include "upstream/http1_response.h"

#include <algorithm>
#include <charconv>
#include <string_view>

#include "upstream/upstream_backend.h"

namespace idem::upstream_detail {
namespace {

constexpr size_t kMaxHeaderBytes = 64 * 1024;  // a response header block (and trailers)
constexpr size_t kMaxChunkLine = 4096;         // a chunk-size line with extensions

// True when a comma-separated header value lists `token` (case-insensitive).
bool listsToken(std::string_view value, std::string_view token) {
  while (!value.empty()) {
    size_t comma = value.find(',');
    if (iequals(trimOws(value.substr(0, comma)), token)) return true;
    value = comma == std::string_view::npos ? std::string_view() : value.substr(comma + 1);
  }
  return false;
}

}  // namespace

void Http1ResponseReader::reset(bool headRequest, size_t bodyLimit) {
  phase_ = Phase::Head;
  head_ = headRequest;
  limit_ = bodyLimit;
  remaining_ = 0;
  trailerBytes_ = 0;
  closeAfter_ = false;
  chunked_ = false;
}

Http1ResponseReader::Result Http1ResponseReader::feedHead(evbuffer* in, HttpAnswer& answer,
                                                          std::string& problem) {
  for (;;) {
    size_t len = evbuffer_get_length(in);
    if (len == 0) return Result::NeedMore;
    size_t look = std::min(len, kMaxHeaderBytes);
    const char* data =
        reinterpret_cast<const char*>(evbuffer_pullup(in, static_cast<ev_ssize_t>(look)));
    if (!data) {
      problem = "out of memory";
      return Result::Malformed;
    }
    std::string_view buf(data, look);
    constexpr std::string_view kHttp = "HTTP/";
    const size_t prefix = std::min(look, kHttp.size());
    if (buf.substr(0, prefix) != kHttp.substr(0, prefix)) {
      problem = "malformed status line from upstream";
      return Result::Malformed;
    }
    // Find the blank line ending the block.
    size_t pos = 0;
    size_t end = std::string_view::npos;
    while (pos < buf.size()) {
      size_t nl = buf.find('\n', pos);
      if (nl == std::string_view::npos) break;
      std::string_view line = buf.substr(pos, nl - pos);
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty() && pos > 0) {
        end = nl + 1;
        break;
      }
      pos = nl + 1;
    }
    if (end == std::string_view::npos) {
      if (len >= kMaxHeaderBytes) {
        problem = "upstream response header block over 64 KiB";
        return Result::Malformed;
      }
      return Result::NeedMore;
    }
    // Parse the block: status line, then fields (obs-fold continues the previous value).
    answer.headers.clear();
    std::string_view block = buf.substr(0, end);
    size_t nl = block.find('\n');
    std::string_view statusLine = block.substr(0, nl);
    if (!statusLine.empty() && statusLine.back() == '\r') statusLine.remove_suffix(1);
    int status = statusLine.starts_with("HTTP/1.") ? parseStatusLine(statusLine) : 0;
    if (status < 100 || (statusLine.size() > 12 && statusLine[12] != ' ')) {
      problem = "malformed status line from upstream";
      return Result::Malformed;
    }
    const bool http10 = statusLine.starts_with("HTTP/1.0");
    pos = nl + 1;
    while (pos < block.size()) {
      size_t e = block.find('\n', pos);
      std::string_view line = block.substr(pos, e - pos);
      pos = e + 1;
      if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
      if (line.empty()) break;
      appendHeaderLine(answer.headers, line);
    }
    evbuffer_drain(in, end);
    if (status < 200) {
      if (status == 101) {
        problem = "unexpected 101 Switching Protocols from upstream";
        return Result::Malformed;
      }
      continue;  // an interim response: the final one follows
    }
    answer.status = status;

    // Framing.
    bool keepAlive = false;
    const std::string* cl = nullptr;
    bool transferCoded = false;
    for (const Header& h : answer.headers) {
      if (iequals(h.name, "Connection")) {
        if (listsToken(h.value, "close")) closeAfter_ = true;
        if (listsToken(h.value, "keep-alive")) keepAlive = true;
      } else if (iequals(h.name, "Transfer-Encoding")) {
        transferCoded = true;
      } else if (iequals(h.name, "Content-Length")) {
        if (cl && *cl != h.value) {
          problem = "conflicting Content-Length from upstream";
          return Result::Malformed;
        }
        cl = &h.value;
      }
    }
    if (http10 && !keepAlive) closeAfter_ = true;
    if (head_ || status == 204 || status == 304) return Result::Done;
    if (transferCoded) {
      problem = unsupportedTransferCoding(answer.headers);
      if (!problem.empty()) return Result::Malformed;
      chunked_ = true;
      phase_ = Phase::ChunkSize;
      return Result::NeedMore;
    }
    if (cl) {
      size_t n = 0;
      auto [p, ec] = std::from_chars(cl->data(), cl->data() + cl->size(), n);
      if (cl->empty() || ec != std::errc() || p != cl->data() + cl->size()) {
        problem = "invalid Content-Length from upstream";
        return Result::Malformed;
      }
      if (n == 0) return Result::Done;
      phase_ = Phase::Body;
      remaining_ = n;
      if (n > limit_) return Result::OverLimit;  // known from the head: nothing is buffered
      answer.body.reserve(std::min<size_t>(n, 1 << 20));
      return Result::NeedMore;
    }
    phase_ = Phase::UntilClose;
    closeAfter_ = true;
    return Result::NeedMore;
  }
}

bool Http1ResponseReader::takeBody(evbuffer* in, std::string& body, size_t max, size_t& taken) {
  taken = std::min(max, evbuffer_get_length(in));
  if (taken == 0) return true;
  if (body.size() + taken > limit_) return false;
  size_t old = body.size();
  body.resize(old + taken);
  evbuffer_remove(in, body.data() + old, taken);
  return true;
}

Http1ResponseReader::Result Http1ResponseReader::feed(evbuffer* in, HttpAnswer& answer,
                                                      std::string& problem) {
  size_t taken = 0;
  for (;;) {
    switch (phase_) {
      case Phase::Head: {
        Result r = feedHead(in, answer, problem);
        if (r != Result::NeedMore || phase_ == Phase::Head) return r;
        break;
      }
      case Phase::Body:
        if (!takeBody(in, answer.body, remaining_, taken)) return Result::OverLimit;
        remaining_ -= taken;
        return remaining_ == 0 ? Result::Done : Result::NeedMore;
      case Phase::UntilClose:
        if (!takeBody(in, answer.body, evbuffer_get_length(in), taken)) return Result::OverLimit;
        return Result::NeedMore;
      case Phase::ChunkData:
        if (!takeBody(in, answer.body, remaining_, taken)) return Result::OverLimit;
        remaining_ -= taken;
        if (remaining_ != 0) return Result::NeedMore;
        phase_ = Phase::ChunkEnd;
        break;
      case Phase::ChunkSize:
      case Phase::ChunkEnd:
      case Phase::Trailers: {
        size_t eolLen = 0;
        evbuffer_ptr eol = evbuffer_search_eol(in, nullptr, &eolLen, EVBUFFER_EOL_CRLF);
        if (eol.pos < 0) {
          size_t len = evbuffer_get_length(in);
          if ((phase_ == Phase::Trailers && trailerBytes_ + len > kMaxHeaderBytes) ||
              (phase_ != Phase::Trailers && len > kMaxChunkLine)) {
            problem = "malformed chunked body from upstream";
            return Result::Malformed;
          }
          return Result::NeedMore;
        }
        size_t lineLen = static_cast<size_t>(eol.pos);
        const char* data = reinterpret_cast<const char*>(
            evbuffer_pullup(in, static_cast<ev_ssize_t>(lineLen + eolLen)));
        std::string_view line(data, lineLen);
        if (phase_ == Phase::ChunkEnd) {
          if (!line.empty()) {
            problem = "malformed chunked body from upstream";
            return Result::Malformed;
          }
          phase_ = Phase::ChunkSize;
        } else if (phase_ == Phase::Trailers) {
          trailerBytes_ += lineLen + eolLen;
          if (trailerBytes_ > kMaxHeaderBytes) {
            problem = "upstream trailers over 64 KiB";
            return Result::Malformed;
          }
          if (line.empty()) {
            evbuffer_drain(in, lineLen + eolLen);
            return Result::Done;  // trailer fields are not part of the recorded header block
          }
        } else {
          std::string_view hex = trimOws(line.substr(0, line.find(';')));
          size_t size = 0;
          auto [p, ec] = std::from_chars(hex.data(), hex.data() + hex.size(), size, 16);
          if (hex.empty() || ec != std::errc() || p != hex.data() + hex.size()) {
            problem = "malformed chunk size from upstream";
            return Result::Malformed;
          }
          if (size == 0) {
            phase_ = Phase::Trailers;
          } else {
            phase_ = Phase::ChunkData;
            remaining_ = size;
          }
        }
        evbuffer_drain(in, lineLen + eolLen);
        break;
      }
    }
  }
}

}  // namespace idem::upstream_detail
