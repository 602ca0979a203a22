// The configuration's sections, one parser each (server, admin, store, upstreams, routes and
// their idempotency blocks, log). See config_parser.h.
#include <arpa/inet.h>
#include <libpq-fe.h>

#include <algorithm>
#include <cctype>
#include <memory>

#include "base/c_handles.h"
#include "config/config_parser.h"
#include "config/redis_url.h"

namespace idem::config_detail {

namespace {

// The canonical text of an IPv4 or IPv6 literal, "" when `text` is not one.
std::string canonicalIp(const std::string& text) {
  unsigned char bytes[sizeof(in6_addr)];
  char out[INET6_ADDRSTRLEN];
  for (int family : {AF_INET, AF_INET6}) {
    if (inet_pton(family, text.c_str(), bytes) == 1 &&
        inet_ntop(family, bytes, out, sizeof out) != nullptr) {
      return out;
    }
  }
  return {};
}

}  // namespace

void Parser::parseServer(const Field& f, ServerConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path,
       {
           {"listen", [&](const Field& k) { readListen(k, out.listen, serverListenMark_); }},
           {"workers", [&](const Field& k) { readUnsigned(k, out.workers, 0, 256); }},
           {"max_request_body", [&](const Field& k) { readSize(k, out.max_request_body); }},
           {"client_timeout", [&](const Field& k) { readDuration(k, out.client_timeout, false); }},
           {"error_body", [&](const Field& k) { parseErrorBody(k, out.error_body); }},
           {"trusted_proxies",
            [&](const Field& k) {
              auto items = readStringList(k);
              if (!items) return;
              for (const auto& item : *items) {
                std::string canonical = canonicalIp(item.text);
                if (canonical.empty()) {
                  error(item.mark, "server.trusted_proxies: '" + item.text +
                                       "' is not an IP address (names and ranges are not "
                                       "accepted)");
                  continue;
                }
                out.trusted_proxies.push_back(std::move(canonical));
              }
            }},
           {"drain_timeout",
            [&](const Field& k) {
              drainTimeoutMark_ = k.key.Mark();
              readDuration(k, out.drain_timeout, true);
            }},
       });
}

void Parser::parseErrorBody(const Field& f, ErrorBodyPtr& out) {
  if (!expectMap(f)) return;
  ErrorBody body;
  std::optional<YAML::Mark> templateMark;
  walk(f.value, f.path,
       {
           {"content_type", [&](const Field& k) { readText(k, body.content_type); }},
           {"template",
            [&](const Field& k) {
              if (readText(k, body.templ)) templateMark = k.mark();
            }},
       });
  if (!templateMark) {
    error(f.key.Mark(), f.path + ": missing required key 'template'");
    return;
  }
  // A JSON template must stay JSON whatever is filled in (values are JSON-escaped): check it
  // with sample values, quotes and backslashes included.
  std::string lowered = body.content_type;
  for (char& c : lowered) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (lowered.find("json") != std::string::npos) {
    const std::string sample = fillErrorTemplate(body.templ, 409, "idempotency-key-in-use",
                                                 "A \"quoted\" title", "a\\detail\nline");
    CJsonPtr parsed(cJSON_ParseWithLength(sample.data(), sample.size()));
    if (!parsed) {
      error(*templateMark, f.path + ".template: once filled in it is not valid JSON (" +
                               sample.substr(0, 120) + ")");
      return;
    }
  }
  out = std::make_shared<const ErrorBody>(std::move(body));
}

void Parser::parseAdmin(const Field& f, std::optional<AdminConfig>& out) {
  if (!expectMap(f)) return;
  AdminConfig admin;
  walk(f.value, f.path,
       {{"listen", [&](const Field& k) { readListen(k, admin.listen, adminListenMark_); }}});
  out = admin;
}

