#pragma once
// A scriptable HTTP/1.1 upstream for tests: raw sockets on 127.0.0.1, port 0, one thread per
// connection. Each request is answered as the handler says: any bytes, after a delay, or not
// at all (hang), or by resetting / closing the connection. Counts requests and connections
// and records every request it received.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/http_types.h"

namespace idem::testing {

struct ReceivedRequest {
  std::string method;
  std::string target;
  Headers headers;
  std::string body;
  int connection = 0;         // 1-based id of the connection it arrived on
  int indexOnConnection = 0;  // 0 for the first request on that connection
};

struct Reply {
  enum class Kind {
    Respond,  // write `raw`
    Hang,     // never answer (until the client or the server goes away)
    Reset,    // RST the connection (SO_LINGER 0) without answering
    Close,    // close the connection (FIN) without answering
  };
  Kind kind = Kind::Respond;
  std::string raw;
  std::chrono::milliseconds delay{0};  // waited before acting
  bool closeAfter = false;             // close the connection after writing `raw`

  // A well-formed response; adds Content-Length unless `headers` frame the body themselves.
  static Reply respond(int status, const Headers& headers = {}, const std::string& body = {});
  static Reply bytes(std::string raw) { return Reply{Kind::Respond, std::move(raw)}; }
  static Reply hang() { return Reply{Kind::Hang, {}}; }
  static Reply reset() { return Reply{Kind::Reset, {}}; }
  static Reply close() { return Reply{Kind::Close, {}}; }
};

class TestHttpServer {
 public:
  using Handler = std::function<Reply(const ReceivedRequest&)>;  // called on server threads

  explicit TestHttpServer(Handler handler);
  ~TestHttpServer();
  TestHttpServer(const TestHttpServer&) = delete;
  TestHttpServer& operator=(const TestHttpServer&) = delete;

  uint16_t port() const { return port_; }
  std::string url() const;  // "http://127.0.0.1:PORT"

  int requests() const { return requests_.load(); }
  int connections() const { return connections_.load(); }
  int maxOpenConnections() const { return maxOpen_.load(); }
  std::vector<ReceivedRequest> received() const;
  // Blocks until `n` connections have been closed by either side, or the timeout passes.
  bool waitClosedConnections(int n, std::chrono::milliseconds timeout);
  // Blocks until `n` requests have arrived, or the timeout passes.
  bool waitRequests(int n, std::chrono::milliseconds timeout);

  void stop();

 private:
  void acceptLoop();
  void serve(int fd, int connectionId);
  bool waitStopFor(std::chrono::milliseconds d);  // true when stopping

  Handler handler_;
  int listenFd_ = -1;
  int wakePipe_[2] = {-1, -1};  // written once on stop; every poll also watches its read end
  uint16_t port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> requests_{0};
  std::atomic<int> connections_{0};
  std::atomic<int> open_{0};
  std::atomic<int> maxOpen_{0};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int closed_ = 0;
  std::vector<ReceivedRequest> received_;
  std::vector<std::thread> threads_;
  std::thread acceptThread_;
};

// A listening socket on 127.0.0.1 whose accept queue is full and never drained: a connect
// to it gets no SYN-ACK, so it times out (a connect timeout on loopback).
class FullBacklogListener {
 public:
  FullBacklogListener();
  ~FullBacklogListener();
  FullBacklogListener(const FullBacklogListener&) = delete;
  FullBacklogListener& operator=(const FullBacklogListener&) = delete;
  uint16_t port() const { return port_; }

 private:
  int listenFd_ = -1;
  std::vector<int> fillers_;
  uint16_t port_ = 0;
};

// A port on 127.0.0.1 nothing listens on (bound once, then closed).
uint16_t closedPort();

}  // namespace idem::testing
