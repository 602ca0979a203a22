#include "base/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <climits>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <ctime>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "base/c_handles.h"
#include "base/clock.h"
#include "base/digest.h"
#include "base/thread_name.h"

namespace idem::log {

namespace {

std::atomic<int> gLevel{static_cast<int>(LogLevel::Info)};
std::atomic<int> gFd{STDERR_FILENO};
// Whether gFd is journald's stream: lines then start with their priority. Set with gFd.
std::atomic<bool> gJournal{journalStreamIs(std::getenv("JOURNAL_STREAM"), STDERR_FILENO)};
std::atomic<const Clock*> gClock{nullptr};
std::mutex gWriteMu;  // one line at a time, even if a write(2) comes back short

constexpr std::string_view kRedacted = "[redacted]";
constexpr std::string_view kTruncated = "...";

bool isContinuation(unsigned char c) {
  return (c & 0xC0) == 0x80;
}

// Length of the valid UTF-8 sequence at s[i], or 0 if it is not one (overlong forms,
// surrogates and code points past U+10FFFF are invalid).
size_t utf8SequenceLength(std::string_view s, size_t i) {
  const auto c0 = static_cast<unsigned char>(s[i]);
  if (c0 == 0) return 0;  // cJSON strings are C strings: a NUL would end the value
  if (c0 < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if (c0 >= 0xC2 && c0 <= 0xDF) {
    len = 2;
    cp = c0 & 0x1Fu;
  } else if (c0 >= 0xE0 && c0 <= 0xEF) {
    len = 3;
    cp = c0 & 0x0Fu;
  } else if (c0 >= 0xF0 && c0 <= 0xF4) {
    len = 4;
    cp = c0 & 0x07u;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto c = static_cast<unsigned char>(s[i + k]);
    if (!isContinuation(c)) return 0;
    cp = (cp << 6) | (c & 0x3Fu);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10FFFF ||
      (cp >= 0xD800 && cp <= 0xDFFF)) {
    return 0;
  }
  return len;
}

// Appends `in` as the inside of a JSON string: valid UTF-8 without NULs (an invalid byte
// becomes U+FFFD), at most `maxBytes` of the input (cut on a character boundary, "..."
// appended), escaped the way cJSON escapes (", \, \b \f \n \r \t, other controls as \u00XX).
void appendJsonText(std::string& out, std::string_view in, size_t maxBytes) {
  bool truncated = false;
  if (in.size() > maxBytes) {
    size_t cut = maxBytes;
    while (cut > 0 && isContinuation(static_cast<unsigned char>(in[cut]))) --cut;
    in = in.substr(0, cut);
    truncated = true;
  }
  static constexpr char kHex[] = "0123456789abcdef";
  size_t i = 0;
  while (i < in.size()) {
    // The common case first: a run of printable ASCII that needs no escaping.
    size_t j = i;
    while (j < in.size()) {
      const auto c = static_cast<unsigned char>(in[j]);
      if (c < 0x20 || c >= 0x80 || c == '"' || c == '\\') break;
      ++j;
    }
    out.append(in.data() + i, j - i);
    i = j;
    if (i == in.size()) break;
    const auto c = static_cast<unsigned char>(in[i]);
    const size_t len = utf8SequenceLength(in, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
      continue;
    }
    if (len > 1) {
      out.append(in.data() + i, len);
      i += len;
      continue;
    }
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default: {
        const char esc[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
        out.append(esc, sizeof esc);
      }
    }
    ++i;
  }
  if (truncated) out += kTruncated;
}

void appendJsonString(std::string& out, std::string_view in, size_t maxBytes) {
  out += '"';
  appendJsonText(out, in, maxBytes);
  out += '"';
}

// Credentials and payloads: a value under one of these names is never written.
bool redactedName(std::string_view key) {
  static constexpr std::array<std::string_view, 12> kNames = {
      "authorization", "proxy_authorization", "cookie", "set_cookie", "body",   "request_body",
      "response_body", "idempotency_key",     "key",    "password",   "secret", "token"};
  if (key.size() > 19) return false;  // longer than the longest name
  char norm[19];
  for (size_t i = 0; i < key.size(); ++i) {
    char c = key[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    norm[i] = c == '-' ? '_' : c;
  }
  const std::string_view n(norm, key.size());
  return std::find(kNames.begin(), kNames.end(), n) != kNames.end();
}

template <typename Int>
void appendInteger(std::string& out, Int v) {
  char buf[24];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);  // exact, unlike a double
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

void appendDouble(std::string& out, double v) {
  if (std::isnan(v) || std::isinf(v)) {
    out += "null";  // as cJSON prints them
    return;
  }
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::general);
  out.append(buf, static_cast<size_t>(r.ptr - buf));
}

// The value of one field, by type (std::string for Field, std::string_view for FieldView).
template <typename V>
void appendValue(std::string& out, std::string_view key, const V& value) {
  if (redactedName(key)) {
    appendJsonString(out, kRedacted, kMaxValueBytes);
    return;
  }
  std::visit(
      [&out](const auto& v) {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string> || std::is_same_v<T, std::string_view>) {
          appendJsonString(out, v, kMaxValueBytes);
        } else if constexpr (std::is_same_v<T, bool>) {
          out += v ? "true" : "false";
        } else if constexpr (std::is_same_v<T, double>) {
          appendDouble(out, v);
        } else {
          appendInteger(out, v);
        }
      },
      value);
}

// A field's key as written: cut to 128 bytes, made valid UTF-8, and "time", "level" and
// "event" renamed "field_time" etc. (the line's own fields come first and keep their names).
// Plain keys — the literals the code uses — are viewed; only others are copied.
struct KeyText {
  std::string_view text;
  std::string own;
};

bool plainKey(std::string_view k) {
  if (k.size() > 128) return false;
  for (char c : k) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u >= 0x80 || c == '"' || c == '\\') return false;
  }
  return true;
}

