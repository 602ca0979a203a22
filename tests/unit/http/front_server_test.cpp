// The front door against raw bytes: a real event_base on its own thread, real sockets on
// 127.0.0.1, requests written byte for byte and answers read back the same way.
#include "http/front_server.h"

#include <arpa/inet.h>
#include <event2/thread.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/http_types.h"

namespace idem {
namespace {

using namespace std::chrono_literals;
using SteadyClock = std::chrono::steady_clock;

// Byte strings with NULs in them.
template <size_t N>
std::string bytes(const char (&lit)[N]) {
  return std::string(lit, N - 1);
}

struct Response {
  int status = 0;
  std::string head;
  std::string body;
};

// Splits complete responses off the front of `data` (bodies framed by Content-Length).
std::vector<Response> splitResponses(std::string_view data, bool headOnly = false) {
  std::vector<Response> out;
  while (true) {
    const size_t end = data.find("\r\n\r\n");
    if (end == std::string_view::npos || data.substr(0, 9).size() < 9) return out;
    Response r;
    r.head = std::string(data.substr(0, end + 4));
    r.status = std::atoi(r.head.c_str() + 9);
    size_t length = 0;
    const size_t cl = r.head.find("Content-Length: ");
    if (cl != std::string::npos && !headOnly) length = std::stoul(r.head.substr(cl + 16));
    if (r.status == 100) length = 0;
    if (data.size() < end + 4 + length) return out;
    r.body = std::string(data.substr(end + 4, length));
    out.push_back(std::move(r));
    data.remove_prefix(end + 4 + length);
  }
}

class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  }
  ~Client() { closeNow(); }
  int fd() const { return fd_; }
  bool send(std::string_view data) {
    while (!data.empty()) {
      const ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until EOF (true) or until `enough` says so or the timeout passes (false).
  bool read(std::chrono::milliseconds timeout,
            const std::function<bool(std::string_view)>& enough = {}) {
    const auto deadline = SteadyClock::now() + timeout;
    while (!enough || !enough(data_)) {
      const auto left =
          std::chrono::duration_cast<std::chrono::milliseconds>(deadline - SteadyClock::now());
      if (left <= 0ms) return false;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
      if (n <= 0) {
        eof_ = true;
        return true;
      }
      data_.append(buf, static_cast<size_t>(n));
    }
    return false;
  }
  // Everything until the server closes.
  std::string readAll(std::chrono::milliseconds timeout = 5s) {
    read(timeout);
    return data_;
  }
  // Waits for `n` complete responses and takes them off the input.
  std::vector<Response> responses(size_t n, bool headOnly = false) {
    read(5s, [&](std::string_view d) { return splitResponses(d, headOnly).size() >= n; });
    auto r = splitResponses(data_, headOnly);
    data_.clear();
    return r;
  }
  bool eof() const { return eof_; }
  std::string& data() { return data_; }
  void resetClose() {
    const linger l{1, 0};
    setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    closeNow();
  }
  void closeNow() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_ = -1;
  std::string data_;
  bool eof_ = false;
};

class FrontServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { evthread_use_pthreads(); }

  void start(FrontLimits limits = {}) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(listen_fd_, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    ASSERT_EQ(::listen(listen_fd_, 64), 0);
    socklen_t len = sizeof a;
    getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&a), &len);
    port_ = ntohs(a.sin_port);
    base_.reset(event_base_new());
    server_ = std::make_unique<FrontServer>(
        base_.get(), listen_fd_, limits,
        [this](std::unique_ptr<Downstream> d) {
          ++requests_;
          if (handler_) {
            handler_(std::move(d));
          } else {
            echo(*d);
          }
        },
        [this](std::string_view name, std::string_view detail) {
          std::lock_guard lock(mu_);
          events_.push_back(std::string(name) + ": " + std::string(detail));
          cv_.notify_all();
        });
    server_->setCounters({[this](FrontRefusal why) { refusals_.push_back(why); },  // loop thread
                          [this](int delta) { connections_ += delta; }});
    loop_ = std::thread([this] { event_base_loop(base_.get(), EVLOOP_NO_EXIT_ON_EMPTY); });
  }

  void TearDown() override {
    if (loop_.joinable()) {
      onLoop([this] {
        held_.clear();
        server_.reset();
        event_base_loopbreak(base_.get());
      });
      loop_.join();
    }
    base_.reset();
    if (listen_fd_ >= 0) ::close(listen_fd_);
  }

  // Runs `fn` on the loop thread and waits for it.
  void onLoop(std::function<void()> fn) {
    std::packaged_task<void()> task(std::move(fn));
    auto done = task.get_future();
    event_base_once(
        base_.get(), -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* arg) {
          (*static_cast<std::packaged_task<void()>*>(arg))();
        },
        &task, nullptr);
    done.get();
  }
  // Awaits a condition evaluated on the loop thread.
  bool until(const std::function<bool()>& cond, std::chrono::milliseconds timeout = 5s) {
    const auto deadline = SteadyClock::now() + timeout;
    while (SteadyClock::now() < deadline) {
      bool ok = false;
      onLoop([&] { ok = cond(); });
      if (ok) return true;
      std::this_thread::sleep_for(2ms);
    }
    return false;
  }

  static void echo(Downstream& d) {
    std::string text = std::string(d.method()) + " " + std::string(d.target());
    int fields = 0;
    d.forEachField([&](std::string_view name, std::string_view value) {
      ++fields;
      if (iequals(name, "X-Echo")) text += " x-echo=" + std::string(value);
    });
    text += " fields=" + std::to_string(fields) + " body=" + std::string(d.body());
    d.beginReply(200);
    d.addField("Content-Type", "text/plain");
    d.endReply(text, false);
  }

  std::unique_ptr<Client> connect() { return std::make_unique<Client>(port_); }

  EventBasePtr base_;
  std::unique_ptr<FrontServer> server_;
  std::thread loop_;
  int listen_fd_ = -1;
  uint16_t port_ = 0;
  std::atomic<int> requests_{0};
  std::function<void(std::unique_ptr<Downstream>)> handler_;  // loop thread
  std::vector<std::unique_ptr<Downstream>> held_;             // loop thread
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::string> events_;
  std::vector<FrontRefusal> refusals_;  // loop thread
  int connections_ = 0;                 // loop thread
  std::vector<FrontRefusal> refusals() {
    std::vector<FrontRefusal> out;
    onLoop([&] { out = refusals_; });
    return out;
  }
};

