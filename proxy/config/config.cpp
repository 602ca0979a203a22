// YAML configuration → validated immutable snapshot. See config.h and docs/configuration.md.
//
// The parser walks the yaml-cpp node tree by hand instead of using Node::as<T>(), so that every
// problem becomes a ConfigError with a 1-based position and a message saying what was expected,
// and so that parsing carries on after an error to report as many problems as practical.
// Syntaxes of single values (durations, sizes, addresses, URLs) are in config_values.cpp.
#include "config/config.h"

#include <arpa/inet.h>
#include <libpq-fe.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <sstream>
#include <system_error>
#include <tuple>
#include <utility>

#include "base/c_handles.h"
#include "config/config_parser.h"
#include "config/config_values.h"

namespace idem {

namespace config_detail {
std::map<std::string, YAML::Mark> Parser::walk(const YAML::Node& node, const std::string& prefix,
                                               const Handlers& handlers) {
  std::map<std::string, YAML::Mark> seen;
  if (!node.IsMap()) return seen;
  for (auto it = node.begin(); it != node.end(); ++it) {
    const YAML::Node key = it->first;  // a copy: it-> returns a temporary
    if (!key.IsScalar()) {
      error(key.Mark(), (prefix.empty() ? std::string("top level") : prefix) +
                            ": expected a key name, got " + describe(key));
      continue;
    }
    const std::string& name = key.Scalar();
    std::string path = prefix.empty() ? name : prefix + "." + name;
    auto handler = std::find_if(handlers.begin(), handlers.end(),
                                [&](const auto& h) { return h.first == name; });
    if (handler == handlers.end()) {
      std::vector<std::string> allowed;
      for (const auto& h : handlers) allowed.emplace_back(h.first);
      error(key.Mark(), "unknown key '" + name + "' in " +
                            (prefix.empty() ? std::string("the top level") : prefix) +
                            "; allowed keys: " + join(allowed) +
                            (name == "<<" ? " (YAML merge keys are not supported)" : ""));
      continue;
    }
    auto [previous, inserted] = seen.emplace(name, key.Mark());
    if (!inserted) {
      error(key.Mark(), "duplicate key '" + path + "' (first given at line " +
                            std::to_string(previous->second.line + 1) + ")");
      continue;
    }
    handler->second(Field{path, key, it->second});
  }
  return seen;
}

bool Parser::expectMap(const Field& f) {
  if (f.value.IsMap() || f.value.IsNull()) return true;
  error(f, "expected a mapping of keys, got " + describe(f.value));
  return false;
}

bool Parser::readText(const Field& f, std::string& out) {
  if (!f.value.IsScalar()) {
    error(f, "expected a string, got " + describe(f.value));
    return false;
  }
  out = f.value.Scalar();
  return true;
}

void Parser::readBool(const Field& f, bool& out) {
  std::string text;
  if (f.value.IsScalar()) text = toLower(f.value.Scalar());
  if (text == "true") {
    out = true;
  } else if (text == "false") {
    out = false;
  } else {
    error(f, "expected true or false, got " + describe(f.value));
  }
}

void Parser::readUnsigned(const Field& f, unsigned& out, unsigned min, unsigned max) {
  std::optional<uint64_t> value;
  if (f.value.IsScalar()) value = parseDigits(f.value.Scalar());
  if (!value || *value < min || *value > max) {
    error(f, "expected an integer from " + std::to_string(min) + " to " + std::to_string(max) +
                 ", got " + describe(f.value));
    return;
  }
  out = static_cast<unsigned>(*value);
}

void Parser::readDuration(const Field& f, Millis& out, bool allowZero) {
  std::optional<Millis> value;
  if (f.value.IsScalar()) value = parseDuration(f.value.Scalar());
  if (!value) {
    std::string hint;
    if (f.value.IsScalar() && parseDigits(f.value.Scalar())) hint = " (a unit is required)";
    error(f, "expected " + std::string(kDurationHint) + " (at most 3650d), got " +
                 describe(f.value) + hint);
    return;
  }
  if (!allowZero && value->count() == 0) {
    error(f, "must be longer than 0, got " + describe(f.value));
    return;
  }
  out = *value;
}

void Parser::readIdleTimeout(const Field& f, UpstreamConfig& upstream) {
  Millis idle = upstream.idle_timeout;
  readDuration(f, idle, false);
  if (idle >= kMaxUpstreamIdleTimeout) {
    error(f, "idle_timeout " + formatDuration(idle) + " must be below " +
                 formatDuration(kMaxUpstreamIdleTimeout) +
                 ", under common upstream keep-alive timeouts (Node and Apache close idle "
                 "connections after 5s)");
    return;
  }
  upstream.idle_timeout = idle;
}

void Parser::readSize(const Field& f, uint64_t& out) {
  std::optional<uint64_t> value;
  if (f.value.IsScalar()) value = parseSize(f.value.Scalar());
  if (!value) {
    error(f, "expected " + std::string(kSizeHint) + ", got " + describe(f.value));
    return;
  }
  if (*value == 0) {
    error(f, "must be larger than 0");
    return;
  }
  out = *value;
}

void Parser::readListen(const Field& f, ListenAddress& out, std::optional<YAML::Mark>& mark) {
  std::optional<ListenAddress> value;
  if (f.value.IsScalar()) value = parseListen(f.value.Scalar());
  if (!value) {
    error(f, "expected HOST:PORT or [IPV6]:PORT with a port from 0 to 65535, got " +
                 describe(f.value));
    return;
  }
  out = *value;
  mark = f.mark();
}

std::optional<std::vector<StringItem>> Parser::readStringList(const Field& f) {
  if (!f.value.IsSequence()) {
    error(f, "expected a list of strings, got " + describe(f.value));
    return std::nullopt;
  }
  std::vector<StringItem> items;
  bool ok = true;
  for (size_t i = 0; i < f.value.size(); ++i) {
    const YAML::Node item = f.value[i];
    if (!item.IsScalar()) {
      error(item.Mark().line >= 0 ? item.Mark() : f.mark(),
            f.path + "[" + std::to_string(i) + "]: expected a list of strings, got " +
                describe(item) + " as an item");
      ok = false;
      continue;
    }
    items.push_back({item.Scalar(), item.Mark()});
  }
  if (!ok) return std::nullopt;
  return items;
}

void Parser::readHeaderList(const Field& f, std::vector<std::string>& out) {
  auto items = readStringList(f);
  if (!items) return;
  std::vector<std::string> names;
  bool ok = true;
  for (const auto& item : *items) {
    if (!isToken(item.text)) {
      error(item.mark, f.path + ": '" + item.text + "' is not a valid header name");
      ok = false;
      continue;
    }
    names.push_back(item.text);
  }
  if (ok) out = std::move(names);
}

void Parser::crossCheck(Config& config, const YAML::Node& root) {
  if (!routesMark_) {
    error(root.Mark(), "missing required key 'routes': at least one route is needed");
  } else if (routesListEmpty_) {
    error(*routesMark_, "routes: at least one route is needed");
  }

  std::map<std::string, size_t> routeByName;
  for (size_t i = 0; i < config.routes.size(); ++i) {
    const RouteConfig& route = config.routes[i];
    const RouteMarks& marks = routeMarks_[i];
    std::string label =
        route.name.empty() ? "routes[" + std::to_string(i) + "]" : "route '" + route.name + "'";
    if (!route.name.empty() && marks.name) {
      auto [first, inserted] = routeByName.emplace(route.name, i);
      if (!inserted) {
        error(*marks.name, "duplicate route name '" + route.name + "' (first defined at line " +
                               std::to_string(routeMarks_[first->second].name->line + 1) + ")");
      }
    }
    if (!marks.upstream) continue;
    auto upstream = config.upstreams.find(route.upstream);
    if (upstream == config.upstreams.end()) {
      std::vector<std::string> names;
      for (const auto& [name, _] : config.upstreams) names.push_back(name);
      error(*marks.upstream, label + ": unknown upstream '" + route.upstream + "'; " +
                                 (names.empty() ? std::string("no upstreams are defined")
                                                : "defined upstreams: " + join(names)));
      continue;
    }
    if (!route.idempotency) continue;
    const IdempotencyConfig& idem = *route.idempotency;
    if (idem.scope.empty() && !idem.shared_scope && marks.scope) {
      error(*marks.scope, label +
                              ": scope [] makes every client one tenant; say so with "
                              "shared_scope: true, or name the header that identifies a "
                              "client (e.g. Authorization, X-Api-Key)");
    }
    const UpstreamMarks& upMarks = upstreamMarks_[route.upstream];
    if (upstream->second.timeout >= idem.lease) {
      // A lease that ends while the upstream may still answer lets another request take the key
      // over (abandoned: retry) or record outcome-unknown while the payment goes through.
      std::string timeout = formatDuration(upstream->second.timeout);
      std::string lease = formatDuration(idem.lease);
      if (marks.lease) {
        std::string where = upMarks.timeout ? "line " + std::to_string(upMarks.timeout->line + 1)
                                            : std::string("the default");
        error(*marks.lease, label + ": lease " + lease + " must be longer than the timeout " +
                                timeout + " (" + where + ") of its upstream '" + route.upstream +
                                "'");
      } else {
        YAML::Mark at = upMarks.timeout ? *upMarks.timeout : *marks.idempotency;
        error(at, "upstream '" + route.upstream + "': timeout " + timeout +
                      " must be shorter than the lease " + lease + " (the default) of " + label +
                      " (line " + std::to_string(marks.item.line + 1) + "), which uses it");
      }
    }
    if (idem.ttl <= idem.lease) {
      YAML::Mark at = marks.ttl ? *marks.ttl : (marks.lease ? *marks.lease : *marks.idempotency);
      error(at, label + ": ttl " + formatDuration(idem.ttl) + " must be longer than the lease " +
                    formatDuration(idem.lease) +
                    ", or a key could expire while its request is still in flight");
    }
  }

  // SIGTERM waits drain_timeout for in-flight exchanges: it must outlast the slowest one, or a
  // stop cuts a payment that is still running (and its outcome is never recorded).
  Millis slowest{0};
  std::string slowestName;
  for (const auto& [name, up] : config.upstreams) {
    if (up.timeout > slowest) {
      slowest = up.timeout;
      slowestName = name;
    }
  }
  if (!slowestName.empty() && config.server.drain_timeout < slowest + kDrainMargin) {
    const YAML::Mark at = drainTimeoutMark_ ? *drainTimeoutMark_ : upstreamMarks_[slowestName].key;
    error(at, "server.drain_timeout " + formatDuration(config.server.drain_timeout) +
                  " must be at least the timeout " + formatDuration(slowest) + " of upstream '" +
                  slowestName + "' plus " + formatDuration(kDrainMargin) +
                  ", so that a stop lets every exchange finish and be recorded");
  }
  if (config.admin && adminListenMark_ && config.admin->listen.port != 0 &&
      config.admin->listen.port == config.server.listen.port &&
      config.admin->listen.host == config.server.listen.host) {
    error(*adminListenMark_,
          "admin.listen: " + config.admin->listen.text + " is also the address of server.listen");
  }
}

// The first document, and a second one if there is one (an error: the caller reports it).
// Not YAML::LoadAll: yaml-cpp 0.7's LoadAll never returns on some malformed inputs (found by
// tests/fuzz/fuzz_config: ",\xff\xff\xff\xff\xff\xff[" grows without bound), while parsing
// one document at a time does.
class DocumentCounter : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override { marks.push_back(mark); }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                const std::string&) override {}
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}
  std::vector<YAML::Mark> marks;
};

