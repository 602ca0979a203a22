#pragma once
// Internal to the configuration parser (config.cpp: the walk, value readers, cross-checks and
// entry points; config_sections.cpp: one parser per section). Not for other parts.
#include <yaml-cpp/yaml.h>

#include <functional>
#include <initializer_list>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "config/config.h"
#include "config/config_values.h"

namespace idem::config_detail {

inline constexpr std::string_view kDurationHint = "a duration such as 500ms, 30s, 5m, 24h or 7d";
inline constexpr std::string_view kSizeHint =
    "a size such as 512KiB, 1MiB, 2GiB, 1MB or a plain number of bytes";

inline std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

// What kind of YAML node this is, for "expected X, got Y" messages.
inline std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Scalar:
      return "'" + node.Scalar() + "'";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Map:
      return "a mapping";
    default:
      return "an undefined value";
  }
}

// A key and its value inside a mapping.
struct Field {
  std::string path;  // dotted, for messages: "server.listen", "routes[0].idempotency.ttl"
  YAML::Node key;
  YAML::Node value;

  // Where to point for a problem with the value: a null value has no position of its own
  // (yaml-cpp gives it the next token's), so point at its key.
  YAML::Mark mark() const {
    if (!value.IsDefined() || value.IsNull() || value.Mark().line < 0) return key.Mark();
    return value.Mark();
  }
};

// Positions kept from parsing for the checks that span several blocks.
struct UpstreamMarks {
  YAML::Mark key;
  std::optional<YAML::Mark> timeout;  // set when given explicitly
  std::optional<YAML::Mark> client;   // set when given explicitly
};

struct RouteMarks {
  YAML::Mark item;
  std::optional<YAML::Mark> name;
  std::optional<YAML::Mark> upstream;
  std::optional<YAML::Mark> idempotency;
  std::optional<YAML::Mark> lease;
  std::optional<YAML::Mark> ttl;
  std::optional<YAML::Mark> scope;
};

struct StringItem {
  std::string text;
  YAML::Mark mark;
};

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  ConfigResult run(const std::string& text);

 private:
  using Handler = std::function<void(const Field&)>;
  using Handlers = std::vector<std::pair<std::string_view, Handler>>;

  void error(const YAML::Mark& mark, std::string message) {
    ConfigError e;
    e.file = file_;
    if (mark.line >= 0) {
      e.line = mark.line + 1;
      e.column = mark.column + 1;
    }
    e.message = std::move(message);
    errors_.push_back(std::move(e));
  }
  void error(const Field& f, const std::string& message) {
    error(f.mark(), f.path + ": " + message);
  }

  // Calls the handler of each key of a mapping (a null node counts as an empty mapping);
  // reports keys that are unknown, repeated or not names. Returns the keys seen.
  std::map<std::string, YAML::Mark> walk(const YAML::Node& node, const std::string& prefix,
                                         const Handlers& handlers);
  // True when the field holds a mapping (or nothing: an empty block keeps the defaults).
  bool expectMap(const Field& f);

  bool readText(const Field& f, std::string& out);
  void readBool(const Field& f, bool& out);
  void readUnsigned(const Field& f, unsigned& out, unsigned min, unsigned max);
  void readDuration(const Field& f, Millis& out, bool allowZero);
  void readSize(const Field& f, uint64_t& out);
  // upstreams.<name>.idle_timeout: a duration > 0 and below kMaxUpstreamIdleTimeout.
  void readIdleTimeout(const Field& f, UpstreamConfig& upstream);
  // upstreams.<name>.max_response_body: a size > 0.
  void readBodyLimit(const Field& f, UpstreamConfig& upstream) {
    readSize(f, upstream.max_response_body);
  }
  void readListen(const Field& f, ListenAddress& out, std::optional<YAML::Mark>& mark);
  std::optional<std::vector<StringItem>> readStringList(const Field& f);
  void readHeaderList(const Field& f, std::vector<std::string>& out);
  template <class E>
  void readEnum(const Field& f, E& out,
                std::initializer_list<std::pair<std::string_view, E>> choices);

  void parseServer(const Field& f, ServerConfig& out);
  void parseErrorBody(const Field& f, ErrorBodyPtr& out);
  void parseAdmin(const Field& f, std::optional<AdminConfig>& out);
  void parseStore(const Field& f, StoreConfig& out);
  void parsePostgres(const Field& f, PostgresStoreConfig& out);
  void parseRedis(const Field& f, RedisStoreConfig& out);
  void parseLog(const Field& f, LogConfig& out);
  void parseUpstreams(const Field& f, std::map<std::string, UpstreamConfig>& out);
  void parseRoutes(const Field& f, std::vector<RouteConfig>& out);
  void parseRoute(const std::string& prefix, const YAML::Node& node, RouteConfig& route,
                  RouteMarks& marks);
  void parseIdempotency(const Field& f, IdempotencyConfig& out, RouteMarks& marks);
  void parseReconcile(const Field& f, std::optional<ReconcileConfig>& out);
  std::optional<std::vector<int>> readStatusList(const Field& f);
  void crossCheck(Config& config, const YAML::Node& root);

  std::string file_;
  std::vector<ConfigError> errors_;
  std::map<std::string, UpstreamMarks> upstreamMarks_;
  std::vector<RouteMarks> routeMarks_;  // parallel to Config::routes
  std::optional<YAML::Mark> serverListenMark_;
  std::optional<YAML::Mark> drainTimeoutMark_;
  std::optional<YAML::Mark> adminListenMark_;
  std::optional<YAML::Mark> routesMark_;
  bool routesListEmpty_ = false;
};

template <class E>
void Parser::readEnum(const Field& f, E& out,
                      std::initializer_list<std::pair<std::string_view, E>> choices) {
  if (f.value.IsScalar()) {
    for (const auto& [name, value] : choices) {
      if (f.value.Scalar() == name) {
        out = value;
        return;
      }
    }
  }
  std::vector<std::string> names;
  for (const auto& choice : choices) names.emplace_back(choice.first);
  error(f, "expected one of " + join(names) + ", got " + describe(f.value));
}

}  // namespace idem::config_detail
