#include "store/record.h"

#include <cstdlib>
#include <cstring>
#include <limits>

// Layout of version 1 (all integers little-endian, strings u32-length-prefixed):
//
//   u8  version            u8  state             u32 flags
//   i64 reserved_at_ms     i64 lease_until_ms    i64 expires_at_ms
//   str owner              u8[32] fingerprint
//   str route              str key               u32 n_scope, str scope[n_scope]
//   u16 status             u32 n_headers, (str name, str value)[n_headers]
//   str body
//
// Version 2 is version 1 followed by the reconcile fields (SPEC §1.6):
//   u32 n_lookup, str lookup[n_lookup]   (placeholder, value pairs: n_lookup is even)
//   str claim_owner        i64 claim_until_ms
// A record without them is written as version 1 (so records of routes without reconcile stay
// readable by a proxy that predates it), and a version 2 record without them is refused: the
// encoding stays canonical.
//
// Nothing follows the last field: trailing bytes are an error, as is any short field.

namespace idem {
namespace {

constexpr uint32_t kKnownFlags = kFlagProxyError | kFlagOutcomeUnknown | kFlagNotReplayable;
constexpr int kMaxStatus = 999;

class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  void u8(uint8_t v) { out_.push_back(static_cast<char>(v)); }
  void u16(uint16_t v) { le(v, 2); }
  void u32(uint32_t v) { le(v, 4); }
  void i64(int64_t v) { le(static_cast<uint64_t>(v), 8); }
  void bytes(const void* p, size_t n) { out_.append(static_cast<const char*>(p), n); }
  void str(std::string_view s) {
    if (s.size() > std::numeric_limits<uint32_t>::max()) {
      std::abort();  // broken invariant: records are bounded far below 4 GiB per field
    }
    u32(static_cast<uint32_t>(s.size()));
    out_.append(s);
  }
  void count(size_t n) {
    if (n > std::numeric_limits<uint32_t>::max()) std::abort();
    u32(static_cast<uint32_t>(n));
  }

 private:
  void le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) out_.push_back(static_cast<char>(v >> (8 * i)));
  }
  std::string& out_;
};

// Reads fields from the front of a buffer; every read checks the remaining length first.
class Reader {
 public:
  explicit Reader(std::string_view in) : in_(in) {}
  size_t remaining() const { return in_.size() - pos_; }

  bool u8(uint8_t& v) {
    uint64_t x;
    if (!le(x, 1)) return false;
    v = static_cast<uint8_t>(x);
    return true;
  }
  bool u16(uint16_t& v) {
    uint64_t x;
    if (!le(x, 2)) return false;
    v = static_cast<uint16_t>(x);
    return true;
  }
  bool u32(uint32_t& v) {
    uint64_t x;
    if (!le(x, 4)) return false;
    v = static_cast<uint32_t>(x);
    return true;
  }
  bool i64(int64_t& v) {
    uint64_t x;
    if (!le(x, 8)) return false;
    v = static_cast<int64_t>(x);
    return true;
  }
  bool bytes(void* p, size_t n) {
    if (remaining() < n) return false;
    std::memcpy(p, in_.data() + pos_, n);
    pos_ += n;
    return true;
  }
  bool str(std::string_view& s) {
    uint32_t n;
    if (!u32(n) || remaining() < n) return false;
    s = in_.substr(pos_, n);
    pos_ += n;
    return true;
  }
  // `n` consecutive strings, checked and skipped; `out` views them.
  bool strings(size_t n, uint32_t count, EncodedStrings& out) {
    const size_t start = pos_;
    std::string_view s;
    for (size_t i = 0; i < n; ++i) {
      if (!str(s)) return false;
    }
    out = EncodedStrings(count, in_.substr(start, pos_ - start));
    return true;
  }

