#include "base/http_types.h"

#include <gtest/gtest.h>

namespace idem {
namespace {

TEST(NormalizePath, MergesSlashesAndResolvesDotSegments) {
  EXPECT_EQ(normalizePath("/v1/payments"), "/v1/payments");
  EXPECT_EQ(normalizePath("//v1///payments"), "/v1/payments");
  EXPECT_EQ(normalizePath("/v1/./payments"), "/v1/payments");
  EXPECT_EQ(normalizePath("/v1/x/../payments"), "/v1/payments");
  EXPECT_EQ(normalizePath("/../../v1"), "/v1");
  EXPECT_EQ(normalizePath("/"), "/");
  EXPECT_EQ(normalizePath("/a/.."), "/");
  EXPECT_EQ(normalizePath("/a/"), "/a/");
}

TEST(NormalizePath, DecodesOnlyUnreservedEscapes) {
  EXPECT_EQ(normalizePath("/v1/%70ayments"), "/v1/payments");
  EXPECT_EQ(normalizePath("/a%2Db%5Fc%7E%2e"), "/a-b_c~.");
  EXPECT_EQ(normalizePath("/a%2fb"), "/a%2Fb");  // an encoded slash stays data, not a separator
  EXPECT_EQ(normalizePath("/a%20b"), "/a%20b");
  EXPECT_EQ(normalizePath("/bad%zz%4"), "/bad%zz%4");
}

TEST(NormalizePath, EncodedDotSegmentsResolveToo) {
  EXPECT_EQ(normalizePath("/v1/x/%2e%2e/payments"), "/v1/payments");
}

TEST(Iequals, IgnoresAsciiCaseOnly) {
  EXPECT_TRUE(iequals("Content-Length", "content-length"));
  EXPECT_FALSE(iequals("Content-Length", "Content-Lengt"));
}

}  // namespace
}  // namespace idem

namespace idem {
namespace {

TEST(AmbiguousPath, RefusesEveryFormBackendsReadDifferently) {
  for (const char* p :
       {"/v1/payments#frag", "/v1%2Fpayments", "/v1%2fpayments", "/v1/a%5Cb", "/v1/a\\b",
        "/v1/a%00b", "/v1/payments;jsessionid=1", "/v1/payments/%2e%2e/x", "/v1/payments/%2E/x",
        "/v1/payments/../x", "/v1/./x", "/v1/..", "/..", "/v1/%zz", "/v1/%4", "/v1/%"}) {
    EXPECT_FALSE(ambiguousPathReason(p).empty()) << p;
  }
  for (const char* p : {"/", "/v1/payments", "/v1//payments/", "/v1/%70ay", "/v1/a.b/..c/...",
                        "/v1/%41%42", "/v1/x%20y"}) {
    EXPECT_EQ(ambiguousPathReason(p), "") << p;
  }
}

}  // namespace
}  // namespace idem
