#include "store/postgres/postgres_store.h"

#include <cstring>

#include "base/log.h"
#include "base/thread_name.h"
#include "store/postgres/postgres_impl.h"
#include "store/postgres/postgres_reconcile.h"

namespace idem {

using namespace pgio;

// ---------------------------------------------------------------------------------------------
// PostgresStore

std::unique_ptr<PostgresStore> openPostgresStore(const PostgresOptions& options,
                                                 std::string& error) {
  auto impl = std::make_unique<PostgresStore::Impl>(options);
  if (!impl->connectSync(error)) {
    if (!options.start_unreachable) return nullptr;
    impl->start();
    PostgresStore::Impl* raw = impl.get();
    raw->opener = std::thread([raw] {
      nameThisThread("idem-pg-open");
      raw->openInBackground();
    });
    return std::make_unique<PostgresStore>(std::move(impl));
  }
  if (!pg::ensureSchema(impl->sync.get(), error) ||
      !pg::ensureReconcileSchema(impl->sync.get(), error)) {
    error = "PostgreSQL store: " + error;
    return nullptr;
  }
  impl->findChannel();
  impl->schema_ready = true;
  impl->start();
  return std::make_unique<PostgresStore>(std::move(impl));
}

PostgresStore::PostgresStore(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

PostgresStore::~PostgresStore() = default;  // Impl completes what is queued, then disconnects

void PostgresStore::reserve(ReserveRequest req, std::function<void(ReserveResult)> done) {
  auto op = std::make_unique<Impl::ReserveOp>();
  op->sql = pg::kReserveWithLookupSql;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kByteaOid, idParam(req.fingerprint))
      .add(pg::kTextOid, req.owner)
      .add(pg::kTextOid, req.route)
      .add(pg::kTextOid, req.key)
      .add(pg::kByteaOid, pg::encodeStrings(req.scope))
      .add(pg::kInt8Oid, pg::int8Param(req.ttl_ms))
      .add(pg::kInt8Oid, pg::int8Param(req.lease_ms))
      .add(pg::kBoolOid, pg::boolParam(req.retry_abandoned))
      .add(pg::kInt4Oid, pg::int4Param(req.abandoned_answer.status))
      .add(pg::kByteaOid, pg::encodeHeaders(req.abandoned_answer.headers))
      .add(pg::kByteaOid, req.abandoned_answer.body)
      .add(pg::kByteaOid, pg::encodeStrings(req.lookup));
  op->req = std::move(req);
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::record(RecordRequest req, std::function<void(RecordResult)> done) {
  auto op = std::make_unique<Impl::RecordOp>();
  op->sql = pg::kRecordSql;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kTextOid, std::move(req.owner))
      .add(pg::kInt4Oid, pg::int4Param(static_cast<int32_t>(req.flags)))
      .add(pg::kInt4Oid, pg::int4Param(req.answer.status))
      .add(pg::kByteaOid, pg::encodeHeaders(req.answer.headers))
      .add(pg::kByteaOid, std::move(req.answer.body));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::release(RecordId id, std::string owner, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<Impl::DeleteOp>();
  op->sql = pg::kReleaseSql;
  op->params.add(pg::kByteaOid, idParam(id)).add(pg::kTextOid, std::move(owner));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::forget(RecordId id, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<Impl::DeleteOp>();
  op->sql = pg::kForgetSql;
  op->params.add(pg::kByteaOid, idParam(id));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::sweep(size_t limit, std::function<void(WriteResult)> done) {
  auto op = std::make_unique<Impl::SweepOp>(*impl_);
  op->sql = pg::kSweepSql;
  op->params.add(pg::kInt8Oid, pg::int8Param(static_cast<int64_t>(limit)));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) {
  auto op = std::make_unique<Impl::ParsedOp<ClaimResult>>();
  op->sql = pg::kClaimReconcileSql;
  op->parser = &pg::parseClaimResult;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kTextOid, std::move(req.claimer))
      .add(pg::kInt8Oid, pg::int8Param(req.lease_ms));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

void PostgresStore::settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) {
  auto op = std::make_unique<Impl::ParsedOp<SettleResult>>();
  op->sql = pg::kSettleReconcileSql;
  op->parser = &pg::parseSettleResult;
  const int32_t kind = req.kind == SettleKind::Found ? 0 : req.kind == SettleKind::NotFound ? 1 : 2;
  op->params.add(pg::kByteaOid, idParam(req.id))
      .add(pg::kTextOid, std::move(req.claimer))
      .add(pg::kInt4Oid, pg::int4Param(kind))
      .add(pg::kInt4Oid, pg::int4Param(req.answer.status))
      .add(pg::kByteaOid, pg::encodeHeaders(req.answer.headers))
      .add(pg::kByteaOid, std::move(req.answer.body))
      .add(pg::kTextOid, std::move(req.owner))
      .add(pg::kInt8Oid, pg::int8Param(req.lease_ms))
      .add(pg::kInt8Oid, pg::int8Param(req.ttl_ms));
  op->done = std::move(done);
  impl_->submit(std::move(op));
}

bool PostgresStore::ready() const {
  // Ready from the start while the pool's first connections are being made; not ready once no
  // connection is up and the last attempt failed.
  return impl_->schema_ready.load() && !impl_->unreachable.load();
}

bool PostgresStore::notifies() const {
  return impl_->listening.load();
}

uint64_t PostgresStore::watch(const RecordId& id, uint64_t since, std::function<void()> wake) {
  return impl_->watch(id, since, std::move(wake));
}

void PostgresStore::unwatch(const RecordId& id, uint64_t handle) {
  impl_->unwatch(id, handle);
}

uint64_t PostgresStore::notificationsHeard() const {
  return impl_->notifications.load();
}

size_t PostgresStore::pendingReleases() const {
  return impl_->lost_count.load();
}

namespace {

// Runs a read on the blocking connection, reconnecting once if it broke. nullptr on failure.
ResultPtr syncQuery(PGconn* conn, const char* sql, pg::Params params) {
  params.finish();
  for (int attempt = 0; attempt < 2; ++attempt) {
    ResultPtr res(PQexecParams(conn, sql, params.count(), params.types.data(),
                               params.pointers.data(), params.lengths.data(), params.formats.data(),
                               1));
    if (res && PQresultStatus(res.get()) == PGRES_TUPLES_OK) return res;
    if (PQstatus(conn) != CONNECTION_BAD) {
      log::error("store-statement-failed", {{"error", lastError(conn)}});
      return nullptr;
    }
    PQreset(conn);
  }
  log::error("store-statement-failed", {{"error", lastError(conn)}});
  return nullptr;
}

}  // namespace

std::optional<Record> PostgresStore::lookup(const RecordId& id) {
  std::lock_guard lock(impl_->sync_mu);
  pg::Params p;
  p.add(pg::kByteaOid, idParam(id));
  ResultPtr res = syncQuery(impl_->sync.get(), pg::kLookupSql, std::move(p));
  Record rec;
  if (!res || PQntuples(res.get()) != 1 || !pg::readRecord(res.get(), 0, 0, rec)) {
    return std::nullopt;
  }
  return rec;
}

bool PostgresStore::visit(const RecordId& id, FunctionRef<void(const RecordView&)> fn) {
  std::optional<Record> rec = lookup(id);
  if (!rec) return false;
  const std::string bytes = encodeRecord(*rec);
  RecordView view;
  if (decodeRecordView(bytes, view) != DecodeError::None) return false;
  fn(view);
  return true;
}

std::vector<std::pair<RecordId, Record>> PostgresStore::list() {
  std::vector<std::pair<RecordId, Record>> out;
  std::lock_guard lock(impl_->sync_mu);
  ResultPtr res = syncQuery(impl_->sync.get(), pg::kListSql, pg::Params{});
  if (!res) return out;
  for (int row = 0; row < PQntuples(res.get()); ++row) {
    const std::string_view idBytes = pg::readBytes(res.get(), row, 0);
    Record rec;
    RecordId id{};
    if (idBytes.size() != id.size() || !pg::readRecord(res.get(), row, 1, rec)) continue;
    std::memcpy(id.data(), idBytes.data(), id.size());
    out.emplace_back(id, std::move(rec));
  }
  return out;
}

StoreStats PostgresStore::stats() {
  // Refresh the count for the next call (at most every 200 ms; never waiting for it here).
  const auto now = Steady::now().time_since_epoch().count();
  auto last = impl_->counted_at.load();
  if (now - last >=
          std::chrono::duration_cast<Steady::duration>(std::chrono::milliseconds(200)).count() &&
      impl_->counted_at.compare_exchange_strong(last, now) && impl_->schema_ready.load()) {
    auto op = std::make_unique<Impl::CountOp>(*impl_);
    op->sql = pg::kCountSql;
    op->internal = true;
    impl_->submit(std::move(op));
  }
  StoreStats s;
  s.records = impl_->records.load();
  s.bytes_used = impl_->bytes.load();
  s.operations = impl_->operations.load();
  s.commits = s.operations;  // every operation is its own transaction
  return s;
}

void PostgresStore::flush() {
  if (std::this_thread::get_id() == impl_->io_id.load()) return;
  std::unique_lock lock(impl_->mu);
  impl_->cv.wait(lock, [this] { return impl_->outstanding == 0; });
}

void PostgresStore::setCommitObserver(CommitObserver observer) {
  std::lock_guard lock(impl_->observer_mu);
  impl_->observer = std::move(observer);
}

}  // namespace idem