 private:
  bool le(uint64_t& v, int n) {
    if (remaining() < static_cast<size_t>(n)) return false;
    v = 0;
    for (int i = 0; i < n; ++i) {
      v |= static_cast<uint64_t>(static_cast<uint8_t>(in_[pos_ + static_cast<size_t>(i)]))
           << (8 * i);
    }
    pos_ += static_cast<size_t>(n);
    return true;
  }
  std::string_view in_;
  size_t pos_ = 0;
};

}  // namespace

const char* toString(DecodeError e) {
  switch (e) {
    case DecodeError::None:
      return "none";
    case DecodeError::Truncated:
      return "truncated";
    case DecodeError::UnknownVersion:
      return "unknown version";
    case DecodeError::BadValue:
      return "bad value";
  }
  return "?";
}

std::string encodeRecord(const Record& r) {
  std::string out;
  size_t estimate = 64 + r.owner.size() + r.route.size() + r.key.size() + r.answer.body.size();
  for (const auto& s : r.scope) estimate += 4 + s.size();
  for (const auto& h : r.answer.headers) estimate += 8 + h.name.size() + h.value.size();
  out.reserve(estimate);

  const bool v2 = !r.lookup.empty() || !r.claim_owner.empty() || r.claim_until_ms != 0;
  for (const auto& s : r.lookup) estimate += 4 + s.size();
  if (r.lookup.size() % 2 != 0) std::abort();  // broken invariant: pairs
  Writer w(out);
  w.u8(v2 ? kRecordVersion2 : kRecordVersion);
  w.u8(static_cast<uint8_t>(r.state));
  w.u32(r.flags);
  w.i64(r.reserved_at_ms);
  w.i64(r.lease_until_ms);
  w.i64(r.expires_at_ms);
  w.str(r.owner);
  w.bytes(r.fingerprint.data(), r.fingerprint.size());
  w.str(r.route);
  w.str(r.key);
  w.count(r.scope.size());
  for (const auto& s : r.scope) w.str(s);
  if (r.answer.status < 0 || r.answer.status > kMaxStatus) std::abort();  // broken invariant
  w.u16(static_cast<uint16_t>(r.answer.status));
  w.count(r.answer.headers.size());
  for (const auto& h : r.answer.headers) {
    w.str(h.name);
    w.str(h.value);
  }
  w.str(r.answer.body);
  if (v2) {
    w.count(r.lookup.size());
    for (const auto& s : r.lookup) w.str(s);
    w.str(r.claim_owner);
    w.i64(r.claim_until_ms);
  }
  return out;
}

DecodeError decodeRecordView(std::string_view bytes, RecordView& out) {
  Reader rd(bytes);
  RecordView r;

  uint8_t version = 0;
  if (!rd.u8(version)) return DecodeError::Truncated;
  if (version != kRecordVersion && version != kRecordVersion2) return DecodeError::UnknownVersion;

  uint8_t state = 0;
  if (!rd.u8(state)) return DecodeError::Truncated;
  if (state != static_cast<uint8_t>(RecordState::InFlight) &&
      state != static_cast<uint8_t>(RecordState::Completed)) {
    return DecodeError::BadValue;
  }
  r.state = static_cast<RecordState>(state);

  if (!rd.u32(r.flags)) return DecodeError::Truncated;
  if ((r.flags & ~kKnownFlags) != 0) return DecodeError::BadValue;
  if (!rd.i64(r.reserved_at_ms) || !rd.i64(r.lease_until_ms) || !rd.i64(r.expires_at_ms) ||
      !rd.str(r.owner) || !rd.bytes(r.fingerprint.data(), r.fingerprint.size()) ||
      !rd.str(r.route) || !rd.str(r.key)) {
    return DecodeError::Truncated;
  }

  uint32_t n_scope = 0;
  if (!rd.u32(n_scope)) return DecodeError::Truncated;
  // Each entry needs at least its 4-byte length: a larger count cannot fit (and must not make
  // anyone allocate for it).
  if (n_scope > rd.remaining() / 4) return DecodeError::Truncated;
  if (!rd.strings(n_scope, n_scope, r.scope)) return DecodeError::Truncated;

  uint16_t status = 0;
  if (!rd.u16(status)) return DecodeError::Truncated;
  if (status > kMaxStatus) return DecodeError::BadValue;
  r.status = status;

  uint32_t n_headers = 0;
  if (!rd.u32(n_headers)) return DecodeError::Truncated;
  if (n_headers > rd.remaining() / 8) return DecodeError::Truncated;
  if (!rd.strings(size_t{n_headers} * 2, n_headers, r.headers)) return DecodeError::Truncated;

  if (!rd.str(r.body)) return DecodeError::Truncated;
  if (version == kRecordVersion2) {
    uint32_t n_lookup = 0;
    if (!rd.u32(n_lookup)) return DecodeError::Truncated;
    if (n_lookup > rd.remaining() / 4) return DecodeError::Truncated;
    if (n_lookup % 2 != 0) return DecodeError::BadValue;
    if (!rd.strings(n_lookup, n_lookup, r.lookup)) return DecodeError::Truncated;
    if (!rd.str(r.claim_owner) || !rd.i64(r.claim_until_ms)) return DecodeError::Truncated;
    // The encoding is canonical: a record without reconcile fields is written as version 1.
    if (n_lookup == 0 && r.claim_owner.empty() && r.claim_until_ms == 0) {
      return DecodeError::BadValue;
    }
  }
  if (rd.remaining() != 0) return DecodeError::BadValue;  // trailing garbage

  out = r;
  return DecodeError::None;
}