void keyText(std::string_view raw, KeyText& out) {
  if (plainKey(raw) && raw != "time" && raw != "level" && raw != "event") {
    out.text = raw;
    return;
  }
  out.own.clear();
  if (raw == "time" || raw == "level" || raw == "event") out.own = "field_";
  appendJsonText(out.own, raw, 128);  // escaped already: compared and written as is
  out.text = out.own;
}

// rfc3339Utc into `out`, with the date and time of day formatted once per second per thread.
void appendTime(std::string& out, int64_t wallMs) {
  int64_t secs = wallMs / 1000;
  int64_t ms = wallMs % 1000;
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  struct Cache {
    int64_t secs = INT64_MIN;
    char text[24] = {};
    size_t len = 0;
  };
  thread_local Cache cache;
  if (cache.secs != secs) {
    const auto t = static_cast<time_t>(secs);
    struct tm tm {};
    gmtime_r(&t, &tm);
    char* p = cache.text;
    auto put = [&p](int v, int width) {
      for (int k = width - 1; k >= 0; --k) {
        p[k] = static_cast<char>('0' + v % 10);
        v /= 10;
      }
      p += width;
    };
    put(tm.tm_year + 1900, 4);
    *p++ = '-';
    put(tm.tm_mon + 1, 2);
    *p++ = '-';
    put(tm.tm_mday, 2);
    *p++ = 'T';
    put(tm.tm_hour, 2);
    *p++ = ':';
    put(tm.tm_min, 2);
    *p++ = ':';
    put(tm.tm_sec, 2);
    *p++ = '.';
    cache.len = static_cast<size_t>(p - cache.text);
    cache.secs = secs;
  }
  out.append(cache.text, cache.len);
  const int m = static_cast<int>(ms);
  const char frac[4] = {static_cast<char>('0' + m / 100), static_cast<char>('0' + m / 10 % 10),
                        static_cast<char>('0' + m % 10), 'Z'};
  out.append(frac, sizeof frac);
}

// One line, appended to `out`: {"time":…,"level":…,"event":…, fields…}\n. A key given twice
// is written once, where it first appears, with its last value.
template <typename F>
void appendLine(std::string& out, LogLevel l, std::string_view event, std::span<const F> fields,
                int64_t wallMs) {
  constexpr size_t kInlineKeys = 16;
  std::array<KeyText, kInlineKeys> inlineKeys;
  std::vector<KeyText> moreKeys;
  KeyText* keys = inlineKeys.data();
  if (fields.size() > kInlineKeys) {
    moreKeys.resize(fields.size());
    keys = moreKeys.data();
  }
  for (size_t i = 0; i < fields.size(); ++i) keyText(fields[i].key, keys[i]);

  out += R"({"time":")";
  appendTime(out, wallMs);
  out += R"(","level":")";
  out += levelName(l);
  out += R"(","event":)";
  appendJsonString(out, event, kMaxValueBytes);
  for (size_t i = 0; i < fields.size(); ++i) {
    bool seen = false;
    for (size_t j = 0; j < i && !seen; ++j) seen = keys[j].text == keys[i].text;
    if (seen) continue;
    size_t last = i;
    for (size_t j = i + 1; j < fields.size(); ++j) {
      if (keys[j].text == keys[i].text) last = j;
    }
    out += ",\"";
    out += keys[i].text;
    out += "\":";
    appendValue(out, fields[last].key, fields[last].value);
  }
  out += "}\n";
}

