// `idemproxy run`: wires config, store, proxy workers, admin, signals and systemd together on
// the main thread's event loop (SPEC §6–7).
#include <event2/event.h>
#include <event2/thread.h>
#include <sys/resource.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <iterator>
#include <memory>

#include "base/bounds.h"
#include "base/log.h"
#include "cli/cli.h"
#include "config/redis_url.h"
#include "http/server.h"
#include "ops/admin.h"
#include "ops/lifecycle.h"
#include "ops/metrics.h"
#include "ops/telemetry.h"
#include "store/lmdb/lmdb_store.h"
#include "store/metered_store.h"
#include "store/postgres/postgres_sql.h"
#include "store/postgres/postgres_store.h"
#include "store/redis/redis_store.h"
#include "upstream/upstream.h"
#include "version.h"

namespace idem {

namespace {

void logConfigErrors(const ConfigResult& cr, std::string_view event) {
  for (const auto& e : cr.errors) log::error(event, {{"error", e.str()}});
}

// Settings that are bound at start; a reload reports them instead of silently ignoring them.
std::vector<std::string> restartOnlyChanges(const Config& a, const Config& b) {
  std::vector<std::string> out;
  if (a.server.listen.host != b.server.listen.host || a.server.listen.port != b.server.listen.port)
    out.push_back("server.listen");
  if (a.server.workers != b.server.workers) out.push_back("server.workers");
  if (a.server.client_timeout != b.server.client_timeout) out.push_back("server.client_timeout");
  if (a.server.max_request_body != b.server.max_request_body) {
    out.push_back("server.max_request_body");  // the HTTP layer's hard cap is set at start
  }
  if (a.store.path != b.store.path) out.push_back("store.path");
  if (a.store.max_size != b.store.max_size) out.push_back("store.max_size");
  if (a.store.durability != b.store.durability) out.push_back("store.durability");
  if (a.store.wal != b.store.wal) out.push_back("store.wal");
  if (a.store.wal_size != b.store.wal_size) out.push_back("store.wal_size");
  if (a.store.backend != b.store.backend) out.push_back("store.backend");
  if (a.store.postgres.url != b.store.postgres.url) out.push_back("store.postgres.url");
  if (a.store.postgres.connections != b.store.postgres.connections)
    out.push_back("store.postgres.connections");
  if (a.store.postgres.timeout != b.store.postgres.timeout) out.push_back("store.postgres.timeout");
  if (a.store.redis.url != b.store.redis.url) out.push_back("store.redis.url");
  if (a.store.redis.key_prefix != b.store.redis.key_prefix) out.push_back("store.redis.key_prefix");
  if (a.store.redis.timeout != b.store.redis.timeout) out.push_back("store.redis.timeout");
  if (a.store.redis.min_replicas != b.store.redis.min_replicas)
    out.push_back("store.redis.min_replicas");
  if (a.admin.has_value() != b.admin.has_value() ||
      (a.admin && (a.admin->listen.host != b.admin->listen.host ||
                   a.admin->listen.port != b.admin->listen.port)))
    out.push_back("admin.listen");
  return out;
}

// The open-file limit in force: LimitNOFILE= may have been lowered where systemd lacks
// CAP_SYS_RESOURCE (containers), so the operator sees what the process really got.
uint64_t openFileLimit() {
  rlimit rl{};
  if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  return static_cast<uint64_t>(rl.rlim_cur);
}

class Daemon {
 public:
  Daemon(std::string configPath, ConfigPtr config)
      : config_path_(std::move(configPath)), config_(std::move(config)), telemetry_(metrics_) {}

