#include "request/forwarding.h"

#include <gtest/gtest.h>

namespace idem {
namespace {

Headers forward(const Headers& in, std::string_view peer = "10.0.0.9", bool trusted = true) {
  return forwardedFields(
      [&](FieldVisitor fn) {
        for (const auto& h : in) fn(h.name, h.value);
      },
      peer, trusted);
}

TEST(SplitTarget, OriginAndAbsoluteForms) {
  RequestTarget t = splitTarget("/v1/pay?x=1&y");
  EXPECT_TRUE(t.ok);
  EXPECT_EQ(t.path, "/v1/pay");
  EXPECT_EQ(t.query, "x=1&y");
  t = splitTarget("http://api.test:8080/v1/pay?x=1");
  EXPECT_TRUE(t.ok);
  EXPECT_EQ(t.path, "/v1/pay");
  EXPECT_EQ(t.query, "x=1");
  t = splitTarget("http://api.test");
  EXPECT_TRUE(t.ok);
  EXPECT_EQ(t.path, "/");
  t = splitTarget("http://api.test?q");
  EXPECT_EQ(t.path, "/");
  EXPECT_EQ(t.query, "q");
  EXPECT_FALSE(splitTarget("*").ok);
  EXPECT_FALSE(splitTarget("v1/pay").ok);
  EXPECT_FALSE(splitTarget("").ok);
  EXPECT_FALSE(splitTarget("://x/y").ok);
}

TEST(ForwardedFields, DropsHopByHopAndFramingKeepsOrder) {
  const Headers out = forward({{"Host", "api.test"},
                               {"Connection", "keep-alive, X-Private"},
                               {"X-Private", "secret"},
                               {"Content-Length", "5"},
                               {"Expect", "100-continue"},
                               {"Transfer-Encoding", "chunked"},
                               {"Authorization", "Bearer A"},
                               {"Accept", "a"},
                               {"accept", "b"}});
  const Headers want{{"Host", "api.test"},
                     {"Authorization", "Bearer A"},
                     {"Accept", "a"},
                     {"accept", "b"},
                     {"X-Forwarded-For", "10.0.0.9"},
                     {"X-Forwarded-Proto", "http"},
                     {"X-Forwarded-Host", "api.test"}};
  EXPECT_EQ(out, want);
}

TEST(ForwardedFields, ExtendsForwardedForAndKeepsAFrontProxysFields) {
  const Headers out = forward({{"X-Forwarded-For", "1.1.1.1"},
                               {"X-Forwarded-For", "2.2.2.2"},
                               {"X-Forwarded-Proto", "https"},
                               {"X-Forwarded-Host", "public.test"},
                               {"Host", "internal"}});
  const Headers want{{"X-Forwarded-Proto", "https"},
                     {"X-Forwarded-Host", "public.test"},
                     {"Host", "internal"},
                     {"X-Forwarded-For", "1.1.1.1, 2.2.2.2, 10.0.0.9"}};
  EXPECT_EQ(out, want);
}

TEST(ForwardedFields, AnUntrustedClientsProtoAndHostAreReplaced) {
  const Headers out = forward(
      {{"X-Forwarded-Proto", "https"}, {"X-Forwarded-Host", "evil.test"}, {"Host", "api.test"}},
      "10.0.0.9", false);
  const Headers want{{"Host", "api.test"},
                     {"X-Forwarded-For", "10.0.0.9"},
                     {"X-Forwarded-Proto", "http"},
                     {"X-Forwarded-Host", "api.test"}};
  EXPECT_EQ(out, want);
}

TEST(ForwardedFields, NoPeerNoHost) {
  const Headers out = forward({}, "");
  const Headers want{{"X-Forwarded-Proto", "http"}};
  EXPECT_EQ(out, want);
}

}  // namespace
}  // namespace idem
