#pragma once
// The fakes at the request core's seams (Downstream, Upstream, Store, Clock) and the fixture
// that drives ProxyRequest with them on a real libevent loop (request_test.cpp,
// request_stream_test.cpp, request_reconcile_test.cpp).
#include <gtest/gtest.h>

#include <deque>
#include <optional>
#include <stdexcept>

#include "base/digest.h"
#include "request/idempotency.h"
#include "request/request.h"

namespace idem::testing_request {

// ---- Fakes ----

class FakeClient final : public Downstream {
 public:
  struct Reply {
    int status = 0;
    Headers fields;
    std::string body;
    bool close = false;
    bool streamed = false;  // startBody, not endReply
    int64_t length = 0;     // streamed: the length given (kUnknownLength: none)
    bool ended = false;     // streamed: endBody was called
    bool complete = false;  // … with complete = true
    std::string field(std::string_view name) const {
      for (const auto& h : fields) {
        if (iequals(h.name, name)) return h.value;
      }
      return {};
    }
    bool has(std::string_view name) const {
      for (const auto& h : fields) {
        if (iequals(h.name, name)) return true;
      }
      return false;
    }
  };

  FakeClient(std::string method, std::string target, Headers fields, std::string body,
             std::optional<Reply>* out)
      : method_(std::move(method)),
        target_(std::move(target)),
        fields_(std::move(fields)),
        body_(std::move(body)),
        out_(out) {
    current = this;
  }

  std::string_view method() const override { return method_; }
  std::string_view target() const override { return target_; }
  void forEachField(FieldVisitor fn) const override {
    for (const auto& h : fields_) fn(h.name, h.value);
  }
  std::string_view body() const override { return body_; }
  std::string_view peer() const override { return "192.0.2.7"; }
  inline static bool closed = false;            // the connection is gone: nothing reaches anyone
  inline static FakeClient* current = nullptr;  // the newest client, for streaming tests
  ~FakeClient() override {
    if (current == this) current = nullptr;
  }

  void beginReply(int status) override {
    if (closed) return;
    ASSERT_FALSE(out_->has_value()) << "answered twice";
    pending_.status = status;
  }
  void addField(std::string_view name, std::string_view value) override {
    pending_.fields.push_back({std::string(name), std::string(value)});
  }
  void endReply(std::string_view body, bool close) override {
    if (closed) return;  // the connection closed: nothing reaches anyone
    pending_.body.assign(body);
    pending_.close = close;
    *out_ = pending_;
  }

  // Streaming: the head is "out" at startBody; pieces are queued until drain().
  void startBody(int64_t length, bool close, std::function<void()> writable) override {
    if (closed) return;
    ASSERT_FALSE(out_->has_value()) << "answered twice";
    pending_.streamed = true;
    pending_.length = length;
    pending_.close = close;
    *out_ = pending_;
    writable_ = std::move(writable);
  }
  bool writeBody(std::string_view piece) override {
    if (closed || !out_->has_value() || (*out_)->ended) return false;
    (*out_)->body.append(piece);
    queued_ += piece.size();
    return queued_ < bound;
  }
  void endBody(bool complete) override {
    writable_ = nullptr;
    if (closed || !out_->has_value() || (*out_)->ended) return;
    (*out_)->ended = true;
    (*out_)->complete = complete;
  }
  bool gone() const override { return closed; }
  // The client took what was queued (or went away): the writer is woken, as the loop would.
  void drain() {
    queued_ = 0;
    if (auto w = writable_) w();
  }
  size_t bound = 1 << 20;  // queued bytes past which writeBody says "wait"

 private:
  std::string method_, target_;
  Headers fields_;
  std::string body_;
  Reply pending_;
  std::optional<Reply>* out_;  // owned by the test: the client dies with the request
  std::function<void()> writable_;
  size_t queued_ = 0;
};

// The rest of a body past the limit, fed by the test through its State.
class FakeBody final : public UpstreamBody {
 public:
  struct State {
    FakeBody* body = nullptr;  // null once the consumer let go of it
    bool started = false;
    bool paused = false;
    bool destroyed = false;  // the upstream connection was let go
    int pauses = 0;
    // As a backend does: a copy of the callback runs (the consumer may drop the body inside).
    void push(std::string_view piece) {
      if (body == nullptr || !body->data_) return;
      DataFn data = body->data_;
      data(piece);
    }
    void finish(bool complete, std::string_view why = {}) {
      if (body == nullptr || !body->end_) return;
      EndFn end = std::move(body->end_);
      end(complete, why);
    }
  };
  explicit FakeBody(std::shared_ptr<State> s) : s_(std::move(s)) { s_->body = this; }
  ~FakeBody() override {
    s_->destroyed = true;
    s_->body = nullptr;
  }
  void start(DataFn d, EndFn e) override {
    data_ = std::move(d);
    end_ = std::move(e);
    s_->started = true;
  }
  void pause() override {
    s_->paused = true;
    ++s_->pauses;
  }
  void resume() override { s_->paused = false; }
  // A stream still running holds its request through these: the test's teardown drops them.
  void drop() {
    DataFn data = std::move(data_);
    EndFn end = std::move(end_);
    // Both die here, perhaps with the request, which owns this body: nothing of it is touched.
  }