  int run() {
    if (!bounds::valid()) {
      // A benchmark build (base/bounds.h) given a bound it does not know: a typo must not
      // quietly measure the durable path as if it were the bound.
      log::error("bound-unknown", {{"allowed", "nosync, nostore"}});
      return kExitFailure;
    }
    std::string error;
    const StoreConfig& sc = config_->store;
    // Where the records live, for logs: the LMDB directory, or the connection string with any
    // password masked.
    std::string where = sc.backend == "postgres" ? pg::maskConninfo(sc.postgres.url) : sc.path;
    if (sc.backend == "redis") {
      RedisUrl url;
      std::string ignored;
      where = parseRedisUrl(sc.redis.url, url, ignored) ? url.masked() : "(bad url)";
      store_ = openRedisStore(redisOptions(sc.redis), error);
    } else if (sc.backend == "postgres") {
      PostgresOptions po;
      po.conninfo = sc.postgres.url;
      po.connections = sc.postgres.connections;
      po.timeout = sc.postgres.timeout;
      // A database that is down at start is not fatal: serve 503 (not ready) until it answers,
      // so a proxy restarted during a database outage comes back by itself.
      po.start_unreachable = true;
      store_ = openPostgresStore(po, error);
      if (store_ && !error.empty()) {
        log::warn("store-unavailable-at-start", {{"store", where}, {"error", error}});
      }
    } else {
      LmdbOptions so;
      so.path = sc.path;
      so.max_size = sc.max_size;
      so.durability = sc.durability;
      so.wal = sc.wal;
      so.wal_size = sc.wal_size;
      so.hold_when_idle = true;
      store_ = openLmdbStore(so, SystemClock::instance(), error);
    }
    if (!store_) {
      log::error("store-open-failed",
                 {{"backend", sc.backend}, {"store", where}, {"error", error}});
      return kExitFailure;
    }
    Histogram& commitLatency =
        metrics_.histogram(metric::kStoreCommitLatency, metric::kStoreCommitLatencyHelp,
                           metric::commitLatencyBuckets());
    Histogram& commitBatch = metrics_.histogram(
        metric::kStoreCommitBatch, metric::kStoreCommitBatchHelp, metric::batchSizeBuckets());
    store_->setCommitObserver(
        [&commitLatency, &commitBatch](std::chrono::microseconds d, size_t ops) {
          commitLatency.observe(static_cast<double>(d.count()) / 1e6);
          commitBatch.observe(static_cast<double>(ops));
        });
    telemetry_.install(*config_);

    // Signals first: from the moment the port accepts, a SIGTERM must drain, not kill. (They
    // are handled once the loop below runs, when everything they touch exists.)
    base_.reset(event_base_new());
    SignalHandlers::Callbacks cb;
    cb.terminate = [this] { beginDrain(); };
    cb.reload = [this] { reload(); };
    signals_ = SignalHandlers::install(base_.get(), std::move(cb));

    meterStore(sc.backend);
    proxy_ = std::make_unique<Proxy>(config_, *metered_, telemetry_);
    if (!proxy_->start(error)) {
      log::error("listen-failed", {{"listen", config_->server.listen.text}, {"error", error}});
      return kExitFailure;
    }
    gauges_.push_back(
        metrics_.gaugeCallback(metric::kRecordsHeld, metric::kRecordsHeldHelp, {},
                               [this] { return static_cast<double>(store_->stats().records); }));
    gauges_.push_back(
        metrics_.gaugeCallback(metric::kStoreBytes, metric::kStoreBytesHelp, {},
                               [this] { return static_cast<double>(store_->stats().bytes_used); }));
    gauges_.push_back(metrics_.gaugeCallback(
        "idemproxy_upstream_in_flight", "Exchanges with an upstream in progress.", {},
        [this] { return static_cast<double>(proxy_->upstreamInFlight()); }));
    gauges_.push_back(metrics_.gaugeCallback(
        "idemproxy_store_notifies",
        "1 while the store delivers wake-ups from other processes' owners (PostgreSQL: the "
        "LISTEN connection is up), else 0: waiters then only poll.",
        {}, [this] { return store_->notifies() ? 1.0 : 0.0; }));
    gauges_.push_back(metrics_.gaugeCallback(
        "idemproxy_waiters", "Requests parked waiting for a key's owner to finish.", {},
        [this] { return static_cast<double>(proxy_->parkedWaiters()); }));
    gauges_.push_back(metrics_.gaugeCallback(
        "idemproxy_requests_active", "Requests received and not yet answered.", {},
        [this] { return static_cast<double>(proxy_->active()); }));

    if (config_->admin) {
      // Ready: serving, and the store can take writes (reachable; not full, failing or deleted).
      admin_ = std::make_unique<AdminServer>(base_.get(), metrics_, [this] {
        return !draining_ && store_->ready() && store_->unavailableReason().empty();
      });
      if (!admin_->start(config_->admin->listen, error)) {
        log::error("admin-listen-failed",
                   {{"listen", config_->admin->listen.text}, {"error", error}});
        proxy_->stop();
        return kExitFailure;
      }
    }
    sweep_timer_.reset(evtimer_new(base_.get(), &Daemon::onSweepTimer, this));
    armSweep(config_->store.sweep_interval);
    drain_timer_.reset(event_new(base_.get(), -1, EV_PERSIST, &Daemon::onDrainTimer, this));

    // A stuck worker loop stops the pings, and systemd restarts the service.
    notifier_.startWatchdog(base_.get(), [this] { return proxy_->healthy(); });
    if (*bounds::active() != '\0') {
      // A benchmark build (base/bounds.h) told to leave part of the store out: never durable.
      log::warn("bound-not-durable", {{"bound", bounds::active()}});
    }
    log::info("started", {{"version", IDEMPROXY_VERSION},
                          {"listen", config_->server.listen.text},
                          {"port", proxy_->port()},
                          {"admin_port", static_cast<uint64_t>(admin_ ? admin_->port() : 0)},
                          {"workers", static_cast<uint64_t>(proxy_->workerCount())},
                          {"backend", config_->store.backend},
                          {"store", where},
                          {"max_open_files", openFileLimit()}});
    notifier_.status("serving on " + config_->server.listen.text);
    notifier_.ready();

    event_base_dispatch(base_.get());

    // Order matters: stop the loops; let the store writer commit everything queued (its
    // completions land in the stopped workers' mailboxes); then free the workers.
    proxy_->stop();
    gauges_.clear();
    const size_t unfinished = proxy_->active();
    store_.reset();
    proxy_.reset();
    log::info("stopped", {{"unfinished", static_cast<uint64_t>(unfinished)}});
    return kExitOk;
  }

