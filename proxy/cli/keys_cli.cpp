// `idemproxy keys list|show|forget|reconcile` (SPEC §6; reconcile in keys_reconcile.cpp): operator
// access to the store while the daemon runs (LMDB readers never block the writer; `forget` queues
// one write like the daemon does).
#include <grp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "base/c_handles.h"
#include "base/digest.h"
#include "cli/cli.h"
#include "request/idempotency.h"
#include "store/lmdb/lmdb_store.h"
#include "store/postgres/postgres_store.h"
#include "store/redis/redis_store.h"

namespace idem {

namespace {

const char* stateName(const Record& r, int64_t now) {
  if (r.expired(now)) return "expired";
  if (r.state == RecordState::InFlight) return r.leasePassed(now) ? "abandoned" : "in-flight";
  if (r.flags & kFlagOutcomeUnknown) return "outcome-unknown";
  return "completed";
}

std::string isoTime(int64_t ms) {
  std::time_t t = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string seconds(int64_t ms) {
  if (ms < 0) {
    std::string s = seconds(-ms);
    s.insert(s.begin(), '-');
    return s;
  }
  return std::to_string(ms / 1000) + "s";
}

cJSON* recordJson(const Record& r, int64_t now) {
  cJSON* o = cJSON_CreateObject();
  cJSON_AddStringToObject(o, "route", r.route.c_str());
  cJSON_AddStringToObject(o, "key", r.key.c_str());
  cJSON_AddStringToObject(o, "state", stateName(r, now));
  if (r.state == RecordState::Completed) cJSON_AddNumberToObject(o, "status", r.answer.status);
  cJSON_AddNumberToObject(o, "age_s", static_cast<double>(now - r.reserved_at_ms) / 1000.0);
  cJSON_AddNumberToObject(o, "expires_in_s", static_cast<double>(r.expires_at_ms - now) / 1000.0);
  cJSON_AddStringToObject(o, "reserved_at", isoTime(r.reserved_at_ms).c_str());
  cJSON_AddStringToObject(o, "expires_at", isoTime(r.expires_at_ms).c_str());
  return o;
}

const RouteConfig* findRouteByName(const Config& cfg, const std::string& name) {
  for (const auto& r : cfg.routes)
    if (r.name == name) return &r;
  return nullptr;
}

// Prints what could not be read and how to go on; returns the exit code for a damaged store.
int reportDamage(const std::string& path, const std::vector<std::string>& problems) {
  std::fprintf(stderr, "idemproxy: the store at %s is damaged:\n", path.c_str());
  for (const auto& p : problems) std::fprintf(stderr, "  %s\n", p.c_str());
  std::fprintf(stderr,
               "idemproxy: run `idemproxy store verify` for a full report. To recover: %s\n",
               kRestoreHint);
  return kExitFailure;
}

// Whether a reconcile would touch the record: an uncertain outcome, not expired, of a route
// that has a reconcile lookup in this configuration.
bool reconcilable(const Config& cfg, const Record& r, int64_t now) {
  if (!r.uncertain() || r.expired(now)) return false;
  const RouteConfig* route = findRouteByName(cfg, r.route);
  return route != nullptr && route->idempotency && route->idempotency->reconcile;
}

int keysList(const CliOptions& o, const Config& cfg, Store& store, const std::string& path) {
  const int64_t now = SystemClock::instance().wallMs();
  CheckedList checked = store.listChecked();
  if (!checked.problems.empty()) return reportDamage(path, checked.problems);
  const auto& records = checked.records;
  if (!o.json) {
    std::printf("%-20s %-40s %-16s %6s %10s %10s\n", "ROUTE", "KEY", "STATE", "STATUS", "AGE",
                "EXPIRES");
  }
  for (const auto& [id, r] : records) {
    if (!o.route.empty() && r.route != o.route) continue;
    if (o.uncertain && !reconcilable(cfg, r, now)) continue;
    if (o.json) {
      CJsonPtr j(recordJson(r, now));
      cJSON_AddStringToObject(j.get(), "id", toHex(id).c_str());
      CJsonString s(cJSON_PrintUnformatted(j.get()));
      std::printf("%s\n", s.get());
    } else {
      const std::string status =
          r.state == RecordState::Completed ? std::to_string(r.answer.status) : "-";
      std::printf("%-20s %-40s %-16s %6s %10s %10s\n", r.route.c_str(), r.key.c_str(),
                  stateName(r, now), status.c_str(), seconds(now - r.reserved_at_ms).c_str(),
                  seconds(r.expires_at_ms - now).c_str());
    }
  }
  return kExitOk;
}

// Root never makes the store root's: LMDB creates lock.mdb (and, on first use, data.mdb) with
// the creator's uid and mode 0600, and the service — another, unprivileged user, under the
// packaged unit a DynamicUser= uid — could then not open its own store. So when run as root on
// a store directory that someone else owns, act as that owner: enter the directory while still
// root (the path may lead through /var/lib/private, 0700 root), drop to the directory's uid and
// gid for good, and open the store as "." from there. Returns false (with `error`) when the
// directory is missing or the switch fails; `path` is rewritten to "." when switched.
bool actAsStoreOwner(std::string& path, std::string& error) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    error = std::string(std::strerror(errno)) + " (has the service ever started?)";
    return false;
  }
  if (::geteuid() != 0 || st.st_uid == 0 || !S_ISDIR(st.st_mode)) return true;
  if (::chdir(path.c_str()) != 0) {
    error = std::string("cannot enter the store directory: ") + std::strerror(errno);
    return false;
  }
  if (::setgroups(0, nullptr) != 0 || ::setresgid(st.st_gid, st.st_gid, st.st_gid) != 0 ||
      ::setresuid(st.st_uid, st.st_uid, st.st_uid) != 0) {
    error = std::string("cannot act as the store's owner (uid ") + std::to_string(st.st_uid) +
            "): " + std::strerror(errno);
    return false;
  }
  path = std::string(".");  // (not = "."; GCC 12 -O3 warns falsely: -Wrestrict)
  return true;
}

}  // namespace

