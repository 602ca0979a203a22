#include "request/request.h"

#include <algorithm>
#include <cstdlib>

#include "base/digest.h"
#include "request/forwarding.h"
#include "request/idempotency.h"

namespace idem {

const char* toString(RequestState s) {
  switch (s) {
    case RequestState::Received:
      return "received";
    case RequestState::Reserving:
      return "reserving";
    case RequestState::Waiting:
      return "waiting";
    case RequestState::Forwarding:
      return "forwarding";
    case RequestState::Recording:
      return "recording";
    case RequestState::Releasing:
      return "releasing";
    case RequestState::Streaming:
      return "streaming";
    case RequestState::Responded:
      return "responded";
    case RequestState::Reconciling:
      return "reconciling";
  }
  return "?";
}

namespace {

using RequestSteady = std::chrono::steady_clock;

std::string joinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
  return out.empty() ? "(no headers)" : out;
}

}  // namespace

const ErrorBody* ProxyRequest::errorShape() const {
  if (route_ != nullptr && route_->error_body) return route_->error_body.get();
  return config_->server.error_body.get();
}

void ProxyRequest::start(RequestLoop& loop, std::unique_ptr<Downstream> client) {
  auto r = std::make_shared<ProxyRequest>(loop, std::move(client));
  try {
    r->run();
  } catch (const std::exception& e) {
    // Whatever state it was in, the request is answered (500) and freed once its pending
    // operations let go of it; a reservation it holds is left to its lease.
    r->shared_.observer().event("request-failed", r->route_ ? r->route_->name : "", e.what());
    r->respondProblem(Problem::Internal, "the proxy failed to handle the request", Outcome::Error);
  }
}

ProxyRequest::ProxyRequest(RequestLoop& loop, std::unique_ptr<Downstream> client)
    : loop_(loop),
      shared_(loop.shared()),
      config_(loop.config()),
      client_(std::move(client)),
      started_(RequestSteady::now()) {
  shared_.active.fetch_add(1, std::memory_order_relaxed);
}

ProxyRequest::~ProxyRequest() {
  if (own_reservation_) ownerDone();
  if (state_ == RequestState::Streaming) {
    client_->endBody(false);  // cut short: the client must not take it for the whole answer
  } else if (state_ != RequestState::Responded) {
    // Only an exception in a completion gets here (it dropped the last reference): the client
    // still gets an answer and its connection moves on.
    HttpAnswer a =
        problemAnswer(Problem::Internal, "the proxy failed to handle the request", errorShape());
    client_->beginReply(a.status);
    for (const Header& h : a.headers) client_->addField(h.name, h.value);
    client_->endReply(a.body, true);
    report(a.status, Outcome::Error, problemSlug(Problem::Internal));
  }
  shared_.active.fetch_sub(1, std::memory_order_relaxed);
}

void ProxyRequest::setState(RequestState next) {
  // Allowed transitions; anything else is a broken invariant.
  bool ok = false;
  switch (state_) {
    case RequestState::Received:
      ok = next == RequestState::Reserving || next == RequestState::Forwarding ||
           next == RequestState::Reconciling || next == RequestState::Responded;
      break;
    case RequestState::Reserving:
      ok = next == RequestState::Forwarding || next == RequestState::Waiting ||
           next == RequestState::Reconciling || next == RequestState::Responded;
      break;
    case RequestState::Waiting:
      ok = next == RequestState::Reserving || next == RequestState::Reconciling ||
           next == RequestState::Responded;
      break;
    case RequestState::Reconciling:
      // found / unsettled → replay; not found → forward as the new owner; claim busy → wait;
      // record gone → reserve.
      ok = next == RequestState::Responded || next == RequestState::Forwarding ||
           next == RequestState::Waiting || next == RequestState::Reserving;
      break;
    case RequestState::Forwarding:
      // Streaming straight from forwarding: a pass-through answer past the upstream's buffer.
      ok = next == RequestState::Recording || next == RequestState::Releasing ||
           next == RequestState::Streaming || next == RequestState::Responded;
      break;
    case RequestState::Recording:
    case RequestState::Releasing:
      ok = next == RequestState::Responded || next == RequestState::Streaming;
      break;
    case RequestState::Streaming:
      ok = next == RequestState::Responded;
      break;
    case RequestState::Responded:
      ok = false;
      break;
  }
  if (!ok) {
    shared_.observer().event("bad-transition", route_ ? route_->name : "",
                             std::string(toString(state_)) + "->" + toString(next));
    std::abort();
  }
  state_ = next;
}