struct Documents {
  YAML::Node first;                  // undefined when the text holds no document
  std::optional<YAML::Mark> second;  // where a second document starts, if there is one
};

Documents loadFirstDocument(const std::string& text) {
  Documents docs;
  docs.first = YAML::Load(text);
  std::istringstream in(text);
  YAML::Parser parser(in);
  DocumentCounter counter;
  if (parser.HandleNextDocument(counter) && parser.HandleNextDocument(counter) &&
      counter.marks.size() >= 2) {
    docs.second = counter.marks[1];
  }
  return docs;
}

ConfigResult Parser::run(const std::string& text) {
  ConfigResult result;
  auto config = std::make_shared<Config>();
  config->source = file_;
  try {
    const Documents docs = loadFirstDocument(text);
    if (!docs.first.IsDefined() || docs.first.IsNull()) {
      error(YAML::Mark(), "the configuration is empty; expected at least 'upstreams' and 'routes'");
      errors_.back().line = 1;
      errors_.back().column = 1;
    } else if (!docs.first.IsMap()) {
      error(docs.first.Mark(),
            "expected a mapping of keys at the top level, got " + describe(docs.first));
    } else {
      const YAML::Node& root = docs.first;
      if (docs.second) error(*docs.second, "expected a single YAML document, found another");
      walk(root, "",
           {
               {"server", [&](const Field& f) { parseServer(f, config->server); }},
               {"admin", [&](const Field& f) { parseAdmin(f, config->admin); }},
               {"store", [&](const Field& f) { parseStore(f, config->store); }},
               {"upstreams", [&](const Field& f) { parseUpstreams(f, config->upstreams); }},
               {"routes", [&](const Field& f) { parseRoutes(f, config->routes); }},
               {"log", [&](const Field& f) { parseLog(f, config->log); }},
           });
      crossCheck(*config, root);
    }
  } catch (const YAML::ParserException& e) {
    error(e.mark, "YAML syntax error: " + e.msg);
  } catch (const YAML::Exception& e) {
    error(e.mark, "YAML error: " + e.msg);
  }

  // A relative store path is relative to the configuration file, not to the working directory
  // (which is "/" under systemd).
  std::filesystem::path storePath(config->store.path);
  std::filesystem::path dir = std::filesystem::path(file_).parent_path();
  if (storePath.is_relative() && !dir.empty()) {
    config->store.path = (dir / storePath).lexically_normal().string();
  }

  std::stable_sort(errors_.begin(), errors_.end(), [](const ConfigError& a, const ConfigError& b) {
    return std::tie(a.line, a.column) < std::tie(b.line, b.column);
  });
  result.errors = std::move(errors_);
  if (result.errors.empty()) result.config = std::move(config);
  return result;
}

}  // namespace config_detail