void Parser::parseStore(const Field& f, StoreConfig& out) {
  if (!expectMap(f)) return;
  std::optional<YAML::Mark> backendMark;
  walk(f.value, f.path,
       {
           {"backend",
            [&](const Field& k) {
              std::string backend;
              if (!readText(k, backend)) return;
              if (backend != "lmdb" && backend != "postgres" && backend != "redis") {
                error(k, "unsupported store backend '" + backend +
                             "'; supported: lmdb, postgres, redis");
                return;
              }
              out.backend = backend;
              backendMark = k.key.Mark();
            }},
           {"path",
            [&](const Field& k) {
              std::string path;
              if (!readText(k, path)) return;
              if (path.empty()) {
                error(k, "expected the directory of the store, got an empty string");
                return;
              }
              out.path = path;
            }},
           {"max_size", [&](const Field& k) { readSize(k, out.max_size); }},
           {"durability",
            [&](const Field& k) {
              readEnum(k, out.durability,
                       {{"full", Durability::Full}, {"relaxed", Durability::Relaxed}});
            }},
           {"wal", [&](const Field& k) { readBool(k, out.wal); }},
           {"wal_size",
            [&](const Field& k) {
              uint64_t size = 0;
              readSize(k, size);
              if (size != 0 && size < (64u << 10)) {
                error(k, "must be at least 64KiB (the log between two checkpoints)");
                return;
              }
              if (size != 0) out.wal_size = size;
            }},
           {"sweep_interval", [&](const Field& k) { readDuration(k, out.sweep_interval, false); }},
           {"postgres", [&](const Field& k) { parsePostgres(k, out.postgres); }},
           {"redis", [&](const Field& k) { parseRedis(k, out.redis); }},
       });
  if (out.backend == "postgres" && out.postgres.url.empty() && backendMark) {
    error(*backendMark, f.path + ".backend: postgres needs store.postgres.url");
  }
}

void Parser::parsePostgres(const Field& f, PostgresStoreConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path,
       {
           {"url",
            [&](const Field& k) {
              std::string url;
              if (!readText(k, url)) return;
              // The text is never echoed: it may hold a password.
              char* message = nullptr;
              PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &message);
              if (message != nullptr) PQfreemem(message);
              if (parsed == nullptr || url.empty()) {
                error(k, "expected a libpq connection string or URI (postgresql://…)");
              } else {
                out.url = url;
              }
              if (parsed != nullptr) PQconninfoFree(parsed);
            }},
           {"connections", [&](const Field& k) { readUnsigned(k, out.connections, 1, 64); }},
           {"timeout", [&](const Field& k) { readDuration(k, out.timeout, false); }},
       });
}

void Parser::parseRedis(const Field& f, RedisStoreConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path,
       {
           {"url",
            [&](const Field& k) {
              std::string url;
              if (!readText(k, url)) return;
              RedisUrl parsed;
              std::string why;
              if (!parseRedisUrl(url, parsed, why)) {
                error(k, why);  // never echoes the text: it may hold a password
              } else {
                out.url = url;
              }
            }},
           {"key_prefix",
            [&](const Field& k) {
              std::string prefix;
              if (!readText(k, prefix)) return;
              // Printable, no braces: the proxy adds a {hash tag} after it.
              const bool ok = !prefix.empty() && prefix.size() <= 64 &&
                              std::all_of(prefix.begin(), prefix.end(), [](char c) {
                                return c > 0x20 && c < 0x7f && c != '{' && c != '}' && c != '*' &&
                                       c != '?' && c != '[' && c != ']' && c != '\\';
                              });
              if (!ok) {
                error(k,
                      "expected 1 to 64 printable characters without spaces, braces, '*', '?', "
                      "'[', ']' or '\\'");
                return;
              }
              out.key_prefix = prefix;
            }},
           {"timeout", [&](const Field& k) { readDuration(k, out.timeout, false); }},
           {"min_replicas", [&](const Field& k) { readUnsigned(k, out.min_replicas, 0, 64); }},
       });
}

void Parser::parseLog(const Field& f, LogConfig& out) {
  if (!expectMap(f)) return;
  walk(f.value, f.path, {{"level", [&](const Field& k) {
                            readEnum(k, out.level,
                                     {{"debug", LogLevel::Debug},
                                      {"info", LogLevel::Info},
                                      {"warn", LogLevel::Warn},
                                      {"error", LogLevel::Error}});
                          }}});
}

