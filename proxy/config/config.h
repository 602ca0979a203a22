#pragma once
// YAML configuration → a validated, immutable snapshot (SPEC §5).
// Parsing knows nothing of sockets or the store; it only produces values and errors.
#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace idem {

using Millis = std::chrono::milliseconds;

struct ListenAddress {
  std::string host;   // "127.0.0.1", "::1", "0.0.0.0", "::"
  uint16_t port = 0;  // 0 = any free port (useful in tests)
  std::string text;   // as written, e.g. "[::1]:8080"
};

// The proxy's own errors in the API's own shape (server.error_body, routes[].error_body): the
// template's {status}, {slug}, {title} and {detail} are replaced (JSON-escaped, no quotes).
struct ErrorBody {
  std::string content_type = "application/json";
  std::string templ;
  bool operator==(const ErrorBody&) const = default;
};
using ErrorBodyPtr = std::shared_ptr<const ErrorBody>;

// How much longer than the slowest upstream exchange a drain must last (its record included).
inline constexpr Millis kDrainMargin{5'000};
// upstreams.<name>.idle_timeout must stay below this (common keep-alive timeouts: 5 s).
inline constexpr Millis kMaxUpstreamIdleTimeout{5'000};

struct ServerConfig {
  ListenAddress listen{"127.0.0.1", 8080, "127.0.0.1:8080"};
  unsigned workers = 0;                    // 0 = one per CPU
  uint64_t max_request_body = 1ull << 20;  // 1MiB
  Millis client_timeout{30'000};
  // SIGTERM: how long in-flight exchanges may take to finish; at least the largest upstream
  // timeout + kDrainMargin.
  Millis drain_timeout{40'000};
  // Peers whose X-Forwarded-Proto and X-Forwarded-Host are passed on (a TLS terminator or load
  // balancer in front); from anyone else they are replaced. IP literals, canonical text.
  std::vector<std::string> trusted_proxies;
  bool trusts(std::string_view peer) const;
  ErrorBodyPtr error_body;  // absent: RFC 9457 problem+json
};

struct AdminConfig {
  ListenAddress listen{"127.0.0.1", 9180, "127.0.0.1:9180"};
};

enum class Durability { Full, Relaxed };

// store.postgres (backend: postgres): one key space for proxies on many hosts.
struct PostgresStoreConfig {
  std::string url;  // any libpq connection string or URI; may hold a password: never log it
  unsigned connections = 4;  // per process
  Millis timeout{2'000};     // one store operation; past it → 503 store-unavailable
};

// store.redis (backend: redis): one key space for proxies on many hosts.
struct RedisStoreConfig {
  std::string url = "redis://127.0.0.1:6379/0";  // or unix:///path; may hold a password
  std::string key_prefix = "idemproxy:";         // every key the proxy writes starts with it
  Millis timeout{1'000};      // one store operation; past it → 503 store-unavailable
  unsigned min_replicas = 0;  // WAIT for this many replicas before forwarding and answering
};

struct StoreConfig {
  std::string backend = "lmdb";  // lmdb | postgres | redis
  std::string path = "/var/lib/idemproxy";
  uint64_t max_size = 1ull << 30;  // 1GiB
  Durability durability = Durability::Full;
  // durability full: commit through a write-ahead log (DIR/wal) of wal_size bytes
  bool wal = true;
  uint64_t wal_size = 32ull << 20;
  Millis sweep_interval{30'000};
  PostgresStoreConfig postgres;
  RedisStoreConfig redis;
};

// Which HTTP client forwards to an upstream (`upstreams.<name>.client`).
enum class UpstreamClient {
  Auto,     // not given: Builtin for http:// to an IP literal, Curl otherwise (the parser
            // resolves it; only hand-built configurations keep it)
  Builtin,  // the proxy's own HTTP/1.1 client on the worker's loop: http:// to an IP address
  Curl,     // libcurl: https://, host names (resolved off the loop), or by choice
};
const char* toString(UpstreamClient c);

struct UpstreamConfig {
  std::string name;
  std::string url;  // http:// or https://, optional path prefix, no query
  Millis connect_timeout{2'000};
  Millis timeout{30'000};
  unsigned max_connections = 64;
  // A pooled connection idle this long is closed, not reused: keep it below the upstream's
  // keep-alive timeout, or a request may cross the upstream's close (a recorded 502).
  Millis idle_timeout{2'000};
  // How much of an answer body from this upstream is buffered on a route that records nothing
  // (pass-through routes, requests without a key under required: false): past it the rest is
  // streamed to the client as the upstream sends it, read only as fast as the client takes it.
  uint64_t max_response_body = 1ull << 20;
  std::string tls_ca_file;  // https: CA bundle to verify the upstream with; "" = system CAs
  UpstreamClient client = UpstreamClient::Auto;
};

enum class FingerprintPart { Method, Path, Query, Body, BodyJson };
enum class ConcurrentMode { Wait, Reject };
enum class AbandonedMode { Fail, Retry };

// One piece of a reconcile lookup path: literal text, or a placeholder filled from the
// original request ({key}, {header:Name}, {json:/pointer}).
struct LookupPart {
  enum class Kind { Literal, Key, Header, Json };
  Kind kind = Kind::Literal;
  std::string text;  // Literal: the text; Header: the field name; Json: the pointer
  // The name a record keeps the value under: "header:Name" or "json:/pointer" ("" otherwise).
  std::string valueName() const;
  bool operator==(const LookupPart&) const = default;
};

// routes[].idempotency.reconcile (SPEC §1.6): how to ask the backend whether an uncertain
// outcome happened.
struct ReconcileConfig {
  std::string method = "GET";
  std::string path;                 // as written, placeholders included
  std::vector<LookupPart> parts;    // `path`, parsed
  std::vector<int> found{200};      // the payment happened: this answer becomes the outcome
  std::vector<int> not_found{404};  // it did not: the retry is forwarded
};

// Parses a reconcile path template: "" and sets `parts`, or the problem.
std::string parseLookupTemplate(std::string_view path, std::vector<LookupPart>& parts);

struct IdempotencyConfig {
  std::string key_header = "Idempotency-Key";
  // Legacy clients: the key inside a JSON body (RFC 6901 pointer), when the header is absent.
  std::optional<std::string> key_json_pointer;
  bool required = true;
  Millis ttl{24ll * 3600 * 1000};
  std::vector<std::string> scope{"Authorization"};
  // true: requests without any scope header share one key space (an API with no per-client
  // credential); false: they are refused with 400 idempotency-scope-missing.
  bool shared_scope = false;
  std::vector<FingerprintPart> fingerprint{FingerprintPart::Method, FingerprintPart::Path,
                                           FingerprintPart::Query, FingerprintPart::Body};
  ConcurrentMode concurrent = ConcurrentMode::Wait;
  Millis wait_timeout{10'000};
  Millis lease{60'000};
  AbandonedMode abandoned = AbandonedMode::Fail;
  std::vector<int> release_statuses{429, 503};
  std::vector<std::string> replay_drop_headers{"Set-Cookie"};
  uint64_t max_response_body = 8ull << 20;   // 8MiB
  std::optional<ReconcileConfig> reconcile;  // absent: uncertain outcomes stay as recorded
};

struct RouteConfig {
  std::string name;
  std::vector<std::string> methods;  // upper case; empty = every method
  std::string path;                  // without the trailing "/*" when prefix
  bool prefix = false;               // "/a/*": matches "/a" and everything below
  std::string upstream;
  std::optional<IdempotencyConfig> idempotency;  // absent: plain pass-through
  ErrorBodyPtr error_body;                       // absent: server.error_body

  // True when this route serves `method` on `path` (path without the query).
  bool matches(std::string_view method, std::string_view path) const;
};

enum class LogLevel { Debug, Info, Warn, Error };

struct LogConfig {
  LogLevel level = LogLevel::Info;
};

struct Config {
  std::string source;  // file the snapshot came from
  ServerConfig server;
  std::optional<AdminConfig> admin;
  StoreConfig store;
  std::map<std::string, UpstreamConfig> upstreams;
  std::vector<RouteConfig> routes;  // first match wins
  LogConfig log;

  // First route matching method and path, or nullptr.
  const RouteConfig* findRoute(std::string_view method, std::string_view path) const;
};

using ConfigPtr = std::shared_ptr<const Config>;

struct ConfigError {
  std::string file;
  int line = 0;    // 1-based; 0 when unknown
  int column = 0;  // 1-based; 0 when unknown
  std::string message;
  std::string str() const;  // "FILE:LINE:COL: message"
};

struct ConfigResult {
  ConfigPtr config;                 // set when errors is empty
  std::vector<ConfigError> errors;  // every problem found, in file order
  bool ok() const { return errors.empty() && config != nullptr; }
};

ConfigResult loadConfigFile(const std::string& path);
ConfigResult parseConfig(const std::string& yamlText, const std::string& fileName);

// "500ms", "30s", "5m", "24h", "7d" → milliseconds.
std::optional<Millis> parseDuration(std::string_view text);
// "512", "512KiB", "1MiB", "2GiB" (also KB/MB/GB as powers of 1000) → bytes.
std::optional<uint64_t> parseSize(std::string_view text);
// "127.0.0.1:8080", "[::1]:8080", "localhost:80" → address.
std::optional<ListenAddress> parseListen(std::string_view text);
// Milliseconds → the largest exact unit: 86400000 → "1d", 1500 → "1500ms", 90000 → "90s".
std::string formatDuration(Millis duration);

}  // namespace idem
