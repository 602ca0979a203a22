#pragma once
// The Redis store's data layout and server-side scripts (docs/operations.md describes them).
// Knows hiredis's reply type, nothing of sockets or threads.
//
// One Redis hash per record, at <key_prefix>{<hex record id>}: the braces are a hash tag, so a
// record is one key in one slot and every script touches exactly that key (cluster-ready).
// Fields: v (layout version), st (1 in flight, 2 completed), fl (flags), ra/lu/ea (reserved-at,
// lease-until, expires-at: ms on the Redis server's clock), ow (owner), fp (fingerprint), rt,
// k, sc (route, key, scope values), s/h/b (status, header fields, body), w (how many waiters
// looked at it while in flight), lk (reconcile lookup values), co/cu (reconcile claim owner
// and until when, server ms). The key itself expires at ea (PEXPIREAT): no sweep.
#include <hiredis/hiredis.h>

#include <string>
#include <string_view>

#include "store/record.h"

namespace idem::redis {

struct Script {
  const char* name;
  std::string body;
  std::string sha1;  // hex, for EVALSHA
};

// reserve: KEYS[1] record; ARGV fp, owner, route, key, scope, ttl, lease, retry (0|1),
//   abandoned status, headers, body, wake channel, hex id, lookup values
//   → {result (0 won, 1 completed, 2 in flight, 3 mismatch), <record>}
// record: KEYS[1]; ARGV owner, flags, status, headers, body, channel, hex id
//   → {0 recorded | 1 already final, <record>}, or {2} when there is no record
// release: KEYS[1]; ARGV owner, channel, hex id → 1 released | 0
// forget: KEYS[1]; ARGV channel, hex id → 1 removed | 0
// claim_reconcile: KEYS[1]; ARGV claimer, lease
//   → {0 claimed | 1 busy | 2 not uncertain, <record>}, or {3} when missing or expired
// settle_reconcile: KEYS[1]; ARGV claimer, kind (0 found, 1 not found, 2 unsettled), status,
//   headers, body, owner, lease, ttl
//   → {0 settled | 1 lost, <record>}, {2} settled by deleting, {3} missing or expired
const Script& reserveScript();
const Script& recordScript();
const Script& releaseScript();
const Script& forgetScript();
const Script& claimReconcileScript();
const Script& settleReconcileScript();
// A write script that writes nothing: refused while Redis is out of memory (a probe).
const Script& probeScript();

std::string hexId(const RecordId& id);
[[nodiscard]] bool parseHexId(std::string_view hex, RecordId& out);
// <prefix>{<hex id>}
std::string recordKey(std::string_view prefix, const RecordId& id);
// The one channel completions are published on: <prefix>wake (the message is the hex id).
std::string wakeChannel(std::string_view prefix);

// Reads {result, st, fl, ra, lu, ea, ow, fp, rt, k, sc, s, h, b, lk, co, cu} (a script's answer):
// false when malformed.
[[nodiscard]] bool readScriptRecord(const redisReply* r, int64_t& result, Record& out);
// Reads an HGETALL answer (field, value, …): false when empty or malformed.
[[nodiscard]] bool readHash(const redisReply* r, Record& out);

}  // namespace idem::redis
