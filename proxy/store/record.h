#pragma once
// The stored record of one idempotency key and its versioned binary encoding.
// Knows nothing of HTTP servers, curl or events.
#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "http_types.h"

namespace idem {

using Digest = std::array<uint8_t, 32>;  // SHA-256
using RecordId = Digest;                 // digest of (route, scope values, key)
using Fingerprint = Digest;              // digest of the request parts that must match

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

  bool expired(int64_t nowMs) const { return nowMs >= expires_at_ms; }
  bool leasePassed(int64_t nowMs) const {
    return state == RecordState::InFlight && nowMs >= lease_until_ms;
  }
  bool operator==(const Record&) const = default;
};

enum class DecodeError { None, Truncated, UnknownVersion, BadValue };

constexpr uint8_t kRecordVersion = 1;

std::string encodeRecord(const Record& r);
// Validates everything: a short, trailing-garbage or unknown-version value is an error.
// `out` is assigned only on success.
DecodeError decodeRecord(std::string_view bytes, Record& out);
const char* toString(DecodeError e);

}  // namespace idem
