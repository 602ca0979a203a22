#pragma once
// The stored record of one idempotency key and its versioned binary encoding.
// Knows nothing of HTTP servers, curl or events.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "base/digest.h"
#include "base/http_types.h"

namespace idem {

using RecordId = Digest;     // digest of (route, scope values, key)
using Fingerprint = Digest;  // digest of the request parts that must match

enum class RecordState : uint8_t {
  InFlight = 1,   // reserved; the owner is forwarding the request
  Completed = 2,  // an outcome is recorded and is replayed
};

// Flags on a completed record.
enum RecordFlag : uint32_t {
  kFlagNone = 0,
  kFlagProxyError = 1u << 0,      // the outcome is an error the proxy wrote (504, 502 …)
  kFlagOutcomeUnknown = 1u << 1,  // recorded for an abandoned reservation; the owner may
                                  // still replace it with the real outcome (unknown → known)
  kFlagNotReplayable = 1u << 2,   // the answer was larger than max_response_body
};

struct Record {
  RecordState state = RecordState::InFlight;
  uint32_t flags = kFlagNone;
  int64_t reserved_at_ms = 0;  // wall clock
  int64_t lease_until_ms = 0;  // wall clock; meaningful while in flight
  int64_t expires_at_ms = 0;   // wall clock; reserved_at + ttl
  std::string owner;           // reservation token: "<boot id>:<pid>:<sequence>"
  Fingerprint fingerprint{};
  std::string route;               // for `keys list`
  std::string key;                 // for `keys list`
  std::vector<std::string> scope;  // scope header values, for `keys show`
  HttpAnswer answer;               // meaningful when Completed
  // Reconcile (SPEC §1.6): the values of the route's reconcile placeholders taken from the
  // original request, as pairs: placeholder, value ("header:X-Order-Id", "o-1", "json:/id",
  // "42" …), so that the lookup can be built after a restart or on another host.
  std::vector<std::string> lookup;
  // The one reconcile lookup in flight for this key: who runs it, and until when its claim
  // holds (wall clock); "" / 0 when none.
  std::string claim_owner;
  int64_t claim_until_ms = 0;

  bool expired(int64_t nowMs) const { return nowMs >= expires_at_ms; }
  bool leasePassed(int64_t nowMs) const {
    return state == RecordState::InFlight && nowMs >= lease_until_ms;
  }
  // An outcome a reconcile lookup may settle: completed as outcome-unknown, upstream-timeout or
  // upstream-failed (a proxy error that is not response-not-replayable).
  bool uncertain() const { return isUncertain(state, flags); }
  static bool isUncertain(RecordState s, uint32_t f) {
    return s == RecordState::Completed && (f & kFlagProxyError) != 0 &&
           (f & kFlagNotReplayable) == 0;
  }
  bool operator==(const Record&) const = default;
};

enum class DecodeError { None, Truncated, UnknownVersion, BadValue };

// A list of strings as encoded in a record (each a u32 little-endian length, then the bytes),
// already validated by decodeRecordView. Views into the encoded bytes.
class EncodedStrings {
 public:
  EncodedStrings() = default;
  EncodedStrings(uint32_t count, std::string_view bytes) : count_(count), bytes_(bytes) {}
  uint32_t size() const { return count_; }

  class Iterator {
   public:
    explicit Iterator(const char* p) : p_(p) {}
    std::string_view operator*() const { return {p_ + 4, length()}; }
    Iterator& operator++() {
      p_ += 4 + length();
      return *this;
    }
    bool operator==(const Iterator&) const = default;

   private:
    size_t length() const {
      const auto* b = reinterpret_cast<const unsigned char*>(p_);
      return static_cast<size_t>(b[0]) | static_cast<size_t>(b[1]) << 8 |
             static_cast<size_t>(b[2]) << 16 | static_cast<size_t>(b[3]) << 24;
    }
    const char* p_;
  };
  Iterator begin() const { return Iterator(bytes_.data()); }
  Iterator end() const { return Iterator(bytes_.data() + bytes_.size()); }

 private:
  uint32_t count_ = 0;
  std::string_view bytes_;
};

// A record read in place: every string is a view into the encoded bytes it was decoded from,
// so it is valid only as long as those bytes are (for a store read: inside the callback).
struct RecordView {
  RecordState state = RecordState::InFlight;
  uint32_t flags = kFlagNone;
  int64_t reserved_at_ms = 0;
  int64_t lease_until_ms = 0;
  int64_t expires_at_ms = 0;
  std::string_view owner;
  Fingerprint fingerprint{};
  std::string_view route;
  std::string_view key;
  EncodedStrings scope;    // scope values
  int status = 0;          // the answer's
  EncodedStrings headers;  // the answer's: name, value, name, value … (size() counts fields)
  std::string_view body;   // the answer's
  EncodedStrings lookup;   // reconcile placeholder values: name, value, name, value …
  std::string_view claim_owner;
  int64_t claim_until_ms = 0;

  bool uncertain() const { return Record::isUncertain(state, flags); }
  bool expired(int64_t nowMs) const { return nowMs >= expires_at_ms; }
  // Calls fn(name, value) for every header field of the answer, in order.
  template <class F>
  void forEachHeader(F&& fn) const {
    for (auto it = headers.begin(); it != headers.end();) {
      const std::string_view name = *it;
      const std::string_view value = *++it;
      ++it;
      fn(name, value);
    }
  }
  Record toRecord() const;
};

constexpr uint8_t kRecordVersion = 1;   // a record without reconcile fields
constexpr uint8_t kRecordVersion2 = 2;  // version 1, then the reconcile fields

std::string encodeRecord(const Record& r);
// Validates everything: a short, trailing-garbage or unknown-version value is an error.
// `out` is assigned only on success.
DecodeError decodeRecord(std::string_view bytes, Record& out);
// The same validation as decodeRecord, without copying: `out` views `bytes` and is assigned
// only on success.
DecodeError decodeRecordView(std::string_view bytes, RecordView& out);
const char* toString(DecodeError e);

// A list of strings as one byte string (each a u32 little-endian length, then the bytes), for
// network stores that keep scope values and header fields in one field of their own.
std::string encodeStringList(const std::vector<std::string>& values);
std::string encodeHeaderList(const Headers& headers);
// False when malformed; `out` is then unspecified.
[[nodiscard]] bool decodeStringList(std::string_view in, std::vector<std::string>& out);
[[nodiscard]] bool decodeHeaderList(std::string_view in, Headers& out);

}  // namespace idem
