#pragma once
// JSON-lines logging (SPEC §7): one object per line on stderr,
//   {"time":"2024-05-01T12:00:00.123Z","level":"info","event":"request","route":"p","status":201}
//
//   log::info("request", {{"route", route.name}, {"status", 201}, {"duration_ms", 1.2}});
//   if (log::enabled(LogLevel::Debug)) log::debug("state", {{"from", a}, {"to", b}});
//
// Every line is written whole (a write(2) of whole lines under a process-wide mutex), so lines
// from different threads never interleave. Safe to call from any thread.
//
// Two paths:
//  - log::write / info / warn / ...: formatted and written at once. Rare events (start, reload,
//    errors). Before writing, it writes out every line buffered by `deferred`, so a line never
//    comes out ahead of one logged before it.
//  - log::deferred: for the per-request access line. The line is formatted into the calling
//    thread's own buffer (no process-wide lock, no system call, no allocation once the buffer
//    has grown) and a background thread writes the buffers out in batches: 50 ms after the
//    first line of a batch, sooner when a buffer passes 64 KiB. A thread whose buffer reaches
//    1 MiB (the sink cannot keep up) writes it itself, so memory stays bounded and no line is
//    dropped. log::flush() writes everything out now; the process does it at exit, setFd()
//    before switching, and every line of the first path before itself. Lines of one thread
//    keep their order; lines of different workers within one batch may not be in time order.
//
// Secrets stay out of logs by construction, not by care:
//  - there is no API that takes a request or response body, and every string value is cut to
//    kMaxValueBytes, so a body passed by mistake cannot be dumped whole;
//  - values of fields named like credentials or payloads (authorization, cookie, set-cookie,
//    proxy-authorization, body, request_body, response_body, idempotency_key, key, password,
//    secret, token; case-insensitive, '-' and '_' alike) are replaced by "[redacted]";
//  - idempotency keys are logged only hashed: the caller passes the raw key to log::keyHash(),
//    which makes the field "key_hash" = keyHashForLog(key) (digest.h: first 16 hex chars of
//    its SHA-256). Never put a raw key in any other field.
// Event names and field names are meant to be literals; values may be any bytes (control
// characters are escaped and invalid UTF-8 replaced by U+FFFD, so every line is valid JSON).
// Fields named "time", "level" or "event" are written as "field_time" etc.
#include <concepts>
#include <cstdint>
#include <initializer_list>
#include <span>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "config/config.h"

namespace idem {

class Clock;

namespace log {

inline constexpr size_t kMaxValueBytes = 1024;

struct Field {
  using Value = std::variant<std::string, int64_t, uint64_t, double, bool>;

  Field(std::string_view k, std::string_view v) : key(k), value(std::string(v)) {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(std::string(v ? v : "")) {}
  Field(std::string_view k, bool v) : key(k), value(v) {}
  Field(std::string_view k, double v) : key(k), value(v) {}
  template <std::signed_integral T>
  requires(!std::same_as<T, bool> && !std::same_as<T, char>) Field(std::string_view k, T v)
      : key(k), value(static_cast<int64_t>(v)) {}
  template <std::unsigned_integral T>
  requires(!std::same_as<T, bool> && !std::same_as<T, char>) Field(std::string_view k, T v)
      : key(k), value(static_cast<uint64_t>(v)) {}

  std::string key;
  Value value;
};

// An ordered list of fields; a key given twice keeps its last value.
class Fields {
 public:
  Fields() = default;
  Fields(std::initializer_list<Field> fields) : fields_(fields) {}
  template <typename V>
  Fields& add(std::string_view key, V&& value) {
    fields_.emplace_back(key, std::forward<V>(value));
    return *this;
  }
  Fields& add(Field f) {
    fields_.push_back(std::move(f));
    return *this;
  }
  const std::vector<Field>& items() const { return fields_; }