const std::string kSmuggled =
    "POST /smuggled HTTP/1.1\r\nHost: x\r\nIdempotency-Key: SMUG\r\nContent-Length: 0\r\n\r\n";

// ---- Refusals: one 400 (or 413) problem, then the connection closes; nothing dispatched ----

struct Refusal {
  const char* name;
  std::string bytes;
  int status = 400;
};

void PrintTo(const Refusal& r, std::ostream* os) {
  *os << r.name;
}

class FrontRefusalTest : public FrontServerTest, public ::testing::WithParamInterface<Refusal> {};

TEST_P(FrontRefusalTest, AnswersOneProblemAndCloses) {
  FrontLimits limits;
  limits.max_request_body = 1024;
  start(limits);
  auto c = connect();
  c->send(GetParam().bytes);
  const std::string all = c->readAll();
  EXPECT_TRUE(c->eof());
  auto rs = splitResponses(all);
  ASSERT_EQ(rs.size(), 1u) << all;
  EXPECT_EQ(rs[0].status, GetParam().status) << all;
  EXPECT_NE(rs[0].head.find("Content-Type: application/problem+json\r\n"), std::string::npos);
  EXPECT_NE(rs[0].head.find("Connection: close\r\n"), std::string::npos);
  EXPECT_NE(rs[0].body.find(GetParam().status == 413 ? "request-too-large" : "bad-request"),
            std::string::npos)
      << rs[0].body;
  EXPECT_EQ(requests_, 0);
  // Counted once, by kind.
  EXPECT_EQ(refusals(),
            std::vector<FrontRefusal>{GetParam().status == 413 ? FrontRefusal::TooLarge
                                                               : FrontRefusal::Malformed});
}

