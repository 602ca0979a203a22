#include "base/digest.h"

#include <gtest/gtest.h>

namespace idem {
namespace {

TEST(Digest, Sha256KnownVector) {
  Sha256 h;
  h.raw("abc");
  EXPECT_EQ(toHex(h.finish()), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Digest, RecordIdSeparatesFields) {
  EXPECT_NE(recordId("ab", {}, "c"), recordId("a", {}, "bc"));
  EXPECT_NE(recordId("r", {"Bearer a"}, "k"), recordId("r", {"Bearer b"}, "k"));
  EXPECT_NE(recordId("r1", {"x"}, "k"), recordId("r2", {"x"}, "k"));
  EXPECT_EQ(recordId("r", {"x"}, "k"), recordId("r", {"x"}, "k"));
  EXPECT_NE(recordId("r", {"x", ""}, "k"), recordId("r", {"x"}, "k"));
}

TEST(Digest, KeyHashForLogIsShortAndStable) {
  EXPECT_EQ(keyHashForLog("abc").size(), 16u);
  EXPECT_EQ(keyHashForLog("abc"), keyHashForLog("abc"));
  EXPECT_NE(keyHashForLog("abc"), keyHashForLog("abd"));
}

}  // namespace
}  // namespace idem
