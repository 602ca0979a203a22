#include "store/postgres/postgres_reconcile.h"

#include "store/postgres/postgres_sql.h"

namespace idem::pg {

namespace {

// An uncertain outcome (Record::uncertain): completed, a proxy error, not response-not-replayable.
#define UNCERTAIN(r) "(" r ".state = 2 AND (" r ".flags & 1) <> 0 AND (" r ".flags & 4) = 0)"
#define OUT_COLUMNS                                                                              \
  "o_result integer, o_state smallint, o_flags integer, o_reserved_at bigint, "                  \
  "o_lease_until bigint, o_expires_at bigint, o_owner text, o_fingerprint bytea, o_route text, " \
  "o_key text, o_scope bytea, o_status integer, o_headers bytea, o_body bytea, o_lookup bytea, " \
  "o_claim_owner text, o_claim_until bigint"
#define ROW_COLUMNS(r)                                                                             \
  r ".state, " r ".flags, " r ".reserved_at, " r ".lease_until, " r ".expires_at, " r ".owner, " r \
    ".fingerprint, " r ".route, " r ".key, " r ".scope, " r ".status, " r ".headers, " r           \
    ".body, " r ".lookup, " r ".claim_owner, " r ".claim_until"

constexpr const char* kReconcileSchemaSql =
    "ALTER TABLE idemproxy_records ADD COLUMN IF NOT EXISTS lookup bytea NOT NULL DEFAULT '';\n"
    "ALTER TABLE idemproxy_records ADD COLUMN IF NOT EXISTS claim_owner text NOT NULL DEFAULT "
    "'';\n"
    "ALTER TABLE idemproxy_records ADD COLUMN IF NOT EXISTS claim_until bigint NOT NULL DEFAULT "
    "0;\n"
    // A won reservation keeps the request's lookup values; a record reused after expiry or
    // taken over drops the claim of the record it replaces.
    "CREATE OR REPLACE FUNCTION idemproxy_reserve_with_lookup(\n"
    "    p_id bytea, p_fingerprint bytea, p_owner text, p_route text, p_key text, p_scope bytea,\n"
    "    p_ttl bigint, p_lease bigint, p_retry boolean,\n"
    "    p_status integer, p_headers bytea, p_body bytea, p_lookup bytea)\n"
    "  RETURNS TABLE (" OUT_COLUMNS ") LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "  v record;\n"
    "  r idemproxy_records%ROWTYPE;\n"
    "BEGIN\n"
    "  SELECT * INTO v FROM idemproxy_reserve(p_id, p_fingerprint, p_owner, p_route, p_key,\n"
    "    p_scope, p_ttl, p_lease, p_retry, p_status, p_headers, p_body);\n"
    "  IF v.o_result = 0 THEN\n"
    "    UPDATE idemproxy_records t SET lookup = p_lookup, claim_owner = '', claim_until = 0\n"
    "      WHERE t.id = p_id AND (t.lookup <> p_lookup OR t.claim_owner <> '');\n"
    "  END IF;\n"
    "  SELECT t.* INTO r FROM idemproxy_records t WHERE t.id = p_id;\n"
    "  RETURN QUERY SELECT v.o_result, v.o_state, v.o_flags, v.o_reserved_at, v.o_lease_until,\n"
    "    v.o_expires_at, v.o_owner, v.o_fingerprint, v.o_route, v.o_key, v.o_scope, v.o_status,\n"
    "    v.o_headers, v.o_body, coalesce(r.lookup, ''::bytea), coalesce(r.claim_owner, ''),\n"
    "    coalesce(r.claim_until, 0::bigint);\n"
    "END\n"
    "$$;\n"
    "CREATE OR REPLACE FUNCTION idemproxy_claim_reconcile(p_id bytea, p_claimer text,\n"
    "    p_lease bigint)\n"
    "  RETURNS TABLE (" OUT_COLUMNS ") LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "  v_now bigint := idemproxy_now_ms();\n"
    "  v_result integer;\n"
    "  r idemproxy_records%ROWTYPE;\n"
    "BEGIN\n"
    "  SELECT t.* INTO r FROM idemproxy_records t WHERE t.id = p_id FOR UPDATE;\n"
    "  IF NOT FOUND OR v_now >= r.expires_at THEN\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  IF NOT " UNCERTAIN("r") " THEN\n"
    "    v_result := 2;\n"
    "  ELSIF r.claim_owner <> '' AND v_now < r.claim_until THEN\n"
    "    v_result := 1;\n"
    "  ELSE\n"
    "    UPDATE idemproxy_records t SET claim_owner = p_claimer, claim_until = v_now + p_lease\n"
    "      WHERE t.id = p_id RETURNING t.* INTO r;\n"
    "    v_result := 0;\n"
    "  END IF;\n"
    "  RETURN QUERY SELECT v_result, " ROW_COLUMNS("r") ";\n"
    "END\n"
    "$$;\n"
    "CREATE OR REPLACE FUNCTION idemproxy_settle_reconcile(p_id bytea, p_claimer text,\n"
    "    p_kind integer, p_status integer, p_headers bytea, p_body bytea, p_owner text,\n"
    "    p_lease bigint, p_ttl bigint)\n"
    "  RETURNS TABLE (" OUT_COLUMNS ") LANGUAGE plpgsql AS $$\n"
    "DECLARE\n"
    "  v_now bigint := idemproxy_now_ms();\n"
    "  r idemproxy_records%ROWTYPE;\n"
    "BEGIN\n"
    "  SELECT t.* INTO r FROM idemproxy_records t WHERE t.id = p_id FOR UPDATE;\n"
    "  IF NOT FOUND OR v_now >= r.expires_at THEN\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  IF NOT " UNCERTAIN("r") " OR r.claim_owner <> p_claimer THEN\n"
    "    RETURN QUERY SELECT 1, " ROW_COLUMNS("r") ";\n"
    "    RETURN;\n"
    "  END IF;\n"
    "  IF p_kind = 0 THEN\n"
    "    UPDATE idemproxy_records t SET flags = 0, status = p_status, headers = p_headers,\n"
    "        body = p_body, claim_owner = '', claim_until = 0\n"
    "      WHERE t.id = p_id RETURNING t.* INTO r;\n"
    "  ELSIF p_kind = 1 AND p_owner = '' THEN\n"
    "    DELETE FROM idemproxy_records t WHERE t.id = p_id;\n"
    "    RETURN QUERY SELECT 2, " ROW_COLUMNS("r") ";\n"
    "    RETURN;\n"
    "  ELSIF p_kind = 1 THEN\n"
    "    UPDATE idemproxy_records t SET state = 1, flags = 0, status = 0, headers = '', body = '',\n"
    "        owner = p_owner, reserved_at = v_now, lease_until = v_now + p_lease,\n"
    "        expires_at = v_now + p_ttl, claim_owner = '', claim_until = 0\n"
    "      WHERE t.id = p_id RETURNING t.* INTO r;\n"
    "  ELSE\n"
    "    UPDATE idemproxy_records t SET claim_owner = '', claim_until = 0\n"
    "      WHERE t.id = p_id RETURNING t.* INTO r;\n"
    "  END IF;\n"
    "  RETURN QUERY SELECT 0, " ROW_COLUMNS("r") ";\n"
    "END\n"
    "$$;\n";

bool run(PGconn* conn, const char* sql, std::string& error) {
  PGresult* res = PQexec(conn, sql);
  const bool ok = res != nullptr && (PQresultStatus(res) == PGRES_COMMAND_OK ||
                                     PQresultStatus(res) == PGRES_TUPLES_OK);
  if (!ok) {
    error = PQerrorMessage(conn);
    while (!error.empty() && (error.back() == '\n' || error.back() == ' ')) error.pop_back();
  }
  PQclear(res);
  return ok;
}

bool parseList(std::string_view in, std::vector<std::string>& out) {
  return decodeStrings(in, out) && out.size() % 2 == 0;  // pairs
}

}  // namespace

const char* const kReserveWithLookupSql =
    "SELECT * FROM idemproxy_reserve_with_lookup($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, "
    "$12, $13)";
const char* const kClaimReconcileSql = "SELECT * FROM idemproxy_claim_reconcile($1, $2, $3)";
const char* const kSettleReconcileSql =
    "SELECT * FROM idemproxy_settle_reconcile($1, $2, $3, $4, $5, $6, $7, $8, $9)";

bool ensureReconcileSchema(PGconn* conn, std::string& error) {
  // The same advisory lock as ensureSchema: proxies starting together do not race.
  std::string err;
  if (!run(conn, "BEGIN", err) ||
      !run(conn, "SELECT pg_advisory_xact_lock(7594301830220914808)", err) ||
      !run(conn, kReconcileSchemaSql, err) || !run(conn, "COMMIT", err)) {
    run(conn, "ROLLBACK", err);
    error = "cannot add the reconcile columns and functions: " + err;
    return false;
  }
  return true;
}

bool readReconcileColumns(const PGresult* res, int row, int col, Record& out) {
  if (PQnfields(res) < col + 3) return false;
  for (int i = 0; i < 3; ++i)
    if (PQgetisnull(res, row, col + i)) return false;
  if (!parseList(readBytes(res, row, col), out.lookup)) return false;
  out.claim_owner = std::string(readBytes(res, row, col + 1));
  out.claim_until_ms = readInt(res, row, col + 2);
  return true;
}

bool parseClaimResult(const PGresult* res, ClaimResult& out) {
  if (PQntuples(res) == 0) {
    out.status = ClaimStatus::Missing;
    return true;
  }
  const int64_t r = readInt(res, 0, 0);
  if (r < 0 || r > 2) return false;
  static constexpr ClaimStatus kStatus[] = {ClaimStatus::Claimed, ClaimStatus::Busy,
                                            ClaimStatus::NotUncertain};
  out.status = kStatus[r];
  return readRecord(res, 0, 1, out.record) && readReconcileColumns(res, 0, 14, out.record);
}

bool parseSettleResult(const PGresult* res, SettleResult& out) {
  if (PQntuples(res) == 0) {
    out.status = SettleStatus::Lost;
    out.exists = false;
    return true;
  }
  const int64_t r = readInt(res, 0, 0);
  if (r < 0 || r > 2) return false;
  out.status = r == 1 ? SettleStatus::Lost : SettleStatus::Settled;
  out.exists = r != 2;
  if (!out.exists) return true;
  return readRecord(res, 0, 1, out.record) && readReconcileColumns(res, 0, 14, out.record);
}

}  // namespace idem::pg
