#pragma once
// One client request through the proxy: the per-request state machine (SPEC §1–3).
//
//   Received ──► Reserving ──► Forwarding ──► Recording ──► Responded
//       │            │  ▲            │            └───► Streaming ──► Responded
//       │            │  │            └──► Releasing ──► Responded (or Streaming)
//       │            ▼  │
//       │         Waiting ──► Responded (replay / 409)
//       │            │ (Reserving or Waiting found an uncertain outcome, SPEC §1.6)
//       │            ▼
//       │       Reconciling ──► Responded (found / unsettled: replay)
//       │            └──► Forwarding (not found)
//       ├──► Responded (replay from a read, 4xx)
//       └──► Forwarding (pass-through) ──► Responded, or Streaming past the upstream's buffer
#include <chrono>
#include <memory>
#include <string>

#include "base/c_handles.h"
#include "base/http_types.h"
#include "config/config.h"
#include "request/context.h"
#include "request/downstream.h"
#include "request/problem.h"
#include "request/reconcile.h"
#include "store/store.h"
#include "upstream/upstream.h"

namespace idem {

enum class RequestState {
  Received,     // parsed and routed; nothing decided yet
  Reserving,    // a reserve is queued at the store writer
  Waiting,      // another owner holds the key; parked until its outcome lands
  Forwarding,   // the exchange with the upstream is running
  Recording,    // the outcome is being written to the store
  Releasing,    // the reservation is being deleted (released status, nothing sent)
  Streaming,    // an answer past max_response_body goes to the client as the upstream sends it
  Reconciling,  // an uncertain outcome is being settled: claim, lookup, settle (SPEC §1.6)
  Responded,    // the answer is sent (or the client is gone); nothing more to do
};
const char* toString(RequestState s);

class ProxyRequest : public std::enable_shared_from_this<ProxyRequest> {
 public:
  // Runs one request to its end: the request keeps itself alive through its pending store
  // operations, timers and upstream exchange, and is freed once answered and done.
  static void start(RequestLoop& loop, std::unique_ptr<Downstream> client);

  ProxyRequest(RequestLoop& loop, std::unique_ptr<Downstream> client);
  ~ProxyRequest();
  ProxyRequest(const ProxyRequest&) = delete;
  ProxyRequest& operator=(const ProxyRequest&) = delete;

 private:
  void run();
  void setState(RequestState next);
  bool readRequest();
  void passThrough();
  void beginIdempotent();
  void reserve();
  void onReserved(ReserveResult result);
  // Waits for `inFlight`'s owner (parked when it is in this process, else polling the store);
  // `pollOnly`: always poll (a reconcile claim held elsewhere: no owner will wake us).
  void waitForOwner(const Record& inFlight, bool pollOnly = false);
  // `ask_writer`: classify by reserving again rather than by a local read (woken by the owner,
  // or the last look before the deadline).
  void onWaitWake(bool ask_writer = false);

 public:
  void onWaitTimerFired();

 private:
  void onWaitTimeout();
  // retry_after_s_ for a 409 while `inFlight`'s owner holds the key (latency.h has the rule).
  void setRetryAfter(const Record& inFlight);
  // Sends the request upstream; the outcome is recorded when this request owns a reservation.
  void forward();
  void onUpstream(UpstreamResult result);
  void recordOutcome(HttpAnswer clientAnswer, HttpAnswer recorded, uint32_t flags, Outcome outcome);
  void writeRecord(HttpAnswer recorded);
  void onRecorded(RecordResult result);
  // What is recorded for pending_answer_ under record_flags_.
  HttpAnswer recordedAnswer() const;
  void release(HttpAnswer clientAnswer, Outcome outcome, std::string_view detail);
  void ownerDone();
  // The settled answer to the first client: sent whole, or streamed when the upstream's body
  // passed max_response_body (rest_ holds the part not read yet).
  void deliver(const HttpAnswer& answer, Outcome outcome, std::string_view detail = {});

