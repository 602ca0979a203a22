// The request core with an answer past max_response_body: the compact outcome is durable
// before the first byte reaches the client, then the head, the buffered part and the rest are
// streamed with back-pressure; a client that goes away, an upstream that stops, a released
// status and a failing store.
#include <gtest/gtest.h>

#include "request/request.h"
#include "request/request_fixture.h"

namespace idem {
namespace {

using namespace testing_request;  // NOLINT: the fixture and its fakes

class RequestStreamTest : public RequestCoreTest {
 protected:
  void TearDown() override {
    // A stream still running holds its request through these callbacks: let it go (answering
    // nobody) before the fakes die.
    FakeClient::closed = true;
    if (body_->body != nullptr) body_->body->drop();
    RequestCoreTest::TearDown();
  }

  // An answer whose body passed the limit: `part` read so far, the rest behind body_.
  UpstreamResult oversized(int status, Headers fields, std::string part) {
    UpstreamResult r;
    r.answer.status = status;
    r.answer.headers = std::move(fields);
    r.answer.body = std::move(part);
    r.body_over_limit = true;
    r.rest = std::make_unique<FakeBody>(body_);
    return r;
  }
  // Up to the upstream's answer: won, forwarded, answered past the limit.
  void forwardOversized(int status = 201, Headers fields = {{"Content-Type", "text/plain"}}) {
    start();
    completeReserve(ReserveStatus::Won, inFlight("me"));
    completeUpstream(oversized(status, std::move(fields), "head-"));
  }
  void completeRecord(StoreError err = StoreError::None) {
    ASSERT_FALSE(store_.records.empty());
    auto done = std::move(store_.records.front().second);
    store_.records.pop_front();
    done({err, RecordStatus::Recorded, {}});
    loop_->drain();
  }

