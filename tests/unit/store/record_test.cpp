#include "store/record.h"

#include <gtest/gtest.h>

#include <random>

namespace idem {
namespace {

Record sampleRecord() {
  Record r;
  r.state = RecordState::Completed;
  r.flags = kFlagProxyError | kFlagOutcomeUnknown;
  r.reserved_at_ms = 1'700'000'000'123;
  r.lease_until_ms = 1'700'000'060'123;
  r.expires_at_ms = 1'700'086'400'123;
  r.owner = "boot-1234:4242:7";
  for (size_t i = 0; i < r.fingerprint.size(); ++i) r.fingerprint[i] = static_cast<uint8_t>(i * 7);
  r.route = "payments";
  r.key = "key-\x7e!";
  r.scope = {"Bearer abc", "", "tenant\x01z"};
  r.answer.status = 201;
  r.answer.headers = {{"Content-Type", "application/json"},
                      {"Set-Cookie", "a=1"},
                      {"Link", "</a>; rel=next"},
                      {"Set-Cookie", "b=2"},
                      {"X-Empty", ""}};
  r.answer.body = std::string("\x00\x01\xff binary\r\n\x00", 14);
  return r;
}

TEST(Record, RoundTrip) {
  const Record r = sampleRecord();
  Record back;
  ASSERT_EQ(decodeRecord(encodeRecord(r), back), DecodeError::None);
  EXPECT_EQ(back, r);
  EXPECT_EQ(back.answer.headers[1].value, "a=1");
  EXPECT_EQ(back.answer.headers[3].value, "b=2");
  EXPECT_EQ(back.answer.body.size(), 14u);
}

TEST(Record, RoundTripEmptyAndInFlight) {
  Record r;              // all defaults: in flight, no answer
  r.expires_at_ms = -5;  // negative times survive too
  Record back;
  ASSERT_EQ(decodeRecord(encodeRecord(r), back), DecodeError::None);
  EXPECT_EQ(back, r);
}

TEST(Record, RoundTripLargeBinaryBody) {
  Record r = sampleRecord();
  std::mt19937 rng(42);
  r.answer.body.resize(1 << 20);
  for (char& c : r.answer.body) c = static_cast<char>(rng());
  Record back;
  ASSERT_EQ(decodeRecord(encodeRecord(r), back), DecodeError::None);
  EXPECT_EQ(back, r);
}

TEST(Record, EncodingIsVersionedLittleEndian) {
  Record r;
  r.state = RecordState::Completed;
  r.flags = kFlagNotReplayable;
  r.reserved_at_ms = 0x0102030405060708;
  const std::string bytes = encodeRecord(r);
  ASSERT_GE(bytes.size(), 14u);
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), kRecordVersion);
  EXPECT_EQ(static_cast<uint8_t>(bytes[1]), 2);
  EXPECT_EQ(static_cast<uint8_t>(bytes[2]), kFlagNotReplayable);
  EXPECT_EQ(static_cast<uint8_t>(bytes[6]), 0x08);
  EXPECT_EQ(static_cast<uint8_t>(bytes[13]), 0x01);
}

TEST(Record, EveryTruncationIsAnError) {
  const std::string bytes = encodeRecord(sampleRecord());
  for (size_t n = 0; n < bytes.size(); ++n) {
    Record out;
    out.key = "untouched";
    EXPECT_EQ(decodeRecord(std::string_view(bytes).substr(0, n), out), DecodeError::Truncated)
        << "length " << n;
    EXPECT_EQ(out.key, "untouched");  // not assigned on failure
  }
}

TEST(Record, TrailingGarbageIsAnError) {
  std::string bytes = encodeRecord(sampleRecord());
  bytes.push_back('\0');
  Record out;
  EXPECT_EQ(decodeRecord(bytes, out), DecodeError::BadValue);
}

TEST(Record, ReconcileFieldsMakeAVersion2RecordAndRoundTrip) {
  Record r = sampleRecord();
  EXPECT_EQ(static_cast<uint8_t>(encodeRecord(r)[0]), kRecordVersion) << "none: still version 1";
  r.lookup = {"json:/order", "o 7", "header:X-Shop", std::string("\0\xff", 2)};
  r.claim_owner = "host:1:abcd:2";
  r.claim_until_ms = 1'700'000'060'000;
  const std::string bytes = encodeRecord(r);
  EXPECT_EQ(static_cast<uint8_t>(bytes[0]), kRecordVersion2);
  Record out;
  ASSERT_EQ(decodeRecord(bytes, out), DecodeError::None);
  EXPECT_EQ(out, r);
  RecordView v;
  ASSERT_EQ(decodeRecordView(bytes, v), DecodeError::None);
  EXPECT_EQ(v.toRecord(), r);
  EXPECT_EQ(v.claim_owner, "host:1:abcd:2");
  for (size_t n = 0; n < bytes.size(); ++n) {
    EXPECT_NE(decodeRecord(bytes.substr(0, n), out), DecodeError::None) << n;
  }
  // Canonical: version 2 with empty reconcile fields (4 + 4 + 8 bytes of zeros) is refused.
  std::string empty = encodeRecord(sampleRecord()) + std::string(16, '\0');
  empty[0] = static_cast<char>(kRecordVersion2);
  EXPECT_EQ(decodeRecord(empty, out), DecodeError::BadValue);
}

