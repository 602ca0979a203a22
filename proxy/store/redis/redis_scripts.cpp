#include "store/redis/redis_scripts.h"

#include <openssl/evp.h>

#include <cstring>
#include <map>

// Every script declares its flags (#!lua): Redis 7 then refuses a writing script as a whole
// when used memory is over maxmemory (an OOM error, nothing written), instead of failing at
// some write in its middle. Each script reads TIME itself, classifies, then writes: all checks
// come before the first write, so a script that fails leaves nothing half done.

namespace idem::redis {

namespace {

std::string sha1Hex(const std::string& text) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_Digest(text.data(), text.size(), md, &n, EVP_sha1(), nullptr);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned i = 0; i < n; ++i) {
    out.push_back(kHex[md[i] >> 4]);
    out.push_back(kHex[md[i] & 15]);
  }
  return out;
}

Script make(const char* name, std::string body) {
  Script s{name, std::move(body), {}};
  s.sha1 = sha1Hex(s.body);
  return s;
}

// Shared head: the server's time in ms and the record as the scripts return it.
constexpr const char* kCommon = R"LUA(#!lua
local k = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function reply(res, withAnswer)
  local r = redis.call('HMGET', k, 'st', 'fl', 'ra', 'lu', 'ea', 'ow', 'fp', 'rt', 'k', 'sc',
                       's', 'h', 'b', 'lk', 'co', 'cu')
  local h, b = '', ''
  if withAnswer then h, b = r[12], r[13] end
  return {res, tonumber(r[1]), tonumber(r[2]), tonumber(r[3]), tonumber(r[4]), tonumber(r[5]),
          r[6], r[7], r[8], r[9], r[10], tonumber(r[11]), h, b, r[14] or '', r[15] or '',
          tonumber(r[16] or '0')}
end
-- An outcome a reconcile lookup may settle (Record::uncertain): completed, a proxy error (flag
-- 1), not response-not-replayable (flag 4).
local function uncertain(st, fl)
  fl = tonumber(fl)
  return st == '2' and fl % 2 == 1 and math.floor(fl / 4) % 2 == 0
end
local function wake(channel, id)
  local w = redis.call('HGET', k, 'w')
  if w and tonumber(w) > 0 then redis.call('PUBLISH', channel, id) end
end
)LUA";

constexpr const char* kReserve = R"LUA(
local fp, owner, ttl, lease = ARGV[1], ARGV[2], tonumber(ARGV[6]), tonumber(ARGV[7])
local function fresh()
  redis.call('DEL', k)
  redis.call('HSET', k, 'v', '1', 'st', 1, 'fl', 0, 'ra', now, 'lu', now + lease,
             'ea', now + ttl, 'ow', owner, 'fp', fp, 'rt', ARGV[3], 'k', ARGV[4], 'sc', ARGV[5],
             's', 0, 'h', '', 'b', '', 'w', 0, 'lk', ARGV[14], 'co', '', 'cu', 0)
  redis.call('PEXPIREAT', k, now + ttl)
  return reply(0, false)
end
local r = redis.call('HMGET', k, 'st', 'fp', 'lu', 'ea')
if not r[1] or not r[4] or tonumber(r[4]) <= now then return fresh() end
if r[2] ~= fp then return reply(3, false) end
if r[1] == '2' then return reply(1, true) end
if now < tonumber(r[3]) then
  redis.call('HINCRBY', k, 'w', 1)
  return reply(2, false)
end
if ARGV[8] == '1' then
  redis.call('HSET', k, 'ow', owner, 'ra', now, 'lu', now + lease, 'ea', now + ttl,
             'lk', ARGV[14], 'co', '', 'cu', 0)
  redis.call('PEXPIREAT', k, now + ttl)
  return reply(0, false)
end
redis.call('HSET', k, 'st', 2, 'fl', 3, 's', ARGV[9], 'h', ARGV[10], 'b', ARGV[11])
wake(ARGV[12], ARGV[13])
return reply(1, true)
)LUA";