 private:
  std::vector<Field> fields_;
};

// A field of a deferred line: the value is viewed, not copied (it must live until deferred()
// returns). Same rules as Field: redaction by name, sanitising, cutting, exact integers.
struct FieldView {
  using Value = std::variant<std::string_view, int64_t, uint64_t, double, bool>;

  FieldView() = default;
  FieldView(std::string_view k, std::string_view v) : key(k), value(v) {}
  FieldView(std::string_view k, const std::string& v) : key(k), value(std::string_view(v)) {}
  FieldView(std::string_view k, const char* v) : key(k), value(std::string_view(v ? v : "")) {}
  FieldView(std::string_view k, bool v) : key(k), value(v) {}
  FieldView(std::string_view k, double v) : key(k), value(v) {}
  template <std::signed_integral T>
  requires(!std::same_as<T, bool> && !std::same_as<T, char>) FieldView(std::string_view k, T v)
      : key(k), value(static_cast<int64_t>(v)) {}
  template <std::unsigned_integral T>
  requires(!std::same_as<T, bool> && !std::same_as<T, char>) FieldView(std::string_view k, T v)
      : key(k), value(static_cast<uint64_t>(v)) {}

  std::string_view key;
  Value value;
};

// {"key_hash": keyHashForLog(rawKey)}: the only way an idempotency key reaches a log.
Field keyHash(std::string_view rawKey);

// Process-wide settings. Defaults: level Info, fd 2 (stderr), the system clock.
void setLevel(LogLevel level);
LogLevel level();
bool enabled(LogLevel level);
// Where lines go; the caller keeps the descriptor open. Returns the previous one. Also decides,
// once per descriptor, whether lines carry a journal priority (see journalStreamIs).
int setFd(int fd);
// Time source for the "time" field (tests inject a FakeClock); nullptr = the system clock.
// The clock must outlive its use.
void setClock(const Clock* clock);

std::string_view levelName(LogLevel level);  // "debug", "info", "warn", "error"

// Under systemd, stderr is a stream to journald, which files every line at the unit's default
// priority (info) unless the line starts with an sd-daemon(3) prefix "<N>". So when `fd` is
// that stream — journald sets JOURNAL_STREAM=<st_dev>:<st_ino> of it, and the variable is
// inherited by children whose stderr may go elsewhere, hence the comparison — every line gets
// "<3>" (error), "<4>" (warn), "<6>" (info) or "<7>" (debug) in front of its JSON; anywhere
// else lines are plain JSON. `journalStream` is the variable's value (nullptr: unset).
// Decided when the descriptor is set (at start-up for stderr), not per line.
bool journalStreamIs(const char* journalStream, int fd);
// "<3>" etc.: the sd-daemon prefix for `level`.
std::string_view journalPrefix(LogLevel level);

// The line (with its trailing '\n') that write() would emit at wall time `wallMs`.
std::string formatLine(LogLevel level, std::string_view event, const Fields& fields,
                       int64_t wallMs);
// "2024-05-01T12:00:00.123Z"
std::string rfc3339Utc(int64_t wallMs);

// What deferred() would append (with the trailing '\n'), for tests.
std::string formatLine(LogLevel level, std::string_view event, std::span<const FieldView> fields,
                       int64_t wallMs);

void write(LogLevel level, std::string_view event, const Fields& fields = {});
// The batched path (see the top of this file). Nothing happens below the level.
void deferred(LogLevel level, std::string_view event, std::span<const FieldView> fields);
// Writes every buffered line now (returns when they are written).
void flush();
inline void debug(std::string_view event, const Fields& fields = {}) {
  write(LogLevel::Debug, event, fields);
}
inline void info(std::string_view event, const Fields& fields = {}) {
  write(LogLevel::Info, event, fields);
}
inline void warn(std::string_view event, const Fields& fields = {}) {
  write(LogLevel::Warn, event, fields);
}
inline void error(std::string_view event, const Fields& fields = {}) {
  write(LogLevel::Error, event, fields);
}

}  // namespace log
}  // namespace idem