void Parser::parseUpstreams(const Field& f, std::map<std::string, UpstreamConfig>& out) {
  if (!expectMap(f)) return;
  if (!f.value.IsMap()) return;
  for (auto it = f.value.begin(); it != f.value.end(); ++it) {
    const YAML::Node key = it->first;  // a copy: it-> returns a temporary
    if (!key.IsScalar() || !isPrintableName(key.Scalar())) {
      error(key.Mark(),
            f.path + ": expected an upstream name (printable, no spaces), got " + describe(key));
      continue;
    }
    const std::string& name = key.Scalar();
    Field field{f.path + "." + name, key, it->second};
    if (out.count(name) != 0) {
      error(key.Mark(), "duplicate upstream '" + name + "' (first defined at line " +
                            std::to_string(upstreamMarks_[name].key.line + 1) + ")");
      continue;
    }
    if (!field.value.IsMap()) {
      error(field, "expected a mapping with at least 'url', got " + describe(field.value));
      continue;
    }
    UpstreamConfig upstream;
    upstream.name = name;
    UpstreamMarks marks{key.Mark(), std::nullopt, std::nullopt};
    auto seen =
        walk(field.value, field.path,
             {
                 {"url",
                  [&](const Field& k) {
                    std::string url;
                    if (!readText(k, url)) return;
                    std::string normalized;
                    if (std::string problem = checkUpstreamUrl(url, normalized); !problem.empty()) {
                      error(k, "upstream url '" + url + "' " + problem);
                      return;
                    }
                    upstream.url = normalized;
                  }},
                 {"connect_timeout",
                  [&](const Field& k) { readDuration(k, upstream.connect_timeout, false); }},
                 {"timeout",
                  [&](const Field& k) {
                    readDuration(k, upstream.timeout, false);
                    marks.timeout = k.mark();
                  }},
                 {"max_connections",
                  [&](const Field& k) { readUnsigned(k, upstream.max_connections, 1, 65536); }},
                 {"idle_timeout", [&](const Field& k) { readIdleTimeout(k, upstream); }},
                 {"max_response_body", [&](const Field& k) { readBodyLimit(k, upstream); }},
                 {"tls_ca_file",
                  [&](const Field& k) {
                    std::string path;
                    if (!readText(k, path)) return;
                    if (access(path.c_str(), R_OK) != 0) {
                      error(k, "tls_ca_file '" + path + "' cannot be read");
                      return;
                    }
                    upstream.tls_ca_file = path;
                  }},
                 {"client",
                  [&](const Field& k) {
                    std::string client;
                    if (!readText(k, client)) return;
                    if (client == "builtin") {
                      upstream.client = UpstreamClient::Builtin;
                    } else if (client == "curl") {
                      upstream.client = UpstreamClient::Curl;
                    } else {
                      error(k, "client must be builtin or curl, got '" + client + "'");
                    }
                    marks.client = k.mark();
                  }},
             });
    if (seen.count("url") == 0) {
      error(field.value.Mark(), field.path + ": missing required key 'url'");
    } else if (!upstream.url.empty()) {
      // The built-in client unless it cannot reach the URL (https, a host name): then curl.
      const std::string problem = builtinClientProblem(upstream.url);
      if (upstream.client == UpstreamClient::Auto) {
        upstream.client = problem.empty() ? UpstreamClient::Builtin : UpstreamClient::Curl;
      } else if (upstream.client == UpstreamClient::Builtin && !problem.empty()) {
        error(*marks.client,
              "client builtin " + problem + "; use client: curl for '" + upstream.url + "'");
      }
    }
    upstreamMarks_[name] = marks;
    out.emplace(name, std::move(upstream));
  }
}

void Parser::parseRoutes(const Field& f, std::vector<RouteConfig>& out) {
  routesMark_ = f.key.Mark();
  if (!f.value.IsSequence()) {
    error(f, "expected a list of routes, got " + describe(f.value));
    return;
  }
  routesListEmpty_ = f.value.size() == 0;
  for (size_t i = 0; i < f.value.size(); ++i) {
    const YAML::Node item = f.value[i];
    std::string prefix = f.path + "[" + std::to_string(i) + "]";
    if (!item.IsMap()) {
      error(item.Mark().line >= 0 ? item.Mark() : f.mark(),
            prefix + ": expected a route (a mapping with name, path and upstream), got " +
                describe(item));
      continue;
    }
    RouteConfig route;
    RouteMarks marks;
    marks.item = item.Mark();
    parseRoute(prefix, item, route, marks);
    out.push_back(std::move(route));
    routeMarks_.push_back(marks);
  }
}