std::string post(std::string_view fields, std::string_view body = "") {
  return "POST /v1/payments HTTP/1.1\r\nHost: x\r\nIdempotency-Key: outer\r\n" +
         std::string(fields) + "\r\n" + std::string(body);
}

INSTANTIATE_TEST_SUITE_P(
    Framing, FrontRefusalTest,
    ::testing::Values(
        Refusal{"TeXchunked", post("Transfer-Encoding: xchunked\r\n") + kSmuggled},
        Refusal{"TeIdentity", post("Transfer-Encoding: identity\r\n") + kSmuggled},
        Refusal{"TeGzip", post("Transfer-Encoding: gzip\r\n") + kSmuggled},
        Refusal{"TeGzipChunked",
                post("Transfer-Encoding: gzip, chunked\r\n", "3\r\nabc\r\n0\r\n\r\n")},
        Refusal{"TeChunkedGzip", post("Transfer-Encoding: chunked, gzip\r\n") + kSmuggled},
        Refusal{"TeTwoFields",
                post("Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n",
                     "3\r\nabc\r\n0\r\n\r\n")},
        Refusal{"TeInHttp10", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"},
        Refusal{"ContentLengthAndTe",
                post("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", "0\r\n\r\n")},
        Refusal{"ContentLengthPlus", post("Content-Length: +2\r\n", "ab")},
        Refusal{"ContentLengthList", post("Content-Length: 1,2\r\n", "ab")},
        Refusal{"ContentLengthTwoValues",
                post("Content-Length: 2\r\nContent-Length: 3\r\n", "abc")},
        Refusal{"SpaceBeforeColonLength",
                post("Content-Length : " + std::to_string(kSmuggled.size()) + "\r\n", kSmuggled)},
        Refusal{"SpaceBeforeColonTe",
                post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n") + kSmuggled},
        Refusal{"NonTokenName", post("X(bad): v\r\n")},
        Refusal{"NulInValue", bytes("GET / HTTP/1.1\r\nHost: x\r\nIdempotency-Key: abc\0tail\r\n\r\n")},
        Refusal{"NulInTarget", bytes("GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n")},
        Refusal{"CrInTarget", "GET /a\rb HTTP/1.1\r\nHost: x\r\n\r\n"},
        Refusal{"CrInValue", "GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n"},
        Refusal{"CrInName", "GET / HTTP/1.1\r\nHost: x\r\nX\rY: a\r\n\r\n"},
        Refusal{"TwoHosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"},
        Refusal{"NoHost", "GET / HTTP/1.1\r\nX: a\r\n\r\n"},
        Refusal{"ObsFold", "GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n b\r\n\r\n"},
        Refusal{"BadChunkSize", post("Transfer-Encoding: chunked\r\n", "zz\r\nabc\r\n0\r\n\r\n")},
        Refusal{"ChunkWithoutCrlf",
                post("Transfer-Encoding: chunked\r\n", "3\r\nabcX\r\n0\r\n\r\n")},
        Refusal{"ChunkSizeLeadingZeros",
                post("Transfer-Encoding: chunked\r\n", std::string(5000, '0') + "3\r\nabc\r\n")},
        Refusal{"LastChunkSizeLeadingZeros",
                post("Transfer-Encoding: chunked\r\n", std::string(5000, '0') + "\r\n\r\n")},
        Refusal{"ChunkExtensionTooLong",
                post("Transfer-Encoding: chunked\r\n", "3;" + std::string(5000, 'a') + "\r\n")},
        Refusal{"Http12", "GET / HTTP/1.2\r\nHost: x\r\n\r\n"},
        Refusal{"Http20", "GET / HTTP/2.0\r\nHost: x\r\n\r\n"},
        Refusal{"Http09", "GET / HTTP/0.9\r\nHost: x\r\n\r\n"},
        Refusal{"Connect", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n"},
        Refusal{"HeadTooLarge", post("X-Big: " + std::string(70 * 1024, 'a') + "\r\n")},
        Refusal{"TooManyFields",
                [] {
                  std::string f;
                  for (int i = 0; i < 101; ++i) f += "X-F" + std::to_string(i) + ": v\r\n";
                  return "GET / HTTP/1.0\r\n" + f + "\r\n";
                }()},
        Refusal{"DeclaredBodyTooLarge", post("Content-Length: 1025\r\n"), 413},
        Refusal{"DeclaredBodyTooLargeExpect",
                post("Content-Length: 5000000\r\nExpect: 100-continue\r\n"), 413},
        Refusal{"ChunkedBodyTooLarge",
                post("Transfer-Encoding: chunked\r\n",
                     "400\r\n" + std::string(1024, 'a') + "\r\n1\r\nb\r\n0\r\n\r\n"),
                413}),
    [](const ::testing::TestParamInfo<Refusal>& p) { return p.param.name; });

// ---- What is accepted ----

TEST_F(FrontServerTest, LimitsAreInclusive) {
  start();
  auto c = connect();
  std::string f;
  for (int i = 0; i < 99; ++i) f += "X-F" + std::to_string(i) + ": v\r\n";
  c->send("GET /many HTTP/1.1\r\nHost: x\r\n" + f + "\r\n");  // 100 fields
  auto rs = c->responses(1);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].body, "GET /many fields=100 body=");
}

TEST_F(FrontServerTest, ChunkedBodyIsDechunked) {
  start();
  auto c = connect();
  c->send(post("Transfer-Encoding: Chunked \r\n",
               "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nTrailer-X: t\r\n\r\n"));
  auto rs = c->responses(1);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].status, 200);
  EXPECT_EQ(rs[0].body, "POST /v1/payments fields=3 body=hello world");
}

