#pragma once
// The PostgreSQL store's schema, statements and row format (docs/operations.md shows the SQL).
// Knows libpq, nothing of threads or event loops.
#include <libpq-fe.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "store/record.h"

namespace idem::pg {

constexpr int kSchemaVersion = 1;

// Creates the schema if absent (under an advisory lock, so that proxies starting together do
// not race), or checks the version of the one there. Blocking; for start-up only.
[[nodiscard]] bool ensureSchema(PGconn* conn, std::string& error);

// Wake-ups across processes (LISTEN/NOTIFY), kept apart from the schema above: triggers on
// idemproxy_records NOTIFY the channel wakeupChannel() names with the hex id of an in-flight
// record that settled (recorded, or deleted: released, forgotten, swept), inside the
// transaction that settled it, so a listener hears of it only after the commit. Creates the
// trigger function and triggers when absent (the caller holds the schema lock and a
// transaction). Blocking; for start-up only.
[[nodiscard]] bool ensureWakeups(PGconn* conn, std::string& error);
// The channel of the records table the connection's search_path resolves to:
// "idemproxy:<its schema>", so proxies on different schemas of one database do not hear each
// other. Blocking.
[[nodiscard]] bool wakeupChannel(PGconn* conn, std::string& channel, std::string& error);

// The connection string with any password replaced by "***", for logs and `check`.
std::string maskConninfo(const std::string& conninfo);

// Statements (binary parameters and results). Every one is a single statement: a function call
// or a DELETE, atomic on the server; the owner is checked in the same statement.
extern const char* const kReserveSql;  // → o_result, then the record columns
extern const char* const kRecordSql;   // → o_result, then the record columns; no row: missing
extern const char* const kReleaseSql;  // (id, owner) → rows deleted
extern const char* const kForgetSql;   // (id) → rows deleted
extern const char* const kSweepSql;    // (limit) → removed, records left, table bytes
extern const char* const kLookupSql;   // (id) → the record columns, when not expired
extern const char* const kListSql;     // → id, then the record columns
extern const char* const kCountSql;    // → records, table bytes
// (id, owner, backend pid of the connection the lost reserve was sent on) → rows deleted: ends
// that backend first (its statement may still commit), then releases by owner.
extern const char* const kReleaseLostSql;

// Values in PostgreSQL's binary wire format.
std::string int8Param(int64_t v);
std::string int4Param(int32_t v);
std::string boolParam(bool v);
// Scope values and header fields in a bytea: each a u32 little-endian length, then the bytes.
std::string encodeStrings(const std::vector<std::string>& values);
std::string encodeHeaders(const Headers& headers);

// Reads the 13 record columns starting at `col` of row `row` of a binary-format result.
[[nodiscard]] bool readRecord(const PGresult* res, int row, int col, Record& out);
int64_t readInt(const PGresult* res, int row, int col);  // int2, int4 or int8 by length
std::string_view readBytes(const PGresult* res, int row, int col);

// Parameter sets passed to PQsendQueryParams / PQexecParams (binary, explicit types).
struct Params {
  std::vector<Oid> types;
  std::vector<std::string> values;
  std::vector<const char*> pointers;
  std::vector<int> lengths;
  std::vector<int> formats;
  Params& add(Oid type, std::string value);
  void finish();  // fills pointers/lengths/formats; call after the last add()
  int count() const { return static_cast<int>(values.size()); }
};
inline constexpr Oid kBoolOid = 16;
inline constexpr Oid kByteaOid = 17;
inline constexpr Oid kInt8Oid = 20;
inline constexpr Oid kInt4Oid = 23;
inline constexpr Oid kTextOid = 25;

}  // namespace idem::pg