int64_t nowMs() {
  const Clock* clock = gClock.load();
  return clock ? clock->wallMs() : SystemClock::instance().wallMs();
}

void writeAllLocked(int fd, std::string_view text) {
  while (!text.empty()) {
    const ssize_t n = ::write(fd, text.data(), text.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing log sink; drop the line
    }
    text.remove_prefix(static_cast<size_t>(n));
  }
}

// ---- The batched path ----

constexpr size_t kSoftBatch = 64 * 1024;      // wake the writer early
constexpr size_t kHardBatch = 1024 * 1024;    // the thread writes its buffer itself
constexpr size_t kKeepCapacity = 256 * 1024;  // larger buffers are released after a write
constexpr std::chrono::milliseconds kBatchInterval{50};

// One thread's buffered lines.
struct Sink {
  std::mutex mu;
  std::string buf;      // whole lines
  bool orphan = false;  // its thread has exited (under Batcher::list_mu)
};

class Batcher {
 public:
  static Batcher& get() {
    // Never destroyed: threads may log while static objects go away. The buffered lines are
    // written by the exit handler registered on first use.
    static Batcher* b = new Batcher;
    return *b;
  }

  Sink& mine() {
    struct Holder {
      std::shared_ptr<Sink> sink;
      ~Holder() {
        if (sink) Batcher::get().release(sink);
      }
    };
    thread_local Holder holder;
    if (!holder.sink) holder.sink = attach();
    return *holder.sink;
  }

  // The first line of a batch (or a buffer past kSoftBatch): make sure the writer will come.
  void arm(bool urgent) {
    {
      std::lock_guard lock(mu_);
      armed_ = true;
      urgent_ = urgent_ || urgent;
      if (!thread_.joinable()) {
        thread_ = std::thread([this] {
          nameThisThread("idem-log");
          run();
        });
      }
    }
    cv_.notify_one();
  }

  // Writes every sink's lines; the caller holds gWriteMu.
  void drainLocked(int fd) {
    std::vector<std::shared_ptr<Sink>> sinks;
    {
      std::lock_guard lock(list_mu_);
      sinks = sinks_;
    }
    for (const auto& s : sinks) {
      {
        std::lock_guard lock(s->mu);
        if (s->buf.empty()) continue;
        spare_.swap(s->buf);
      }
      writeAllLocked(fd, spare_);
      spare_.clear();
      if (spare_.capacity() > kKeepCapacity) std::string().swap(spare_);
    }
    std::lock_guard lock(list_mu_);
    std::erase_if(sinks_, [](const std::shared_ptr<Sink>& s) {
      std::lock_guard l(s->mu);
      return s->orphan && s->buf.empty();
    });
  }

 private:
  Batcher() = default;

  std::shared_ptr<Sink> attach() {
    auto s = std::make_shared<Sink>();
    std::lock_guard lock(list_mu_);
    if (!exit_handler_) {
      exit_handler_ = true;
      std::atexit([] { log::flush(); });
    }
    sinks_.push_back(s);
    return s;
  }

  void release(const std::shared_ptr<Sink>& s) {
    std::lock_guard lock(list_mu_);
    std::lock_guard l(s->mu);
    s->orphan = true;  // removed once its lines are written
  }

  void run() {
    std::unique_lock lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return armed_; });
      // Let the batch gather, unless a buffer is filling up.
      cv_.wait_for(lock, kBatchInterval, [this] { return urgent_; });
      armed_ = false;
      urgent_ = false;
      lock.unlock();
      {
        std::lock_guard w(gWriteMu);
        drainLocked(gFd.load(std::memory_order_relaxed));
      }
      lock.lock();
    }
  }

  std::mutex mu_;  // armed_, urgent_, thread_
  std::condition_variable cv_;
  bool armed_ = false;
  bool urgent_ = false;
  std::thread thread_;
  std::mutex list_mu_;  // sinks_, exit_handler_
  std::vector<std::shared_ptr<Sink>> sinks_;
  bool exit_handler_ = false;
  std::string spare_;  // under gWriteMu
};

}  // namespace