// Written once, by its owner; the one overwrite allowed is unknown → known (flag 2).
constexpr const char* kRecord = R"LUA(
local r = redis.call('HMGET', k, 'st', 'fl', 'ow')
if not r[1] then return {2} end
local unknown = math.floor(tonumber(r[2]) / 2) % 2 == 1
if r[3] == ARGV[1] and (r[1] == '1' or unknown) then
  redis.call('HSET', k, 'st', 2, 'fl', ARGV[2], 's', ARGV[3], 'h', ARGV[4], 'b', ARGV[5])
  wake(ARGV[6], ARGV[7])
  return reply(0, true)
end
return reply(1, true)
)LUA";

constexpr const char* kRelease = R"LUA(
local r = redis.call('HMGET', k, 'st', 'ow')
if r[1] ~= '1' or r[2] ~= ARGV[1] then return 0 end
wake(ARGV[2], ARGV[3])
redis.call('DEL', k)
return 1
)LUA";

constexpr const char* kForget = R"LUA(
if redis.call('EXISTS', k) == 0 then return 0 end
wake(ARGV[1], ARGV[2])
redis.call('DEL', k)
return 1
)LUA";

// The key's lookup claim: {0 claimed | 1 busy | 2 not uncertain, <record>}, or {3} missing.
constexpr const char* kClaimReconcile = R"LUA(
local r = redis.call('HMGET', k, 'st', 'fl', 'ea', 'co', 'cu')
if not r[1] or not r[3] or tonumber(r[3]) <= now then return {3} end
if not uncertain(r[1], r[2]) then return reply(2, true) end
if r[4] and r[4] ~= '' and now < tonumber(r[5] or '0') then return reply(1, true) end
redis.call('HSET', k, 'co', ARGV[1], 'cu', now + tonumber(ARGV[2]))
return reply(0, true)
)LUA";

// What the lookup learned, while the claim is the caller's: {0 settled, <record>} |
// {1 lost, <record>} | {2} settled by deleting | {3} missing.
constexpr const char* kSettleReconcile = R"LUA(
local r = redis.call('HMGET', k, 'st', 'fl', 'ea', 'co')
if not r[1] or not r[3] or tonumber(r[3]) <= now then return {3} end
if not uncertain(r[1], r[2]) or r[4] ~= ARGV[1] then return reply(1, true) end
local kind = ARGV[2]
if kind == '0' then
  redis.call('HSET', k, 'fl', 0, 's', ARGV[3], 'h', ARGV[4], 'b', ARGV[5], 'co', '', 'cu', 0)
elseif kind == '1' and ARGV[6] == '' then
  redis.call('DEL', k)
  return {2}
elseif kind == '1' then
  local lease, ttl = tonumber(ARGV[7]), tonumber(ARGV[8])
  redis.call('HSET', k, 'st', 1, 'fl', 0, 's', 0, 'h', '', 'b', '', 'ow', ARGV[6], 'ra', now,
             'lu', now + lease, 'ea', now + ttl, 'co', '', 'cu', 0, 'w', 0)
  redis.call('PEXPIREAT', k, now + ttl)
else
  redis.call('HSET', k, 'co', '', 'cu', 0)
end
return reply(0, true)
)LUA";

int64_t integer(const redisReply* r) {
  return r->type == REDIS_REPLY_INTEGER ? static_cast<int64_t>(r->integer) : -1;
}

std::string_view text(const redisReply* r) {
  if (r->type != REDIS_REPLY_STRING) return {};
  return {r->str, r->len};
}

