#pragma once
// The PostgreSQL store's reconcile support (store.h, "Reconcile"; SPEC §1.6), kept apart from
// the base schema: three columns added to idemproxy_records (the record's lookup values and its
// lookup claim) and three functions, each one statement on the server that checks and writes
// atomically under the row lock. docs/operations.md ("Better than forgetting") names them.
#include <libpq-fe.h>

#include <string>

#include "store/store.h"

namespace idem::pg {

// Adds the reconcile columns and functions if absent (idempotent; after ensureSchema, under the
// same advisory lock). Blocking; for start-up only.
[[nodiscard]] bool ensureReconcileSchema(PGconn* conn, std::string& error);

// idemproxy_reserve with the record's lookup values ($13, a list as encodeStrings writes it):
// → o_result, the 13 record columns, then the 3 reconcile columns (readReconcileColumns).
extern const char* const kReserveWithLookupSql;
// (id, claimer, lease) → o_result (0 claimed, 1 busy, 2 not uncertain), the 13 record columns,
// the 3 reconcile columns; no row: missing or expired.
extern const char* const kClaimReconcileSql;
// (id, claimer, kind 0 found | 1 not found | 2 unsettled, status, headers, body, owner, lease,
// ttl) → o_result (0 settled, 1 lost, 2 settled by deleting the record), the 13 record columns,
// the 3 reconcile columns; no row: lost, the record missing or expired.
extern const char* const kSettleReconcileSql;

// Reads lookup (bytea list), claim_owner and claim_until at `col`.. of `row`.
[[nodiscard]] bool readReconcileColumns(const PGresult* res, int row, int col, Record& out);
[[nodiscard]] bool parseClaimResult(const PGresult* res, ClaimResult& out);
[[nodiscard]] bool parseSettleResult(const PGresult* res, SettleResult& out);

}  // namespace idem::pg
