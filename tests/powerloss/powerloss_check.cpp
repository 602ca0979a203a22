// Crash-state checker for the power-loss simulation (see powerloss.py and pl_shim.c).
//
// Reads the event log of one recorded run and builds --states crash states. A crash state is a
// crash point (a position in the log: everything before it happened) and one outcome of the
// writes that were not yet durable there, for each of the store's files (data.mdb, and wal when
// the store has a write-ahead log):
//   - a write is durable at the crash point if a sync of its file completed after it and before
//     the crash point, or if it was written on an O_DSYNC descriptor ('D');
//   - every other write before the crash point is split into 4 KiB-aligned pieces (LMDB's page
//     size; the unit a disk writes whole), and each piece reached the disk or not, at random
//     (seeded), applied in log order.
// Crash points: just before and just after every sync (where ordering bugs show), and the rest
// uniformly at random.
//
// Each state's data.mdb is written to a fresh directory and checked in a child process (a
// corrupt store may crash its reader) with the real store code:
//   corrupt             openLmdbStore (which runs LmdbStore::verify) refuses it, or the child
//                       dies of a signal
//   lost_answers        a client read an answer ('A' before the crash point) that is not in the
//                       store byte for byte (status and body)
//   forwardable_twice   a request reached the upstream ('U' before the crash point) and its key
//                       has no record, so a retry would be forwarded again
// Prints one line per violating state (the first 20) and a summary line:
//   powerloss states=N corrupt=C lost_answers=L forwardable_twice=T
// Exit 0 when every state is clean, 1 otherwise, 2 on bad input.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "base/clock.h"
#include "base/digest.h"
#include "store/lmdb/lmdb_store.h"