Record RecordView::toRecord() const {
  Record r;
  r.state = state;
  r.flags = flags;
  r.reserved_at_ms = reserved_at_ms;
  r.lease_until_ms = lease_until_ms;
  r.expires_at_ms = expires_at_ms;
  r.owner = owner;
  r.fingerprint = fingerprint;
  r.route = route;
  r.key = key;
  r.scope.reserve(scope.size());
  for (std::string_view s : scope) r.scope.emplace_back(s);
  r.answer.status = status;
  r.answer.headers.reserve(headers.size());
  forEachHeader([&](std::string_view name, std::string_view value) {
    r.answer.headers.push_back({std::string(name), std::string(value)});
  });
  r.answer.body = body;
  r.lookup.reserve(lookup.size());
  for (std::string_view s : lookup) r.lookup.emplace_back(s);
  r.claim_owner = claim_owner;
  r.claim_until_ms = claim_until_ms;
  return r;
}

DecodeError decodeRecord(std::string_view bytes, Record& out) {
  RecordView v;
  const DecodeError e = decodeRecordView(bytes, v);
  if (e == DecodeError::None) out = v.toRecord();
  return e;
}

std::string encodeStringList(const std::vector<std::string>& values) {
  std::string out;
  Writer w(out);
  for (const auto& v : values) w.str(v);
  return out;
}

std::string encodeHeaderList(const Headers& headers) {
  std::string out;
  Writer w(out);
  for (const auto& h : headers) {
    w.str(h.name);
    w.str(h.value);
  }
  return out;
}

bool decodeStringList(std::string_view in, std::vector<std::string>& out) {
  out.clear();
  while (!in.empty()) {
    if (in.size() < 4) return false;
    const auto* b = reinterpret_cast<const unsigned char*>(in.data());
    const size_t n = static_cast<size_t>(b[0]) | static_cast<size_t>(b[1]) << 8 |
                     static_cast<size_t>(b[2]) << 16 | static_cast<size_t>(b[3]) << 24;
    if (in.size() - 4 < n) return false;
    out.emplace_back(in.substr(4, n));
    in.remove_prefix(4 + n);
  }
  return true;
}

bool decodeHeaderList(std::string_view in, Headers& out) {
  std::vector<std::string> fields;
  if (!decodeStringList(in, fields) || fields.size() % 2 != 0) return false;
  out.clear();
  for (size_t i = 0; i < fields.size(); i += 2) {
    out.push_back({std::move(fields[i]), std::move(fields[i + 1])});
  }
  return true;
}

}  // namespace idem