  std::shared_ptr<FakeBody::State> body_ = std::make_shared<FakeBody::State>();
};

TEST_F(RequestStreamTest, TheCompactOutcomeIsDurableBeforeTheFirstByteThenAllIsStreamed) {
  forwardOversized(201, {{"Content-Type", "text/plain"}, {"Content-Length", "15"}});
  EXPECT_FALSE(reply_) << "no byte before the record is durable";
  EXPECT_FALSE(body_->started) << "the upstream is not read while the record is written";
  ASSERT_EQ(store_.records.size(), 1u);
  const RecordRequest& rec = store_.records[0].first;
  EXPECT_EQ(rec.answer.status, 502);
  EXPECT_NE(rec.answer.body.find("response-not-replayable"), std::string::npos);
  EXPECT_TRUE(rec.flags & kFlagNotReplayable);
  EXPECT_EQ(rec.answer.body.find("head-"), std::string::npos) << "compact: not the body";

  completeRecord();
  ASSERT_TRUE(reply_);
  EXPECT_TRUE(reply_->streamed);
  EXPECT_EQ(reply_->status, 201);
  EXPECT_EQ(reply_->length, 15) << "the upstream's length frames the stream";
  EXPECT_FALSE(reply_->has("Content-Length")) << "framing is the sink's";
  EXPECT_EQ(reply_->field("Content-Type"), "text/plain");
  EXPECT_EQ(reply_->body, "head-");
  ASSERT_TRUE(body_->started);
  body_->push("01234");
  body_->push("56789");
  EXPECT_EQ(reply_->body, "head-0123456789");
  EXPECT_FALSE(reply_->ended);
  body_->finish(true);
  loop_->drain();
  EXPECT_TRUE(reply_->ended);
  EXPECT_TRUE(reply_->complete);
  EXPECT_TRUE(body_->destroyed);
  EXPECT_EQ(observer_.done.back(), std::make_pair(201, Outcome::Forwarded));
  EXPECT_EQ(store_.records.size(), 0u) << "one record, written once";
}

TEST_F(RequestStreamTest, APassThroughAnswerPastTheUpstreamsBufferIsStreamedWithoutTheStore) {
  start("GET", "/status", "");
  ASSERT_EQ(upstream_->sent.size(), 1u);
  EXPECT_GT(upstream_->sent[0].first.max_response_body, 0u) << "the upstream's buffer bounds it";
  completeUpstream(oversized(200, {{"Content-Type", "text/plain"}}, "head-"));
  ASSERT_TRUE(reply_);
  EXPECT_TRUE(reply_->streamed);
  EXPECT_EQ(reply_->status, 200);
  EXPECT_EQ(reply_->body, "head-");
  ASSERT_TRUE(body_->started);
  body_->push("rest");
  body_->finish(true);
  loop_->drain();
  EXPECT_EQ(reply_->body, "head-rest");
  EXPECT_TRUE(reply_->complete);
  EXPECT_TRUE(store_.reserves.empty());
  EXPECT_TRUE(store_.records.empty());
  EXPECT_EQ(observer_.done.back(), std::make_pair(200, Outcome::Passthrough));
}

TEST_F(RequestStreamTest, NoLengthIsStreamedWithoutOne) {
  forwardOversized();
  completeRecord();
  ASSERT_TRUE(reply_);
  EXPECT_EQ(reply_->length, Downstream::kUnknownLength);
}

TEST_F(RequestStreamTest, TheUpstreamIsReadOnlyWhileTheClientTakesWhatIsQueued) {
  forwardOversized();
  FakeClient::current->bound = 8;  // bytes queued past which the client says "wait"
  completeRecord();
  ASSERT_TRUE(body_->started);
  EXPECT_FALSE(body_->paused);
  body_->push("0123");  // 5 + 4 queued: over the bound
  EXPECT_TRUE(body_->paused) << "a slow client pauses the upstream";
  FakeClient::current->drain();
  EXPECT_FALSE(body_->paused) << "resumed once the client took it";
  body_->push("x");
  EXPECT_FALSE(body_->paused);
  body_->finish(true);
  loop_->drain();
  EXPECT_EQ(reply_->body, "head-0123x");
  EXPECT_TRUE(reply_->complete);
}

TEST_F(RequestStreamTest, ABufferedPartOverTheBoundStartsThePausedUpstream) {
  forwardOversized();
  FakeClient::current->bound = 2;
  completeRecord();
  ASSERT_TRUE(body_->started);
  EXPECT_TRUE(body_->paused);
  FakeClient::current->drain();
  EXPECT_FALSE(body_->paused);
}

TEST_F(RequestStreamTest, AClientThatGoesAwayEndsTheExchangeNotTheRecord) {
  forwardOversized();
  completeRecord();
  body_->push("more");
  // The connection closes (reset, timeout): the sink wakes its writer, which sees it gone.
  FakeClient::closed = true;
  FakeClient::current->drain();
  loop_->drain();
  EXPECT_TRUE(body_->destroyed) << "the upstream connection is let go, not pooled mid-body";
  EXPECT_TRUE(observer_.saw("stream-cut-short"));
  EXPECT_TRUE(store_.records.empty()) << "the record was written before; nothing more";
  EXPECT_EQ(shared_->active.load(), 0u) << "the request is freed";
  FakeClient::closed = false;
}

TEST_F(RequestStreamTest, AClientGoneBeforeTheStreamStartsNeverReadsTheUpstream) {
  forwardOversized();
  FakeClient::closed = true;
  completeRecord();
  EXPECT_FALSE(body_->started);
  EXPECT_TRUE(body_->destroyed);
  EXPECT_EQ(shared_->active.load(), 0u);
  FakeClient::closed = false;
}

TEST_F(RequestStreamTest, AnUpstreamCutShortIsSeenByTheClientAsCutShort) {
  forwardOversized();
  completeRecord();
  body_->push("more");
  body_->finish(false, "upstream closed the connection before the end of the body");
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_TRUE(reply_->ended);
  EXPECT_FALSE(reply_->complete);
  EXPECT_TRUE(observer_.saw("stream-cut-short"));
  EXPECT_TRUE(body_->destroyed);
}

TEST_F(RequestStreamTest, AReleasedStatusIsReleasedThenStreamedUnrecorded) {
  forwardOversized(503);
  EXPECT_TRUE(store_.records.empty()) << "a released status is not recorded";
  ASSERT_EQ(store_.releases.size(), 1u);
  EXPECT_FALSE(reply_) << "the key is released before the answer goes out";
  auto done = std::move(store_.releases.front().second);
  store_.releases.pop_front();
  done({});
  loop_->drain();
  ASSERT_TRUE(reply_);
  EXPECT_TRUE(reply_->streamed);
  EXPECT_EQ(reply_->status, 503);
  body_->push("rest");
  body_->finish(true);
  loop_->drain();
  EXPECT_EQ(reply_->body, "head-rest");
  EXPECT_TRUE(reply_->complete);
  EXPECT_EQ(observer_.done.back(), std::make_pair(503, Outcome::Released));
}

TEST_F(RequestStreamTest, AStoreThatNeverRecordsGets503AndTheRestIsNotRead) {
  forwardOversized();
  clock_.advance(std::chrono::milliseconds(4'500));  // the lease nearly over: no retry
  completeRecord(StoreError::Io);
  ASSERT_TRUE(reply_);
  EXPECT_FALSE(reply_->streamed);
  EXPECT_EQ(reply_->status, 503);
  EXPECT_FALSE(body_->started);
  EXPECT_TRUE(body_->destroyed);
}

}  // namespace
}  // namespace idem