void ProxyRequest::run() {
  if (!readRequest()) return;
  route_ = config_->findRoute(method_, match_path_);
  if (route_ == nullptr) {
    respondProblem(Problem::NoRoute, "no route for " + method_ + " " + path_, Outcome::Invalid);
    return;
  }
  upstream_ = loop_.upstream(route_->upstream);  // from the same snapshot as the route
  if (!upstream_) {
    respondProblem(Problem::UpstreamUnavailable, "the route's upstream is not configured",
                   Outcome::Error);
    return;
  }
  if (!route_->idempotency) {
    passThrough();
    return;
  }
  beginIdempotent();
}

bool ProxyRequest::readRequest() {
  method_.assign(client_->method());
  RequestTarget target = splitTarget(client_->target());
  if (!target.ok) {
    respondProblem(Problem::BadRequest, "the request target must be an absolute path",
                   Outcome::Invalid);
    return false;
  }
  std::string_view why = ambiguousPathReason(target.path);
  if (why.empty() && client_->target().find('#') != std::string_view::npos) {
    why = "a fragment ('#') in the request target";
  }
  if (!why.empty()) {
    path_ = std::move(target.path);
    respondProblem(Problem::BadRequest,
                   std::string("the request target is ambiguous: ") + std::string(why),
                   Outcome::Invalid);
    return false;
  }
  path_ = std::move(target.path);
  query_ = std::move(target.query);
  match_path_ = normalizePath(path_);
  body_ = client_->body();  // left in the client's buffer: copied only when forwarded
  peer_.assign(client_->peer());
  return true;
}

void ProxyRequest::passThrough() {
  forward();
}  // own_reservation_ stays false

void ProxyRequest::beginIdempotent() {
  const IdempotencyConfig& ic = *route_->idempotency;
  std::string_view firstValue;
  size_t values = 0;
  client_->forEachField([&](std::string_view name, std::string_view value) {
    if (iequals(name, ic.key_header) && values++ == 0) firstValue = value;
  });
  ParsedKey parsed = parseIdempotencyKey(firstValue, values);
  if (ic.key_json_pointer && parsed.status != KeyStatus::Invalid) {
    // A legacy client's key in the body; when the header is there too, both must agree.
    ParsedKey fromBody = keyFromJsonBody(body_, *ic.key_json_pointer);
    if (parsed.status == KeyStatus::Missing) {
      parsed = std::move(fromBody);
    } else if (fromBody.status != KeyStatus::Missing && fromBody.key != parsed.key) {
      parsed.status = KeyStatus::Invalid;
      parsed.reason =
          "the " + ic.key_header + " header and the body's " + *ic.key_json_pointer + " differ";
    }
  }
  if (parsed.status == KeyStatus::Missing) {
    if (ic.required) {
      respondProblem(Problem::KeyMissing,
                     "this route requires the " + ic.key_header + " header" +
                         (ic.key_json_pointer ? " or " + *ic.key_json_pointer + " in a JSON body"
                                              : std::string()),
                     Outcome::Invalid);
    } else {
      passThrough();
    }
    return;
  }
  if (parsed.status == KeyStatus::Invalid) {
    respondProblem(Problem::KeyInvalid, parsed.reason, Outcome::Invalid);
    return;
  }
  key_ = std::move(parsed.key);
  scope_ = scopeValues();  // computed once: the identity here, the record on reserve
  if (!ic.shared_scope && scopeMissing(scope_)) {
    respondProblem(Problem::ScopeMissing,
                   "this route keeps one key space per client, told apart by " +
                       joinNames(ic.scope) + "; the request carries none of them",
                   Outcome::Invalid);
    return;
  }
  id_ = recordId(route_->name, scope_, key_);
  fingerprint_ = requestFingerprint(ic, {method_, match_path_, query_, body_});

  // Fast path: a completed record is replayed from a read transaction, no write at all, and
  // straight from the store's mapped memory into the output buffer.
  bool completed = false;
  bool mismatch = false;
  bool sent = false;
  int status = 0;
  std::optional<Record> uncertain;  // to reconcile instead of replaying
  if (!shared_.store().localReads()) {
    reserve();  // a network store: the reserve is the read
    return;
  }
  shared_.store().visit(id_, [&](const RecordView& rec) {
    if (rec.state != RecordState::Completed) return;
    completed = true;
    if (rec.fingerprint != fingerprint_) {
      mismatch = true;
      return;
    }
    if (rec.uncertain() && ic.reconcile) {
      uncertain = rec.toRecord();
      return;
    }
    status = rec.status;
    sent = replayView(rec);
  });
  if (!completed) {
    reserve();
  } else if (uncertain) {
    startReconcile(std::move(*uncertain));
  } else if (mismatch) {
    respondProblem(Problem::KeyMismatch, "the key was used with a different request",
                   Outcome::Mismatch);
  } else if (sent) {
    report(status, Outcome::Replayed, {});  // outside the read transaction
  }
}