Field keyHash(std::string_view rawKey) {
  return Field("key_hash", keyHashForLog(rawKey));
}

void setLevel(LogLevel l) {
  gLevel.store(static_cast<int>(l), std::memory_order_relaxed);
}
LogLevel level() {
  return static_cast<LogLevel>(gLevel.load(std::memory_order_relaxed));
}
bool enabled(LogLevel l) {
  return static_cast<int>(l) >= gLevel.load(std::memory_order_relaxed);
}
int setFd(int fd) {
  std::lock_guard w(gWriteMu);
  Batcher::get().drainLocked(gFd.load(std::memory_order_relaxed));  // lines go where they were
  gJournal.store(journalStreamIs(std::getenv("JOURNAL_STREAM"), fd));
  return gFd.exchange(fd);
}

bool journalStreamIs(const char* journalStream, int fd) {
  if (journalStream == nullptr) return false;
  std::string_view v(journalStream);
  const size_t colon = v.find(':');
  if (colon == std::string_view::npos) return false;
  uint64_t dev = 0;
  uint64_t ino = 0;
  const char* devEnd = v.data() + colon;
  const char* end = v.data() + v.size();
  if (std::from_chars(v.data(), devEnd, dev).ptr != devEnd || colon == 0) return false;
  if (colon + 1 == v.size() || std::from_chars(devEnd + 1, end, ino).ptr != end) return false;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return false;
  return static_cast<uint64_t>(st.st_dev) == dev && static_cast<uint64_t>(st.st_ino) == ino;
}

std::string_view journalPrefix(LogLevel l) {
  switch (l) {
    case LogLevel::Debug:
      return "<7>";
    case LogLevel::Info:
      return "<6>";
    case LogLevel::Warn:
      return "<4>";
    case LogLevel::Error:
      return "<3>";
  }
  return "<6>";
}
void setClock(const Clock* clock) {
  gClock.store(clock);
}

std::string_view levelName(LogLevel l) {
  switch (l) {
    case LogLevel::Debug:
      return "debug";
    case LogLevel::Info:
      return "info";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Error:
      return "error";
  }
  return "info";
}

std::string rfc3339Utc(int64_t wallMs) {
  std::string out;
  appendTime(out, wallMs);
  return out;
}

std::string formatLine(LogLevel l, std::string_view event, const Fields& fields, int64_t wallMs) {
  std::string line;
  appendLine(line, l, event, std::span<const Field>(fields.items()), wallMs);
  return line;
}

std::string formatLine(LogLevel l, std::string_view event, std::span<const FieldView> fields,
                       int64_t wallMs) {
  std::string line;
  appendLine(line, l, event, fields, wallMs);
  return line;
}

void write(LogLevel l, std::string_view event, const Fields& fields) {
  if (!enabled(l)) return;
  std::string line;
  if (gJournal.load(std::memory_order_relaxed)) line = journalPrefix(l);
  appendLine(line, l, event, std::span<const Field>(fields.items()), nowMs());
  std::lock_guard w(gWriteMu);
  const int fd = gFd.load(std::memory_order_relaxed);
  Batcher::get().drainLocked(fd);  // what was logged before this line comes out before it
  writeAllLocked(fd, line);
}

void deferred(LogLevel l, std::string_view event, std::span<const FieldView> fields) {
  if (!enabled(l)) return;
  Batcher& b = Batcher::get();
  Sink& sink = b.mine();
  const int64_t now = nowMs();
  size_t before;
  size_t size;
  {
    std::lock_guard lock(sink.mu);
    before = sink.buf.size();
    if (gJournal.load(std::memory_order_relaxed)) sink.buf += journalPrefix(l);
    appendLine(sink.buf, l, event, fields, now);
    size = sink.buf.size();
  }
  if (size >= kHardBatch) {
    flush();  // the sink is not keeping up: this thread waits for it rather than drop lines
  } else if (before == 0 || (before < kSoftBatch && size >= kSoftBatch)) {
    b.arm(size >= kSoftBatch);  // the first line of a batch, or a batch that is filling up
  }
}

void flush() {
  std::lock_guard w(gWriteMu);
  Batcher::get().drainLocked(gFd.load(std::memory_order_relaxed));
}

}  // namespace idem::log
