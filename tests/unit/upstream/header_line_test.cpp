// The header-line reader both upstream backends share (regressions from tests/fuzz).
#include <gtest/gtest.h>

#include <string>

#include "upstream/upstream_backend.h"

namespace idem::upstream_detail {
namespace {

TEST(AppendHeaderLine, KeepsFieldsAndFoldsContinuations) {
  Headers h;
  appendHeaderLine(h, "Content-Type: application/json");
  appendHeaderLine(h, "X-Folded: a");
  appendHeaderLine(h, "  continued");
  appendHeaderLine(h, "Spaced : trimmed ");
  ASSERT_EQ(h.size(), 3u);
  EXPECT_EQ(h[0].name, "Content-Type");
  EXPECT_EQ(h[1].value, "a continued");
  EXPECT_EQ(h[2].name, "Spaced");
  EXPECT_EQ(h[2].value, "trimmed");
}

// Found by fuzz_upstream_head: a name with NUL bytes was kept as a field.
TEST(AppendHeaderLine, IgnoresNamesThatAreNotTokens) {
  Headers h;
  appendHeaderLine(h, std::string("Co\0\0\0: empty", 12));
  appendHeaderLine(h, "Two Words: x");
  appendHeaderLine(h, "X\rInjected: x");
  appendHeaderLine(h, "HTTP/1.1 201 Created: x");
  EXPECT_TRUE(h.empty());
}

}  // namespace
}  // namespace idem::upstream_detail

namespace idem::upstream_detail {
namespace {

TEST(ParseStatusLine, ReadsThreeDigitStatuses) {
  EXPECT_EQ(parseStatusLine("HTTP/1.1 201 Created"), 201);
  EXPECT_EQ(parseStatusLine("HTTP/1.1 204"), 204);
  EXPECT_EQ(parseStatusLine("HTTP/1.0 999 odd"), 999);
}

// Found by fuzz_upstream_head: "0 098" read as status 98.
TEST(ParseStatusLine, RejectsWhatIsNotAStatus) {
  EXPECT_EQ(parseStatusLine("0 098"), 0);
  EXPECT_EQ(parseStatusLine("HTTP/1.1 099 Low"), 0);
  EXPECT_EQ(parseStatusLine("HTTP/1.1 2000 Long"), 0);
  EXPECT_EQ(parseStatusLine("HTTP/1.1 20x"), 0);
  EXPECT_EQ(parseStatusLine("HTTP/1.1"), 0);
}

}  // namespace
}  // namespace idem::upstream_detail
