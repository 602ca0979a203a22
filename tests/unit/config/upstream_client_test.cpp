// `upstreams.<name>.client`: which HTTP client forwards to an upstream, its default from the URL,
// and the combinations `check` refuses.
#include <gtest/gtest.h>

#include "config/config.h"

namespace idem {
namespace {

std::string withClient(const std::string& url, const std::string& client) {
  return "upstreams:\n  api:\n    url: " + url + "\n" +
         (client.empty() ? std::string() : "    client: " + client + "\n") +
         "routes:\n  - {name: all, path: /*, upstream: api}\n";
}

std::string errorsOf(const ConfigResult& r) {
  std::string out;
  for (const auto& e : r.errors) out += e.str() + "\n";
  return out;
}

UpstreamClient clientOf(const std::string& url, const std::string& client = "") {
  ConfigResult r = parseConfig(withClient(url, client), "test.yaml");
  EXPECT_TRUE(r.ok()) << errorsOf(r);
  return r.ok() ? r.config->upstreams.at("api").client : UpstreamClient::Auto;
}

TEST(UpstreamClientConfig, DefaultIsBuiltinForPlainHttpToAnIpAddressCurlOtherwise) {
  EXPECT_EQ(clientOf("http://127.0.0.1:9000"), UpstreamClient::Builtin);
  EXPECT_EQ(clientOf("http://[::1]:9000/base"), UpstreamClient::Builtin);
  EXPECT_EQ(clientOf("http://pay.internal:9000"), UpstreamClient::Curl);
  EXPECT_EQ(clientOf("https://127.0.0.1:9443"), UpstreamClient::Curl);
  EXPECT_EQ(clientOf("https://pay.example.com"), UpstreamClient::Curl);
}

TEST(UpstreamClientConfig, EitherClientCanBeChosenWhereItWorks) {
  EXPECT_EQ(clientOf("http://127.0.0.1:9000", "curl"), UpstreamClient::Curl);
  EXPECT_EQ(clientOf("http://127.0.0.1:9000", "builtin"), UpstreamClient::Builtin);
  EXPECT_EQ(clientOf("https://pay.example.com", "curl"), UpstreamClient::Curl);
}

TEST(UpstreamClientConfig, BuiltinWhereItCannotGoIsRefusedAtTheKey) {
  for (const char* url : {"https://127.0.0.1:9443", "http://pay.internal:9000"}) {
    ConfigResult r = parseConfig(withClient(url, "builtin"), "test.yaml");
    ASSERT_EQ(r.errors.size(), 1u) << errorsOf(r);
    EXPECT_EQ(r.errors[0].line, 4) << r.errors[0].str();
    EXPECT_EQ(r.errors[0].column, 13) << r.errors[0].str();
    EXPECT_NE(r.errors[0].message.find("client builtin"), std::string::npos) << r.errors[0].str();
    EXPECT_NE(r.errors[0].message.find("client: curl"), std::string::npos) << r.errors[0].str();
  }
}

TEST(UpstreamClientConfig, OnlyTheTwoNamesAreClients) {
  ConfigResult r = parseConfig(withClient("http://127.0.0.1:9000", "libcurl"), "test.yaml");
  ASSERT_EQ(r.errors.size(), 1u) << errorsOf(r);
  EXPECT_NE(r.errors[0].message.find("client must be builtin or curl"), std::string::npos);
}

}  // namespace
}  // namespace idem