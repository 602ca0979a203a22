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