TEST_F(FrontServerTest, KeepAliveServesRequestsInTurn) {
  start();
  auto c = connect();
  for (int i = 0; i < 3; ++i) {
    c->send("POST /k" + std::to_string(i) +
            " HTTP/1.1\r\nHost: x\r\nX-Echo:  v  \r\nContent-Length: 2\r\n\r\nok");
    auto rs = c->responses(1);
    ASSERT_EQ(rs.size(), 1u);
    EXPECT_EQ(rs[0].body, "POST /k" + std::to_string(i) + " x-echo=v fields=3 body=ok");
    EXPECT_EQ(rs[0].head.find("Connection:"), std::string::npos);
    EXPECT_NE(rs[0].head.find("\r\nDate: "), std::string::npos);
  }
  EXPECT_FALSE(c->eof());
  EXPECT_TRUE(until([&] { return server_->openConnections() == 1; }));
}

struct LaterAnswer {
  Downstream* request;
  int* outstanding;
};

TEST_F(FrontServerTest, PipelinedRequestsAreAnsweredInOrderOneAtATime) {
  int outstanding = 0;
  int maxOutstanding = 0;
  handler_ = [&](std::unique_ptr<Downstream> d) {
    maxOutstanding = std::max(maxOutstanding, ++outstanding);
    // Answered 20 ms later from a timer: the next request must wait for this answer.
    const timeval tv{0, 20000};
    event_base_once(
        base_.get(), -1, EV_TIMEOUT,
        [](evutil_socket_t, short, void* arg) {
          std::unique_ptr<LaterAnswer> later(static_cast<LaterAnswer*>(arg));
          std::unique_ptr<Downstream> req(later->request);
          --*later->outstanding;
          echo(*req);
        },
        new LaterAnswer{d.release(), &outstanding}, &tv);
  };
  start();
  auto c = connect();
  std::string three;
  for (int i = 1; i <= 3; ++i) {
    three += "POST /" + std::to_string(i) + " HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n" +
             std::to_string(i);
  }
  c->send(three);  // one write
  auto rs = c->responses(3);
  ASSERT_EQ(rs.size(), 3u);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(rs[static_cast<size_t>(i)].body,
              "POST /" + std::to_string(i + 1) + " fields=2 body=" + std::to_string(i + 1));
  }
  onLoop([&] { EXPECT_EQ(maxOutstanding, 1); });
}