TEST(Record, OnlyProxyErrorsThatMayNotHaveHappenedAreUncertain) {
  Record r = sampleRecord();
  r.state = RecordState::Completed;
  r.flags = kFlagNone;
  EXPECT_FALSE(r.uncertain());
  r.flags = kFlagProxyError;  // upstream-timeout, upstream-failed
  EXPECT_TRUE(r.uncertain());
  r.flags = kFlagProxyError | kFlagOutcomeUnknown;
  EXPECT_TRUE(r.uncertain());
  r.flags = kFlagProxyError | kFlagNotReplayable;  // the backend answered
  EXPECT_FALSE(r.uncertain());
  r.state = RecordState::InFlight;
  r.flags = kFlagProxyError;
  EXPECT_FALSE(r.uncertain());
}

TEST(Record, UnknownVersionIsAnError) {
  std::string bytes = encodeRecord(sampleRecord());
  for (int v : {0, 3, 255}) {
    bytes[0] = static_cast<char>(v);
    Record out;
    EXPECT_EQ(decodeRecord(bytes, out), DecodeError::UnknownVersion);
  }
}

TEST(Record, BadStateFlagsOrStatusIsAnError) {
  const std::string good = encodeRecord(sampleRecord());
  Record out;
  for (int state : {0, 3, 200}) {
    std::string bytes = good;
    bytes[1] = static_cast<char>(state);
    EXPECT_EQ(decodeRecord(bytes, out), DecodeError::BadValue);
  }
  std::string bytes = good;
  bytes[5] = '\x80';  // an unknown flag bit
  EXPECT_EQ(decodeRecord(bytes, out), DecodeError::BadValue);

  Record r = sampleRecord();
  r.answer.headers.clear();
  r.answer.body.clear();
  bytes = encodeRecord(r);
  // status is the u16 before n_headers (u32) and the body length (u32) at the very end
  const size_t status_at = bytes.size() - 4 - 4 - 2;
  bytes[status_at] = '\xe8';  // 1000
  bytes[status_at + 1] = '\x03';
  EXPECT_EQ(decodeRecord(bytes, out), DecodeError::BadValue);
}

TEST(Record, HugeCountsDoNotAllocate) {
  Record r = sampleRecord();
  r.answer.headers.clear();
  r.answer.body.clear();
  std::string bytes = encodeRecord(r);
  const size_t n_headers_at = bytes.size() - 4 - 4;
  for (int i = 0; i < 4; ++i) bytes[n_headers_at + static_cast<size_t>(i)] = '\xff';
  Record out;
  EXPECT_EQ(decodeRecord(bytes, out), DecodeError::Truncated);
}

TEST(Record, RandomGarbageNeverCrashes) {
  std::mt19937 rng(7);
  const std::string good = encodeRecord(sampleRecord());
  for (int i = 0; i < 20000; ++i) {
    std::string bytes;
    if (i % 2 == 0) {
      bytes = good;  // mutate a valid encoding: gets past the version check
      const int flips = 1 + static_cast<int>(rng() % 4);
      for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    } else {
      bytes.resize(rng() % 128);
      for (char& c : bytes) c = static_cast<char>(rng());
      if (!bytes.empty()) bytes[0] = static_cast<char>(kRecordVersion);
    }
    Record out;
    const DecodeError e = decodeRecord(bytes, out);
    if (e == DecodeError::None) {
      EXPECT_EQ(encodeRecord(out), bytes);  // whatever decodes re-encodes identically
    }
  }
}

// ---- decodeRecordView: the same parser, views instead of copies ----

