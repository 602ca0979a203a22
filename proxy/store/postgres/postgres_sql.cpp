#include "store/postgres/postgres_sql.h"

#include <arpa/inet.h>

#include <cstring>
#include <memory>

// Layout (one table; docs/operations.md has the same SQL for operators who create it by hand):
// every field a statement must check or change atomically is a column (state, flags, owner,
// fingerprint, times); scope values and header fields, which are arbitrary bytes that need not
// be valid text, are length-prefixed lists in bytea; the body is bytea. Times are milliseconds
// since the epoch on the database's clock (clock_timestamp()), so hosts with skewed clocks agree
// on leases and expiry. Columns rather than one encodeRecord() blob: the server itself must
// classify, take over and complete records in one statement, and a blob would have to be
// decoded there (or the state duplicated beside it, and then the two could disagree).

namespace idem::pg {

namespace {

constexpr const char* kSchemaSql = R"SQL(
CREATE TABLE IF NOT EXISTS idemproxy_schema_version (version integer NOT NULL);
CREATE TABLE IF NOT EXISTS idemproxy_records (
  id bytea PRIMARY KEY,
  state smallint NOT NULL,
  flags integer NOT NULL DEFAULT 0,
  reserved_at bigint NOT NULL,
  lease_until bigint NOT NULL,
  expires_at bigint NOT NULL,
  owner text NOT NULL,
  fingerprint bytea NOT NULL,
  route text NOT NULL,
  key text NOT NULL,
  scope bytea NOT NULL,
  status integer NOT NULL DEFAULT 0,
  headers bytea NOT NULL DEFAULT '',
  body bytea NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS idemproxy_records_expires_at ON idemproxy_records (expires_at);
CREATE OR REPLACE FUNCTION idemproxy_now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
  $$ SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;
CREATE OR REPLACE FUNCTION idemproxy_reserve(
    p_id bytea, p_fingerprint bytea, p_owner text, p_route text, p_key text, p_scope bytea,
    p_ttl bigint, p_lease bigint, p_retry boolean,
    p_status integer, p_headers bytea, p_body bytea)
  RETURNS TABLE (o_result integer, o_state smallint, o_flags integer, o_reserved_at bigint,
                 o_lease_until bigint, o_expires_at bigint, o_owner text, o_fingerprint bytea,
                 o_route text, o_key text, o_scope bytea, o_status integer, o_headers bytea,
                 o_body bytea)
  LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := idemproxy_now_ms();
  v_result integer;
  r idemproxy_records%ROWTYPE;
BEGIN
  LOOP
    INSERT INTO idemproxy_records AS t
        (id, state, flags, reserved_at, lease_until, expires_at, owner, fingerprint, route, key,
         scope)
      VALUES (p_id, 1, 0, v_now, v_now + p_lease, v_now + p_ttl, p_owner, p_fingerprint, p_route,
              p_key, p_scope)
      ON CONFLICT (id) DO NOTHING
      RETURNING t.* INTO r;
    IF FOUND THEN
      v_result := 0;
      EXIT;
    END IF;
    SELECT t.* INTO r FROM idemproxy_records t WHERE t.id = p_id FOR UPDATE;
    IF FOUND THEN
      IF v_now >= r.expires_at THEN
        UPDATE idemproxy_records t
          SET state = 1, flags = 0, reserved_at = v_now, lease_until = v_now + p_lease,
              expires_at = v_now + p_ttl, owner = p_owner, fingerprint = p_fingerprint,
              route = p_route, key = p_key, scope = p_scope, status = 0, headers = '', body = ''
          WHERE t.id = p_id RETURNING t.* INTO r;
        v_result := 0;
      ELSIF r.fingerprint <> p_fingerprint THEN
        v_result := 3;
      ELSIF r.state = 2 THEN
        v_result := 1;
      ELSIF v_now < r.lease_until THEN
        v_result := 2;
      ELSIF p_retry THEN
        UPDATE idemproxy_records t
          SET owner = p_owner, reserved_at = v_now, lease_until = v_now + p_lease,
              expires_at = v_now + p_ttl
          WHERE t.id = p_id RETURNING t.* INTO r;
        v_result := 0;
      ELSE
        UPDATE idemproxy_records t
          SET state = 2, flags = 3, status = p_status, headers = p_headers, body = p_body
          WHERE t.id = p_id RETURNING t.* INTO r;
        v_result := 1;
      END IF;
      EXIT;
    END IF;
    -- Deleted between the insert and the select: try again.
  END LOOP;
  RETURN QUERY SELECT v_result, r.state, r.flags, r.reserved_at, r.lease_until, r.expires_at,
    r.owner, r.fingerprint, r.route, r.key, r.scope, r.status,
    CASE WHEN v_result = 1 THEN r.headers ELSE ''::bytea END,
    CASE WHEN v_result = 1 THEN r.body ELSE ''::bytea END;
END
$$;
CREATE OR REPLACE FUNCTION idemproxy_record(
    p_id bytea, p_owner text, p_flags integer, p_status integer, p_headers bytea, p_body bytea)
  RETURNS TABLE (o_result integer, o_state smallint, o_flags integer, o_reserved_at bigint,
                 o_lease_until bigint, o_expires_at bigint, o_owner text, o_fingerprint bytea,
                 o_route text, o_key text, o_scope bytea, o_status integer, o_headers bytea,
                 o_body bytea)
  LANGUAGE plpgsql AS $$
BEGIN
  RETURN QUERY UPDATE idemproxy_records t
    SET state = 2, flags = p_flags, status = p_status, headers = p_headers, body = p_body
    WHERE t.id = p_id AND t.owner = p_owner AND (t.state = 1 OR (t.flags & 2) <> 0)
    RETURNING 0, t.state, t.flags, t.reserved_at, t.lease_until, t.expires_at, t.owner,
      t.fingerprint, t.route, t.key, t.scope, t.status, t.headers, t.body;
  IF FOUND THEN
    RETURN;
  END IF;
  RETURN QUERY SELECT 1, t.state, t.flags, t.reserved_at, t.lease_until, t.expires_at, t.owner,
      t.fingerprint, t.route, t.key, t.scope, t.status, t.headers, t.body
    FROM idemproxy_records t WHERE t.id = p_id;
END
$$;
)SQL";

#define RECORD_COLUMNS                                                                     \
  "t.state, t.flags, t.reserved_at, t.lease_until, t.expires_at, t.owner, t.fingerprint, " \
  "t.route, t.key, t.scope, t.status, t.headers, t.body"

}  // namespace

const char* const kReserveSql =
    "SELECT * FROM idemproxy_reserve($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
const char* const kRecordSql = "SELECT * FROM idemproxy_record($1, $2, $3, $4, $5, $6)";
const char* const kReleaseSql =
    "DELETE FROM idemproxy_records WHERE id = $1 AND owner = $2 AND state = 1";
const char* const kForgetSql = "DELETE FROM idemproxy_records WHERE id = $1";
const char* const kSweepSql =
    "WITH due AS (SELECT id FROM idemproxy_records WHERE expires_at <= idemproxy_now_ms() "
    "ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED), "
    "gone AS (DELETE FROM idemproxy_records t USING due WHERE t.id = due.id RETURNING 1) "
    "SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM idemproxy_records), "
    "pg_total_relation_size('idemproxy_records')";
const char* const kLookupSql = "SELECT " RECORD_COLUMNS
                               " FROM idemproxy_records t WHERE t.id = $1 AND "
                               "t.expires_at > idemproxy_now_ms()";
const char* const kCountSql =
    "SELECT count(*), pg_total_relation_size('idemproxy_records') FROM idemproxy_records";
const char* const kListSql =
    "SELECT t.id, " RECORD_COLUMNS " FROM idemproxy_records t ORDER BY t.id";

namespace {

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

bool exec(PGconn* conn, const char* sql, ExecStatusType want, std::string& error,
          ResultPtr* out = nullptr) {
  ResultPtr res(PQexec(conn, sql));
  if (!res || PQresultStatus(res.get()) != want) {
    error = PQerrorMessage(conn);
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
    return false;
  }
  if (out != nullptr) *out = std::move(res);
  return true;
}

}  // namespace

bool ensureSchema(PGconn* conn, std::string& error) {
  std::string err;
  ResultPtr res;
  // A fixed advisory lock key ("idemprox" in ASCII): held until the transaction ends.
  if (!exec(conn, "BEGIN", PGRES_COMMAND_OK, err) ||
      !exec(conn, "SELECT pg_advisory_xact_lock(7594301830220914808)", PGRES_TUPLES_OK, err) ||
      !exec(conn, "SELECT to_regclass('idemproxy_schema_version') IS NOT NULL", PGRES_TUPLES_OK,
            err, &res)) {
    error = "cannot check the schema: " + err;
    return false;
  }
  const bool exists = std::strcmp(PQgetvalue(res.get(), 0, 0), "t") == 0;
  if (exists) {
    if (!exec(conn, "SELECT coalesce(max(version), 0) FROM idemproxy_schema_version",
              PGRES_TUPLES_OK, err, &res)) {
      error = "cannot read the schema version: " + err;
      return false;
    }
    const int version = std::atoi(PQgetvalue(res.get(), 0, 0));
    if (version != kSchemaVersion) {
      exec(conn, "ROLLBACK", PGRES_COMMAND_OK, err);
      error = "the database holds idemproxy schema version " + std::to_string(version) +
              "; this idemproxy knows version " + std::to_string(kSchemaVersion) +
              " only (refusing to use it)";
      return false;
    }
    if (!ensureWakeups(conn, error)) return false;
    return exec(conn, "COMMIT", PGRES_COMMAND_OK, error);
  }
  if (!exec(conn, kSchemaSql, PGRES_COMMAND_OK, err) ||
      !exec(conn,
            ("INSERT INTO idemproxy_schema_version VALUES (" + std::to_string(kSchemaVersion) + ")")
                .c_str(),
            PGRES_COMMAND_OK, err)) {
    error = "cannot create the schema: " + err;
    return false;
  }
  if (!ensureWakeups(conn, error)) return false;
  if (!exec(conn, "COMMIT", PGRES_COMMAND_OK, err)) {
    error = "cannot create the schema: " + err;
    return false;
  }
  return true;
}

std::string maskConninfo(const std::string& conninfo) {
  char* errmsg = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &errmsg);
  if (opts == nullptr) {
    if (errmsg != nullptr) PQfreemem(errmsg);
    return "(unparseable connection string)";
  }
  std::string out;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val == nullptr) continue;
    if (!out.empty()) out += ' ';
    out += o->keyword;
    out += '=';
    out += std::strcmp(o->keyword, "password") == 0 ? "***" : o->val;
  }
  PQconninfoFree(opts);
  return out;
}