TEST_F(FrontServerTest, NextPipelinedRequestWaitsForTheAnswer) {
  handler_ = [&](std::unique_ptr<Downstream> d) { held_.push_back(std::move(d)); };
  start();
  auto c = connect();
  c->send("GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(until([&] { return held_.size() == 1; }));
  std::this_thread::sleep_for(50ms);  // a negative check: /b is not dispatched meanwhile
  EXPECT_EQ(requests_, 1);
  onLoop([&] {
    EXPECT_EQ(held_[0]->target(), "/a");
    echo(*held_[0]);
  });
  ASSERT_TRUE(until([&] { return held_.size() == 2; }));
  onLoop([&] {
    EXPECT_EQ(held_[1]->target(), "/b");
    echo(*held_[1]);
  });
  auto rs = c->responses(2);
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].body, "GET /a fields=1 body=");
  EXPECT_EQ(rs[1].body, "GET /b fields=1 body=");
}

TEST_F(FrontServerTest, ExpectContinueGets100BeforeTheBodyIsRead) {
  start();
  auto c = connect();
  c->send(post("Content-Length: 5\r\nExpect: 100-continue\r\n"));
  ASSERT_FALSE(c->read(5s, [](std::string_view d) { return d.find("\r\n\r\n") != d.npos; }));
  EXPECT_EQ(c->data(), "HTTP/1.1 100 Continue\r\n\r\n");
  c->data().clear();
  c->send("hello");
  auto rs = c->responses(1);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].body, "POST /v1/payments fields=4 body=hello");
}

TEST_F(FrontServerTest, DeclaredBodyOverLimitIsRefusedBeforeItIsSent) {
  FrontLimits limits;
  limits.max_request_body = 1024 * 1024;
  start(limits);
  auto c = connect();
  c->send(post("Content-Length: 10485760\r\nExpect: 100-continue\r\n"));  // no body sent
  const auto t0 = SteadyClock::now();
  const std::string all = c->readAll(3s);
  EXPECT_LT(SteadyClock::now() - t0, 1s);
  EXPECT_EQ(all.rfind("HTTP/1.1 413 ", 0), 0u) << all;
  EXPECT_EQ(all.find("100 Continue"), std::string::npos);
  EXPECT_TRUE(c->eof());
}

TEST_F(FrontServerTest, HeadAnswerKeepsGivenLengthAndSendsNoBody) {
  handler_ = [](std::unique_ptr<Downstream> d) {
    if (d->method() == "HEAD") {
      d->beginReply(200);
      d->addField("Content-Length", "42");
      d->endReply("", false);
    } else {
      echo(*d);
    }
  };
  start();
  auto c = connect();
  c->send("HEAD /h HTTP/1.1\r\nHost: x\r\n\r\nGET /after HTTP/1.1\r\nHost: x\r\n\r\n");
  c->read(5s, [](std::string_view d) { return d.find("body=") != d.npos; });
  const std::string& all = c->data();
  const size_t headEnd = all.find("\r\n\r\n");
  ASSERT_NE(headEnd, std::string::npos);
  EXPECT_NE(all.substr(0, headEnd).find("Content-Length: 42"), std::string::npos);
  EXPECT_EQ(all.substr(headEnd + 4, 13), "HTTP/1.1 200 ") << all;
}