 private:
  void beginDrain() {
    if (draining_) {
      log::warn("terminate-again", {{"active", static_cast<uint64_t>(proxy_->active())}});
      return;
    }
    draining_ = true;
    notifier_.stopping();
    notifier_.status("draining");
    proxy_->stopAccepting();
    drain_deadline_ = std::chrono::steady_clock::now() + config_->server.drain_timeout;
    log::info("draining", {{"active", static_cast<uint64_t>(proxy_->active())}});
    timeval tv{0, 10'000};
    event_add(drain_timer_.get(), &tv);
    onDrainTimer(-1, 0, this);
  }

  static void onDrainTimer(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Daemon*>(arg);
    const bool timedOut = std::chrono::steady_clock::now() >= self->drain_deadline_;
    if (self->proxy_->active() == 0 || timedOut) {
      if (timedOut && self->proxy_->active() > 0) {
        log::warn("drain-timeout", {{"active", static_cast<uint64_t>(self->proxy_->active())}});
      }
      event_del(self->drain_timer_.get());
      event_base_loopbreak(self->base_.get());
    }
  }

  void reload() {
    notifier_.reloading();
    ConfigResult cr = loadConfigFile(config_path_);
    if (!cr.ok()) {
      logConfigErrors(cr, "reload-rejected");
      notifier_.status("reload rejected; serving the previous configuration");
      notifier_.ready();
      return;
    }
    for (const auto& setting : restartOnlyChanges(*config_, *cr.config)) {
      log::warn("reload-needs-restart", {{"setting", setting}});
    }
    config_ = cr.config;
    log::setLevel(config_->log.level);
    telemetry_.install(*config_);
    proxy_->reload(config_);
    log::info("reloaded", {{"routes", static_cast<uint64_t>(config_->routes.size())}});
    notifier_.status("serving on " + config_->server.listen.text);
    notifier_.ready();
  }

  // Every store operation timed and its errors counted, by backend and operation.
  void meterStore(const std::string& backend) {
    for (StoreOp op : kAllStoreOps) {
      OpMetrics& m = op_metrics_[static_cast<size_t>(op)];
      const Labels labels{{"backend", backend}, {"op", toString(op)}};
      m.latency = &metrics_.histogram(metric::kStoreOperation, metric::kStoreOperationHelp,
                                      metric::commitLatencyBuckets(), labels);
      for (StoreError e : {StoreError::Full, StoreError::Io, StoreError::Closed}) {
        Labels el = labels;
        el.emplace_back("error", errorLabel(e));
        m.errors[static_cast<size_t>(e)] =
            &metrics_.counter(metric::kStoreErrors, metric::kStoreErrorsHelp, std::move(el));
      }
    }
    metered_ = std::make_unique<MeteredStore>(
        *store_, [this](StoreOp op, std::chrono::microseconds took, StoreError e) {
          OpMetrics& m = op_metrics_[static_cast<size_t>(op)];
          m.latency->observe(static_cast<double>(took.count()) / 1e6);
          if (e != StoreError::None) m.errors[static_cast<size_t>(e)]->inc();
        });
  }

  void armSweep(std::chrono::milliseconds after) {
    const auto ms = after.count();
    timeval tv{static_cast<time_t>(ms / 1000), static_cast<suseconds_t>((ms % 1000) * 1000)};
    evtimer_add(sweep_timer_.get(), &tv);
  }

  static void onSweepTimer(evutil_socket_t, short, void* arg) {
    auto* self = static_cast<Daemon*>(arg);
    constexpr size_t kSlice = 1000;
    event* timer = self->sweep_timer_.get();
    self->metered_->sweep(kSlice, [timer](WriteResult r) {
      // A full slice means more expired records wait: sweep the next slice right away.
      if (r.error == StoreError::None && r.removed == kSlice) event_active(timer, EV_TIMEOUT, 0);
    });
    self->armSweep(self->config_->store.sweep_interval);
  }

  std::string config_path_;
  ConfigPtr config_;
  MetricsRegistry metrics_;
  Telemetry telemetry_;
  struct OpMetrics {
    Histogram* latency = nullptr;
    std::array<Counter*, 4> errors{};  // by StoreError (None unused)
  };
  std::array<OpMetrics, std::size(kAllStoreOps)> op_metrics_{};
  // Declared before store_: the store's last completions (at store_.reset()) go through it.
  std::unique_ptr<MeteredStore> metered_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Proxy> proxy_;
  EventBasePtr base_;
  std::unique_ptr<AdminServer> admin_;
  std::unique_ptr<SignalHandlers> signals_;
  Notifier notifier_;
  EventPtr sweep_timer_;
  EventPtr drain_timer_;
  std::vector<GaugeCallbackRegistration> gauges_;
  bool draining_ = false;
  std::chrono::steady_clock::time_point drain_deadline_;
};

// libevent's own messages (by default "[warn] …" lines on stderr) become JSON lines too.
void routeLibeventLog() {
  event_set_log_callback([](int severity, const char* msg) {
    const LogLevel level = severity >= EVENT_LOG_ERR    ? LogLevel::Error
                           : severity == EVENT_LOG_WARN ? LogLevel::Warn
                           : severity == EVENT_LOG_MSG  ? LogLevel::Info
                                                        : LogLevel::Debug;
    if (log::enabled(level)) log::write(level, "libevent", {{"message", msg}});
  });
}

}  // namespace

int cmdRun(const CliOptions& options) {
  ignoreSigpipe();
  ConfigResult cr = loadConfigFile(options.config_path);
  if (!cr.ok()) {
    for (const auto& e : cr.errors) std::fprintf(stderr, "%s\n", e.str().c_str());
    logConfigErrors(cr, "config-invalid");
    return kExitFailure;
  }
  log::setLevel(cr.config->log.level);
  routeLibeventLog();
  Daemon daemon(options.config_path, cr.config);
  return daemon.run();
}

}  // namespace idem
