// What a durable write costs an event loop that must not block, for bench/profile.py handoff.
//   handoff_limits DIR [ROUNDS] [SECONDS_PER_PROBE]
// The issue-13 c1 target allows a new key 2 fsyncs + 150 µs over the backend's own latency. A
// new key needs two durable writes in sequence (the reservation before forwarding, the answer
// before answering), and an event loop cannot wait for a flush itself: it hands the write to a
// thread (the store's writer) or to the kernel (io_uring) and learns of its completion through
// its poll set. This measures that floor on this machine, with no store and no HTTP around it:
//  - direct:        pwrite of a 400-byte record into a preallocated, synced log + fdatasync, on
//                   the calling thread (what the bench's fsync probe measures);
//  - thread:        the same write done by a worker thread: the loop queues it (mutex +
//                   condition variable), the worker writes and syncs, then signals an eventfd
//                   that the loop's epoll_wait is watching (the store's writer does this);
//  - thread, no I/O: the same hand-off and wake-up with nothing written;
//  - io_uring:      the loop submits a linked write + fdatasync to an io_uring whose completions
//                   signal an eventfd in the loop's epoll set (no thread of ours in between);
//  - io_uring, no I/O: a NOP through the same ring.
// Probes run in ROUNDS interleaved rounds (default 5) of SECONDS each (default 0.5), because
// this disk's flush latency drifts within minutes; the table gives, per probe, the median over
// the rounds of each round's p50 and p90, in µs. Run it pinned to one CPU (taskset), as the
// bench pins its servers.
#include <fcntl.h>
#include <liburing.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

void die(const char* what) {
  std::perror(what);
  std::exit(1);
}

constexpr size_t kRecord = 400;
constexpr off_t kLogSize = 64 << 20;

// A preallocated, synced log that records are written into back to back (as the store's
// write-ahead log is): no write grows the file.
struct Log {
  explicit Log(const std::string& dir) {
    path = dir + "/handoff.log";
    fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) die("open");
    std::vector<char> zero(1 << 20, 0);
    for (off_t o = 0; o < kLogSize; o += static_cast<off_t>(zero.size())) {
      if (::pwrite(fd, zero.data(), zero.size(), o) != static_cast<ssize_t>(zero.size())) {
        die("pwrite");
      }
    }
    if (::fsync(fd) != 0) die("fsync");
    std::memset(rec, 'r', sizeof rec);
  }
  ~Log() {
    ::close(fd);
    ::unlink(path.c_str());
  }
  off_t next() {
    const off_t at = pos;
    pos += kRecord;
    if (pos + static_cast<off_t>(kRecord) > kLogSize) pos = 0;
    return at;
  }
  void writeSync() {
    if (::pwrite(fd, rec, kRecord, next()) != static_cast<ssize_t>(kRecord)) die("pwrite");
    if (::fdatasync(fd) != 0) die("fdatasync");
  }
  std::string path;
  int fd = -1;
  off_t pos = 0;
  char rec[kRecord];
};

// The loop side: an epoll set with one eventfd; wait() blocks in epoll_wait until it fires.
struct Loop {
  Loop() {
    ep = ::epoll_create1(EPOLL_CLOEXEC);
    efd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ep < 0 || efd < 0) die("epoll/eventfd");
    epoll_event ev{};
    ev.events = EPOLLIN;
    if (::epoll_ctl(ep, EPOLL_CTL_ADD, efd, &ev) != 0) die("epoll_ctl");
  }
  ~Loop() {
    ::close(efd);
    ::close(ep);
  }
  void wait() {
    epoll_event ev{};
    for (;;) {
      const int n = ::epoll_wait(ep, &ev, 1, -1);
      if (n == 1) break;
      if (n < 0 && errno != EINTR) die("epoll_wait");
    }
    uint64_t v = 0;
    if (::read(efd, &v, sizeof v) != sizeof v) die("read eventfd");
  }
  int ep = -1, efd = -1;
};

