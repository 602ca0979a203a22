// Configuration parsing and validation (proxy/config.*) and the command line (proxy/cli.*).
#include "config/config.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "cli/cli.h"

namespace idem {
namespace {

using namespace std::chrono_literals;

// The smallest valid file; tests append blocks or replace it entirely.
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

// Expects exactly one error, at line:column, whose message contains `fragment`.
void expectOneError(const std::string& text, int line, int column, const std::string& fragment) {
  ConfigResult result = parse(text);
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  const ConfigError& e = result.errors[0];
  EXPECT_EQ(e.file, "test.yaml");
  EXPECT_EQ(e.line, line) << e.str();
  EXPECT_EQ(e.column, column) << e.str();
  EXPECT_NE(e.message.find(fragment), std::string::npos) << e.str();
  EXPECT_FALSE(result.ok());
  EXPECT_EQ(result.config, nullptr);
}

// ---- durations, sizes, addresses ----

TEST(ParseDuration, AcceptsEveryUnit) {
  EXPECT_EQ(parseDuration("500ms"), Millis(500));
  EXPECT_EQ(parseDuration("0ms"), Millis(0));
  EXPECT_EQ(parseDuration("30s"), Millis(30'000));
  EXPECT_EQ(parseDuration("5m"), Millis(300'000));
  EXPECT_EQ(parseDuration("24h"), Millis(86'400'000));
  EXPECT_EQ(parseDuration("7d"), Millis(7ll * 86'400'000));
  EXPECT_EQ(parseDuration("3650d"), Millis(3650ll * 86'400'000));
}

TEST(ParseDuration, RejectsMalformedValues) {
  for (const char* bad :
       {"", "30", "s", "-5s", "+5s", "1.5s", "5 s", " 5s", "5s ", "5sec", "5S", "5w", "1h30m",
        "3651d", "87601h", "99999999999999999999s", "18446744073709551615ms"}) {
    EXPECT_EQ(parseDuration(bad), std::nullopt) << bad;
  }
}

TEST(ParseSize, AcceptsBinaryDecimalAndPlainBytes) {
  EXPECT_EQ(parseSize("0"), 0u);
  EXPECT_EQ(parseSize("512"), 512u);
  EXPECT_EQ(parseSize("512B"), 512u);
  EXPECT_EQ(parseSize("512KiB"), 512u * 1024);
  EXPECT_EQ(parseSize("1MiB"), 1u << 20);
  EXPECT_EQ(parseSize("2GiB"), 2ull << 30);
  EXPECT_EQ(parseSize("1TiB"), 1ull << 40);
  EXPECT_EQ(parseSize("1KB"), 1000u);
  EXPECT_EQ(parseSize("3MB"), 3'000'000u);
  EXPECT_EQ(parseSize("2GB"), 2'000'000'000u);
  EXPECT_EQ(parseSize("18446744073709551615"), UINT64_MAX);
}

TEST(ParseSize, RejectsMalformedValues) {
  for (const char* bad : {"", "MiB", "-1", "1.5MiB", "1 MiB", "1mib", "1M", "1K", "1Mb", "1PiB",
                          "18446744073709551616", "16777216TiB"}) {
    EXPECT_EQ(parseSize(bad), std::nullopt) << bad;
  }
}

TEST(ParseListen, AcceptsHostPortAndBracketedIpv6) {
  auto v4 = parseListen("127.0.0.1:8080");
  ASSERT_TRUE(v4);
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 8080);
  EXPECT_EQ(v4->text, "127.0.0.1:8080");
  auto v6 = parseListen("[::1]:9180");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 9180);
  auto any6 = parseListen("[::]:0");
  ASSERT_TRUE(any6);
  EXPECT_EQ(any6->host, "::");
  EXPECT_EQ(any6->port, 0);
  auto name = parseListen("localhost:80");
  ASSERT_TRUE(name);
  EXPECT_EQ(name->host, "localhost");
  EXPECT_TRUE(parseListen("0.0.0.0:65535"));
}

TEST(ParseListen, RejectsBadAddresses) {
  for (const char* bad :
       {"", "8080", ":8080", "127.0.0.1", "127.0.0.1:", "127.0.0.1:65536", "127.0.0.1:-1",
        "127.0.0.1:80x", "::1:8080", "[::1]", "[::1]8080", "[nope]:80", "[::1:80", "999.1.1.1:80",
        "bad host:80", "127.0.0.1:1234567"}) {
    EXPECT_EQ(parseListen(bad), std::nullopt) << bad;
  }
}

TEST(FormatDuration, UsesTheLargestExactUnit) {
  EXPECT_EQ(formatDuration(Millis(0)), "0ms");
  EXPECT_EQ(formatDuration(Millis(1500)), "1500ms");
  EXPECT_EQ(formatDuration(Millis(90'000)), "90s");
  EXPECT_EQ(formatDuration(Millis(60'000)), "1m");
  EXPECT_EQ(formatDuration(24h), "1d");
}

// ---- defaults ----

TEST(Config, MinimalFileTakesEveryDefault) {
  ConfigResult result = parse(kMinimal);
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& c = *result.config;
  EXPECT_EQ(c.source, "test.yaml");
  EXPECT_EQ(c.server.listen.host, "127.0.0.1");
  EXPECT_EQ(c.server.listen.port, 8080);
  EXPECT_EQ(c.server.workers, 0u);
  EXPECT_EQ(c.server.max_request_body, 1u << 20);
  EXPECT_EQ(c.server.client_timeout, 30s);
  EXPECT_EQ(c.server.drain_timeout, 40s);
  EXPECT_FALSE(c.admin.has_value());
  EXPECT_EQ(c.store.backend, "lmdb");
  EXPECT_EQ(c.store.path, "/var/lib/idemproxy");
  EXPECT_EQ(c.store.max_size, 1ull << 30);
  EXPECT_EQ(c.store.durability, Durability::Full);
  EXPECT_TRUE(c.store.wal);
  EXPECT_EQ(c.store.wal_size, 32u << 20);
  EXPECT_EQ(c.store.sweep_interval, 30s);
  EXPECT_EQ(c.log.level, LogLevel::Info);
  ASSERT_EQ(c.upstreams.size(), 1u);
  const UpstreamConfig& up = c.upstreams.at("api");
  EXPECT_EQ(up.name, "api");
  EXPECT_EQ(up.url, "http://127.0.0.1:9000");
  EXPECT_EQ(up.connect_timeout, 2s);
  EXPECT_EQ(up.timeout, 30s);
  EXPECT_EQ(up.max_connections, 64u);
  EXPECT_EQ(up.idle_timeout, 2s);
  EXPECT_EQ(up.max_response_body, 1u << 20);
  ASSERT_EQ(c.routes.size(), 1u);
  const RouteConfig& r = c.routes[0];
  EXPECT_EQ(r.name, "all");
  EXPECT_TRUE(r.methods.empty());
  EXPECT_EQ(r.path, "");
  EXPECT_TRUE(r.prefix);
  EXPECT_EQ(r.upstream, "api");
  EXPECT_FALSE(r.idempotency.has_value());
}

TEST(Config, EmptyIdempotencyAndAdminBlocksTakeDefaults) {
  ConfigResult result = parse(std::string(kMinimal) +
                              "    idempotency: {}\n"
                              "admin:\n");
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& c = *result.config;
  ASSERT_TRUE(c.admin.has_value());
  EXPECT_EQ(c.admin->listen.text, "127.0.0.1:9180");
  ASSERT_TRUE(c.routes[0].idempotency.has_value());
  const IdempotencyConfig& i = *c.routes[0].idempotency;
  EXPECT_EQ(i.key_header, "Idempotency-Key");
  EXPECT_TRUE(i.required);
  EXPECT_EQ(i.ttl, 24h);
  EXPECT_EQ(i.scope, std::vector<std::string>{"Authorization"});
  EXPECT_EQ(i.fingerprint,
            (std::vector<FingerprintPart>{FingerprintPart::Method, FingerprintPart::Path,
                                          FingerprintPart::Query, FingerprintPart::Body}));
  EXPECT_EQ(i.concurrent, ConcurrentMode::Wait);
  EXPECT_EQ(i.wait_timeout, 10s);
  EXPECT_EQ(i.lease, 60s);
  EXPECT_EQ(i.abandoned, AbandonedMode::Fail);
  EXPECT_EQ(i.release_statuses, (std::vector<int>{429, 503}));
  EXPECT_EQ(i.replay_drop_headers, std::vector<std::string>{"Set-Cookie"});
  EXPECT_EQ(i.max_response_body, 8u << 20);
}

TEST(Config, EveryKeyIsRead) {
  ConfigResult result = parse(R"(server:
  listen: "[::1]:0"
  workers: 4
  max_request_body: 2MiB
  client_timeout: 5s
  drain_timeout: 20s
admin:
  listen: 127.0.0.1:0
store:
  backend: lmdb
  path: /tmp/idem
  max_size: 64MiB
  durability: relaxed
  wal: false
  wal_size: 4MiB
  sweep_interval: 1m
upstreams:
  pay:
    url: HTTPS://pay.example.com:8443/base/
    connect_timeout: 500ms
    timeout: 10s
    max_connections: 8
    idle_timeout: 750ms
    max_response_body: 3MiB
routes:
  - name: payments
    methods: [post, Put]
    path: /v1/payments/*
    upstream: pay
    idempotency:
      key_header: X-Request-Key
      required: false
      ttl: 2d
      scope: [Authorization, X-Tenant]
      fingerprint: [method, body_json]
      concurrent: reject
      wait_timeout: 0s
      lease: 20s
      abandoned: retry
      release_statuses: [409, 429, 500]
      replay_drop_headers: []
      max_response_body: 1MB
log:
  level: debug
)");
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& c = *result.config;
  EXPECT_EQ(c.server.listen.host, "::1");
  EXPECT_EQ(c.server.listen.port, 0);
  EXPECT_EQ(c.server.workers, 4u);
  EXPECT_EQ(c.server.max_request_body, 2u << 20);
  EXPECT_EQ(c.server.client_timeout, 5s);
  EXPECT_EQ(c.server.drain_timeout, 20s);
  ASSERT_TRUE(c.admin);
  EXPECT_EQ(c.admin->listen.port, 0);
  EXPECT_EQ(c.store.path, "/tmp/idem");
  EXPECT_EQ(c.store.max_size, 64u << 20);
  EXPECT_EQ(c.store.durability, Durability::Relaxed);
  EXPECT_FALSE(c.store.wal);
  EXPECT_EQ(c.store.wal_size, 4u << 20);
  EXPECT_EQ(c.store.sweep_interval, 1min);
  const UpstreamConfig& up = c.upstreams.at("pay");
  EXPECT_EQ(up.url, "https://pay.example.com:8443/base");  // scheme lower-cased, '/' trimmed
  EXPECT_EQ(up.connect_timeout, 500ms);
  EXPECT_EQ(up.timeout, 10s);
  EXPECT_EQ(up.max_connections, 8u);
  EXPECT_EQ(up.idle_timeout, 750ms);
  EXPECT_EQ(up.max_response_body, 3u << 20);
  const RouteConfig& r = c.routes[0];
  EXPECT_EQ(r.methods, (std::vector<std::string>{"POST", "PUT"}));
  EXPECT_EQ(r.path, "/v1/payments");
  EXPECT_TRUE(r.prefix);
  ASSERT_TRUE(r.idempotency);
  const IdempotencyConfig& i = *r.idempotency;
  EXPECT_EQ(i.key_header, "X-Request-Key");
  EXPECT_FALSE(i.required);
  EXPECT_EQ(i.ttl, 48h);
  EXPECT_EQ(i.scope, (std::vector<std::string>{"Authorization", "X-Tenant"}));
  EXPECT_EQ(i.fingerprint,
            (std::vector<FingerprintPart>{FingerprintPart::Method, FingerprintPart::BodyJson}));
  EXPECT_EQ(i.concurrent, ConcurrentMode::Reject);
  EXPECT_EQ(i.wait_timeout, 0s);
  EXPECT_EQ(i.lease, 20s);
  EXPECT_EQ(i.abandoned, AbandonedMode::Retry);
  EXPECT_EQ(i.release_statuses, (std::vector<int>{409, 429, 500}));
  EXPECT_TRUE(i.replay_drop_headers.empty());
  EXPECT_EQ(i.max_response_body, 1'000'000u);
  EXPECT_EQ(c.log.level, LogLevel::Debug);
}

TEST(Config, RelativeStorePathIsRelativeToTheFile) {
  std::string text = std::string(kMinimal) + "store:\n  path: data/idem\n";
  ConfigResult nested = parseConfig(text, "/etc/idemproxy/idemproxy.yaml");
  ASSERT_TRUE(nested.ok()) << dump(nested);
  EXPECT_EQ(nested.config->store.path, "/etc/idemproxy/data/idem");
  ConfigResult bare = parseConfig(text, "idemproxy.yaml");
  ASSERT_TRUE(bare.ok()) << dump(bare);
  EXPECT_EQ(bare.config->store.path, "data/idem");
}

TEST(Config, DefaultConfigFileLoads) {
  ConfigResult result = loadConfigFile(IDEMPROXY_SOURCE_DIR "/config/idemproxy.yaml");
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& c = *result.config;
  EXPECT_EQ(c.server.listen.text, "127.0.0.1:8080");
  ASSERT_TRUE(c.admin);
  EXPECT_EQ(c.admin->listen.text, "127.0.0.1:9180");
  EXPECT_EQ(c.store.path, "/var/lib/idemproxy");
  EXPECT_EQ(c.upstreams.at("payments").url, "http://127.0.0.1:9000");
  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_TRUE(c.routes[0].idempotency);
  EXPECT_FALSE(c.routes[1].idempotency);
  // The file documents the defaults: it must parse to exactly what an empty block gives.
  IdempotencyConfig defaults;
  const IdempotencyConfig& i = *c.routes[0].idempotency;
  EXPECT_EQ(i.ttl, defaults.ttl);
  EXPECT_EQ(i.lease, defaults.lease);
  EXPECT_EQ(i.fingerprint, defaults.fingerprint);
  EXPECT_EQ(i.release_statuses, defaults.release_statuses);
  EXPECT_EQ(i.max_response_body, defaults.max_response_body);
}

// ---- route matching ----

RouteConfig route(std::string path, bool prefix, std::vector<std::string> methods = {}) {
  RouteConfig r;
  r.name = "r";
  r.path = std::move(path);
  r.prefix = prefix;
  r.methods = std::move(methods);
  return r;
}

TEST(RouteMatch, ExactPath) {
  RouteConfig r = route("/v1/refunds", false);
  EXPECT_TRUE(r.matches("POST", "/v1/refunds"));
  EXPECT_FALSE(r.matches("POST", "/v1/refunds/"));
  EXPECT_FALSE(r.matches("POST", "/v1/refunds/1"));
  EXPECT_FALSE(r.matches("POST", "/v1/refund"));
  EXPECT_FALSE(r.matches("POST", "/v1/refundsx"));
}

TEST(RouteMatch, PrefixMatchesItselfAndBelowButNotSiblings) {
  RouteConfig r = route("/a", true);
  EXPECT_TRUE(r.matches("GET", "/a"));
  EXPECT_TRUE(r.matches("GET", "/a/"));
  EXPECT_TRUE(r.matches("GET", "/a/b/c"));
  EXPECT_FALSE(r.matches("GET", "/ab"));
  EXPECT_FALSE(r.matches("GET", "/"));
  EXPECT_FALSE(r.matches("GET", "/b/a"));
}

TEST(RouteMatch, StarMatchesEverything) {
  RouteConfig r = route("", true);
  EXPECT_TRUE(r.matches("GET", "/"));
  EXPECT_TRUE(r.matches("DELETE", "/x/y"));
  EXPECT_TRUE(r.matches("POST", ""));
}

TEST(RouteMatch, Methods) {
  RouteConfig r = route("/p", false, {"POST", "PUT"});
  EXPECT_TRUE(r.matches("POST", "/p"));
  EXPECT_TRUE(r.matches("PUT", "/p"));
  EXPECT_FALSE(r.matches("GET", "/p"));
  EXPECT_FALSE(r.matches("post", "/p"));  // methods are case-sensitive (RFC 9110 §9.1)
}

TEST(RouteMatch, FindRouteTakesTheFirstMatch) {
  ConfigResult result = parse(R"(upstreams:
  api: {url: "http://127.0.0.1:1"}
routes:
  - {name: pay, methods: [post], path: /v1/payments/*, upstream: api}
  - {name: refund, path: /v1/refunds, upstream: api}
  - {name: rest, path: /*, upstream: api}
)");
  ASSERT_TRUE(result.ok()) << dump(result);
  const Config& c = *result.config;
  EXPECT_EQ(c.findRoute("POST", "/v1/payments")->name, "pay");
  EXPECT_EQ(c.findRoute("POST", "/v1/payments/42/capture")->name, "pay");
  EXPECT_EQ(c.findRoute("GET", "/v1/payments")->name, "rest");
  EXPECT_EQ(c.findRoute("POST", "/v1/paymentsx")->name, "rest");
  EXPECT_EQ(c.findRoute("DELETE", "/v1/refunds")->name, "refund");
  EXPECT_EQ(c.findRoute("GET", "/")->name, "rest");

  ConfigResult exact = parse(R"(upstreams:
  api: {url: "http://127.0.0.1:1"}
routes:
  - {name: only, path: /health, upstream: api}
)");
  ASSERT_TRUE(exact.ok()) << dump(exact);
  EXPECT_EQ(exact.config->findRoute("GET", "/other"), nullptr);
}

// ---- errors, each at its position ----

TEST(ConfigErrors, StrFormatsFileLineColumn) {
  EXPECT_EQ((ConfigError{"a.yaml", 3, 7, "bad"}).str(), "a.yaml:3:7: bad");
  EXPECT_EQ((ConfigError{"a.yaml", 0, 0, "missing"}).str(), "a.yaml: missing");
}

TEST(ConfigErrors, UnknownKeyNamesTheKeyAndTheAllowedOnes) {
  expectOneError(std::string(kMinimal) + "server:\n  listen: 127.0.0.1:1\n  listn: x\n", 10, 3,
                 "unknown key 'listn' in server; allowed keys: listen, workers, "
                 "max_request_body, client_timeout, error_body, trusted_proxies, drain_timeout");
  expectOneError(std::string("extra: 1\n") + kMinimal, 1, 1, "unknown key 'extra'");
  expectOneError(std::string(kMinimal) + "    idempotency:\n      tll: 1h\n", 9, 7,
                 "unknown key 'tll' in routes[0].idempotency");
  expectOneError(std::string(kMinimal) + "    retries: 3\n", 8, 5,
                 "unknown key 'retries' in routes[0]");
}

TEST(ConfigErrors, MergeKeysAreNotSupported) {
  expectOneError(
      std::string(kMinimal) + "server:\n  <<: {workers: 2}\n", 9, 3,
      "unknown key '<<' in server; allowed keys: listen, workers, max_request_body, "
      "client_timeout, error_body, trusted_proxies, drain_timeout (YAML merge keys are not "
      "supported)");
}

TEST(ConfigErrors, DuplicateKey) {
  expectOneError(std::string(kMinimal) + "log:\n  level: info\n  level: debug\n", 10, 3,
                 "duplicate key 'log.level' (first given at line 9)");
}

TEST(ConfigErrors, WrongTypes) {
  expectOneError(std::string(kMinimal) + "server: 5\n", 8, 9, "server: expected a mapping");
  expectOneError(std::string(kMinimal) + "server:\n  workers: [1]\n", 9, 12,
                 "expected an integer from 0 to 256");
  expectOneError(std::string(kMinimal) + "    methods: POST\n", 8, 14,
                 "routes[0].methods: expected a list of strings, got 'POST'");
  expectOneError(std::string(kMinimal) + "    methods: [POST, [GET]]\n", 8, 21,
                 "expected a list of strings, got a list as an item");
  expectOneError(std::string(kMinimal) + "    idempotency:\n      required: yes\n", 9, 17,
                 "expected true or false, got 'yes'");
  expectOneError(std::string(kMinimal) + "    idempotency:\n      scope: Authorization\n", 9, 14,
                 "expected a list of strings");
  expectOneError(std::string(kMinimal) + "    idempotency: [a]\n", 8, 18, "expected a mapping");
  expectOneError("upstreams:\n  api: {url: 'http://x'}\nroutes: {name: a}\n", 3, 9,
                 "routes: expected a list of routes");
  expectOneError(std::string(kMinimal) + "  - 42\n", 8, 5,
                 "routes[1]: expected a route (a mapping with name, path and upstream)");
  expectOneError(std::string(kMinimal) + "store:\n  path:\n", 9, 3,
                 "store.path: expected a string, got nothing");
}

TEST(ConfigErrors, WorkersRange) {
  expectOneError(std::string(kMinimal) + "server:\n  workers: 257\n", 9, 12,
                 "expected an integer from 0 to 256, got '257'");
  expectOneError(std::string(kMinimal) + "server:\n  workers: -1\n", 9, 12,
                 "expected an integer from 0 to 256");
  EXPECT_TRUE(parse(std::string(kMinimal) + "server:\n  workers: 256\n").ok());
}

TEST(ConfigErrors, UpstreamIdleTimeoutStaysBelowCommonKeepAlives) {
  const std::string upstream = "upstreams:\n  api:\n    url: http://127.0.0.1:9000\n";
  const std::string routes = "routes:\n  - name: all\n    path: /*\n    upstream: api\n";
  expectOneError(upstream + "    idle_timeout: 5s\n" + routes, 4, 19,
                 "idle_timeout 5s must be below 5s");
  expectOneError(upstream + "    idle_timeout: 0s\n" + routes, 4, 19, "must be longer than 0");
  expectOneError(upstream + "    max_response_body: 0\n" + routes, 4, 24, "must be larger than 0");
  EXPECT_TRUE(parse(upstream + "    idle_timeout: 4999ms\n" + routes).errors.empty());
}

TEST(ConfigErrors, BadDurationsAndSizes) {
  expectOneError(std::string(kMinimal) + "server:\n  client_timeout: 30\n", 9, 19,
                 "expected a duration such as 500ms, 30s, 5m, 24h or 7d (at most 3650d), got "
                 "'30' (a unit is required)");
  expectOneError(std::string(kMinimal) + "server:\n  client_timeout: 0s\n", 9, 19,
                 "must be longer than 0");
  expectOneError(std::string(kMinimal) + "store:\n  sweep_interval: 1w\n", 9, 19,
                 "expected a duration");
  expectOneError(std::string(kMinimal) + "server:\n  max_request_body: 1.5MiB\n", 9, 21,
                 "expected a size such as 512KiB");
  expectOneError(std::string(kMinimal) + "store:\n  max_size: 0\n", 9, 13, "must be larger than 0");
}

TEST(ConfigErrors, BadListenAddresses) {
  expectOneError(std::string(kMinimal) + "server:\n  listen: 127.0.0.1\n", 9, 11,
                 "expected HOST:PORT or [IPV6]:PORT with a port from 0 to 65535, got "
                 "'127.0.0.1'");
  expectOneError(std::string(kMinimal) + "admin:\n  listen: ::1:9180\n", 9, 11,
                 "expected HOST:PORT or [IPV6]:PORT");
  expectOneError(std::string(kMinimal) + "server:\n  listen: 127.0.0.1:9180\nadmin:\n" +
                     "  listen: 127.0.0.1:9180\n",
                 11, 11, "admin.listen: 127.0.0.1:9180 is also the address of server.listen");
}

TEST(ConfigErrors, UpstreamUrl) {
  auto withUrl = [](const std::string& url) {
    return "upstreams:\n  api:\n    url: " + url +
           "\nroutes:\n  - {name: a, path: /, upstream: api}\n";
  };
  expectOneError(withUrl("ftp://127.0.0.1"), 3, 10, "must start with http:// or https://");
  expectOneError(withUrl("127.0.0.1:9000"), 3, 10, "must start with http:// or https://");
  expectOneError(withUrl("http://127.0.0.1/x?y=1"), 3, 10, "must not have a query");
  expectOneError(withUrl("http://127.0.0.1/x#f"), 3, 10, "must not have a fragment");
  expectOneError(withUrl("http://u:p@127.0.0.1"), 3, 10, "must not contain credentials");
  expectOneError(withUrl("http://127.0.0.1:0"), 3, 10, "port must be a number from 1 to 65535");
  expectOneError(withUrl("http://:80"), 3, 10, "missing host");
  expectOneError(withUrl("'http://a b'"), 3, 10, "must not contain spaces");
  EXPECT_TRUE(parse(withUrl("http://[::1]:9000/prefix")).ok());
  EXPECT_TRUE(parse(withUrl("https://api.example.com")).ok());
  expectOneError(
      "upstreams:\n  api:\n    timeout: 1s\nroutes:\n  - {name: a, path: /, "
      "upstream: api}\n",
      3, 5, "upstreams.api: missing required key 'url'");
}

TEST(ConfigErrors, RouteReferencesAndNames) {
  expectOneError(R"(upstreams:
  api: {url: "http://x"}
  other: {url: "http://y"}
routes:
  - name: a
    path: /a
    upstream: nope
)",
                 7, 15, "route 'a': unknown upstream 'nope'; defined upstreams: api, other");
  expectOneError(std::string(kMinimal) + "  - name: all\n    path: /b\n    upstream: api\n", 8, 11,
                 "duplicate route name 'all' (first defined at line 5)");
  expectOneError(std::string(kMinimal) + "  - {name: b, path: /b, upstream: ''}\n", 8, 35,
                 "route 'b': unknown upstream ''; defined upstreams: api");
  expectOneError(std::string(kMinimal) + "  - path: /b\n    upstream: api\n", 8, 5,
                 "routes[1]: missing required key 'name'");
  expectOneError(std::string(kMinimal) + "  - name: bad name\n    path: /b\n    upstream: api\n", 8,
                 11, "expected a route name");
}

TEST(ConfigErrors, MissingOrEmptyRoutes) {
  expectOneError("upstreams:\n  api: {url: 'http://x'}\n", 1, 1, "missing required key 'routes'");
  expectOneError("upstreams:\n  api: {url: 'http://x'}\nroutes: []\n", 3, 1,
                 "at least one route is needed");
  expectOneError("", 1, 1, "the configuration is empty");
  expectOneError("# only a comment\n", 1, 1, "the configuration is empty");
  expectOneError("- a\n- b\n", 1, 1, "expected a mapping of keys at the top level");
}

TEST(ConfigErrors, RoutePaths) {
  auto withPath = [](const std::string& path) {
    return "upstreams:\n  api: {url: 'http://x'}\nroutes:\n  - name: a\n    path: " + path +
           "\n    upstream: api\n";
  };
  expectOneError(withPath("v1/payments"), 5, 11, "expected a path starting with '/'");
  expectOneError(withPath("''"), 5, 11, "expected a path starting with '/'");
  expectOneError(withPath("/a*"), 5, 11, "'*' is only allowed as a final '/*'");
  expectOneError(withPath("/a/*/b"), 5, 11, "'*' is only allowed as a final '/*'");
  expectOneError(withPath("/a?x=1"), 5, 11, "must not contain a query");
  ConfigResult exact = parse(withPath("/v1/refunds"));
  ASSERT_TRUE(exact.ok()) << dump(exact);
  EXPECT_EQ(exact.config->routes[0].path, "/v1/refunds");
  EXPECT_FALSE(exact.config->routes[0].prefix);
}

TEST(ConfigErrors, MethodsMustBeTokens) {
  expectOneError(std::string(kMinimal) + "    methods: [POST, 'GE T']\n", 8, 21,
                 "'GE T' is not a valid HTTP method");
}

TEST(ConfigErrors, IdempotencyValues) {
  std::string base = std::string(kMinimal) + "    idempotency:\n";
  expectOneError(base + "      fingerprint: [method, body, body_json]\n", 9, 35,
                 "'body' and 'body_json' are mutually exclusive");
  expectOneError(base + "      fingerprint: [method, headers]\n", 9, 29,
                 "unknown fingerprint part 'headers'; expected method, path, query, body or "
                 "body_json");
  expectOneError(base + "      fingerprint: [path, path]\n", 9, 27, "'path' is listed twice");
  expectOneError(base + "      concurrent: queue\n", 9, 19,
                 "expected one of wait, reject, got 'queue'");
  expectOneError(base + "      abandoned: ignore\n", 9, 18,
                 "expected one of fail, retry, got 'ignore'");
  expectOneError(base + "      release_statuses: [429, 99]\n", 9, 31,
                 "expected HTTP status codes from 100 to 599, got '99'");
  expectOneError(base + "      release_statuses: [600]\n", 9, 26, "from 100 to 599");
  expectOneError(base + "      release_statuses: [201]\n", 9, 26, "201 is a success status");
  expectOneError(base + "      key_header: 'Idempotency Key'\n", 9, 19,
                 "expected a header name (an HTTP token)");
  expectOneError(base + "      scope: [Authorization, 'X Tenant']\n", 9, 30,
                 "'X Tenant' is not a valid header name");
  expectOneError(base + "      replay_drop_headers: ['Set-Cookie:']\n", 9, 29,
                 "'Set-Cookie:' is not a valid header name");
  expectOneError(base + "      lease: 0s\n", 9, 14, "must be longer than 0");
}

TEST(ConfigErrors, StoreAndLogEnums) {
  expectOneError(std::string(kMinimal) + "store:\n  backend: memcached\n", 9, 12,
                 "unsupported store backend 'memcached'; supported: lmdb, postgres, redis");
  expectOneError(std::string(kMinimal) + "store:\n  durability: none\n", 9, 15,
                 "expected one of full, relaxed, got 'none'");
  expectOneError(std::string(kMinimal) + "store:\n  wal_size: 4KiB\n", 9, 13,
                 "must be at least 64KiB (the log between two checkpoints)");
  expectOneError(std::string(kMinimal) + "log:\n  level: trace\n", 9, 10,
                 "expected one of debug, info, warn, error, got 'trace'");
}

TEST(ConfigErrors, UpstreamTlsCaFileMustBeReadable) {
  auto withCa = [](const std::string& path) {
    return "upstreams:\n  api:\n    url: https://127.0.0.1\n    tls_ca_file: " + path +
           "\nroutes:\n  - {name: a, path: /, upstream: api}\n";
  };
  expectOneError(withCa("/nonexistent/ca.pem"), 4, 18, "cannot be read");
  ConfigResult ok = parse(withCa(IDEMPROXY_SOURCE_DIR "/config/idemproxy.yaml"));
  ASSERT_TRUE(ok.ok()) << dump(ok);
  EXPECT_EQ(ok.config->upstreams.at("api").tls_ca_file,
            IDEMPROXY_SOURCE_DIR "/config/idemproxy.yaml");
}

TEST(ConfigErrors, UpstreamTimeoutMustBeShorterThanLease) {
  // An explicit lease: the error is at the lease and names the upstream timeout's line.
  expectOneError(R"(server: {drain_timeout: 10m}
upstreams:
  api:
    url: http://x
    timeout: 45s
routes:
  - name: pay
    path: /p
    upstream: api
    idempotency:
      lease: 45s
)",
                 11, 14,
                 "route 'pay': lease 45s must be longer than the timeout 45s (line 5) of its "
                 "upstream 'api'");
  // The default lease (60s): the error is at the upstream timeout and names the route.
  expectOneError(R"(server: {drain_timeout: 10m}
upstreams:
  api:
    url: http://x
    timeout: 2m
routes:
  - name: pay
    path: /p
    upstream: api
    idempotency: {}
)",
                 5, 14,
                 "upstream 'api': timeout 2m must be shorter than the lease 1m (the default) of "
                 "route 'pay' (line 7), which uses it");
  // A default timeout (30s) against a short explicit lease.
  expectOneError(std::string(kMinimal) + "    idempotency:\n      lease: 10s\n", 9, 14,
                 "lease 10s must be longer than the timeout 30s (the default)");
  // A long timeout does not matter to a pass-through route.
  EXPECT_TRUE(parse("server: {drain_timeout: 11m}\n"
                    "upstreams:\n  api: {url: 'http://x', timeout: 10m}\nroutes:\n"
                    "  - {name: a, path: /, upstream: api}\n")
                  .ok());
}

TEST(Config, KeyJsonPointerIsAnRfc6901Pointer) {
  ConfigResult r =
      parse(std::string(kMinimal) + "    idempotency:\n      key_json_pointer: /a~1b\n");
  ASSERT_TRUE(r.ok()) << dump(r);
  EXPECT_EQ(r.config->routes[0].idempotency->key_json_pointer, "/a~1b");
  expectOneError(std::string(kMinimal) + "    idempotency:\n      key_json_pointer: id\n", 9, 25,
                 "expected an RFC 6901 JSON pointer");
  expectOneError(std::string(kMinimal) + "    idempotency:\n      key_json_pointer: /a~2\n", 9, 25,
                 "expected an RFC 6901 JSON pointer");
}

TEST(Config, ErrorBodyServerWideAndPerRoute) {
  ConfigResult r = parse(
      "server:\n  error_body:\n    template: '{\"error\": {\"code\": \"{slug}\", "
      "\"message\": \"{title}\"}}'\n" +
      std::string(kMinimal) +
      "    error_body: {content_type: text/plain, template: 'error {status}: {detail}'}\n");
  ASSERT_TRUE(r.ok()) << dump(r);
  ASSERT_TRUE(r.config->server.error_body);
  EXPECT_EQ(r.config->server.error_body->content_type, "application/json");
  ASSERT_TRUE(r.config->routes[0].error_body);
  EXPECT_EQ(r.config->routes[0].error_body->content_type, "text/plain");
  // A JSON template that is not JSON once filled in is refused, at the template.
  expectOneError(
      "server:\n  error_body:\n    template: '{\"error\": {slug}}'\n" + std::string(kMinimal), 3,
      15, "not valid JSON");
  expectOneError(
      "server:\n  error_body: {content_type: application/json}\n" + std::string(kMinimal), 2, 3,
      "missing required key 'template'");
}

TEST(Config, TrustedProxiesAreIpLiteralsInCanonicalForm) {
  ConfigResult r = parse("server:\n  trusted_proxies: [10.0.0.1, '::ffff:0:1', '0:0::1']\n" +
                         std::string(kMinimal));
  ASSERT_TRUE(r.ok()) << dump(r);
  EXPECT_TRUE(r.config->server.trusts("10.0.0.1"));
  EXPECT_TRUE(r.config->server.trusts("::1"));
  EXPECT_FALSE(r.config->server.trusts("10.0.0.2"));
  expectOneError("server:\n  trusted_proxies: [lb.internal]\n" + std::string(kMinimal), 2, 21,
                 "'lb.internal' is not an IP address");
}

TEST(ConfigErrors, DrainTimeoutMustOutlastTheSlowestUpstream) {
  // The defaults agree: 40s drain, 30s upstream timeout.
  EXPECT_TRUE(parse(kMinimal).ok());
  // An explicit drain too short for the default timeout: the error is at the drain.
  expectOneError("server:\n  drain_timeout: 30s\n" + std::string(kMinimal), 2, 3,
                 "server.drain_timeout 30s must be at least the timeout 30s of upstream");
  // A long upstream timeout against the default drain: the error is at that upstream.
  expectOneError(
      "upstreams:\n  slow: {url: 'http://x', timeout: 50s}\nroutes:\n"
      "  - {name: a, path: /, upstream: slow}\n",
      2, 3, "server.drain_timeout 40s must be at least the timeout 50s of upstream 'slow' plus 5s");
}

TEST(ConfigErrors, TtlMustOutliveTheLease) {
  expectOneError(std::string(kMinimal) + "    idempotency:\n      ttl: 30s\n", 9, 12,
                 "route 'all': ttl 30s must be longer than the lease 1m");
}

TEST(ConfigErrors, YamlSyntaxErrorHasAPosition) {
  ConfigResult result = parse("server:\n  listen: [a\nroutes: x\n");
  ASSERT_EQ(result.errors.size(), 1u) << dump(result);
  EXPECT_EQ(result.errors[0].line, 3);
  EXPECT_EQ(result.errors[0].column, 7);
  EXPECT_NE(result.errors[0].message.find("YAML syntax error"), std::string::npos);

  ConfigResult indent = parse("a: 1\n b: 2\n");
  ASSERT_EQ(indent.errors.size(), 1u) << dump(indent);
  EXPECT_EQ(indent.errors[0].str(), "test.yaml:2:3: YAML syntax error: illegal map value");
}

TEST(ConfigErrors, AllErrorsAreCollectedInFileOrder) {
  ConfigResult result = parse(R"(server:
  workers: many
  client_timeout: soon
store:
  durability: maybe
upstreams:
  api:
    url: ftp://x
routes:
  - name: a
    path: nope
    upstream: missing
)");
  ASSERT_EQ(result.errors.size(), 6u) << dump(result);
  std::vector<int> lines;
  for (const auto& e : result.errors) lines.push_back(e.line);
  EXPECT_EQ(lines, (std::vector<int>{2, 3, 5, 8, 11, 12}));
}

TEST(ConfigErrors, MissingFileIsNamed) {
  ConfigResult result = loadConfigFile("/nonexistent/idemproxy.yaml");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].str(),
            "/nonexistent/idemproxy.yaml: cannot read configuration file: No such file or "
            "directory");
}

// ---- command line ----

class TempFile {
 public:
  explicit TempFile(const std::string& text) {
    path_ = (std::filesystem::temp_directory_path() /
             ("idemproxy-config-test-" + std::to_string(::getpid()) + "-" +
              std::to_string(counter_++) + ".yaml"))
                .string();
    std::ofstream(path_) << text;
  }
  ~TempFile() { std::remove(path_.c_str()); }
  const std::string& path() const { return path_; }

 private:
  static inline int counter_ = 0;
  std::string path_;
};

struct CliRun {
  int code;
  std::string out;
  std::string err;
};

CliRun cli(const std::vector<std::string>& args) {
  std::ostringstream out, err;
  int code = runCli(args, out, err);
  return {code, out.str(), err.str()};
}

TEST(Cli, CheckAcceptsAValidFile) {
  TempFile file(kMinimal);
  CliRun run = cli({"check", "--config", file.path()});
  EXPECT_EQ(run.code, 0) << run.err;
  EXPECT_EQ(run.out, file.path() + ": ok\n");
  EXPECT_EQ(run.err, "");
  EXPECT_EQ(cli({"--config", file.path(), "check"}).code, 0);
  EXPECT_EQ(cli({"check", "-c", file.path()}).code, 0);
}

TEST(Cli, CheckPrintsEveryErrorAndExits1) {
  TempFile file(std::string(kMinimal) + "server:\n  workers: 999\n  bogus: 1\n");
  CliRun run = cli({"check", "--config", file.path()});
  EXPECT_EQ(run.code, 1);
  EXPECT_EQ(run.out, "");
  EXPECT_EQ(run.err,
            file.path() +
                ":9:12: server.workers: expected an integer from 0 to 256, "
                "got '999'\n" +
                file.path() +
                ":10:3: unknown key 'bogus' in server; allowed keys: listen, workers, "
                "max_request_body, client_timeout, error_body, trusted_proxies, drain_timeout\n");
  CliRun missing = cli({"check", "--config", "/nonexistent.yaml"});
  EXPECT_EQ(missing.code, 1);
  EXPECT_NE(missing.err.find("/nonexistent.yaml: cannot read"), std::string::npos);
}

TEST(Cli, UsageErrorsExit2) {
  EXPECT_EQ(cli({"check"}).code, 2);  // no --config
  EXPECT_EQ(cli({"frobnicate", "-c", "x"}).code, 2);
  EXPECT_EQ(cli({"keys", "-c", "x"}).code, 2);  // keys needs list/show/forget
  EXPECT_EQ(cli({"keys", "show", "-c", "x", "--route", "r"}).code, 2);  // no --key
  EXPECT_EQ(cli({"keys", "list", "-c", "x", "--key", "k"}).code, 2);
  EXPECT_EQ(cli({"check", "-c", "x", "--json"}).code, 2);
  CliRun run = cli({"--bogus"});
  EXPECT_EQ(run.code, 2);
  EXPECT_NE(run.err.find("--bogus"), std::string::npos);
}

TEST(Cli, VersionAndHelpExit0) {
  CliRun version = cli({"--version"});
  EXPECT_EQ(version.code, 0);
  EXPECT_EQ(version.out.rfind("idemproxy ", 0), 0u) << version.out;
  CliRun help = cli({"--help"});
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("check"), std::string::npos);
  EXPECT_NE(help.out.find("--config"), std::string::npos);
  EXPECT_EQ(cli({"keys", "--help"}).code, 0);
}

TEST(Cli, ParsesEveryCommand) {
  std::ostringstream out, err;
  CliParse run = parseCli({"-c", "f.yaml"}, out, err);
  ASSERT_TRUE(run.options);
  EXPECT_EQ(run.options->command, CliCommand::Run);
  EXPECT_EQ(run.options->config_path, "f.yaml");

  CliParse runExplicit = parseCli({"run", "--config", "g.yaml"}, out, err);
  ASSERT_TRUE(runExplicit.options);
  EXPECT_EQ(runExplicit.options->command, CliCommand::Run);
  EXPECT_EQ(runExplicit.options->config_path, "g.yaml");

  CliParse check = parseCli({"check", "--config", "h.yaml"}, out, err);
  ASSERT_TRUE(check.options);
  EXPECT_EQ(check.options->command, CliCommand::Check);

  CliParse list = parseCli({"keys", "list", "-c", "f.yaml", "--json", "--route", "pay"}, out, err);
  ASSERT_TRUE(list.options);
  EXPECT_EQ(list.options->command, CliCommand::Keys);
  EXPECT_EQ(list.options->keys, KeysCommand::List);
  EXPECT_TRUE(list.options->json);
  EXPECT_EQ(list.options->route, "pay");

  CliParse show = parseCli({"keys", "show", "-c", "f.yaml", "--route", "pay", "--key", "k-1",
                            "--scope", "Bearer abc", "--scope", "tenant-2"},
                           out, err);
  ASSERT_TRUE(show.options) << err.str();
  EXPECT_EQ(show.options->keys, KeysCommand::Show);
  EXPECT_EQ(show.options->route, "pay");
  EXPECT_EQ(show.options->key, "k-1");
  EXPECT_EQ(show.options->scopes, (std::vector<std::string>{"Bearer abc", "tenant-2"}));
  EXPECT_FALSE(show.options->json);

  CliParse forget = parseCli(
      {"keys", "forget", "--route", "pay", "--key", "k-1", "--config", "f.yaml"}, out, err);
  ASSERT_TRUE(forget.options) << err.str();
  EXPECT_EQ(forget.options->keys, KeysCommand::Forget);
  EXPECT_TRUE(forget.options->scopes.empty());
  EXPECT_EQ(forget.options->config_path, "f.yaml");
}

}  // namespace
}  // namespace idem

namespace idem {
namespace {

// Found by fuzz_config: yaml-cpp's LoadAll never returned on this input (memory grew without
// bound). The configuration is read one document at a time instead.
TEST(ParseConfigRegression, MalformedFlowInputEndsWithAnError) {
  const ConfigResult r = parseConfig(std::string(",\xff\xff\xff\xff\xff\xff[", 8), "fuzz.yaml");
  EXPECT_FALSE(r.ok());
  EXPECT_FALSE(r.errors.empty());
}

TEST(ParseConfigRegression, SecondDocumentIsStillAnError) {
  const ConfigResult r = parseConfig("server: {}\n---\nrouts: []\n", "two.yaml");
  ASSERT_FALSE(r.errors.empty());
  bool found = false;
  for (const auto& e : r.errors) {
    if (e.str().find("expected a single YAML document, found another") != std::string::npos) {
      found = true;
      EXPECT_EQ(e.line, 2);
    }
  }
  EXPECT_TRUE(found);
}

TEST(ConfigPostgres, BackendAndDefaults) {
  ConfigResult r = parse(std::string(kMinimal) +
                         "store:\n  backend: postgres\n  postgres:\n"
                         "    url: \"postgresql://idem:s3cret@db1,db2/idem?sslmode=require\"\n");
  ASSERT_TRUE(r.ok()) << dump(r);
  EXPECT_EQ(r.config->store.backend, "postgres");
  EXPECT_EQ(r.config->store.postgres.url, "postgresql://idem:s3cret@db1,db2/idem?sslmode=require");
  EXPECT_EQ(r.config->store.postgres.connections, 4u);
  EXPECT_EQ(r.config->store.postgres.timeout, Millis(2'000));
  r = parse(std::string(kMinimal) +
            "store:\n  backend: postgres\n  postgres:\n    url: host=/tmp dbname=x\n"
            "    connections: 2\n    timeout: 500ms\n");
  ASSERT_TRUE(r.ok()) << dump(r);
  EXPECT_EQ(r.config->store.postgres.connections, 2u);
  EXPECT_EQ(r.config->store.postgres.timeout, Millis(500));
}

TEST(ConfigPostgres, ErrorsNameTheSpotAndNeverEchoTheUrl) {
  expectOneError(std::string(kMinimal) + "store:\n  backend: postgres\n", 9, 3,
                 "postgres needs store.postgres.url");
  const std::string bad = std::string(kMinimal) +
                          "store:\n  postgres:\n"
                          "    url: \"postgresql://u:hunter2@h/d?nosuchoption=1\"\n";
  expectOneError(bad, 10, 10, "expected a libpq connection string or URI");
  EXPECT_EQ(dump(parse(bad)).find("hunter2"), std::string::npos);
  expectOneError(std::string(kMinimal) + "store:\n  postgres:\n    connections: 0\n", 10, 18, "");
  expectOneError(std::string(kMinimal) + "store:\n  postgres:\n    timeout: 0s\n", 10, 14,
                 "must be longer than 0");
  expectOneError(std::string(kMinimal) + "store:\n  postgres:\n    pool: 3\n", 10, 5, "pool");
}

}  // namespace
}  // namespace idem