TEST_F(FrontServerTest, UpgradeIsNotPerformedAndTheNextRequestIsParsed) {
  start();
  auto c = connect();
  c->send(
      "GET /u HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n"
      "GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
  auto rs = c->responses(2);
  ASSERT_EQ(rs.size(), 2u);
  EXPECT_EQ(rs[0].body, "GET /u fields=3 body=");
  EXPECT_EQ(rs[1].body, "GET /next fields=1 body=");
}

TEST_F(FrontServerTest, Http10ClosesUnlessAskedToKeepAlive) {
  start();
  auto c = connect();
  c->send("GET /old HTTP/1.0\r\n\r\n");
  const std::string all = c->readAll();
  EXPECT_TRUE(c->eof());
  EXPECT_NE(all.find("Connection: close\r\n"), std::string::npos);
  auto k = connect();
  k->send("GET /ka HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  auto rs = k->responses(1);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_NE(rs[0].head.find("Connection: keep-alive\r\n"), std::string::npos);
}

// ---- Time and memory bounds ----

TEST_F(FrontServerTest, SlowlorisIsCutOffAtTheWholeRequestDeadline) {
  FrontLimits limits;
  limits.client_timeout = 300ms;
  start(limits);
  auto c = connect();
  const std::string head = post("X-Pad: " + std::string(100, 'a') + "\r\n");
  const auto t0 = SteadyClock::now();
  bool closed = false;
  for (char ch : head) {  // one byte every 100 ms: each read alone is well within the timeout
    if (!c->send(std::string_view(&ch, 1))) {
      closed = true;
      break;
    }
    c->read(100ms, [](std::string_view) { return false; });
    if (c->eof()) {
      closed = true;
      break;
    }
    if (SteadyClock::now() - t0 > 3s) break;
  }
  const auto spent = SteadyClock::now() - t0;
  EXPECT_TRUE(closed);
  EXPECT_GE(spent, 250ms);
  EXPECT_LT(spent, 1500ms);
  EXPECT_EQ(requests_, 0);
  // Told why before the close: 408, the request was not taken.
  auto rs = splitResponses(c->data());
  ASSERT_EQ(rs.size(), 1u) << c->data();
  EXPECT_EQ(rs[0].status, 408);
  EXPECT_NE(rs[0].body.find("request-timeout"), std::string::npos) << rs[0].body;
  EXPECT_NE(rs[0].head.find("Connection: close\r\n"), std::string::npos);
  EXPECT_EQ(refusals(), std::vector<FrontRefusal>{FrontRefusal::Timeout});
}

TEST_F(FrontServerTest, ConnectionsAreCountedOpenAndClosed) {
  start();
  auto a = connect();
  auto b = connect();
  EXPECT_TRUE(until([&] { return connections_ == 2; }));
  a->closeNow();
  EXPECT_TRUE(until([&] { return connections_ == 1; }));
  b->closeNow();
  EXPECT_TRUE(until([&] { return connections_ == 0; }));
}

TEST_F(FrontServerTest, IdleKeepAliveConnectionIsClosed) {
  FrontLimits limits;
  limits.idle_timeout = 200ms;
  start(limits);
  auto c = connect();
  c->send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_EQ(c->responses(1).size(), 1u);
  const auto t0 = SteadyClock::now();
  c->readAll(3s);
  EXPECT_TRUE(c->eof());
  EXPECT_LT(SteadyClock::now() - t0, 1500ms);
  EXPECT_EQ(c->data(), "") << "an idle keep-alive connection is closed without an answer";
  EXPECT_TRUE(refusals().empty());
}

TEST_F(FrontServerTest, EndlessChunkSizeLineIsRefusedWithoutBufferingIt) {
  FrontLimits limits;
  limits.client_timeout = 20s;
  start(limits);
  auto c = connect();
  c->send(post("Transfer-Encoding: chunked\r\n", "1;"));
  std::thread writer([fd = c->fd()] {
    const std::string piece(64 * 1024, 'a');
    for (int i = 0; i < 256; ++i) {  // 16 MiB of chunk extension, no line end
      if (::send(fd, piece.data(), piece.size(), MSG_NOSIGNAL) <= 0) return;
    }
  });
  const auto t0 = SteadyClock::now();
  const std::string all = c->readAll(10s);
  writer.join();
  EXPECT_LT(SteadyClock::now() - t0, 5s);
  EXPECT_EQ(all.rfind("HTTP/1.1 400 ", 0), 0u) << all.substr(0, 200);
  EXPECT_NE(all.find("chunk framing line too long"), std::string::npos);
}

// ---- A Downstream outliving its client, its connection and its server ----

TEST_F(FrontServerTest, DownstreamAnsweredAfterItsClientIsGone) {
  handler_ = [&](std::unique_ptr<Downstream> d) {
    if (d->target() == "/late") {
      held_.push_back(std::move(d));
    } else {
      echo(*d);
    }
  };
  start();
  auto c = connect();
  c->send(post("Content-Length: 7\r\n", "payload").replace(5, 12, "/late"));
  ASSERT_TRUE(until([&] { return held_.size() == 1; }));
  c->resetClose();
  ASSERT_TRUE(until([&] { return server_->openConnections() == 0; }));
  onLoop([&] {
    Downstream& d = *held_[0];
    EXPECT_EQ(d.method(), "POST");
    EXPECT_EQ(d.target(), "/late");
    EXPECT_EQ(d.body(), "payload");
    d.beginReply(201);
    d.addField("X", "y");
    d.endReply("too late", false);
    held_.clear();
  });
  auto next = connect();
  next->send("GET /next HTTP/1.1\r\nHost: x\r\n\r\n");
  auto rs = next->responses(1);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].body, "GET /next fields=1 body=");

  // And one whose server is destroyed first.
  auto third = connect();
  third->send("GET /late HTTP/1.1\r\nHost: x\r\nX-Echo: kept\r\n\r\n");
  ASSERT_TRUE(until([&] { return held_.size() == 1; }));
  onLoop([&] {
    server_.reset();
    Downstream& d = *held_[0];
    EXPECT_EQ(d.target(), "/late");
    int fields = 0;
    d.forEachField([&](std::string_view, std::string_view) { ++fields; });
    EXPECT_EQ(fields, 2);
    d.beginReply(200);
    d.endReply("nobody listens", true);
    held_.clear();
  });
  third->readAll(2s);
  EXPECT_TRUE(third->eof());
}