std::vector<std::string> ProxyRequest::scopeValues() const {
  return scopeValuesOf(*route_->idempotency,
                       [this](HeaderVisitor fn) { client_->forEachField(fn); });
}

void ProxyRequest::reserve() {
  setState(RequestState::Reserving);
  const IdempotencyConfig& ic = *route_->idempotency;
  ReserveRequest rr;
  rr.id = id_;
  rr.fingerprint = fingerprint_;
  rr.route = route_->name;
  rr.key = key_;
  rr.scope = scopeDigests(scope_);
  owner_ = shared_.newOwnerToken();
  rr.owner = owner_;
  rr.ttl_ms = ic.ttl.count();
  rr.lease_ms = ic.lease.count();
  if (ic.reconcile) {
    // Kept with the record: a lookup after a restart, or on another host, is built from them.
    rr.lookup = lookupValues(
        *ic.reconcile, [this](HeaderVisitor fn) { client_->forEachField(fn); }, body_);
  }
  rr.retry_abandoned = ic.abandoned == AbandonedMode::Retry;
  rr.abandoned_answer = abandonedAnswer(errorShape());
  RequestLoop* w = &loop_;
  WaiterRegistry* waiters = &shared_.waiters();
  shared_.store().reserve(std::move(rr),
                          [self = shared_from_this(), w, waiters](ReserveResult r) mutable {
                            // Writer thread: register ownership before anyone can see the record
                            // and park on it.
                            if (r.error == StoreError::None && r.status == ReserveStatus::Won) {
                              waiters->ownerStarted(self->id_);
                            }
                            w->post([self = std::move(self), r = std::move(r)]() mutable {
                              self->onReserved(std::move(r));
                            });
                          });
}

void ProxyRequest::onReserved(ReserveResult r) {
  if (r.error != StoreError::None) {
    respondProblem(Problem::StoreUnavailable,
                   std::string("the store cannot take the reservation: ") + toString(r.error),
                   Outcome::Error);
    return;
  }
  switch (r.status) {
    case ReserveStatus::Won:
      own_reservation_ = true;
      lease_until_ms_ = r.record.lease_until_ms;
      forward();
      return;
    case ReserveStatus::Completed:
      replayOrReconcile(r.record);
      return;
    case ReserveStatus::Mismatch:
      respondProblem(Problem::KeyMismatch, "the key was used with a different request",
                     Outcome::Mismatch);
      return;
    case ReserveStatus::InFlight:
      wake_seq_ = r.wake_seq;
      if (route_->idempotency->concurrent == ConcurrentMode::Reject) {
        setRetryAfter(r.record);
        respondProblem(Problem::KeyInUse, "a request with this key is still in progress",
                       Outcome::Conflict);
        return;
      }
      waitForOwner(r.record);
      return;
  }
}

