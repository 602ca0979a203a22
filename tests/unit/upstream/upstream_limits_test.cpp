// The upstream clients under hostile or unlucky upstreams: bodies past the limit, transfer
// codings this proxy does not read, idle connections the upstream closes, answers that arrive
// as the exchange's timer fires. Both clients (built-in HTTP/1.1 and libcurl).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <map>
#include <mutex>
#include <optional>
#include <thread>

#include "base/c_handles.h"
#include "support/test_http_server.h"
#include "support/upstream_fixture.h"
#include "upstream/upstream.h"

namespace idem {
namespace {

using namespace std::chrono_literals;
using testing::ReceivedRequest;
using testing::Reply;
using testing::TestHttpServer;

class UpstreamLimitsTest : public testing::UpstreamFixture {
 protected:
  static UpstreamRequest post(size_t limit) {
    UpstreamRequest r{"POST", "/pay", {}, "{}"};
    r.max_response_body = limit;
    return r;
  }
};

std::string head(std::string_view fields) {
  return "HTTP/1.1 201 Created\r\nX-Payment: p1\r\n" + std::string(fields) + "\r\n";
}

// What a streamed rest delivered: every piece, how it ended, and whether a piece came while
// the consumer had paused.
struct Drained {
  std::string body;
  std::optional<bool> complete;
  std::string detail;
  bool pieceWhilePaused = false;
};

TEST_P(UpstreamLimitsTest, BodyPastTheRequestLimitIsHandedOverAndReadOnDemand) {
  std::string big(1 << 20, 'b');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>('a' + i % 26);
  TestHttpServer server([&](const ReceivedRequest& r) {
    if (r.target == "/length") return Reply::bytes(head("Content-Length: 1048576\r\n") + big);
    if (r.target == "/chunked") {
      std::string raw = head("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n");
      for (size_t off = 0; off < big.size(); off += 0x4000) {
        raw += "4000\r\n" + big.substr(off, 0x4000) + "\r\n";
      }
      return Reply::bytes(raw + "0\r\n\r\n");
    }
    Reply reply = Reply::bytes(head("") + big);  // no framing: the body ends at the close
    reply.closeAfter = true;
    return reply;
  });
  PooledUpstream up(base_.get(), config(server.url()), 4, GetParam());
  for (const char* path : {"/length", "/chunked", "/close"}) {
    UpstreamRequest req = post(64 * 1024);
    req.path_and_query = path;
    UpstreamResult r = exchange(up, req);
    ASSERT_EQ(r.failure, UpstreamFailure::None) << path << ": " << r.detail;
    ASSERT_TRUE(r.body_over_limit) << path;
    ASSERT_TRUE(r.rest) << path;
    EXPECT_EQ(r.answer.status, 201) << path;
    EXPECT_LE(r.answer.body.size(), 64u * 1024) << path;
    EXPECT_EQ(r.answer.headers.at(0), (Header{"X-Payment", "p1"})) << path;
    const bool lengthKept = std::any_of(r.answer.headers.begin(), r.answer.headers.end(),
                                        [](const Header& h) { return h.name == "Content-Length"; });
    EXPECT_EQ(lengthKept, std::string(path) == "/length") << path;
    // Read the rest, pausing after every piece and resuming from the loop.
    Drained got;
    got.body = r.answer.body;
    bool paused = false;
    UpstreamBody* rest = r.rest.get();
    std::pair<bool*, UpstreamBody*> arg{&paused, rest};
    EventPtr resume(event_new(
        base_.get(), -1, 0,
        [](evutil_socket_t, short, void* a) {
          auto* p = static_cast<std::pair<bool*, UpstreamBody*>*>(a);
          *p->first = false;
          p->second->resume();
        },
        &arg));
    rest->start(
        [&](std::string_view piece) {
          if (paused) got.pieceWhilePaused = true;
          got.body.append(piece);
          rest->pause();
          paused = true;
          timeval tv{0, 1000};
          event_add(resume.get(), &tv);
        },
        [&](bool complete, std::string_view detail) {
          got.complete = complete;
          got.detail = detail;
        });
    ASSERT_TRUE(runUntil([&] { return got.complete.has_value(); })) << path;
    EXPECT_TRUE(*got.complete) << path << ": " << got.detail;
    EXPECT_FALSE(got.pieceWhilePaused) << path;
    EXPECT_TRUE(got.body == big) << path << ": " << got.body.size() << " bytes";
  }
  // At the limit exactly: a whole answer.
  UpstreamRequest exact = post(big.size());
  exact.path_and_query = "/length";
  UpstreamResult r = exchange(up, exact);
  ASSERT_EQ(r.failure, UpstreamFailure::None) << r.detail;
  EXPECT_FALSE(r.body_over_limit);
  EXPECT_FALSE(r.rest);
  EXPECT_EQ(r.answer.body.size(), big.size());
}

TEST_P(UpstreamLimitsTest, ADroppedRestClosesItsConnectionAndTheNextExchangeIsWhole) {
  const std::string block(256 * 1024, 'e');
  TestHttpServer server([&](const ReceivedRequest& r) {
    if (r.target == "/endless") {
      std::string raw = head("");
      for (int i = 0; i < 64; ++i) raw += block;  // 16 MiB: more than the sockets hold
      return Reply::bytes(raw);
    }
    return Reply::respond(201, {}, "whole");
  });
  PooledUpstream up(base_.get(), config(server.url()), 1, GetParam());  // one connection
  UpstreamRequest req = post(64 * 1024);
  req.path_and_query = "/endless";
  UpstreamResult r = exchange(up, req);
  ASSERT_TRUE(r.rest);
  size_t got = 0;
  r.rest->start([&](std::string_view piece) { got += piece.size(); },
                [&](bool, std::string_view) { ADD_FAILURE() << "the body never ends"; });
  ASSERT_TRUE(runUntil([&] { return got > 512 * 1024; }));
  r.rest.reset();  // the consumer leaves mid-body
  EXPECT_TRUE(server.waitClosedConnections(1, 5s)) << "the connection stays open";
  UpstreamRequest next = post(64 * 1024);
  next.path_and_query = "/next";
  UpstreamResult n = exchange(up, next);
  ASSERT_EQ(n.failure, UpstreamFailure::None) << n.detail;
  EXPECT_EQ(n.answer.body, "whole");
  EXPECT_EQ(server.connections(), 2) << "a connection left mid-body is never pooled";
}

TEST_P(UpstreamLimitsTest, ARestAlreadyReceivedWholeIsDeliveredWhole) {
  // The upstream sends everything at once and stays silent: whatever read the last bytes,
  // they are delivered without waiting for the socket to say more (bodies of a few sizes, so
  // that the last read falls at each place of the client's read loop).
  for (size_t size : {100000u, 116384u, 132768u, 149152u, 165536u}) {
    TestHttpServer server([&](const ReceivedRequest&) {
      return Reply::bytes(head("Content-Length: " + std::to_string(size) + "\r\n") +
                          std::string(size, 'w'));
    });
    UpstreamConfig c = config(server.url());
    c.timeout = std::chrono::milliseconds(1000);
    PooledUpstream up(base_.get(), c, 1, GetParam());
    UpstreamResult r = exchange(up, post(1024));
    ASSERT_TRUE(r.rest) << r.detail;
    size_t got = r.answer.body.size();
    std::optional<bool> complete;
    std::string detail;
    r.rest->start([&](std::string_view piece) { got += piece.size(); },
                  [&](bool ok, std::string_view why) {
                    complete = ok;
                    detail = why;
                  });
    ASSERT_TRUE(runUntil([&] { return complete.has_value(); }));
    EXPECT_TRUE(*complete) << size << ": " << detail;
    EXPECT_EQ(got, size);
  }
}

TEST_P(UpstreamLimitsTest, ARestThatStopsComingEndsAfterTheTimeoutCutShort) {
  TestHttpServer server([&](const ReceivedRequest&) {
    // Announces more than it sends, then keeps the connection open, silent.
    Reply reply = Reply::bytes(head("Content-Length: 200000\r\n") + std::string(100000, 's'));
    return reply;
  });
  UpstreamConfig c = config(server.url());
  c.timeout = std::chrono::milliseconds(300);
  PooledUpstream up(base_.get(), c, 1, GetParam());
  UpstreamResult r = exchange(up, post(1024));
  ASSERT_TRUE(r.rest) << r.detail;
  std::optional<bool> complete;
  std::string detail;
  r.rest->start([](std::string_view) {},
                [&](bool ok, std::string_view why) {
                  complete = ok;
                  detail = why;
                });
  ASSERT_TRUE(runUntil([&] { return complete.has_value(); }));
  EXPECT_FALSE(*complete);
  EXPECT_NE(detail.find("no byte"), std::string::npos) << detail;
}

TEST_P(UpstreamLimitsTest, BodyPastTheUpstreamCapFailsAfterSend) {
  TestHttpServer server([](const ReceivedRequest& r) {
    std::string body(256 * 1024, 'x');
    if (r.target == "/endless") return Reply::bytes(head("") + body);
    return Reply::bytes(head("Content-Length: " + std::to_string(body.size()) + "\r\n") + body);
  });
  UpstreamConfig c = config(server.url());
  c.max_response_body = 100 * 1024;  // the pass-through cap: the request sets no limit
  PooledUpstream up(base_.get(), c, 4, GetParam());
  for (const char* path : {"/length", "/endless"}) {
    UpstreamRequest req = post(0);
    req.path_and_query = path;
    UpstreamResult r = exchange(up, req);
    EXPECT_EQ(r.failure, UpstreamFailure::AfterSend) << path << ": " << r.detail;
    EXPECT_LT(r.latency, 2s) << path;
  }
}

TEST_P(UpstreamLimitsTest, TransferCodingsOtherThanALoneChunkedAreRefused) {
  TestHttpServer server([](const ReceivedRequest& r) {
    if (r.target == "/gzip-chunked") {
      return Reply::bytes(head("Transfer-Encoding: gzip, chunked\r\n") +
                          "3\r\n\x1f\x8b\x08\r\n0\r\n\r\n");
    }
    if (r.target == "/two-fields") {
      return Reply::bytes(head("Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n") +
                          "2\r\nok\r\n0\r\n\r\n");
    }
    if (r.target == "/gzip") {
      Reply reply = Reply::bytes(head("Transfer-Encoding: gzip\r\n") + "\x1f\x8b\x08");
      reply.closeAfter = true;
      return reply;
    }
    return Reply::bytes(head("Transfer-Encoding:  Chunked \r\n") + "2\r\nok\r\n0\r\n\r\n");
  });
  PooledUpstream up(base_.get(), config(server.url()), 4, GetParam());
  for (const char* path : {"/gzip-chunked", "/two-fields", "/gzip"}) {
    UpstreamRequest req = post(0);
    req.path_and_query = path;
    UpstreamResult r = exchange(up, req);
    EXPECT_EQ(r.failure, UpstreamFailure::AfterSend) << path << ": " << r.answer.body;
  }
  UpstreamRequest plain = post(0);
  plain.path_and_query = "/chunked";
  UpstreamResult r = exchange(up, plain);
  ASSERT_EQ(r.failure, UpstreamFailure::None) << r.detail;
  EXPECT_EQ(r.answer.body, "ok");
}

TEST_P(UpstreamLimitsTest, FieldNamesThatAreNotTokensAreDroppedNotTheAnswer) {
  // libhttp-parser refuses a whole answer for one such line; both clients drop the field
  // (a name with spaces around it loses them, RFC 9112 §5.1), in interim answers too.
  TestHttpServer server([](const ReceivedRequest&) {
    return Reply::bytes(
        "HTTP/1.1 100 Continue\r\nX Early: 1\r\n\r\n"
        "HTTP/1.1 201 Created\r\nX Bad Name: v\r\nX-Sp : s\r\n"
        "X-Good: g\r\nContent-Length: 2\r\n\r\nok");
  });
  PooledUpstream up(base_.get(), config(server.url()), 4, GetParam());
  UpstreamResult r = exchange(up, post(0));
  ASSERT_EQ(r.failure, UpstreamFailure::None) << r.detail;
  EXPECT_EQ(r.answer.status, 201);
  EXPECT_EQ(r.answer.headers, (Headers{{"X-Sp", "s"}, {"X-Good", "g"}, {"Content-Length", "2"}}));
  EXPECT_EQ(r.answer.body, "ok");
}

TEST_P(UpstreamLimitsTest, IdleTimeoutIsTheUpstreamsSetting) {
  // An upstream with a 1.2 s keep-alive: a request arriving on a connection idle longer finds
  // it closed (its timer fired as the request crossed), unanswered. idle_timeout 1 s keeps
  // the proxy from ever sending on such a connection.
  std::mutex mu;
  std::map<int, std::chrono::steady_clock::time_point> answeredAt;
  TestHttpServer server([&](const ReceivedRequest& r) {
    std::lock_guard lock(mu);
    auto now = std::chrono::steady_clock::now();
    auto it = answeredAt.find(r.connection);
    if (it != answeredAt.end() && now - it->second > 1200ms) return Reply::close();
    answeredAt[r.connection] = now;
    return Reply::respond(200, {}, "ok");
  });
  UpstreamConfig c = config(server.url());
  c.idle_timeout = 1s;
  PooledUpstream up(base_.get(), c, 4, GetParam());
  ASSERT_EQ(exchange(up, post(0)).failure, UpstreamFailure::None);
  ASSERT_EQ(exchange(up, post(0)).failure, UpstreamFailure::None);
  EXPECT_EQ(server.connections(), 1);      // reused while fresh
  runUntil([] { return false; }, 1500ms);  // idle past both timeouts: the time is the test
  UpstreamResult r = exchange(up, post(0));
  EXPECT_EQ(r.failure, UpstreamFailure::None) << r.detail;
  EXPECT_EQ(server.connections(), 2);
}

// One connection, answered only when the test says so; says when the answer was written.
class HeldAnswerServer {
 public:
  explicit HeldAnswerServer(std::string answer) : answer_(std::move(answer)) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    EXPECT_EQ(bind(fd_, reinterpret_cast<sockaddr*>(&sa), len), 0);
    EXPECT_EQ(listen(fd_, 4), 0);
    getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] { serve(); });
  }
  ~HeldAnswerServer() {
    shutdown(fd_, SHUT_RDWR);
    release();
    thread_.join();
    ::close(fd_);
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  bool received() {
    std::lock_guard lock(mu_);
    return received_;
  }
  void release() {
    std::lock_guard lock(mu_);
    go_ = true;
    cv_.notify_all();
  }
  void waitWritten() {
    std::unique_lock lock(mu_);
    cv_.wait(lock, [this] { return written_; });
  }

 private:
  void serve() {
    int c = accept(fd_, nullptr, nullptr);
    if (c < 0) return;
    std::string got;
    char buf[4096];
    while (got.find("\r\n\r\n") == std::string::npos) {
      ssize_t n = recv(c, buf, sizeof buf, 0);
      if (n <= 0) break;
      got.append(buf, static_cast<size_t>(n));
    }
    std::unique_lock lock(mu_);
    received_ = true;
    cv_.wait(lock, [this] { return go_; });
    lock.unlock();
    size_t off = 0;
    while (off < answer_.size()) {
      ssize_t n = send(c, answer_.data() + off, answer_.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
    lock.lock();
    written_ = true;
    cv_.notify_all();
    lock.unlock();
    recv(c, buf, sizeof buf, 0);  // until the client closes
    ::close(c);
  }

  std::string answer_;
  int fd_ = -1;
  uint16_t port_ = 0;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool received_ = false, go_ = false, written_ = false;
};

TEST_P(UpstreamLimitsTest, AnswerCompleteWhenTheTimerFiresIsTaken) {
  // 48 KiB: whole in the socket buffer, more than one 16 KiB read.
  const std::string body(48 * 1024, 'a');
  HeldAnswerServer server("HTTP/1.1 201 Created\r\nContent-Length: " + std::to_string(body.size()) +
                          "\r\n\r\n" + body);
  UpstreamConfig c = config(server.url());
  c.timeout = 300ms;
  PooledUpstream up(base_.get(), c, 4, GetParam());
  const auto sent = std::chrono::steady_clock::now();
  std::optional<UpstreamResult> result;
  up.send(post(0), [&](UpstreamResult r) { result = std::move(r); });
  ASSERT_TRUE(runUntil([&] { return server.received(); }, 2s));
  // The whole answer arrives while the loop is not running, and the deadline passes: the
  // socket and the timer are ready at once when the loop runs again.
  server.release();
  server.waitWritten();
  std::this_thread::sleep_until(sent + c.timeout + 50ms);
  ASSERT_TRUE(runUntil([&] { return result.has_value(); }, 2s));
  ASSERT_EQ(result->failure, UpstreamFailure::None) << result->detail;
  EXPECT_EQ(result->answer.status, 201);
  EXPECT_EQ(result->answer.body.size(), body.size());
}

INSTANTIATE_TEST_SUITE_P(Backends, UpstreamLimitsTest,
                         ::testing::Values(UpstreamBackend::Auto, UpstreamBackend::Curl),
                         [](const ::testing::TestParamInfo<UpstreamBackend>& p) {
                           return p.param == UpstreamBackend::Curl ? "Curl" : "Http1";
                         });

}  // namespace
}  // namespace idem
