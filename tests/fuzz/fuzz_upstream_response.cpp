// The built-in client's response reader (upstream/http1_response.cpp: libhttp-parser plus the
// pass that drops field lines whose name is not a token), fed as a connection would feed it.
// The first input byte picks the read size (1–256 bytes) and whether the request was a HEAD;
// the rest is what the upstream sent. Past the 4 KiB body limit the rest is taken as a stream.
#include <event2/buffer.h>

#include <cstdint>
#include <string_view>

#include "base/c_handles.h"
#include "upstream/http1_response.h"
#include "upstream/upstream_backend.h"

using idem::upstream_detail::Http1ResponseReader;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t step = static_cast<size_t>(data[0] & 0x7f) * 2 + 1;
  const bool head = (data[0] & 0x80) != 0;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);
  idem::EvbufferPtr buf(evbuffer_new());
  Http1ResponseReader reader;
  reader.reset(head, 4096);
  idem::HttpAnswer answer;
  std::string problem;
  Http1ResponseReader::Result r = Http1ResponseReader::Result::NeedMore;
  bool streaming = false;
  while (!in.empty() && (r == Http1ResponseReader::Result::NeedMore ||
                         r == Http1ResponseReader::Result::OverLimit)) {
    const std::string_view piece = in.substr(0, step);
    in.remove_prefix(piece.size());
    evbuffer_add(buf.get(), piece.data(), piece.size());
    r = reader.feed(buf.get(), answer, problem);
    if (r == Http1ResponseReader::Result::OverLimit) {
      if (answer.body.size() > 4096) __builtin_trap();  // the buffered part stays bounded
      reader.unlimit();
      streaming = true;
      answer.body.clear();
      r = reader.feed(buf.get(), answer, problem);
    }
    if (streaming) answer.body.clear();  // taken by the stream's consumer
    if (evbuffer_get_length(buf.get()) > 64 * 1024 + step) __builtin_trap();  // bounded input
  }
  if (r == Http1ResponseReader::Result::NeedMore) r = reader.finish(answer, problem);
  if (r == Http1ResponseReader::Result::Done) {
    if (answer.status < 200 || answer.status > 999) __builtin_trap();
    for (const auto& h : answer.headers) {
      if (!idem::upstream_detail::isToken(h.name)) __builtin_trap();
    }
    if (!streaming && answer.body.size() > 4096) __builtin_trap();
  }
  if (r == Http1ResponseReader::Result::Malformed && problem.empty()) __builtin_trap();
  return 0;
}
