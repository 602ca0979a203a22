// store.redis (SPEC §5): the URL forms, the refusal of rediss://, errors at file:line:col that
// never echo a password.
#include <gtest/gtest.h>

#include "config/config.h"
#include "config/redis_url.h"

namespace idem {
namespace {

constexpr const char* kMinimal = R"(upstreams:
  api:
    url: http://127.0.0.1:9000
routes:
  - name: all
    path: /*
    upstream: api
)";

ConfigResult parse(const std::string& text) {
  return parseConfig(text, "test.yaml");
}

std::string dump(const ConfigResult& result) {
  std::string out;
  for (const auto& e : result.errors) out += e.str() + "\n";
  return out;
}

void expectOneError(const std::string& text, int line, int column, const std::string& fragment) {
  ConfigResult result = parse(text);
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  const ConfigError& e = result.errors[0];
  EXPECT_EQ(e.line, line) << e.str();
  EXPECT_EQ(e.column, column) << e.str();
  EXPECT_NE(e.message.find(fragment), std::string::npos) << e.str();
  EXPECT_EQ(result.config, nullptr);
}

std::string withRedis(const std::string& block) {
  return std::string(kMinimal) + "store:\n  backend: redis\n  redis:\n" + block;
}

TEST(ConfigRedis, BackendAndDefaults) {
  ConfigResult r = parse(std::string(kMinimal) + "store:\n  backend: redis\n");
  ASSERT_TRUE(r.ok()) << dump(r);
  EXPECT_EQ(r.config->store.backend, "redis");
  EXPECT_EQ(r.config->store.redis.url, "redis://127.0.0.1:6379/0");
  EXPECT_EQ(r.config->store.redis.key_prefix, "idemproxy:");
  EXPECT_EQ(r.config->store.redis.timeout, Millis(1'000));
  EXPECT_EQ(r.config->store.redis.min_replicas, 0u);
  r =
      parse(withRedis("    url: unix:///run/redis/redis-server.sock\n    key_prefix: \"pay:\"\n"
                      "    timeout: 250ms\n    min_replicas: 1\n"));
  ASSERT_TRUE(r.ok()) << dump(r);
  EXPECT_EQ(r.config->store.redis.url, "unix:///run/redis/redis-server.sock");
  EXPECT_EQ(r.config->store.redis.key_prefix, "pay:");
  EXPECT_EQ(r.config->store.redis.timeout, Millis(250));
  EXPECT_EQ(r.config->store.redis.min_replicas, 1u);
}

TEST(ConfigRedis, TlsIsRefusedWithTheWayAround) {
  expectOneError(withRedis("    url: rediss://cache.internal:6380/0\n"), 11, 10,
                 "hiredis 0.14 has no TLS");
  expectOneError(withRedis("    url: rediss://cache.internal:6380/0\n"), 11, 10, "tunnel");
}

TEST(ConfigRedis, ErrorsNameTheSpotAndNeverEchoThePassword) {
  const std::string bad = withRedis("    url: \"redis://:hunter2@cache:99999/0\"\n");
  expectOneError(bad, 11, 10, "port");
  EXPECT_EQ(dump(parse(bad)).find("hunter2"), std::string::npos);
  expectOneError(withRedis("    url: http://cache:6379\n"), 11, 10, "expected redis://");
  expectOneError(withRedis("    url: unix://relative.sock\n"), 11, 10, "absolute");
  expectOneError(withRedis("    key_prefix: \"a{b}\"\n"), 11, 17, "braces");
  expectOneError(withRedis("    key_prefix: \"\"\n"), 11, 17, "printable");
  expectOneError(withRedis("    timeout: 0s\n"), 11, 14, "must be longer than 0");
  expectOneError(withRedis("    min_replicas: -1\n"), 11, 19, "from 0 to 64");
  expectOneError(withRedis("    pool: 3\n"), 11, 5, "pool");
}

TEST(RedisUrl, Forms) {
  RedisUrl u;
  std::string error;
  ASSERT_TRUE(parseRedisUrl("redis://cache.internal:6380/3", u, error)) << error;
  EXPECT_FALSE(u.unix_socket);
  EXPECT_EQ(u.host, "cache.internal");
  EXPECT_EQ(u.port, 6380u);
  EXPECT_EQ(u.db, 3u);
  ASSERT_TRUE(parseRedisUrl("redis://10.0.0.7", u, error)) << error;
  EXPECT_EQ(u.host, "10.0.0.7");
  EXPECT_EQ(u.port, 6379u);
  EXPECT_EQ(u.db, 0u);
  ASSERT_TRUE(parseRedisUrl("redis://[::1]:7000/1", u, error)) << error;
  EXPECT_EQ(u.host, "::1");
  EXPECT_EQ(u.port, 7000u);
  EXPECT_EQ(u.masked(), "redis://[::1]:7000/1");
  ASSERT_TRUE(parseRedisUrl("redis://idem:p%40ss@cache:6379/0", u, error)) << error;
  EXPECT_EQ(u.user, "idem");
  EXPECT_EQ(u.password, "p@ss");
  EXPECT_EQ(u.masked(), "redis://idem:***@cache:6379/0");
  ASSERT_TRUE(parseRedisUrl("redis://s3cret@cache", u, error)) << error;
  EXPECT_EQ(u.user, "");
  EXPECT_EQ(u.password, "s3cret");
  ASSERT_TRUE(parseRedisUrl("unix:///run/redis/redis.sock?db=2", u, error)) << error;
  EXPECT_TRUE(u.unix_socket);
  EXPECT_EQ(u.path, "/run/redis/redis.sock");
  EXPECT_EQ(u.db, 2u);
  for (const char* bad : {"redis://", "redis://host:", "redis://host:0", "redis://host/x",
                          "redis://[::1", "unix://", "unix:///s?x=1", "redis://%zz@h"}) {
    EXPECT_FALSE(parseRedisUrl(bad, u, error)) << bad;
  }
}

}  // namespace
}  // namespace idem