namespace idem {
namespace {

constexpr size_t kPiece = 4096;
constexpr int kFiles = 2;
const char* const kFileNames[kFiles] = {"data.mdb", "wal"};

struct Event {
  char type = 0;  // W D S U A
  int file = 0;   // W D S: 0 data.mdb, 1 wal
  uint64_t offset = 0;
  std::string bytes;  // W/D: data; U: key; A: key
  int status = 0;     // A
  std::string body;   // A
};

uint64_t le(const std::string& s, size_t at, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) {
    v = (v << 8) | static_cast<unsigned char>(s[at + static_cast<size_t>(i)]);
  }
  return v;
}

bool readLog(const std::string& path, std::vector<Event>& out) {
  std::ifstream f(path, std::ios::binary);
  const std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  size_t at = 0;
  while (at < s.size()) {
    if (s.size() - at < 5) return false;
    Event e;
    e.type = s[at];
    const size_t len = le(s, at + 1, 4);
    at += 5;
    if (s.size() - at < len) return false;
    const std::string p = s.substr(at, len);
    at += len;
    if (e.type == 'W' || e.type == 'D') {
      if (p.size() < 9) return false;
      e.file = static_cast<unsigned char>(p[0]);
      e.offset = le(p, 1, 8);
      e.bytes = p.substr(9);
    } else if (e.type == 'S') {
      if (p.size() < 1) return false;
      e.file = static_cast<unsigned char>(p[0]);
    } else if (e.type == 'U') {
      e.bytes = p;
    } else if (e.type == 'A') {
      if (p.size() < 6) return false;
      e.status = static_cast<int>(le(p, 0, 2));
      const size_t klen = le(p, 2, 4);
      if (p.size() < 6 + klen) return false;
      e.bytes = p.substr(6, klen);
      e.body = p.substr(6 + klen);
    } else {
      return false;
    }
    if (e.file < 0 || e.file >= kFiles) return false;
    out.push_back(std::move(e));
  }
  return true;
}

void apply(std::string& image, uint64_t offset, std::string_view bytes) {
  const size_t end = static_cast<size_t>(offset) + bytes.size();
  if (image.size() < end) image.resize(end, '\0');
  std::memcpy(image.data() + offset, bytes.data(), bytes.size());
}

struct Options {
  std::string log, work, route, scope;
  size_t states = 1000;
  uint64_t seed = 1;
  Durability durability = Durability::Full;
};

enum Outcome : int { kClean = 0, kCorrupt = 10, kLost = 11, kTwice = 12 };

// Runs in the child: opens the state with the real store code and checks it.
int checkState(const Options& o, const std::string& dir, const std::vector<Event>& events,
               size_t crash, std::string& why) {
  LmdbOptions so;
  so.path = dir;
  so.max_size = 64ull << 20;
  so.durability = o.durability;
  so.wal_check_identity = false;  // the state's files are new; their content is the recorded one
  std::string error;
  auto store = openLmdbStore(so, SystemClock::instance(), error);
  if (!store) {
    why = "refused: " + error.substr(0, 300);
    return kCorrupt;
  }
  const VerifyReport rep = store->verify();
  if (!rep.ok()) {
    why = "verify: " + rep.problems.front();
    return kCorrupt;
  }
  int outcome = kClean;
  for (size_t i = 0; i < crash; ++i) {
    const Event& e = events[i];
    if (e.type != 'A' && e.type != 'U') continue;
    const RecordId id = recordId(o.route, {o.scope}, e.bytes);
    const auto rec = store->lookup(id);
    if (e.type == 'U' && !rec) {
      why = "key " + e.bytes + " reached the upstream but has no record";
      outcome = kTwice;
    } else if (e.type == 'A' && (!rec || rec->state != RecordState::Completed ||
                                 rec->answer.status != e.status || rec->answer.body != e.body)) {
      why = "key " + e.bytes + ": the client's answer is " +
            (rec ? "not the recorded one" : "not in the store");
      return kLost;
    }
  }
  return outcome;
}

int run(const Options& o) {
  std::vector<Event> events;
  if (!readLog(o.log, events) || events.empty()) {
    std::fprintf(stderr, "powerloss_check: cannot read the event log %s\n", o.log.c_str());
    return 2;
  }
  // Crash points: around every sync, then random ones; at most o.states, in log order.
  std::mt19937_64 rng(o.seed);
  std::set<size_t> points;
  std::vector<size_t> around;
  for (size_t i = 0; i < events.size(); ++i) {
    if (events[i].type == 'S' || events[i].type == 'D') {
      around.push_back(i);
      around.push_back(i + 1);
    }
  }
  std::shuffle(around.begin(), around.end(), rng);
  for (size_t p : around) {
    if (points.size() >= o.states / 2) break;
    points.insert(p);
  }
  std::uniform_int_distribution<size_t> anywhere(1, events.size());
  for (size_t tries = 0; points.size() < o.states && tries < o.states * 20; ++tries) {
    points.insert(anywhere(rng));
  }

  std::filesystem::create_directories(o.work);
  const std::string dir = o.work + "/state";
  // Per file: the writes covered by its last sync before the crash point.
  std::string base[kFiles];
  size_t base_upto[kFiles] = {};  // events[0, base_upto) are folded into `base`
  size_t last_sync[kFiles] = {};  // index after the file's last 'S' seen so far
  size_t scanned = 0;
  size_t n = 0, corrupt = 0, lost = 0, twice = 0, printed = 0;
  for (size_t crash : points) {
    // Advance each file's durable base to its last sync before the crash point.
    for (; scanned < crash; ++scanned) {
      if (events[scanned].type == 'S') last_sync[events[scanned].file] = scanned + 1;
    }
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all);
    std::bernoulli_distribution coin(0.5);
    for (int f = 0; f < kFiles; ++f) {
      for (; base_upto[f] < last_sync[f]; ++base_upto[f]) {
        const Event& e = events[base_upto[f]];
        if ((e.type == 'W' || e.type == 'D') && e.file == f) apply(base[f], e.offset, e.bytes);
      }
      std::string image = base[f];
      bool written = !image.empty();
      for (size_t i = last_sync[f]; i < crash; ++i) {
        const Event& e = events[i];
        if (e.file != f) continue;
        if (e.type == 'D') {
          apply(image, e.offset, e.bytes);
          written = true;
        } else if (e.type == 'W') {
          // Each 4 KiB-aligned piece independently.
          uint64_t at = e.offset;
          size_t from = 0;
          while (from < e.bytes.size()) {
            const size_t take = std::min(e.bytes.size() - from, kPiece - at % kPiece);
            if (coin(rng)) apply(image, at, std::string_view(e.bytes).substr(from, take));
            from += take;
            at += take;
          }
          written = true;
        }
      }
      if (!written) continue;  // (no write-ahead log in this run)
      std::ofstream out(dir + "/" + kFileNames[f], std::ios::binary);
      out.write(image.data(), static_cast<std::streamsize>(image.size()));
    }
    int fds[2];
    if (::pipe(fds) != 0) return 2;
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::close(fds[0]);
      std::string why;
      const int rc = checkState(o, dir, events, crash, why);
      if (::write(fds[1], why.data(), why.size()) < 0) _exit(2);
      _exit(rc);
    }
    ::close(fds[1]);
    std::string why;
    char buf[512];
    for (ssize_t r; (r = ::read(fds[0], buf, sizeof buf)) > 0;)
      why.append(buf, static_cast<size_t>(r));
    ::close(fds[0]);
    int status = 0;
    ::waitpid(pid, &status, 0);
    ++n;
    int outcome = kClean;
    if (WIFSIGNALED(status)) {
      outcome = kCorrupt;
      why = std::string("reader died of signal ") + strsignal(WTERMSIG(status));
    } else if (WIFEXITED(status)) {
      outcome = WEXITSTATUS(status);
    }
    if (outcome == kCorrupt) ++corrupt;
    if (outcome == kLost) ++lost;
    if (outcome == kTwice) ++twice;
    if (outcome != kClean && outcome != kCorrupt && outcome != kLost && outcome != kTwice) {
      std::fprintf(stderr, "powerloss_check: state child exited %d\n", outcome);
      return 2;
    }
    if (outcome != kClean && printed++ < 20) {
      std::printf("state %zu (crash at event %zu of %zu): %s\n", n, crash, events.size(),
                  why.c_str());
    }
  }
  std::filesystem::remove_all(dir);
  std::printf("powerloss states=%zu corrupt=%zu lost_answers=%zu forwardable_twice=%zu\n", n,
              corrupt, lost, twice);
  return corrupt + lost + twice == 0 ? 0 : 1;
}

}  // namespace
}  // namespace idem

int main(int argc, char** argv) {
  idem::Options o;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--log")
      o.log = v;
    else if (k == "--work")
      o.work = v;
    else if (k == "--states")
      o.states = std::stoul(v);
    else if (k == "--seed")
      o.seed = std::stoull(v);
    else if (k == "--route")
      o.route = v;
    else if (k == "--scope")
      o.scope = v;
    else if (k == "--durability")
      o.durability = v == "relaxed" ? idem::Durability::Relaxed : idem::Durability::Full;
    else {
      std::fprintf(stderr, "powerloss_check: unknown option %s\n", k.c_str());
      return 2;
    }
  }
  if (o.log.empty() || o.work.empty() || o.route.empty()) {
    std::fprintf(stderr,
                 "usage: powerloss_check --log FILE --work DIR --route R --scope V "
                 "[--states N] [--seed S] [--durability full|relaxed]\n");
    return 2;
  }
  return idem::run(o);
}
