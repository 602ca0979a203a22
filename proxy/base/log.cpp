#include "base/log.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <mutex>

#include "base/c_handles.h"
#include "base/clock.h"
#include "base/digest.h"

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

// Valid UTF-8 without NULs, at most `maxBytes` of the input (cut on a character boundary, "..."
// appended).
std::string sanitize(std::string_view in, size_t maxBytes) {
  bool truncated = false;
  if (in.size() > maxBytes) {
    size_t cut = maxBytes;
    while (cut > 0 && isContinuation(static_cast<unsigned char>(in[cut]))) --cut;
    in = in.substr(0, cut);
    truncated = true;
  }
  std::string out;
  out.reserve(in.size() + (truncated ? kTruncated.size() : 0));
  for (size_t i = 0; i < in.size();) {
    const size_t len = utf8SequenceLength(in, i);
    if (len == 0) {
      out += "\xEF\xBF\xBD";  // U+FFFD
      ++i;
    } else {
      out.append(in.substr(i, len));
      i += len;
    }
  }
  if (truncated) out += kTruncated;
  return out;
}

// Credentials and payloads: a value under one of these names is never written.
bool redactedName(std::string_view key) {
  static constexpr std::array<std::string_view, 12> kNames = {
      "authorization", "proxy_authorization", "cookie", "set_cookie", "body",   "request_body",
      "response_body", "idempotency_key",     "key",    "password",   "secret", "token"};
  std::string norm;
  norm.reserve(key.size());
  for (char c : key) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    norm += c == '-' ? '_' : c;
  }
  return std::find(kNames.begin(), kNames.end(), norm) != kNames.end();
}

template <typename Int>
cJSON* rawInteger(Int v) {
  char buf[24];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf - 1, v);
  *end = '\0';
  return cJSON_CreateRaw(buf);  // exact: cJSON numbers are doubles and lose bits past 2^53
}

cJSON* jsonValue(const Field& f) {
  if (redactedName(f.key)) return cJSON_CreateString(kRedacted.data());
  return std::visit(
      [](const auto& v) -> cJSON* {
        using T = std::decay_t<decltype(v)>;
        if constexpr (std::is_same_v<T, std::string>) {
          return cJSON_CreateString(sanitize(v, kMaxValueBytes).c_str());
        } else if constexpr (std::is_same_v<T, bool>) {
          return cJSON_CreateBool(v ? 1 : 0);
        } else if constexpr (std::is_same_v<T, double>) {
          return cJSON_CreateNumber(v);  // NaN and infinities print as null
        } else {
          return rawInteger(v);
        }
      },
      f.value);
}

void writeAll(int fd, std::string_view line) {
  std::lock_guard lock(gWriteMu);
  while (!line.empty()) {
    const ssize_t n = ::write(fd, line.data(), line.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return;  // nowhere to report a failing log sink; drop the line
    }
    line.remove_prefix(static_cast<size_t>(n));
  }
}

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
  int64_t secs = wallMs / 1000;
  int64_t ms = wallMs % 1000;
  if (ms < 0) {
    ms += 1000;
    secs -= 1;
  }
  const auto t = static_cast<time_t>(secs);
  struct tm tm {};
  gmtime_r(&t, &tm);
  char buf[80];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return buf;
}

std::string formatLine(LogLevel l, std::string_view event, const Fields& fields, int64_t wallMs) {
  CJsonPtr obj(cJSON_CreateObject());
  if (!obj) return {};
  cJSON_AddStringToObject(obj.get(), "time", rfc3339Utc(wallMs).c_str());
  cJSON_AddStringToObject(obj.get(), "level", levelName(l).data());
  cJSON_AddStringToObject(obj.get(), "event", sanitize(event, kMaxValueBytes).c_str());
  for (const Field& f : fields.items()) {
    std::string key = sanitize(f.key, 128);
    if (key == "time" || key == "level" || key == "event") key = "field_" + key;
    cJSON* value = jsonValue(f);
    if (value == nullptr) continue;
    if (cJSON_GetObjectItemCaseSensitive(obj.get(), key.c_str()) != nullptr) {
      cJSON_ReplaceItemInObjectCaseSensitive(obj.get(), key.c_str(), value);  // last one wins
    } else {
      cJSON_AddItemToObject(obj.get(), key.c_str(), value);
    }
  }
  CJsonString text(cJSON_PrintUnformatted(obj.get()));
  if (!text) return {};
  std::string line(text.get());
  line += '\n';
  return line;
}

void write(LogLevel l, std::string_view event, const Fields& fields) {
  if (!enabled(l)) return;
  const Clock* clock = gClock.load();
  const int64_t now = clock ? clock->wallMs() : SystemClock::instance().wallMs();
  std::string line = formatLine(l, event, fields, now);
  if (line.empty()) return;
  if (gJournal.load(std::memory_order_relaxed)) line.insert(0, journalPrefix(l));
  writeAll(gFd.load(std::memory_order_relaxed), line);
}

}  // namespace idem::log