void Parser::parseRoute(const std::string& prefix, const YAML::Node& node, RouteConfig& route,
                        RouteMarks& marks) {
  auto seen = walk(
      node, prefix,
      {
          {"name",
           [&](const Field& k) {
             std::string name;
             if (!readText(k, name)) return;
             if (!isPrintableName(name)) {
               error(k, "expected a route name (printable, no spaces), got " + describe(k.value));
               return;
             }
             route.name = name;
             marks.name = k.mark();
           }},
          {"methods",
           [&](const Field& k) {
             auto items = readStringList(k);
             if (!items) return;
             for (const auto& item : *items) {
               if (!isToken(item.text)) {
                 error(item.mark, k.path + ": '" + item.text + "' is not a valid HTTP method");
                 continue;
               }
               std::string method = toUpper(item.text);
               if (std::find(route.methods.begin(), route.methods.end(), method) ==
                   route.methods.end()) {
                 route.methods.push_back(method);
               }
             }
           }},
          {"path",
           [&](const Field& k) {
             std::string path;
             if (!readText(k, path)) return;
             if (path.empty() || path.front() != '/') {
               error(k, "expected a path starting with '/', got " + describe(k.value));
               return;
             }
             if (path.find_first_of("?#") != std::string::npos) {
               error(k,
                     "a route path must not contain a query or fragment, got " + describe(k.value));
               return;
             }
             if (std::any_of(path.begin(), path.end(),
                             [](char c) { return c <= 0x20 || c >= 0x7f; })) {
               error(k, "a route path must not contain spaces or control characters");
               return;
             }
             size_t star = path.find('*');
             if (star != std::string::npos) {
               if (star != path.size() - 1 || path[star - 1] != '/') {
                 error(k, "'*' is only allowed as a final '/*' (prefix match), got " +
                              describe(k.value));
                 return;
               }
               route.path = path.substr(0, path.size() - 2);
               route.prefix = true;
             } else {
               route.path = path;
               route.prefix = false;
             }
           }},
          {"upstream",
           [&](const Field& k) {
             if (readText(k, route.upstream)) marks.upstream = k.mark();
           }},
          {"error_body", [&](const Field& k) { parseErrorBody(k, route.error_body); }},
          {"idempotency",
           [&](const Field& k) {
             if (!expectMap(k)) return;
             IdempotencyConfig idem;
             marks.idempotency = k.key.Mark();
             parseIdempotency(k, idem, marks);
             route.idempotency = std::move(idem);
           }},
      });
  for (const char* required : {"name", "path", "upstream"}) {
    if (seen.count(required) == 0) {
      error(node.Mark(), prefix + ": missing required key '" + required + "'");
    }
  }
}

void Parser::parseIdempotency(const Field& f, IdempotencyConfig& out, RouteMarks& marks) {
  walk(f.value, f.path,
       {
           {"key_header",
            [&](const Field& k) {
              std::string name;
              if (!readText(k, name)) return;
              if (!isToken(name)) {
                error(k, "expected a header name (an HTTP token), got " + describe(k.value));
                return;
              }
              out.key_header = name;
            }},
           {"key_json_pointer",
            [&](const Field& k) {
              std::string pointer;
              if (!readText(k, pointer)) return;
              if (!isJsonPointer(pointer)) {
                error(k,
                      "expected an RFC 6901 JSON pointer to a member of the body, like "
                      "/idempotency_key ('~' only as ~0 or ~1), got " +
                          describe(k.value));
                return;
              }
              out.key_json_pointer = pointer;
            }},
           {"required", [&](const Field& k) { readBool(k, out.required); }},
           {"ttl",
            [&](const Field& k) {
              readDuration(k, out.ttl, false);
              marks.ttl = k.mark();
            }},
           {"scope",
            [&](const Field& k) {
              readHeaderList(k, out.scope);
              marks.scope = k.key.Mark();
            }},
           {"shared_scope", [&](const Field& k) { readBool(k, out.shared_scope); }},
           {"fingerprint",
            [&](const Field& k) {
              auto items = readStringList(k);
              if (!items) return;
              static const std::pair<std::string_view, FingerprintPart> kParts[] = {
                  {"method", FingerprintPart::Method},
                  {"path", FingerprintPart::Path},
                  {"query", FingerprintPart::Query},
                  {"body", FingerprintPart::Body},
                  {"body_json", FingerprintPart::BodyJson}};
              std::vector<FingerprintPart> parts;
              bool ok = true;
              for (const auto& item : *items) {
                auto found = std::find_if(std::begin(kParts), std::end(kParts),
                                          [&](const auto& p) { return p.first == item.text; });
                if (found == std::end(kParts)) {
                  error(item.mark, k.path + ": unknown fingerprint part '" + item.text +
                                       "'; expected method, path, query, body or body_json");
                  ok = false;
                  continue;
                }
                if (std::find(parts.begin(), parts.end(), found->second) != parts.end()) {
                  error(item.mark, k.path + ": '" + item.text + "' is listed twice");
                  ok = false;
                  continue;
                }
                bool hasBody =
                    std::find(parts.begin(), parts.end(), FingerprintPart::Body) != parts.end();
                bool hasJson =
                    std::find(parts.begin(), parts.end(), FingerprintPart::BodyJson) != parts.end();
                if ((found->second == FingerprintPart::Body && hasJson) ||
                    (found->second == FingerprintPart::BodyJson && hasBody)) {
                  error(item.mark, k.path + ": 'body' and 'body_json' are mutually exclusive");
                  ok = false;
                  continue;
                }
                parts.push_back(found->second);
              }
              if (ok) out.fingerprint = std::move(parts);
            }},
           {"concurrent",
            [&](const Field& k) {
              readEnum(k, out.concurrent,
                       {{"wait", ConcurrentMode::Wait}, {"reject", ConcurrentMode::Reject}});
            }},
           {"wait_timeout", [&](const Field& k) { readDuration(k, out.wait_timeout, true); }},
           {"lease",
            [&](const Field& k) {
              readDuration(k, out.lease, false);
              marks.lease = k.mark();
            }},
           {"abandoned",
            [&](const Field& k) {
              readEnum(k, out.abandoned,
                       {{"fail", AbandonedMode::Fail}, {"retry", AbandonedMode::Retry}});
            }},
           {"release_statuses",
            [&](const Field& k) {
              auto items = readStringList(k);
              if (!items) return;
              std::vector<int> statuses;
              bool ok = true;
              for (const auto& item : *items) {
                auto value = parseDigits(item.text);
                if (!value || *value < 100 || *value > 599) {
                  error(item.mark, k.path + ": expected HTTP status codes from 100 to 599, got '" +
                                       item.text + "'");
                  ok = false;
                  continue;
                }
                if (*value >= 200 && *value <= 299) {
                  // Releasing a success would let a retry execute the request a second time.
                  error(item.mark, k.path + ": " + item.text +
                                       " is a success status; releasing it would let a retry "
                                       "execute the request twice");
                  ok = false;
                  continue;
                }
                statuses.push_back(static_cast<int>(*value));
              }
              if (ok) out.release_statuses = std::move(statuses);
            }},
           {"replay_drop_headers",
            [&](const Field& k) { readHeaderList(k, out.replay_drop_headers); }},
           {"max_response_body", [&](const Field& k) { readSize(k, out.max_response_body); }},
           {"reconcile", [&](const Field& k) { parseReconcile(k, out.reconcile); }},
       });
}