std::string int8Param(int64_t v) {
  std::string s(8, '\0');
  const auto u = static_cast<uint64_t>(v);
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>(u >> (56 - 8 * i));
  return s;
}

std::string int4Param(int32_t v) {
  std::string s(4, '\0');
  const auto u = static_cast<uint32_t>(v);
  for (int i = 0; i < 4; ++i) s[static_cast<size_t>(i)] = static_cast<char>(u >> (24 - 8 * i));
  return s;
}

std::string boolParam(bool v) {
  return std::string(1, v ? '\1' : '\0');
}

std::string encodeStrings(const std::vector<std::string>& values) {
  return encodeStringList(values);
}

bool decodeStrings(std::string_view bytes, std::vector<std::string>& out) {
  return decodeStringList(bytes, out);
}

std::string encodeHeaders(const Headers& headers) {
  return encodeHeaderList(headers);
}

int64_t readInt(const PGresult* res, int row, int col) {
  const auto* p = reinterpret_cast<const unsigned char*>(PQgetvalue(res, row, col));
  const int len = PQgetlength(res, row, col);
  uint64_t u = 0;
  for (int i = 0; i < len; ++i) u = (u << 8) | p[i];
  if (len == 2) return static_cast<int16_t>(u);
  if (len == 4) return static_cast<int32_t>(u);
  return static_cast<int64_t>(u);
}

