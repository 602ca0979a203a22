// RedisStore: opening (the server's checks, the scripts) and the blocking reads of the command
// line, on a hiredis connection of their own.
#include <algorithm>
#include <cstring>

#include "base/log.h"
#include "config/config.h"
#include "store/redis/redis_impl.h"

namespace idem {
namespace {

std::string_view text(const redisReply* r) {
  return r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS)
             ? std::string_view(r->str, r->len)
             : std::string_view();
}

// "redis_version:7.0.15" from INFO server: the major version, or -1.
int majorVersion(std::string_view info) {
  const size_t at = info.find("redis_version:");
  if (at == std::string_view::npos) return -1;
  return std::atoi(std::string(info.substr(at + 14, 8)).c_str());
}

// Settings that can lose a record that a client has seen acknowledged: a warning each.
void checkSettings(redis::SyncClient& c) {
  struct Want {
    const char* name;
    const char* good;
    const char* why;
  };
  static constexpr Want kWants[] = {
      {"appendonly", "yes",
       "without the append-only file a restart loses every record since the last snapshot"},
      {"appendfsync", "always",
       "a power loss or kernel crash loses up to a second of acknowledged records"},
      {"maxmemory-policy", "noeviction",
       "Redis may evict records under memory pressure: a key evicted is forwarded again"},
  };
  for (const Want& w : kWants) {
    std::string error;
    redis::ReplyPtr r = c.command({"CONFIG", "GET", w.name}, error);
    if (!r || r->type != REDIS_REPLY_ARRAY) {
      log::info("store-settings-unchecked",
                {{"setting", w.name}, {"error", r ? redis::errorText(r.get()) : error}});
      return;  // CONFIG renamed or refused (managed Redis): say so once
    }
    if (r->elements != 2) continue;
    const std::string_view value = text(r->element[1]);
    if (value != w.good) {
      log::warn(
          "store-setting-can-lose-records",
          {{"setting", w.name}, {"value", std::string(value)}, {"wanted", w.good}, {"why", w.why}});
    }
  }
}

}  // namespace

RedisOptions redisOptions(const RedisStoreConfig& config) {
  RedisOptions o;
  o.url = config.url;
  o.key_prefix = config.key_prefix;
  o.timeout = config.timeout;
  o.min_replicas = config.min_replicas;
  return o;
}

std::unique_ptr<RedisStore> openRedisStore(const RedisOptions& options, std::string& error) {
  RedisUrl url;
  if (!parseRedisUrl(options.url, url, error)) {
    error = "store.redis.url: " + error;
    return nullptr;
  }
  auto impl = std::make_unique<RedisStore::Impl>(options, url);
  impl->sync = std::make_unique<redis::SyncClient>();
  const int ms = static_cast<int>(std::max<int64_t>(1'000, options.timeout.count()));
  std::string why;
  if (!impl->sync->connect(url, ms, why)) {
    error = "cannot connect to Redis (" + url.masked() + "): " + why;
    return nullptr;
  }
  redis::ReplyPtr info = impl->sync->command({"INFO", "server"}, why);
  if (!info || info->type == REDIS_REPLY_ERROR) {
    error = "Redis (" + url.masked() +
            ") does not answer INFO: " + (info ? redis::errorText(info.get()) : why);
    return nullptr;
  }
  const int major = majorVersion(text(info.get()));
  if (major >= 0 && major < 7) {
    error = "Redis (" + url.masked() + ") runs version " + std::to_string(major) +
            ".x; the store needs Redis 7.0 or later (its scripts declare flags)";
    return nullptr;
  }
  if (options.check_settings) checkSettings(*impl->sync);
  for (const redis::Script* s :
       {&redis::reserveScript(), &redis::recordScript(), &redis::releaseScript(),
        &redis::forgetScript(), &redis::claimReconcileScript(), &redis::settleReconcileScript()}) {
    redis::ReplyPtr r = impl->sync->command({"SCRIPT", "LOAD", s->body}, why);
    if (!r || r->type != REDIS_REPLY_STRING || text(r.get()) != s->sha1) {
      error = std::string("Redis (") + url.masked() + ") refused the " + s->name +
              " script: " + (r ? redis::errorText(r.get()) : why);
      return nullptr;
    }
  }
  impl->start();
  return std::make_unique<RedisStore>(std::move(impl));
}

std::optional<Record> RedisStore::lookup(const RecordId& id) {
  std::lock_guard lock(impl_->sync_mu);
  std::string error;
  const std::string key = redis::recordKey(impl_->opts.key_prefix, id);
  redis::ReplyPtr r = impl_->sync->command({"HGETALL", key}, error);
  Record rec;
  if (!r || !redis::readHash(r.get(), rec)) return std::nullopt;
  return rec;
}

bool RedisStore::visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) {
  std::optional<Record> rec = lookup(id);
  if (!rec) return false;
  const std::string bytes = encodeRecord(*rec);
  RecordView view;
  if (decodeRecordView(bytes, view) != DecodeError::None) return false;
  fn(view);
  return true;
}

std::vector<std::pair<RecordId, Record>> RedisStore::list() {
  return listChecked().records;
}

CheckedList RedisStore::listChecked() {
  CheckedList out;
  std::lock_guard lock(impl_->sync_mu);
  const std::string& prefix = impl_->opts.key_prefix;
  const std::string match = prefix + "{*}";
  std::string cursor = "0";
  std::string error;
  do {
    redis::ReplyPtr r =
        impl_->sync->command({"SCAN", cursor, "MATCH", match, "COUNT", "1000"}, error);
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
        r->element[1]->type != REDIS_REPLY_ARRAY) {
      out.problems.push_back("SCAN failed: " + (r ? redis::errorText(r.get()) : error));
      break;
    }
    cursor = std::string(text(r->element[0]));
    const redisReply* keys = r->element[1];
    for (size_t i = 0; i < keys->elements; ++i) {
      const std::string key(text(keys->element[i]));
      RecordId id{};
      const size_t open = prefix.size();
      if (key.size() < open + 2 || key[open] != '{' || key.back() != '}' ||
          !redis::parseHexId(std::string_view(key).substr(open + 1, key.size() - open - 2), id)) {
        continue;  // not one of ours (another key under the same prefix)
      }
      redis::ReplyPtr h = impl_->sync->command({"HGETALL", key}, error);
      if (!h) {
        out.problems.push_back("HGETALL " + key + " failed: " + error);
        return out;
      }
      if (h->type == REDIS_REPLY_ARRAY && h->elements == 0) continue;  // expired meanwhile
      Record rec;
      if (!redis::readHash(h.get(), rec)) {
        out.problems.push_back(key + ": not a record this idemproxy can read");
        continue;
      }
      out.records.emplace_back(id, std::move(rec));
    }
  } while (cursor != "0");
  std::sort(out.records.begin(), out.records.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

}  // namespace idem