std::optional<std::vector<int>> Parser::readStatusList(const Field& f) {
  auto items = readStringList(f);
  if (!items) return std::nullopt;
  std::vector<int> statuses;
  bool ok = true;
  for (const auto& item : *items) {
    auto value = parseDigits(item.text);
    if (!value || *value < 100 || *value > 599) {
      error(item.mark,
            f.path + ": expected HTTP status codes from 100 to 599, got '" + item.text + "'");
      ok = false;
      continue;
    }
    statuses.push_back(static_cast<int>(*value));
  }
  if (!ok) return std::nullopt;
  if (statuses.empty()) {
    error(f, "expected at least one status");
    return std::nullopt;
  }
  return statuses;
}

void Parser::parseReconcile(const Field& f, std::optional<ReconcileConfig>& out) {
  if (!expectMap(f)) return;
  ReconcileConfig rc;
  bool ok = true;
  std::optional<YAML::Mark> foundMark;
  auto keys = walk(f.value, f.path,
                   {
                       {"method",
                        [&](const Field& k) {
                          std::string m;
                          if (!readText(k, m)) return;
                          if (!isToken(m)) {
                            error(k, "expected an HTTP method, got " + describe(k.value));
                            ok = false;
                            return;
                          }
                          rc.method = toUpper(m);
                        }},
                       {"path",
                        [&](const Field& k) {
                          if (!readText(k, rc.path)) {
                            ok = false;
                            return;
                          }
                          const std::string problem = parseLookupTemplate(rc.path, rc.parts);
                          if (!problem.empty()) {
                            error(k, problem);
                            ok = false;
                          }
                        }},
                       {"found",
                        [&](const Field& k) {
                          foundMark = k.mark();
                          auto v = readStatusList(k);
                          if (v) rc.found = std::move(*v);
                          ok = ok && v.has_value();
                        }},
                       {"not_found",
                        [&](const Field& k) {
                          auto v = readStatusList(k);
                          if (v) rc.not_found = std::move(*v);
                          ok = ok && v.has_value();
                        }},
                   });
  if (keys.count("path") == 0) {
    error(f.key.Mark(), f.path + ": missing required key 'path'");
    return;
  }
  for (int s : rc.found) {
    if (std::find(rc.not_found.begin(), rc.not_found.end(), s) != rc.not_found.end()) {
      error(foundMark.value_or(f.key.Mark()),
            f.path + ": status " + std::to_string(s) + " is in both found and not_found");
      ok = false;
    }
  }
  if (ok) out = std::move(rc);
}

}  // namespace idem::config_detail