std::string_view readBytes(const PGresult* res, int row, int col) {
  return {PQgetvalue(res, row, col), static_cast<size_t>(PQgetlength(res, row, col))};
}

bool readRecord(const PGresult* res, int row, int col, Record& out) {
  if (PQnfields(res) < col + 13) return false;
  for (int i = 0; i < 13; ++i)
    if (PQgetisnull(res, row, col + i)) return false;
  const int64_t state = readInt(res, row, col);
  if (state != 1 && state != 2) return false;
  out.state = static_cast<RecordState>(state);
  out.flags = static_cast<uint32_t>(readInt(res, row, col + 1));
  out.reserved_at_ms = readInt(res, row, col + 2);
  out.lease_until_ms = readInt(res, row, col + 3);
  out.expires_at_ms = readInt(res, row, col + 4);
  out.owner = std::string(readBytes(res, row, col + 5));
  const std::string_view fpr = readBytes(res, row, col + 6);
  if (fpr.size() != out.fingerprint.size()) return false;
  std::memcpy(out.fingerprint.data(), fpr.data(), fpr.size());
  out.route = std::string(readBytes(res, row, col + 7));
  out.key = std::string(readBytes(res, row, col + 8));
  if (!decodeStringList(readBytes(res, row, col + 9), out.scope)) return false;
  out.answer.status = static_cast<int>(readInt(res, row, col + 10));
  std::vector<std::string> fields;
  if (!decodeStringList(readBytes(res, row, col + 11), fields) || fields.size() % 2 != 0)
    return false;
  out.answer.headers.clear();
  for (size_t i = 0; i < fields.size(); i += 2)
    out.answer.headers.push_back({std::move(fields[i]), std::move(fields[i + 1])});
  out.answer.body = std::string(readBytes(res, row, col + 12));
  return true;
}

Params& Params::add(Oid type, std::string value) {
  types.push_back(type);
  values.push_back(std::move(value));
  return *this;
}

void Params::finish() {
  pointers.clear();
  lengths.clear();
  formats.assign(values.size(), 1);
  for (const auto& v : values) {
    pointers.push_back(v.data());
    lengths.push_back(static_cast<int>(v.size()));
  }
}

}  // namespace idem::pg