 private:
  std::shared_ptr<State> s_;
  DataFn data_;
  EndFn end_;
};

// A store whose operations complete only when the test says so, with the result it chooses.
class FakeStore final : public Store {
 public:
  std::deque<std::pair<ReserveRequest, std::function<void(ReserveResult)>>> reserves;
  std::deque<std::pair<RecordRequest, std::function<void(RecordResult)>>> records;
  std::deque<std::pair<std::string, std::function<void(WriteResult)>>> releases;
  std::optional<Record> stored;  // what lookup() and visit() see
  int lookups = 0;
  bool throwOnReserve = false;
  bool local = true;  // localReads()
  bool localReads() const override { return local; }

  bool notify = false;  // notifies(): watch() records the watch, the test fires it
  struct Watch {
    uint64_t since;
    std::function<void()> wake;
  };
  std::vector<Watch> watches;
  int unwatches = 0;
  bool notifies() const override { return notify; }
  uint64_t watch(const RecordId&, uint64_t since, std::function<void()> wake) override {
    watches.push_back({since, std::move(wake)});
    return watches.size();
  }
  void unwatch(const RecordId&, uint64_t) override { ++unwatches; }

  void reserve(ReserveRequest req, std::function<void(ReserveResult)> done) override {
    if (throwOnReserve) throw std::runtime_error("store exploded");
    reserves.emplace_back(std::move(req), std::move(done));
  }
  void record(RecordRequest req, std::function<void(RecordResult)> done) override {
    records.emplace_back(std::move(req), std::move(done));
  }
  void release(RecordId, std::string owner, std::function<void(WriteResult)> done) override {
    releases.emplace_back(std::move(owner), std::move(done));
  }
  std::deque<std::pair<ClaimRequest, std::function<void(ClaimResult)>>> claims;
  std::deque<std::pair<SettleRequest, std::function<void(SettleResult)>>> settles;
  void claimReconcile(ClaimRequest req, std::function<void(ClaimResult)> done) override {
    claims.emplace_back(std::move(req), std::move(done));
  }
  void settleReconcile(SettleRequest req, std::function<void(SettleResult)> done) override {
    settles.emplace_back(std::move(req), std::move(done));
  }
  void forget(RecordId, std::function<void(WriteResult)> done) override { done({}); }
  void sweep(size_t, std::function<void(WriteResult)> done) override { done({}); }
  std::optional<Record> lookup(const RecordId&) override {
    EXPECT_TRUE(local) << "a network store is never read directly by the core";
    ++lookups;
    return stored;
  }
  bool visit(const RecordId&, FunctionRef<void(const RecordView&)> fn) override {
    EXPECT_TRUE(local) << "a network store is never read directly by the core";
    if (!stored) return false;
    const std::string bytes = encodeRecord(*stored);
    RecordView view;
    if (decodeRecordView(bytes, view) != DecodeError::None) return false;
    fn(view);
    return true;
  }
  std::vector<std::pair<RecordId, Record>> list() override { return {}; }
  StoreStats stats() override { return {}; }
  void flush() override {}
  void setCommitObserver(CommitObserver) override {}
};

class FakeUpstream final : public Upstream {
 public:
  explicit FakeUpstream(UpstreamConfig c) : config_(std::move(c)) {}
  std::deque<std::pair<UpstreamRequest, std::function<void(UpstreamResult)>>> sent;
  void send(UpstreamRequest request, std::function<void(UpstreamResult)> done) override {
    sent.emplace_back(std::move(request), std::move(done));
  }
  size_t inFlight() const override { return sent.size(); }
  const UpstreamConfig& config() const override { return config_; }

 private:
  UpstreamConfig config_;
};

class Observer final : public ProxyObserver {
 public:
  std::vector<std::pair<int, Outcome>> done;
  std::vector<std::string> events;
  std::vector<std::string> woken;
  void waitWoken(std::string_view how) override { woken.emplace_back(how); }
  std::vector<std::string> reconciles;  // results, in order
  void reconcileDone(std::string_view, std::string_view result) override {
    reconciles.emplace_back(result);
  }
  void requestDone(const RequestReport& r) override { done.emplace_back(r.status, r.outcome); }
  void upstreamDone(std::string_view, std::chrono::microseconds, bool) override {}
  void event(std::string_view name, std::string_view, std::string_view) override {
    events.emplace_back(name);
  }
  bool saw(std::string_view name) const {
    return std::find(events.begin(), events.end(), name) != events.end();
  }
};

class TestLoop final : public RequestLoop {
 public:
  TestLoop(ConfigPtr config, RequestShared& shared, std::shared_ptr<Upstream> upstream)
      : base_(event_base_new()),
        config_(std::move(config)),
        shared_(shared),
        upstream_(std::move(upstream)) {}
  ~TestLoop() override {
    mailbox_.clear();
    event_base_free(base_);
  }
  event_base* base() override { return base_; }
  void post(std::function<void()> fn) override { mailbox_.push_back(std::move(fn)); }
  const ConfigPtr& config() const override { return config_; }
  std::shared_ptr<Upstream> upstream(const std::string& name) override {
    return name == "backend" ? upstream_ : nullptr;
  }
  RequestShared& shared() override { return shared_; }