using config_detail::Parser;

bool RouteConfig::matches(std::string_view method, std::string_view requestPath) const {
  if (!methods.empty() && std::find(methods.begin(), methods.end(), method) == methods.end()) {
    return false;
  }
  if (!prefix) return requestPath == path;
  if (!requestPath.starts_with(path)) return false;
  // "/a/*" matches "/a" and "/a/..." but not "/ab"; "/*" (empty path) matches everything.
  return requestPath.size() == path.size() || path.empty() || requestPath[path.size()] == '/';
}

const RouteConfig* Config::findRoute(std::string_view method, std::string_view path) const {
  for (const RouteConfig& route : routes) {
    if (route.matches(method, path)) return &route;
  }
  return nullptr;
}

std::string ConfigError::str() const {
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column) + ": " + message;
}

ConfigResult loadConfigFile(const std::string& path) {
  auto fail = [&](const std::string& message) {
    ConfigResult result;
    result.errors.push_back(ConfigError{path, 0, 0, message});
    return result;
  };
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return fail("cannot read configuration file: it is a directory");
  }
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (file == nullptr) {
    return fail(std::string("cannot read configuration file: ") + std::strerror(errno));
  }
  std::string text;
  char buffer[8192];
  size_t n = 0;
  while ((n = std::fread(buffer, 1, sizeof buffer, file)) > 0) text.append(buffer, n);
  bool failed = std::ferror(file) != 0;
  int readErrno = errno;
  std::fclose(file);
  if (failed)
    return fail(std::string("cannot read configuration file: ") + std::strerror(readErrno));
  return parseConfig(text, path);
}

ConfigResult parseConfig(const std::string& yamlText, const std::string& fileName) {
  return Parser(fileName).run(yamlText);
}

bool ServerConfig::trusts(std::string_view peer) const {
  return std::find(trusted_proxies.begin(), trusted_proxies.end(), peer) != trusted_proxies.end();
}

}  // namespace idem
