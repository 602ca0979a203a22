// routes[].idempotency.reconcile (SPEC §1.6, §5): the block, its defaults, and its path
// template's placeholders, with errors that name the line.
#include <gtest/gtest.h>

#include "config/config.h"

namespace idem {
namespace {

std::string withReconcile(const std::string& block) {
  return "upstreams:\n"
         "  api:\n"
         "    url: http://127.0.0.1:9000\n"
         "routes:\n"
         "  - name: pay\n"
         "    path: /pay/*\n"
         "    upstream: api\n"
         "    idempotency:\n"
         "      reconcile:\n" +
         block;
}

std::string errors(const ConfigResult& r) {
  std::string out;
  for (const auto& e : r.errors) out += e.str() + "\n";
  return out;
}

TEST(ReconcileConfig, ParsesTheBlockAndItsPlaceholders) {
  ConfigResult r =
      parseConfig(withReconcile("        method: get\n"
                                "        path: \"/by/{key}/{header:X-Order}?o={json:/a~1b/0}\"\n"
                                "        found: [200, 201]\n"),
                  "t.yaml");
  ASSERT_TRUE(r.ok()) << errors(r);
  const ReconcileConfig& rc = *r.config->routes[0].idempotency->reconcile;
  EXPECT_EQ(rc.method, "GET");
  EXPECT_EQ(rc.found, (std::vector<int>{200, 201}));
  EXPECT_EQ(rc.not_found, (std::vector<int>{404}));
  using K = LookupPart::Kind;
  EXPECT_EQ(rc.parts, (std::vector<LookupPart>{{K::Literal, "/by/"},
                                               {K::Key, ""},
                                               {K::Literal, "/"},
                                               {K::Header, "X-Order"},
                                               {K::Literal, "?o="},
                                               {K::Json, "/a~1b/0"}}));
  EXPECT_EQ(rc.parts[3].valueName(), "header:X-Order");
  EXPECT_EQ(rc.parts[5].valueName(), "json:/a~1b/0");
}

TEST(ReconcileConfig, AbsentMeansNoLookup) {
  ConfigResult r = parseConfig(withReconcile("        path: /k/{key}\n"), "t.yaml");
  ASSERT_TRUE(r.ok()) << errors(r);
  ConfigResult none = parseConfig(
      "upstreams:\n  api:\n    url: http://127.0.0.1:9000\nroutes:\n  - name: pay\n"
      "    path: /pay/*\n    upstream: api\n    idempotency: {}\n",
      "t.yaml");
  ASSERT_TRUE(none.ok()) << errors(none);
  EXPECT_FALSE(none.config->routes[0].idempotency->reconcile);
}

TEST(ReconcileConfig, RefusesBadTemplatesAndStatusesWithTheirLine) {
  const std::pair<std::string, std::string> cases[] = {
      {"        path: /k/{order}\n", "unknown placeholder {order}"},
      {"        path: /k/{json:x}\n", "unknown placeholder"},
      {"        path: /k/{header:}\n", "unknown placeholder"},
      {"        path: /k/{key\n", "without its '}'"},
      {"        path: /k/key}\n", "without its '{'"},
      {"        path: \"/k/a b\"\n", "printable ASCII"},
      {"        path: k/{key}\n", "absolute path"},
      {"        path: /k\n        found: [404]\n", "in both found and not_found"},
      {"        path: /k\n        found: []\n", "at least one status"},
      {"        path: /k\n        not_found: [99]\n", "from 100 to 599"},
      {"        path: /k\n        method: \"G T\"\n", "HTTP method"},
      {"        method: GET\n", "missing required key 'path'"},
      {"        path: /k\n        nope: 1\n", "nope"},
  };
  for (const auto& [block, fragment] : cases) {
    ConfigResult r = parseConfig(withReconcile(block), "t.yaml");
    ASSERT_FALSE(r.ok()) << block;
    const std::string all = errors(r);
    EXPECT_NE(all.find(fragment), std::string::npos) << block << all;
    EXPECT_NE(all.find("t.yaml:"), std::string::npos) << all;
    EXPECT_GT(r.errors[0].line, 8) << all;
  }
}

}  // namespace
}  // namespace idem