TEST_F(FrontServerTest, DrainClosesIdleConnectionsAndClosesAfterAnswers) {
  handler_ = [&](std::unique_ptr<Downstream> d) {
    if (d->target() == "/hold") {
      held_.push_back(std::move(d));
    } else {
      echo(*d);
    }
  };
  start();
  auto idle = connect();
  idle->send("GET / HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_EQ(idle->responses(1).size(), 1u);
  auto busy = connect();
  busy->send("GET /hold HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(until([&] { return held_.size() == 1; }));
  onLoop([&] {
    server_->stopAccepting();
    server_->closeIdleAndFinish();
    EXPECT_EQ(server_->openConnections(), 1u);
  });
  idle->readAll(2s);
  EXPECT_TRUE(idle->eof());
  onLoop([&] {
    echo(*held_[0]);
    held_.clear();
  });
  const std::string all = busy->readAll(2s);
  EXPECT_TRUE(busy->eof());
  EXPECT_NE(all.find("Connection: close\r\n"), std::string::npos);
}

// ---- Out of descriptors ----

TEST_F(FrontServerTest, AcceptBacksOffWhenOutOfDescriptors) {
#if defined(__SANITIZE_ADDRESS__)
  // UBSan's vptr check opens a pipe to probe memory: with no descriptor left it reports every
  // virtual call as an invalid vptr and aborts.
  GTEST_SKIP() << "sanitizer runtimes need descriptors of their own";
#endif
  start();
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  rlimit low = old;
  low.rlim_cur = std::min<rlim_t>(old.rlim_cur, 512);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &low), 0);
  std::vector<int> fillers;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC)) >= 0;) fillers.push_back(fd);
  ASSERT_FALSE(fillers.empty());
  ::close(fillers.back());  // one descriptor left: the client's; the server's accept fails
  fillers.pop_back();
  auto c = connect();
  bool reported;
  {
    std::unique_lock lock(mu_);
    reported = cv_.wait_for(lock, 5s, [&] { return !events_.empty(); });
  }
  std::this_thread::sleep_for(500ms);  // pacing: the time a busy loop would spin in
  uint64_t backoffs = 0;
  onLoop([&] { backoffs = server_->acceptBackoffs(); });
  for (int fd : fillers) ::close(fd);
  setrlimit(RLIMIT_NOFILE, &old);
  ASSERT_TRUE(reported);
  EXPECT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].rfind("accept-failed: Too many open files", 0), 0u) << events_[0];
  EXPECT_GE(backoffs, 1u);
  EXPECT_LE(backoffs, 5u);
  // Descriptors are back: the waiting connection is served.
  c->send("GET /back HTTP/1.1\r\nHost: x\r\n\r\n");
  auto rs = c->responses(1);
  ASSERT_EQ(rs.size(), 1u);
  EXPECT_EQ(rs[0].body, "GET /back fields=1 body=");
}

}  // namespace
}  // namespace idem