// ---- Waiting for another owner ----

namespace {
void onWaitTimer(evutil_socket_t, short, void* arg);
}

void ProxyRequest::waitForOwner(const Record& inFlight, bool pollOnly) {
  const auto now = RequestSteady::now();
  if (state_ != RequestState::Waiting) setState(RequestState::Waiting);
  if (!wait_timer_) {
    // The first wait fixes the deadline: reserving again after a release does not extend it.
    wait_deadline_ = now + route_->idempotency->wait_timeout;
    wait_timer_.reset(evtimer_new(loop_.base(), &onWaitTimer, this));
    poll_interval_ = std::chrono::milliseconds(2);
  }
  setRetryAfter(inFlight);
  if (now >= wait_deadline_) {
    onWaitTimeout();
    return;
  }
  const uint64_t ticket = wait_ticket_ = shared_.newWaitTicket();
  // Called on the owner's thread; the reference moves into the posted task so that the last
  // reference to this request is always dropped on its own worker.
  auto wake = [w = &loop_, self = shared_from_this(), ticket]() mutable {
    w->post([self = std::move(self), ticket] {
      if (self->wait_ticket_ == ticket && self->parked_) {
        self->parked_ = false;
        self->shared_.observer().waitWoken("owner");
        self->onWaitWake(/*ask_writer=*/true);
      }
    });
  };
  std::chrono::steady_clock::duration until;
  if (!pollOnly && shared_.ownsToken(inFlight.owner) &&
      shared_.waiters().park(id_, ticket, std::move(wake))) {
    parked_ = true;
    until = wait_deadline_ - now;  // woken by the owner; the timer only bounds the wait
  } else {
    // Another process owns the key (or our own owner has just finished, or left the record in
    // flight after a failed write): look at the store again, backing off; with a store that
    // reports owners elsewhere settling (notifies), mainly when it says so, and poll slowly.
    Store& store = shared_.store();
    auto cap = std::chrono::milliseconds(200);
    if (!shared_.ownsToken(inFlight.owner) && store.notifies()) {
      cap = std::chrono::milliseconds(2'000);
      poll_interval_ = std::max(poll_interval_, std::chrono::milliseconds(100));
      watching_ = true;
      // A weak reference: a watch the store drops at shutdown must not end this request there.
      std::weak_ptr<ProxyRequest> weak = shared_from_this();
      watch_handle_ = store.watch(id_, wake_seq_, [w = &loop_, weak, ticket] {
        w->post([weak, ticket] {
          auto self = weak.lock();
          if (self && self->wait_ticket_ == ticket && self->watching_) {
            self->watching_ = false;
            self->shared_.observer().waitWoken("notify");
            self->onWaitWake();
          }
        });
      });
    }
    until = std::min<std::chrono::steady_clock::duration>(poll_interval_, wait_deadline_ - now);
    poll_interval_ = std::min(poll_interval_ * 2, cap);
  }
  const auto us = std::chrono::duration_cast<std::chrono::microseconds>(until).count();
  timeval tv{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
  evtimer_add(wait_timer_.get(), &tv);
  keepalive_ = shared_from_this();
}

namespace {
void onWaitTimer(evutil_socket_t, short, void* arg) {
  static_cast<ProxyRequest*>(arg)->onWaitTimerFired();
}
}  // namespace

void ProxyRequest::onWaitTimerFired() {
  auto self = std::move(keepalive_);
  if (parked_) {
    shared_.waiters().cancel(id_, wait_ticket_);
    parked_ = false;
  } else if (RequestSteady::now() < wait_deadline_) {
    shared_.observer().waitWoken("poll");
  }
  if (watching_) {
    shared_.store().unwatch(id_, watch_handle_);
    watching_ = false;
  }
  // Poll tick or deadline: either way look at the store once more before answering 409; the
  // last look asks the writer (what it acknowledged may not be readable for a few ms yet).
  onWaitWake(/*ask_writer=*/RequestSteady::now() >= wait_deadline_);
}

void ProxyRequest::onWaitWake(bool ask_writer) {
  auto self = shared_from_this();
  keepalive_.reset();
  if (wait_timer_) evtimer_del(wait_timer_.get());
  if (!shared_.store().localReads() || ask_writer) {
    // Classifies again in one round trip: replay, mismatch, still in flight, or won. Woken by
    // its owner, a local store is asked the same way: its reads may not show yet what it has
    // acknowledged (the LMDB store's writer sees it at once).
    reserve();
    return;
  }
  auto rec = shared_.store().lookup(id_);
  if (!rec) {
    reserve();  // released, forgotten or expired: try to take it
    return;
  }
  if (rec->fingerprint != fingerprint_) {
    respondProblem(Problem::KeyMismatch, "the key was used with a different request",
                   Outcome::Mismatch);
    return;
  }
  if (rec->state == RecordState::Completed) {
    replayOrReconcile(*rec);
    return;
  }
  if (rec->leasePassed(shared_.clock().wallMs())) {
    reserve();  // abandoned: the store applies the route's `abandoned` policy atomically
    return;
  }
  waitForOwner(*rec);
}

void ProxyRequest::setRetryAfter(const Record& inFlight) {
  const int64_t now = shared_.clock().wallMs();
  if (inFlight.state == RecordState::Completed) {
    // A reconcile lookup holds the key: it is one exchange with the same upstream.
    const int64_t started = inFlight.claim_until_ms - route_->idempotency->lease.count();
    retry_after_s_ = retryAfterSeconds(shared_.latency().expectedMs(route_->name), now - started,
                                       inFlight.claim_until_ms - now);
    return;
  }
  retry_after_s_ = retryAfterSeconds(shared_.latency().expectedMs(route_->name),
                                     now - inFlight.reserved_at_ms, inFlight.lease_until_ms - now);
}

void ProxyRequest::onWaitTimeout() {
  keepalive_.reset();
  respondProblem(Problem::KeyInUse,
                 "a request with this key is still in progress; retry after the time given "
                 "in Retry-After",
                 Outcome::Conflict);
}

// ---- Forwarding ----

void ProxyRequest::forward() {
  setState(RequestState::Forwarding);
  UpstreamRequest ur;
  ur.method = method_;
  // The path that was routed on (normalised) is the path forwarded: the backend cannot read
  // the request as another route.
  ur.path_and_query = query_.empty() ? match_path_ : match_path_ + "?" + query_;
  // Copied from the client's buffer only now: a replay never needs them as strings.
  ur.headers = forwardedFields([this](FieldVisitor fn) { client_->forEachField(fn); }, peer_,
                               config_->server.trusts(peer_));
  ur.body.assign(body_);
  // Bounded memory: past the limit the upstream client stops buffering and hands the rest over
  // as a stream (see onUpstream): the route's max_response_body, or on a route that records
  // nothing the upstream's.
  if (own_reservation_) {
    ur.max_response_body = route_->idempotency->max_response_body;
  } else if (auto up = config_->upstreams.find(route_->upstream); up != config_->upstreams.end()) {
    ur.max_response_body = std::max<size_t>(1, up->second.max_response_body);
  }

  shared_.upstream_in_flight.fetch_add(1, std::memory_order_relaxed);
  upstream_->send(std::move(ur), [self = shared_from_this()](UpstreamResult r) {
    self->onUpstream(std::move(r));
  });
}

HttpAnswer ProxyRequest::forRecording(const HttpAnswer& a) const {
  return recordableAnswer(*route_->idempotency, a, method_ == "HEAD");
}

void ProxyRequest::onUpstream(UpstreamResult r) {
  shared_.upstream_in_flight.fetch_sub(1, std::memory_order_relaxed);
  if (r.failure == UpstreamFailure::None && !sanitizeUpstreamAnswer(r.answer)) {
    r.failure = UpstreamFailure::AfterSend;  // sent; what came back is not an HTTP answer
    r.detail = "the upstream answered with status " + std::to_string(r.answer.status);
  }
  shared_.observer().upstreamDone(route_->upstream, r.latency, r.failure != UpstreamFailure::None);
  if (r.failure != UpstreamFailure::BeforeSend) shared_.latency().observe(route_->name, r.latency);
  if (!own_reservation_) {  // pass-through
    switch (r.failure) {
      case UpstreamFailure::None:
        if (r.body_over_limit) {  // past the upstream's buffer: the rest is streamed
          rest_ = std::move(r.rest);
          streamAnswer(r.answer, Outcome::Passthrough, {});
          return;
        }
        respond(r.answer, false, Outcome::Passthrough);
        return;
      case UpstreamFailure::BeforeSend:
        respondProblem(Problem::UpstreamUnavailable, r.detail, Outcome::Error);
        return;
      case UpstreamFailure::Timeout:
        respondProblem(Problem::UpstreamTimeout, r.detail, Outcome::Error);
        return;
      case UpstreamFailure::AfterSend:
        respondProblem(Problem::UpstreamFailed, r.detail, Outcome::Error);
        return;
    }
    return;
  }
  const IdempotencyConfig& ic = *route_->idempotency;
  switch (r.failure) {
    case UpstreamFailure::BeforeSend:
      release(problemAnswer(Problem::UpstreamUnavailable,
                            "the upstream could not be reached; nothing was sent", errorShape()),
              Outcome::Error, r.detail);
      return;
    case UpstreamFailure::Timeout:
    case UpstreamFailure::AfterSend: {
      // Sent without a complete answer: the payment may have happened, so the error is the
      // key's outcome and the request is never sent again under it.
      const bool timedOut = r.failure == UpstreamFailure::Timeout;
      HttpAnswer p = problemAnswer(
          timedOut ? Problem::UpstreamTimeout : Problem::UpstreamFailed,
          std::string(timedOut ? "the upstream did not answer in time"
                               : "the upstream failed after the request was sent") +
              "; the request may have taken effect and is not sent again under this key",
          errorShape());
      recordOutcome(p, p, kFlagProxyError, Outcome::Error);
      return;
    }
    case UpstreamFailure::None:
      break;
  }
  const bool released = std::find(ic.release_statuses.begin(), ic.release_statuses.end(),
                                  r.answer.status) != ic.release_statuses.end();
  if (r.body_over_limit) {
    // Past max_response_body: what the upstream sends next is streamed to this client (memory
    // stays bounded), after the compact outcome retries replay is durable. A released status
    // is not recorded at all: the key is released first, then the answer streamed.
    rest_ = std::move(r.rest);
    if (released) {
      release(std::move(r.answer), Outcome::Released, "released status");
      return;
    }
    HttpAnswer p = problemAnswer(Problem::ResponseNotReplayable,
                                 "the original response was larger than max_response_body; it "
                                 "was delivered once and is not executed again",
                                 errorShape());
    recordOutcome(std::move(r.answer), std::move(p), kFlagProxyError | kFlagNotReplayable,
                  Outcome::Forwarded);
    return;
  }
  if (released) {
    release(std::move(r.answer), Outcome::Released, "released status");
    return;
  }
  if (r.answer.body.size() > ic.max_response_body) {
    HttpAnswer p = problemAnswer(Problem::ResponseNotReplayable,
                                 "the original response was larger than max_response_body; it "
                                 "was delivered once and is not executed again",
                                 errorShape());
    recordOutcome(std::move(r.answer), std::move(p), kFlagProxyError | kFlagNotReplayable,
                  Outcome::Forwarded);
    return;
  }
  HttpAnswer recorded = forRecording(r.answer);
  recordOutcome(std::move(r.answer), std::move(recorded), kFlagNone, Outcome::Forwarded);
}

void ProxyRequest::recordOutcome(HttpAnswer clientAnswer, HttpAnswer recorded, uint32_t flags,
                                 Outcome outcome) {
  setState(RequestState::Recording);
  pending_answer_ = std::move(clientAnswer);
  pending_outcome_ = outcome;
  record_flags_ = flags;
  if (flags & kFlagProxyError) recorded_problem_ = recorded;  // small: a problem document
  writeRecord(std::move(recorded));
}

HttpAnswer ProxyRequest::recordedAnswer() const {
  return (record_flags_ & kFlagProxyError) ? recorded_problem_ : forRecording(pending_answer_);
}

void ProxyRequest::writeRecord(HttpAnswer recorded) {
  RecordRequest rq;
  rq.id = id_;
  rq.owner = owner_;
  rq.answer = std::move(recorded);
  rq.flags = record_flags_;
  RequestLoop* w = &loop_;
  shared_.store().record(std::move(rq), [self = shared_from_this(), w](RecordResult res) mutable {
    w->post([self = std::move(self), res = std::move(res)]() mutable {
      self->onRecorded(std::move(res));
    });
  });
}

void ProxyRequest::onRecorded(RecordResult res) {
  if (res.error != StoreError::None) {
    shared_.observer().event("record-failed", route_->name, toString(res.error));
    // No answer leaves without its record: a client that saw an answer must find it on retry.
    if (res.error == StoreError::Full && !(record_flags_ & kFlagNotReplayable)) {
      // The answer does not fit: keep what fits in the store's headroom (status only, replayed
      // as response-not-replayable) so that the key is settled and never forwarded again.
      record_flags_ |= kFlagProxyError | kFlagNotReplayable;
      recorded_problem_ = problemAnswer(Problem::ResponseNotReplayable,
                                        "the original response did not fit in the store; it was "
                                        "delivered once and is not executed again",
                                        errorShape());
      writeRecord(recordedAnswer());
      return;
    }
    const int64_t now = shared_.clock().wallMs();
    if (now + record_retry_.count() + kRecordRetryMargin.count() < lease_until_ms_) {
      // A failing store may come back while the lease lasts: try again, backing off.
      if (!record_timer_) {
        record_timer_.reset(evtimer_new(
            loop_.base(),
            [](evutil_socket_t, short, void* arg) {
              auto* r = static_cast<ProxyRequest*>(arg);
              auto self = std::move(r->keepalive_);
              r->writeRecord(r->recordedAnswer());
            },
            this));
      }
      const auto us = std::chrono::duration_cast<std::chrono::microseconds>(record_retry_).count();
      timeval tv{static_cast<time_t>(us / 1'000'000), static_cast<suseconds_t>(us % 1'000'000)};
      evtimer_add(record_timer_.get(), &tv);
      record_retry_ = std::min(record_retry_ * 2, std::chrono::milliseconds(1'000));
      keepalive_ = shared_from_this();
      return;
    }
    // The lease is running out: the client is told the store failed, not what the upstream
    // said (which nobody could replay). The key stays in flight and becomes outcome-unknown.
    respondProblem(Problem::StoreUnavailable,
                   "the answer could not be recorded; the request may have taken effect and is "
                   "not sent again under this key",
                   Outcome::Error);
    ownerDone();
    return;
  }
  if (res.status == RecordStatus::AlreadyFinal) {
    shared_.observer().event("late-owner", route_->name,
                             "status " + std::to_string(pending_answer_.status) +
                                 " not recorded: the key was taken over or another outcome stands");
    if (res.record.state == RecordState::Completed && res.record.fingerprint == fingerprint_) {
      replay(res.record);  // one answer per key: the one that stands
    } else {
      // Taken over under `abandoned: retry` and still in flight (or expired and reused by
      // another request): no outcome of this request stands, so this client gets what its own
      // exchange produced.
      deliver(pending_answer_, pending_outcome_);
    }
  } else {
    deliver(pending_answer_, pending_outcome_);
  }
  ownerDone();
}

void ProxyRequest::release(HttpAnswer clientAnswer, Outcome outcome, std::string_view detail) {
  setState(RequestState::Releasing);
  RequestLoop* w = &loop_;
  shared_.store().release(id_, owner_,
                          [self = shared_from_this(), w, clientAnswer = std::move(clientAnswer),
                           outcome, detail = std::string(detail)](WriteResult res) mutable {
                            w->post([self = std::move(self), clientAnswer = std::move(clientAnswer),
                                     outcome, detail = std::move(detail), res]() mutable {
                              if (res.error != StoreError::None) {
                                self->shared_.observer().event("release-failed", self->route_->name,
                                                               toString(res.error));
                              }
                              self->deliver(clientAnswer, outcome, detail);
                              self->ownerDone();
                            });
                          });
}

void ProxyRequest::deliver(const HttpAnswer& answer, Outcome outcome, std::string_view detail) {
  if (rest_) {
    streamAnswer(answer, outcome, detail);
  } else {
    respond(answer, false, outcome, detail);
  }
}

void ProxyRequest::ownerDone() {
  if (!own_reservation_) return;
  own_reservation_ = false;
  shared_.waiters().ownerFinished(id_);
}

// ---- Answers ----

void ProxyRequest::replay(const Record& record) {
  respond(record.answer, true, Outcome::Replayed);
}

void ProxyRequest::replayOrReconcile(const Record& record) {
  if (record.uncertain() && route_->idempotency->reconcile) {
    startReconcile(record);
    return;
  }
  replay(record);
}

void ProxyRequest::respondProblem(Problem p, std::string_view detail, Outcome outcome) {
  HttpAnswer a = problemAnswer(p, detail, errorShape());
  if (p == Problem::KeyInUse) a.headers.push_back({"Retry-After", std::to_string(retry_after_s_)});
  respond(a, false, outcome, problemSlug(p));
}

bool ProxyRequest::replayView(const RecordView& record) {
  // respond(answer, true, Outcome::Replayed) without the copies; the caller reports when this
  // returns true.
  if (state_ == RequestState::Responded) return false;
  setState(RequestState::Responded);
  const bool head = method_ == "HEAD";
  client_->beginReply(record.status);
  record.forEachHeader([&](std::string_view name, std::string_view value) {
    if (!head && iequals(name, "Content-Length")) return;
    client_->addField(name, value);
  });
  sendReply(record.body, true);
  return true;
}

void ProxyRequest::respond(const HttpAnswer& answer, bool replayed, Outcome outcome,
                           std::string_view detail) {
  if (state_ == RequestState::Responded) return;
  rest_.reset();  // a body past the limit that is not streamed: its connection closes
  if (state_ == RequestState::Streaming) {
    // The head is out already (an exception mid-stream): all that can be said is "cut short".
    setState(RequestState::Responded);
    client_->endBody(false);
    return;
  }
  setState(RequestState::Responded);
  client_->beginReply(answer.status);
  for (const auto& h : answer.headers) {
    if (iequals(h.name, "Content-Length") && method_ != "HEAD") continue;
    client_->addField(h.name, h.value);
  }
  // Reported first: the answer may reach the client, and its next request be logged, before
  // this function returns.
  report(answer.status, outcome, detail);
  sendReply(answer.body, replayed);
}

void ProxyRequest::sendReply(std::string_view body, bool replayed) {
  if (replayed) client_->addField("Idempotent-Replayed", "true");
  // Draining: keep-alive clients move on to another instance.
  client_->endReply(body, shared_.draining());
}

void ProxyRequest::report(int status, Outcome outcome, std::string_view detail) {
  RequestReport r;
  r.route = route_ ? std::string_view(route_->name) : std::string_view();
  r.method = method_;
  r.path = path_;
  r.status = status;
  r.outcome = outcome;
  r.duration_ms =
      std::chrono::duration<double, std::milli>(RequestSteady::now() - started_).count();
  r.key = key_;
  r.detail = detail;
  shared_.observer().requestDone(r);
}

}  // namespace idem