// A worker thread fed through a mutex and condition variable, answering through the eventfd.
struct Worker {
  Worker(Loop& l, Log* log) : loop(l), log(log) {
    t = std::thread([this] { run(); });
  }
  ~Worker() {
    {
      std::lock_guard g(mu);
      stop = true;
    }
    cv.notify_one();
    t.join();
  }
  void submit() {
    {
      std::lock_guard g(mu);
      ++queued;
    }
    cv.notify_one();
  }
  void run() {
    for (;;) {
      {
        std::unique_lock g(mu);
        cv.wait(g, [this] { return queued > 0 || stop; });
        if (stop) return;
        queued = 0;
      }
      if (log != nullptr) log->writeSync();
      const uint64_t one = 1;
      if (::write(loop.efd, &one, sizeof one) != sizeof one) die("write eventfd");
    }
  }
  Loop& loop;
  Log* log;
  std::mutex mu;
  std::condition_variable cv;
  int queued = 0;
  bool stop = false;
  std::thread t;
};

struct Ring {
  explicit Ring(Loop& loop) {
    if (io_uring_queue_init(8, &ring, 0) != 0) die("io_uring_queue_init");
    if (io_uring_register_eventfd(&ring, loop.efd) != 0) die("io_uring_register_eventfd");
  }
  ~Ring() { io_uring_queue_exit(&ring); }
  // Submits the write + fdatasync (or a NOP); the caller waits on the loop, then reaps.
  void submit(Log* log) {
    if (log == nullptr) {
      io_uring_prep_nop(io_uring_get_sqe(&ring));
      expected = 1;
    } else {
      io_uring_sqe* w = io_uring_get_sqe(&ring);
      io_uring_prep_write(w, log->fd, log->rec, kRecord, static_cast<uint64_t>(log->next()));
      w->flags |= IOSQE_IO_LINK;
      io_uring_sqe* s = io_uring_get_sqe(&ring);
      io_uring_prep_fsync(s, log->fd, IORING_FSYNC_DATASYNC);
      expected = 2;
    }
    if (io_uring_submit(&ring) < 1) die("io_uring_submit");
  }
  // Reaps what completed; true once all of the submission has.
  bool reap() {
    io_uring_cqe* cqe = nullptr;
    while (expected > 0 && io_uring_peek_cqe(&ring, &cqe) == 0) {
      if (cqe->res < 0) {
        errno = -cqe->res;
        die("io_uring completion");
      }
      io_uring_cqe_seen(&ring, cqe);
      --expected;
    }
    return expected == 0;
  }
  io_uring ring{};
  int expected = 0;
};

struct Stat {
  double p50, p90;
};

Stat run(double seconds, const std::function<void()>& once) {
  std::vector<double> us;
  const auto end = Clock::now() + std::chrono::duration<double>(seconds);
  while (Clock::now() < end || us.size() < 5) {
    const auto a = Clock::now();
    once();
    us.push_back(std::chrono::duration<double, std::micro>(Clock::now() - a).count());
  }
  std::sort(us.begin(), us.end());
  return {us[us.size() / 2], us[us.size() * 9 / 10]};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: handoff_limits DIR [ROUNDS] [SECONDS]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  const double seconds = argc > 3 ? std::atof(argv[3]) : 0.5;
  Log log(dir);
  Loop loop;
  const std::vector<std::string> names = {"direct", "thread", "thread, no I/O", "io_uring",
                                          "io_uring, no I/O"};
  std::map<std::string, std::vector<double>> p50, p90;
  for (int r = 0; r < rounds; ++r) {
    auto keep = [&](const std::string& name, Stat s) {
      p50[name].push_back(s.p50);
      p90[name].push_back(s.p90);
    };
    keep("direct", run(seconds, [&] { log.writeSync(); }));
    {
      Worker w(loop, &log);
      keep("thread", run(seconds, [&] {
             w.submit();
             loop.wait();
           }));
    }
    {
      Worker w(loop, nullptr);
      keep("thread, no I/O", run(seconds, [&] {
             w.submit();
             loop.wait();
           }));
    }
    for (Log* l : {&log, static_cast<Log*>(nullptr)}) {
      Ring ring(loop);
      keep(l != nullptr ? "io_uring" : "io_uring, no I/O", run(seconds, [&] {
             ring.submit(l);
             do loop.wait();
             while (!ring.reap());
           }));
    }
  }
  std::printf("| probe | p50 µs | p90 µs | p50 over direct µs |\n|---|--:|--:|--:|\n");
  const double direct = median(p50["direct"]);
  for (const auto& n : names) {
    const double m = median(p50[n]);
    const bool io = n.find("no I/O") == std::string::npos;
    char over[32] = "—";
    if (io && n != "direct") std::snprintf(over, sizeof over, "%+.0f", m - direct);
    std::printf("| %s | %.0f | %.0f | %s |\n", n.c_str(), m, median(p90[n]), over);
  }
  return 0;
}
