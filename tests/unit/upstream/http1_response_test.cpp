// The built-in client's response reader alone (upstream/http1_response.cpp), fed from an
// evbuffer as a connection feeds it.
#include "upstream/http1_response.h"

#include <gtest/gtest.h>

#include <string_view>

#include "base/c_handles.h"
#include "upstream/upstream_backend.h"

namespace idem::upstream_detail {
namespace {

using Result = Http1ResponseReader::Result;

Result readAll(std::string_view bytes, HttpAnswer& answer, size_t limit = 1 << 20) {
  EvbufferPtr in(evbuffer_new());
  evbuffer_add(in.get(), bytes.data(), bytes.size());
  Http1ResponseReader reader;
  reader.reset(false, limit);
  std::string problem;
  Result r = reader.feed(in.get(), answer, problem);
  if (r == Result::NeedMore) r = reader.finish(answer, problem);
  return r;
}

TEST(Http1ResponseReader, ANameThatIsNotATokenNeverReachesTheAnswer) {
  // Found by fuzz_upstream_response: a line without a colon, then a continuation of it. The
  // continuation goes with its dropped field; had it stayed, the parser (whose lenient table
  // lets spaces into names) would have read "  bsfer-Encoding" as a field name.
  HttpAnswer a;
  ASSERT_EQ(readAll("HTTP/1.1 200 OK\r\nTran a\r\n  bsfer-Encoding: chunked\r\n"
                    "X-Kept: k\r\n  more\r\nContent-Length: 2\r\n\r\nok",
                    a),
            Result::Done);
  EXPECT_EQ(a.headers, (Headers{{"X-Kept", "k more"}, {"Content-Length", "2"}}));
  EXPECT_EQ(a.body, "ok");
  // A continuation of the status line has no field to continue either.
  HttpAnswer b;
  ASSERT_EQ(readAll("HTTP/1.1 200 OK\r\n  X-Odd: 1\r\nContent-Length: 0\r\n\r\n", b), Result::Done);
  EXPECT_EQ(b.headers, (Headers{{"Content-Length", "0"}}));
}

TEST(Http1ResponseReader, TheBodyPastTheLimitIsKeptForTheStream) {
  EvbufferPtr in(evbuffer_new());
  const std::string_view bytes =
      "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
      "4\r\nabcd\r\n4\r\nefgh\r\n0\r\n\r\n";
  evbuffer_add(in.get(), bytes.data(), bytes.size());
  Http1ResponseReader reader;
  reader.reset(false, 6);
  HttpAnswer a;
  std::string problem;
  ASSERT_EQ(reader.feed(in.get(), a, problem), Result::OverLimit);
  EXPECT_EQ(a.body, "abcd");  // what fits; "efgh" passed the limit
  reader.unlimit();
  HttpAnswer rest;
  ASSERT_EQ(reader.feed(in.get(), rest, problem), Result::Done) << problem;
  EXPECT_EQ(rest.body, "efgh");
  EXPECT_TRUE(reader.chunked());
}

}  // namespace
}  // namespace idem::upstream_detail