void expectViewMatches(const RecordView& v, const Record& r, std::string_view bytes) {
  EXPECT_EQ(v.state, r.state);
  EXPECT_EQ(v.flags, r.flags);
  EXPECT_EQ(v.reserved_at_ms, r.reserved_at_ms);
  EXPECT_EQ(v.lease_until_ms, r.lease_until_ms);
  EXPECT_EQ(v.expires_at_ms, r.expires_at_ms);
  EXPECT_EQ(v.owner, r.owner);
  EXPECT_EQ(v.fingerprint, r.fingerprint);
  EXPECT_EQ(v.route, r.route);
  EXPECT_EQ(v.key, r.key);
  std::vector<std::string> scope;
  for (std::string_view s : v.scope) scope.emplace_back(s);
  EXPECT_EQ(v.scope.size(), r.scope.size());
  EXPECT_EQ(scope, r.scope);
  EXPECT_EQ(v.status, r.answer.status);
  Headers headers;
  v.forEachHeader([&](std::string_view name, std::string_view value) {
    headers.push_back({std::string(name), std::string(value)});
  });
  EXPECT_EQ(v.headers.size(), r.answer.headers.size());
  EXPECT_EQ(headers, r.answer.headers);
  EXPECT_EQ(v.body, r.answer.body);
  // Views, not copies: every string lies inside the encoded bytes.
  const auto inside = [&](std::string_view s) {
    return s.empty() ||
           (s.data() >= bytes.data() && s.data() + s.size() <= bytes.data() + bytes.size());
  };
  EXPECT_TRUE(inside(v.owner));
  EXPECT_TRUE(inside(v.body));
  v.forEachHeader([&](std::string_view name, std::string_view value) {
    EXPECT_TRUE(inside(name));
    EXPECT_TRUE(inside(value));
  });
  EXPECT_EQ(v.toRecord(), r);
}

TEST(RecordView, RoundTrip) {
  for (Record r : {sampleRecord(), Record{}}) {
    const std::string bytes = encodeRecord(r);
    RecordView v;
    ASSERT_EQ(decodeRecordView(bytes, v), DecodeError::None);
    expectViewMatches(v, r, bytes);
  }
  Record big = sampleRecord();
  std::mt19937 rng(42);
  big.answer.body.resize(1 << 20);
  for (char& c : big.answer.body) c = static_cast<char>(rng());
  const std::string bytes = encodeRecord(big);
  RecordView v;
  ASSERT_EQ(decodeRecordView(bytes, v), DecodeError::None);
  expectViewMatches(v, big, bytes);
}

TEST(RecordView, EveryTruncationIsAnErrorAndLeavesTheOutputAlone) {
  const std::string bytes = encodeRecord(sampleRecord());
  for (size_t n = 0; n < bytes.size(); ++n) {
    RecordView out;
    out.key = "untouched";
    EXPECT_EQ(decodeRecordView(std::string_view(bytes).substr(0, n), out), DecodeError::Truncated)
        << "length " << n;
    EXPECT_EQ(out.key, "untouched");
  }
}

TEST(RecordView, RejectsWhatDecodeRecordRejects) {
  const std::string good = encodeRecord(sampleRecord());
  RecordView v;
  std::string bytes = good + '\0';
  EXPECT_EQ(decodeRecordView(bytes, v), DecodeError::BadValue);  // trailing garbage
  bytes = good;
  bytes[0] = 3;
  EXPECT_EQ(decodeRecordView(bytes, v), DecodeError::UnknownVersion);
  bytes = good;
  bytes[1] = 3;
  EXPECT_EQ(decodeRecordView(bytes, v), DecodeError::BadValue);  // state
  bytes = good;
  bytes[5] = '\x80';
  EXPECT_EQ(decodeRecordView(bytes, v), DecodeError::BadValue);  // unknown flag

  Record r = sampleRecord();
  r.answer.headers.clear();
  r.answer.body.clear();
  const std::string empty = encodeRecord(r);
  bytes = empty;
  const size_t n_headers_at = bytes.size() - 4 - 4;
  for (int i = 0; i < 4; ++i) bytes[n_headers_at + static_cast<size_t>(i)] = '\xff';
  EXPECT_EQ(decodeRecordView(bytes, v), DecodeError::Truncated);  // huge count
  bytes = empty;
  bytes[n_headers_at - 2] = '\xe8';  // status 1000
  bytes[n_headers_at - 1] = '\x03';
  EXPECT_EQ(decodeRecordView(bytes, v), DecodeError::BadValue);
}

TEST(RecordView, AgreesWithDecodeRecordOnGarbage) {
  std::mt19937 rng(11);
  const std::string good = encodeRecord(sampleRecord());
  for (int i = 0; i < 20000; ++i) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) bytes[rng() % bytes.size()] = static_cast<char>(rng());
    if (i % 3 == 0) bytes.resize(rng() % bytes.size());
    Record rec;
    RecordView view;
    const DecodeError e = decodeRecord(bytes, rec);
    ASSERT_EQ(decodeRecordView(bytes, view), e) << "iteration " << i;
    if (e == DecodeError::None) {
      EXPECT_EQ(view.toRecord(), rec);
    }
  }
}

}  // namespace
}  // namespace idem