  // Runs posted tasks and ready timers until `until` holds (bounded: a broken core fails the
  // test instead of hanging it).
  template <class F>
  bool runUntil(F until) {
    for (int i = 0; i < 100000 && !until(); ++i) {
      std::deque<std::function<void()>> batch;
      batch.swap(mailbox_);
      for (auto& fn : batch) fn();
      event_base_loop(base_, EVLOOP_NONBLOCK | EVLOOP_ONCE);
      if (batch.empty() && !until()) event_base_loop(base_, EVLOOP_ONCE);
    }
    return until();
  }
  void drain() {
    runUntil([&] { return mailbox_.empty(); });
  }

 private:
  event_base* base_;
  std::deque<std::function<void()>> mailbox_;
  ConfigPtr config_;
  RequestShared& shared_;
  std::shared_ptr<Upstream> upstream_;
};

// ---- Fixture ----

class RequestCoreTest : public ::testing::Test {
 protected:
  void SetUp() override { build(IdempotencyConfig{}); }
  void TearDown() override {
    // Requests still held by pending completions die here, before the fakes they point to;
    // their last-resort 500s go nowhere.
    FakeClient::closed = true;
    store_.reserves.clear();
    store_.records.clear();
    store_.releases.clear();
    store_.claims.clear();
    store_.settles.clear();
    upstream_->sent.clear();
    shared_->waiters().clear();
    loop_->drain();
    FakeClient::closed = false;
  }

  void build(IdempotencyConfig ic) {
    auto c = std::make_shared<Config>();
    c->upstreams["backend"].url = "http://127.0.0.1:9";
    RouteConfig pay;
    pay.name = "payments";
    pay.path = "/v1/payments";
    pay.prefix = true;
    pay.upstream = "backend";
    pay.idempotency = ic;
    RouteConfig rest;
    rest.name = "rest";
    rest.path = "";
    rest.prefix = true;
    rest.upstream = "backend";
    c->routes = {pay, rest};
    config_ = c;
    loop_.reset();
    shared_ = std::make_unique<RequestShared>(store_, observer_, clock_);
    upstream_ = std::make_shared<FakeUpstream>(c->upstreams["backend"]);
    loop_ = std::make_unique<TestLoop>(config_, *shared_, upstream_);
  }

  void start(std::string method = "POST", std::string target = "/v1/payments",
             std::string key = "k1", std::string body = R"({"amount":1})",
             std::string authorization = "Bearer A") {
    Headers h{{"Host", "api.test"}};
    if (!authorization.empty()) h.push_back({"Authorization", authorization});
    if (!key.empty()) h.push_back({"Idempotency-Key", key});
    ProxyRequest::start(*loop_, std::make_unique<FakeClient>(method, target, std::move(h),
                                                             std::move(body), &reply_));
  }

  // The record this request's identity and fingerprint would have, completed with `answer`.
  Record completed(HttpAnswer answer, std::string body = R"({"amount":1})") {
    Record r;
    r.state = RecordState::Completed;
    r.expires_at_ms = clock_.wallMs() + 60'000;
    r.fingerprint =
        requestFingerprint(*config_->routes[0].idempotency, {"POST", "/v1/payments", "", body});
    r.answer = std::move(answer);
    return r;
  }
  Record inFlight(std::string owner) {
    Record r = completed({});
    r.state = RecordState::InFlight;
    r.owner = std::move(owner);
    r.lease_until_ms = clock_.wallMs() + 5'000;
    return r;
  }

  void completeReserve(ReserveStatus status, Record rec = {}, StoreError err = StoreError::None) {
    ASSERT_FALSE(store_.reserves.empty());
    auto [req, done] = std::move(store_.reserves.front());
    store_.reserves.pop_front();
    done({err, status, std::move(rec)});
    loop_->drain();
  }
  void completeUpstream(UpstreamResult r) {
    ASSERT_FALSE(upstream_->sent.empty());
    auto [req, done] = std::move(upstream_->sent.front());
    upstream_->sent.pop_front();
    done(std::move(r));
    loop_->drain();
  }
  static UpstreamResult answer(int status, std::string body = "ok") {
    UpstreamResult r;
    r.answer.status = status;
    r.answer.headers = {{"Content-Type", "application/json"}, {"Set-Cookie", "s=1"}};
    r.answer.body = std::move(body);
    return r;
  }

  FakeClock clock_;
  FakeStore store_;
  Observer observer_;
  ConfigPtr config_;
  std::unique_ptr<RequestShared> shared_;
  std::shared_ptr<FakeUpstream> upstream_;
  std::unique_ptr<TestLoop> loop_;
  std::optional<FakeClient::Reply> reply_;
};

}  // namespace idem::testing_request
