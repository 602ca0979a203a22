// The upstream clients under hostile or unlucky upstreams: bodies past the limit, transfer
// codings this proxy does not read, idle connections the upstream closes, answers that arrive
// as the exchange's timer fires. Both clients (built-in HTTP/1.1 and libcurl).
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

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

TEST_P(UpstreamLimitsTest, BodyPastTheRequestLimitEndsWithTheHeadOnly) {
  const std::string big(1 << 20, 'b');
  TestHttpServer server([&](const ReceivedRequest& r) {
    if (r.target == "/length") return Reply::bytes(head("Content-Length: 1048576\r\n") + big);
    if (r.target == "/chunked") {
      std::string chunk = "4000\r\n" + std::string(0x4000, 'c') + "\r\n";
      std::string raw = head("Transfer-Encoding: chunked\r\n");
      for (int i = 0; i < 64; ++i) raw += chunk;
      return Reply::bytes(raw + "0\r\n\r\n");
    }
    // No framing: the body runs until the upstream closes, which it never does.
    return Reply::bytes(head("") + big);
  });
  PooledUpstream up(base_.get(), config(server.url()), 4, GetParam());
  for (const char* path : {"/length", "/chunked", "/endless"}) {
    UpstreamRequest req = post(64 * 1024);
    req.path_and_query = path;
    UpstreamResult r = exchange(up, req);
    ASSERT_EQ(r.failure, UpstreamFailure::None) << path << ": " << r.detail;
    EXPECT_TRUE(r.body_over_limit) << path;
    EXPECT_EQ(r.answer.status, 201) << path;
    EXPECT_EQ(r.answer.body, "") << path;
    EXPECT_EQ(r.answer.headers.at(0), (Header{"X-Payment", "p1"})) << path;
    EXPECT_LT(r.latency, 2s) << path;  // not the 5 s timeout: the endless body is not awaited
  }
  // At the limit exactly: a whole answer.
  UpstreamRequest exact = post(big.size());
  exact.path_and_query = "/length";
  UpstreamResult r = exchange(up, exact);
  ASSERT_EQ(r.failure, UpstreamFailure::None) << r.detail;
  EXPECT_FALSE(r.body_over_limit);
  EXPECT_EQ(r.answer.body.size(), big.size());
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