// Fills `out` from the field values; false when one is missing or malformed.
bool fill(const std::map<std::string_view, const redisReply*>& f, Record& out) {
  auto get = [&](const char* name) -> const redisReply* {
    auto it = f.find(name);
    return it == f.end() ? nullptr : it->second;
  };
  for (const char* name :
       {"st", "fl", "ra", "lu", "ea", "ow", "fp", "rt", "k", "sc", "s", "h", "b"}) {
    if (get(name) == nullptr) return false;
  }
  auto num = [&](const char* name, int64_t& v) {
    const redisReply* r = get(name);
    if (r->type == REDIS_REPLY_INTEGER) {
      v = static_cast<int64_t>(r->integer);
      return true;
    }
    if (r->type != REDIS_REPLY_STRING || r->len == 0) return false;
    char* end = nullptr;
    const std::string s(r->str, r->len);
    v = std::strtoll(s.c_str(), &end, 10);
    return end != nullptr && *end == '\0';
  };
  int64_t st = 0, fl = 0, status = 0;
  if (!num("st", st) || !num("fl", fl) || !num("ra", out.reserved_at_ms) ||
      !num("lu", out.lease_until_ms) || !num("ea", out.expires_at_ms) || !num("s", status)) {
    return false;
  }
  if (st != 1 && st != 2) return false;
  out.state = static_cast<RecordState>(st);
  out.flags = static_cast<uint32_t>(fl);
  out.answer.status = static_cast<int>(status);
  out.owner = std::string(text(get("ow")));
  const std::string_view fp = text(get("fp"));
  if (fp.size() != out.fingerprint.size()) return false;
  std::memcpy(out.fingerprint.data(), fp.data(), fp.size());
  out.route = std::string(text(get("rt")));
  out.key = std::string(text(get("k")));
  out.answer.body = std::string(text(get("b")));
  // Reconcile fields; a record written before they existed has none.
  out.lookup.clear();
  out.claim_owner.clear();
  out.claim_until_ms = 0;
  if (const redisReply* lk = get("lk"); lk != nullptr && !decodeStringList(text(lk), out.lookup)) {
    return false;
  }
  if (const redisReply* co = get("co"); co != nullptr) out.claim_owner = std::string(text(co));
  if (const redisReply* cu = get("cu");
      cu != nullptr && cu->type != REDIS_REPLY_NIL && !num("cu", out.claim_until_ms)) {
    return false;
  }
  return decodeStringList(text(get("sc")), out.scope) &&
         decodeHeaderList(text(get("h")), out.answer.headers);
}

}  // namespace

const Script& reserveScript() {
  static const Script s = make("reserve", std::string(kCommon) + kReserve);
  return s;
}
const Script& recordScript() {
  static const Script s = make("record", std::string(kCommon) + kRecord);
  return s;
}
const Script& releaseScript() {
  static const Script s = make("release", std::string(kCommon) + kRelease);
  return s;
}
const Script& forgetScript() {
  static const Script s = make("forget", std::string(kCommon) + kForget);
  return s;
}

const Script& claimReconcileScript() {
  static const Script s = make("claim_reconcile", std::string(kCommon) + kClaimReconcile);
  return s;
}
const Script& settleReconcileScript() {
  static const Script s = make("settle_reconcile", std::string(kCommon) + kSettleReconcile);
  return s;
}

const Script& probeScript() {
  static const Script s = make("probe", "#!lua\nreturn 1\n");
  return s;
}

std::string hexId(const RecordId& id) {
  return toHex(id);
}

bool parseHexId(std::string_view hex, RecordId& out) {
  if (hex.size() != out.size() * 2) return false;
  auto nibble = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  for (size_t i = 0; i < out.size(); ++i) {
    const int hi = nibble(hex[2 * i]), lo = nibble(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

std::string recordKey(std::string_view prefix, const RecordId& id) {
  std::string k(prefix);
  k += '{';
  k += hexId(id);
  k += '}';
  return k;
}

std::string wakeChannel(std::string_view prefix) {
  return std::string(prefix) + "wake";
}

bool readScriptRecord(const redisReply* r, int64_t& result, Record& out) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements < 1) return false;
  result = integer(r->element[0]);
  if (r->elements != 17) return false;
  static constexpr const char* kFields[] = {"st", "fl", "ra", "lu", "ea", "ow", "fp", "rt",
                                            "k",  "sc", "s",  "h",  "b",  "lk", "co", "cu"};
  std::map<std::string_view, const redisReply*> f;
  for (size_t i = 0; i < 16; ++i) f[kFields[i]] = r->element[i + 1];
  return fill(f, out);
}

bool readHash(const redisReply* r, Record& out) {
  if (r->type != REDIS_REPLY_ARRAY || r->elements == 0 || r->elements % 2 != 0) return false;
  std::map<std::string_view, const redisReply*> f;
  for (size_t i = 0; i < r->elements; i += 2) {
    if (r->element[i]->type != REDIS_REPLY_STRING) return false;
    f[text(r->element[i])] = r->element[i + 1];
  }
  return fill(f, out);
}

}  // namespace idem::redis