int cmdKeys(const CliOptions& o) {
  ConfigResult cr = loadConfigFile(o.config_path);
  if (!cr.ok()) {
    for (const auto& e : cr.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return kExitFailure;
  }
  const Config& cfg = *cr.config;
  const RouteConfig* route = nullptr;
  if (o.keys != KeysCommand::List || !o.route.empty()) {
    route = findRouteByName(cfg, o.route);
    if (route == nullptr || !route->idempotency) {
      std::fprintf(stderr, "idemproxy: no idempotent route named '%s' in %s\n", o.route.c_str(),
                   o.config_path.c_str());
      return kExitFailure;
    }
  }
  std::string error;
  std::unique_ptr<Store> store;
  if (cfg.store.backend == "redis") {
    RedisOptions ro = redisOptions(cfg.store.redis);
    ro.check_settings = false;          // the daemon warns; the command line stays quiet
    store = openRedisStore(ro, error);  // the error never holds the password
    if (!store) {
      std::fprintf(stderr, "idemproxy: cannot open the store: %s\n", error.c_str());
      return kExitFailure;
    }
  } else if (cfg.store.backend == "postgres") {
    PostgresOptions po;
    po.conninfo = cfg.store.postgres.url;
    po.connections = 1;
    po.timeout = cfg.store.postgres.timeout;
    store = openPostgresStore(po, error);  // the error never holds the password
    if (!store) {
      std::fprintf(stderr, "idemproxy: cannot open the store: %s\n", error.c_str());
      return kExitFailure;
    }
  } else {
    LmdbOptions so;
    so.path = cfg.store.path;
    if (!actAsStoreOwner(so.path, error)) {
      std::fprintf(stderr, "idemproxy: cannot open the store at %s: %s\n", cfg.store.path.c_str(),
                   error.c_str());
      return kExitFailure;
    }
    so.max_size = cfg.store.max_size;
    so.durability = cfg.store.durability;
    so.wal = cfg.store.wal;
    so.wal_size = cfg.store.wal_size;
    so.read_only = o.keys != KeysCommand::Forget && o.keys != KeysCommand::Reconcile;
    store = openLmdbStore(so, SystemClock::instance(), error);
    if (!store) {
      std::fprintf(stderr, "idemproxy: cannot open the store at %s: %s\n", cfg.store.path.c_str(),
                   error.c_str());
      return kExitFailure;
    }
  }
  if (o.keys == KeysCommand::List) return keysList(o, cfg, *store, cfg.store.path);

  // The record's identity uses one value per scope header; absent ones are empty.
  std::vector<std::string> scope = o.scopes;
  if (scope.size() > route->idempotency->scope.size()) {
    std::fprintf(stderr, "idemproxy: route '%s' has %zu scope header(s); %zu --scope given\n",
                 route->name.c_str(), route->idempotency->scope.size(), scope.size());
    return kExitFailure;
  }
  scope.resize(route->idempotency->scope.size());
  // The key as a client would send it: a quoted sf-string is unquoted, like the proxy does.
  ParsedKey parsed = parseIdempotencyKey({o.key});
  if (parsed.status != KeyStatus::Ok) {
    std::fprintf(stderr, "idemproxy: invalid key: %s\n", parsed.reason.c_str());
    return kExitFailure;
  }
  const RecordId id = recordId(route->name, scope, parsed.key);
  if (o.keys == KeysCommand::Reconcile)
    return keysReconcile(cfg, *route, *store, parsed.key, scope);

  if (o.keys == KeysCommand::Forget) {
    WriteResult r = forgetSync(*store, id);
    if (r.error != StoreError::None) {
      std::fprintf(stderr, "idemproxy: forget failed: %s\n", toString(r.error));
      return kExitFailure;
    }
    std::printf("%s\n", r.changed ? "forgotten" : "not found");
    return r.changed ? kExitOk : kExitFailure;
  }

  // show: every record, expired ones too, so an operator sees what is there.
  const int64_t now = SystemClock::instance().wallMs();
  CheckedList checked = store->listChecked();
  if (!checked.problems.empty()) return reportDamage(cfg.store.path, checked.problems);
  for (const auto& [rid, r] : checked.records) {
    if (rid != id) continue;
    CJsonPtr j(recordJson(r, now));
    cJSON_AddStringToObject(j.get(), "id", toHex(rid).c_str());
    cJSON_AddStringToObject(j.get(), "owner", r.owner.c_str());
    cJSON* scopeValues = cJSON_AddArrayToObject(j.get(), "scope");
    for (const auto& v : r.scope) cJSON_AddItemToArray(scopeValues, cJSON_CreateString(v.c_str()));
    if (r.state == RecordState::Completed) {
      cJSON* headers = cJSON_AddArrayToObject(j.get(), "headers");
      for (const auto& h : r.answer.headers) {
        cJSON* pair = cJSON_CreateArray();
        cJSON_AddItemToArray(pair, cJSON_CreateString(h.name.c_str()));
        cJSON_AddItemToArray(pair, cJSON_CreateString(h.value.c_str()));
        cJSON_AddItemToArray(headers, pair);
      }
      cJSON_AddNumberToObject(j.get(), "body_bytes", static_cast<double>(r.answer.body.size()));
    }
    CJsonString s(cJSON_Print(j.get()));
    std::printf("%s\n", s.get());
    return kExitOk;
  }
  std::fprintf(stderr, "idemproxy: no record for that route, key and scope\n");
  return kExitFailure;
}

int cmdStoreVerify(const CliOptions& o) {
  ConfigResult cr = loadConfigFile(o.config_path);
  if (!cr.ok()) {
    for (const auto& e : cr.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    return kExitFailure;
  }
  LmdbOptions so;
  so.path = cr.config->store.path;
  so.max_size = cr.config->store.max_size;
  so.read_only = true;  // safe while the daemon runs; reports instead of refusing
  std::string error;
  auto store = openLmdbStore(so, SystemClock::instance(), error);
  if (!store) {
    std::fprintf(stderr, "idemproxy: cannot open the store at %s: %s\nTo recover: %s\n",
                 so.path.c_str(), error.c_str(), kRestoreHint);
    return kExitFailure;
  }
  const VerifyReport rep = store->verify();
  if (!rep.ok()) return reportDamage(so.path, rep.problems);
  std::printf("%s: ok (%" PRIu64 " records, %" PRIu64 " expiry index entries)\n", so.path.c_str(),
              rep.records, rep.index_entries);
  return kExitOk;
}

}  // namespace idem