  // Streaming (request_stream.cpp): the head and the buffered part, then the rest as it comes,
  // reading the upstream only while the client takes what is queued.
  void streamAnswer(const HttpAnswer& answer, Outcome outcome, std::string_view detail);
  void onStreamData(std::string_view piece);
  void onStreamEnd(bool complete, std::string_view detail);
  void onClientWritable();
  void endStream(bool complete, std::string_view why);

  void replay(const Record& record);
  // replay(), unless the record is an uncertain outcome the route can reconcile.
  void replayOrReconcile(const Record& record);
  // What to do with a record that stands (after a lost claim or settle): replay, reconcile,
  // 422, wait for its owner, or reserve when it is gone or abandoned.
  void dispatchStanding(const Record& record);

  // Reconcile (request_reconcile.cpp).
  void startReconcile(Record uncertain);
  void onClaimed(ClaimResult result);
  void onLookup(UpstreamResult result);
  void onSettled(SettleResult result);
  // Replays from the store's mapped memory; called inside the store's read transaction.
  bool replayView(const RecordView& record);  // false: already answered
  std::vector<std::string> scopeValues() const;
  void respondProblem(Problem p, std::string_view detail, Outcome outcome);
  // The shape of the proxy's own errors here: the route's error_body, the server's, or none
  // (RFC 9457 problem+json).
  const ErrorBody* errorShape() const;
  void respond(const HttpAnswer& answer, bool replayed, Outcome outcome,
               std::string_view detail = {});
  HttpAnswer forRecording(const HttpAnswer& upstreamAnswer) const;
  // respond() in parts: the closing header fields and the body; then the report.
  void sendReply(std::string_view body, bool replayed);
  void report(int status, Outcome outcome, std::string_view detail);

  RequestLoop& loop_;
  RequestShared& shared_;
  ConfigPtr config_;  // the snapshot this request started with
  const RouteConfig* route_ = nullptr;
  std::unique_ptr<Downstream> client_;
  RequestState state_ = RequestState::Received;
  std::chrono::steady_clock::time_point started_;

  std::string method_;
  std::string path_;        // raw, as the client sent it: logs
  std::string match_path_;  // normalised: routing, fingerprint and forwarding
  std::string query_;
  std::string_view body_;  // in the client's buffer, which lives until the reply is sent
  std::string peer_;

  std::string key_;
  std::vector<std::string> scope_;  // values of the route's scope headers
  RecordId id_{};
  Fingerprint fingerprint_{};
  std::string owner_;  // our reservation token once we won
  bool own_reservation_ = false;
  std::shared_ptr<Upstream> upstream_;
  int64_t lease_until_ms_ = 0;  // our reservation's lease (store clock)

  // Recording: the answer the client gets once its record is durable.
  HttpAnswer pending_answer_;
  Outcome pending_outcome_ = Outcome::Forwarded;
  uint32_t record_flags_ = kFlagNone;
  HttpAnswer recorded_problem_;         // what is recorded when record_flags_ has kFlagProxyError
  std::unique_ptr<UpstreamBody> rest_;  // an answer past max_response_body: what is unread
  std::chrono::milliseconds record_retry_{50};
  EventPtr record_timer_;
  // A failing record is retried while the lease lasts, stopping this long before it ends.
  static constexpr std::chrono::milliseconds kRecordRetryMargin{1'000};

  // Reconciling.
  Record uncertain_;   // the uncertain record as found: replayed when nothing is learned
  std::string claim_;  // our reconcile claim token
  UpstreamRequest lookup_;
  LookupVerdict verdict_ = LookupVerdict::Skipped;

  // Waiting.
  uint64_t wait_ticket_ = 0;
  std::chrono::steady_clock::time_point wait_deadline_;
  std::chrono::milliseconds poll_interval_{0};
  EventPtr wait_timer_;
  bool parked_ = false;
  // Watching the store for another process's owner (Store::notifies): since the reserve whose
  // result carried wake_seq_.
  bool watching_ = false;
  uint64_t watch_handle_ = 0;
  uint64_t wake_seq_ = 0;
  int retry_after_s_ = 1;
  std::shared_ptr<ProxyRequest> keepalive_;  // set while only the wait timer refers to us
};

}  // namespace idem
