// Objects beyond the records table and its reserve/record functions (postgres_sql.cpp), each
// created when absent inside the schema transaction, so that a database whose schema an earlier
// build of version 1 created gains them on the next start:
//   - wake-ups: triggers NOTIFY "idemproxy:<schema>" with the hex id of an in-flight record that
//     settled (recorded, or deleted: released, forgotten, swept) in the settling transaction;
//     PostgreSQL delivers a notification only after that transaction commits;
//   - idemproxy_release_lost(): the release of a reservation whose reserve's answer was lost.
// docs/operations.md shows the same SQL.
#include <cstring>
#include <memory>

#include "store/postgres/postgres_sql.h"

namespace idem::pg {

namespace {

struct Extra {
  const char* probe;  // a query answering one row, true when the object exists
  const char* sql;    // creates it
};

constexpr Extra kExtras[] = {
    {"SELECT to_regprocedure('idemproxy_notify_settled()') IS NOT NULL",
     R"SQL(
CREATE OR REPLACE FUNCTION idemproxy_notify_settled() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('idemproxy:' || left(TG_TABLE_SCHEMA, 50), encode(OLD.id, 'hex'));
  RETURN NULL;
END
$$;
)SQL"},
    {"SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'idemproxy_records'::regclass "
     "AND tgname = 'idemproxy_records_recorded')",
     R"SQL(
CREATE TRIGGER idemproxy_records_recorded AFTER UPDATE ON idemproxy_records
  FOR EACH ROW WHEN (OLD.state = 1 AND NEW.state = 2)
  EXECUTE PROCEDURE idemproxy_notify_settled();
)SQL"},
    {"SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = 'idemproxy_records'::regclass "
     "AND tgname = 'idemproxy_records_deleted')",
     R"SQL(
CREATE TRIGGER idemproxy_records_deleted AFTER DELETE ON idemproxy_records
  FOR EACH ROW WHEN (OLD.state = 1)
  EXECUTE PROCEDURE idemproxy_notify_settled();
)SQL"},
    // The connection the lost reserve went out on was closed, but its backend may still be
    // running the reserve (waiting for a lock, or not yet aware that the client left) and commit
    // it after a plain release. So: end that backend and wait until it is gone (bounded by
    // p_wait_ms; past it, fail, and the proxy tries again), then release by owner.
    {"SELECT to_regprocedure('idemproxy_release_lost(bytea, text, integer, integer)') IS NOT NULL",
     R"SQL(
CREATE OR REPLACE FUNCTION idemproxy_release_lost(
    p_id bytea, p_owner text, p_pid integer, p_wait_ms integer)
  RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_until timestamptz := clock_timestamp() + p_wait_ms * interval '1 millisecond';
  v_n integer;
BEGIN
  IF p_pid <> 0 AND p_pid <> pg_backend_pid() THEN
    LOOP
      PERFORM pg_stat_clear_snapshot();
      EXIT WHEN NOT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE pid = p_pid AND usename = current_user);
      BEGIN
        PERFORM pg_terminate_backend(p_pid);
      EXCEPTION WHEN insufficient_privilege THEN
        EXIT;  -- not ours to end: release anyway (the lease bounds the rest)
      END;
      IF clock_timestamp() >= v_until THEN
        RAISE EXCEPTION 'idemproxy: backend % of a lost reserve has not ended yet', p_pid;
      END IF;
      PERFORM pg_sleep(0.005);
    END LOOP;
  END IF;
  DELETE FROM idemproxy_records WHERE id = p_id AND owner = p_owner AND state = 1;
  GET DIAGNOSTICS v_n = ROW_COUNT;
  RETURN v_n;
END
$$;
)SQL"},
};

struct ResultDeleter {
  void operator()(PGresult* r) const { PQclear(r); }
};
using ResultPtr = std::unique_ptr<PGresult, ResultDeleter>;

std::string errorOf(PGconn* conn) {
  std::string e = PQerrorMessage(conn);
  while (!e.empty() && (e.back() == '\n' || e.back() == ' ')) e.pop_back();
  return e;
}

}  // namespace

const char* const kReleaseLostSql = "SELECT idemproxy_release_lost($1, $2, $3, $4)";

bool ensureWakeups(PGconn* conn, std::string& error) {
  for (const Extra& e : kExtras) {
    ResultPtr probe(PQexec(conn, e.probe));
    if (!probe || PQresultStatus(probe.get()) != PGRES_TUPLES_OK || PQntuples(probe.get()) != 1) {
      error = "cannot check the schema's functions and triggers: " + errorOf(conn);
      return false;
    }
    if (std::strcmp(PQgetvalue(probe.get(), 0, 0), "t") == 0) continue;
    ResultPtr made(PQexec(conn, e.sql));
    if (!made || PQresultStatus(made.get()) != PGRES_COMMAND_OK) {
      error = "cannot create the schema's functions and triggers: " + errorOf(conn);
      return false;
    }
  }
  return true;
}

bool wakeupChannel(PGconn* conn, std::string& channel, std::string& error) {
  ResultPtr res(PQexec(conn,
                       "SELECT 'idemproxy:' || left(n.nspname, 50) FROM pg_class c "
                       "JOIN pg_namespace n ON n.oid = c.relnamespace "
                       "WHERE c.oid = 'idemproxy_records'::regclass"));
  if (!res || PQresultStatus(res.get()) != PGRES_TUPLES_OK || PQntuples(res.get()) != 1) {
    error = "cannot find the records table's schema: " + errorOf(conn);
    return false;
  }
  channel = PQgetvalue(res.get(), 0, 0);
  return true;
}

}  // namespace idem::pg
