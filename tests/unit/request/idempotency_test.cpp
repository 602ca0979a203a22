#include "request/idempotency.h"

#include <gtest/gtest.h>

#include "base/c_handles.h"
#include "request/problem.h"

namespace idem {
namespace {

ParsedKey parse1(std::string_view v) {
  return parseIdempotencyKey({v});
}

TEST(KeyParsing, MissingWhenAbsent) {
  EXPECT_EQ(parseIdempotencyKey({}).status, KeyStatus::Missing);
}

TEST(KeyParsing, BareAndQuotedAreTheSameKey) {
  auto bare = parse1("abc");
  auto quoted = parse1("\"abc\"");
  ASSERT_EQ(bare.status, KeyStatus::Ok);
  ASSERT_EQ(quoted.status, KeyStatus::Ok);
  EXPECT_EQ(bare.key, "abc");
  EXPECT_EQ(quoted.key, "abc");
}

TEST(KeyParsing, QuotedEscapes) {
  EXPECT_EQ(parse1(R"("a\"b")").key, "a\"b");
  EXPECT_EQ(parse1(R"("a\\b")").key, "a\\b");
  EXPECT_EQ(parse1(R"("a\b")").status, KeyStatus::Invalid);
  EXPECT_EQ(parse1(R"("a"b")").status, KeyStatus::Invalid);
}

TEST(KeyParsing, LengthLimits) {
  EXPECT_EQ(parse1(std::string(255, 'k')).status, KeyStatus::Ok);
  EXPECT_EQ(parse1(std::string(256, 'k')).status, KeyStatus::Invalid);
  EXPECT_EQ(parse1("\"" + std::string(255, 'k') + "\"").status, KeyStatus::Ok);
  EXPECT_EQ(parse1("").status, KeyStatus::Invalid);
  EXPECT_EQ(parse1("\"\"").status, KeyStatus::Invalid);
}

TEST(KeyParsing, OnlyPrintableAscii) {
  EXPECT_EQ(parse1("a b").status, KeyStatus::Invalid);
  EXPECT_EQ(parse1("a\tb").status, KeyStatus::Invalid);
  EXPECT_EQ(parse1("caf\xc3\xa9").status, KeyStatus::Invalid);
  EXPECT_EQ(parse1(std::string("a\x7f", 2)).status, KeyStatus::Invalid);
  EXPECT_EQ(parse1("!~").status, KeyStatus::Ok);
}

TEST(KeyParsing, RepeatedFieldIsInvalid) {
  EXPECT_EQ(parseIdempotencyKey({"a", "a"}).status, KeyStatus::Invalid);
}

TEST(Scope, ValuesInConfiguredOrderAbsentIsEmpty) {
  IdempotencyConfig ic;
  ic.scope = {"Authorization", "X-Tenant"};
  Headers h{{"x-tenant", "t1"}, {"authorization", "Bearer a"}};
  EXPECT_EQ(scopeValues(ic, h), (std::vector<std::string>{"Bearer a", "t1"}));
  EXPECT_EQ(scopeValues(ic, {}), (std::vector<std::string>{"", ""}));
}

TEST(KeyParsing, CountFormMatchesVectorForm) {
  EXPECT_EQ(parseIdempotencyKey({}, 0).status, KeyStatus::Missing);
  EXPECT_EQ(parseIdempotencyKey("\"abc\"", 1).key, "abc");
  EXPECT_EQ(parseIdempotencyKey("a", 2).status, KeyStatus::Invalid);
}

TEST(Scope, RepeatedFieldsJoinedInOrderOverAnyHeaderSource) {
  IdempotencyConfig ic;
  ic.scope = {"X-Tenant", "Authorization"};
  const std::pair<const char*, const char*> fields[] = {
      {"X-Tenant", "t1"}, {"Authorization", "Bearer a"}, {"x-tenant", "t2"}};
  auto values = scopeValuesOf(ic, [&](HeaderVisitor fn) {
    for (const auto& [name, value] : fields) fn(name, value);
  });
  EXPECT_EQ(values, (std::vector<std::string>{"t1, t2", "Bearer a"}));
}

TEST(Fingerprint, DependsOnConfiguredPartsOnly) {
  IdempotencyConfig ic;
  auto a = requestFingerprint(ic, {"POST", "/p", "x=1", "{}"});
  EXPECT_EQ(a, requestFingerprint(ic, {"POST", "/p", "x=1", "{}"}));
  EXPECT_NE(a, requestFingerprint(ic, {"PUT", "/p", "x=1", "{}"}));
  EXPECT_NE(a, requestFingerprint(ic, {"POST", "/q", "x=1", "{}"}));
  EXPECT_NE(a, requestFingerprint(ic, {"POST", "/p", "x=2", "{}"}));
  EXPECT_NE(a, requestFingerprint(ic, {"POST", "/p", "x=1", "{ }"}));
  ic.fingerprint = {FingerprintPart::Method, FingerprintPart::Body};
  EXPECT_EQ(requestFingerprint(ic, {"POST", "/p", "", "b"}),
            requestFingerprint(ic, {"POST", "/other", "q", "b"}));
}

TEST(Fingerprint, BodyJsonIgnoresKeyOrderAndWhitespace) {
  IdempotencyConfig ic;
  ic.fingerprint = {FingerprintPart::Method, FingerprintPart::BodyJson};
  auto a = requestFingerprint(ic, {"POST", "/", "", R"({"b":1,"a":{"y":[1,2],"x":null}})"});
  auto b =
      requestFingerprint(ic, {"POST", "/", "", "{ \"a\" : {\"x\":null, \"y\":[1, 2]},\n\"b\":1 }"});
  EXPECT_EQ(a, b);
  EXPECT_NE(a, requestFingerprint(ic, {"POST", "/", "", R"({"b":2,"a":{"y":[1,2],"x":null}})"}));
  EXPECT_NE(a, requestFingerprint(ic, {"POST", "/", "", R"({"b":1,"a":{"y":[2,1],"x":null}})"}));
}

TEST(Fingerprint, NonJsonBodyFallsBackToBytes) {
  IdempotencyConfig ic;
  ic.fingerprint = {FingerprintPart::BodyJson};
  auto a = requestFingerprint(ic, {"POST", "/", "", "not json"});
  EXPECT_EQ(a, requestFingerprint(ic, {"POST", "/", "", "not json"}));
  EXPECT_NE(a, requestFingerprint(ic, {"POST", "/", "", "not  json"}));
  // Same bytes through `body` and through the fallback of `body_json` agree.
  IdempotencyConfig bytes;
  bytes.fingerprint = {FingerprintPart::Body};
  EXPECT_EQ(a, requestFingerprint(bytes, {"POST", "/", "", "not json"}));
}

TEST(CanonicalJson, SortsNestedKeysAndRejectsTrailingGarbage) {
  std::string out;
  ASSERT_TRUE(canonicalJson(R"( {"z":1,"a":[{"d":1,"c":2}]} )", out));
  EXPECT_EQ(out, R"({"a":[{"c":2,"d":1}],"z":1})");
  EXPECT_FALSE(canonicalJson(R"({"a":1} x)", out));
  EXPECT_FALSE(canonicalJson("", out));
}

TEST(Fingerprint, BodyJsonNeverConfusesValuesADoubleCannotTellApart) {
  IdempotencyConfig ic;
  ic.fingerprint = {FingerprintPart::BodyJson};
  auto fp = [&](std::string_view body) { return requestFingerprint(ic, {"POST", "/", "", body}); };
  // 2^53 + 1 and 2^53 are one double.
  EXPECT_NE(fp(R"({"amount": 9007199254740993})"), fp(R"({"amount": 9007199254740992})"));
  EXPECT_NE(fp(R"({"amount": 1e400})"), fp(R"({"amount": 1e401})"));
  // A C string ends at the NUL.
  EXPECT_NE(fp(R"({"ref": "abc\u0000tail1"})"), fp(R"({"ref": "abc\u0000tail2"})"));
  // Ordinary numbers still compare canonically.
  EXPECT_EQ(fp(R"({"a": 2599, "b": -0.25})"), fp(R"({"b":-0.25,"a":2599})"));
  std::string out;
  EXPECT_FALSE(canonicalJson(R"({"amount": 12345678901234567})", out));
  EXPECT_TRUE(canonicalJson(R"({"amount": 123456789012345})", out));
  EXPECT_TRUE(canonicalJson(R"({"s": "1e5 and 12345678901234567 in a string"})", out));
}

TEST(CanonicalJson, NumbersOutsideStrictJsonOrPrintedWithAnExponentAreComparedAsBytes) {
  std::string out;
  // Found by fuzz_canonical_json: leading zeros (not JSON; cJSON reads them) and a value cJSON
  // prints with an exponent, so the canonical form was not canonical again.
  EXPECT_FALSE(canonicalJson("000000.00000000001096615936", out));
  EXPECT_FALSE(canonicalJson(R"({"a": 007})", out));
  EXPECT_FALSE(canonicalJson(R"({"a": 1.})", out));
  EXPECT_FALSE(canonicalJson(R"({"a": -})", out));
  EXPECT_FALSE(canonicalJson(R"({"a": 0.00001})", out));  // prints as 1e-05
  // Underflow: 0.(20 zeros)1 would read as a number far from its text, or as 0 with more zeros.
  EXPECT_FALSE(canonicalJson(R"({"a": 0.0000000000000000000001})", out));
  ASSERT_TRUE(canonicalJson(R"({"a": -0.5, "b": 0, "c": 10.25})", out));
  EXPECT_EQ(out, R"({"a":-0.5,"b":0,"c":10.25})");
  std::string again;
  ASSERT_TRUE(canonicalJson(out, again));
  EXPECT_EQ(again, out);
}

TEST(Problem, AnErrorBodyShapesTheProxysOwnErrors) {
  ErrorBody shape;
  shape.templ = R"({"error": {"code": "{slug}", "message": "{detail}", "http": {status}}})";
  const HttpAnswer a = problemAnswer(Problem::KeyMismatch, "said \"no\"\\", &shape);
  EXPECT_EQ(a.status, 422);
  EXPECT_EQ(a.headers, (Headers{{"Content-Type", "application/json"}}));
  EXPECT_EQ(
      a.body,
      R"({"error": {"code": "idempotency-key-mismatch", "message": "said \"no\"\\", "http": 422}})");
}

TEST(Problem, BodyIsRfc9457) {
  HttpAnswer a = problemAnswer(Problem::KeyMismatch, "detail text");
  EXPECT_EQ(a.status, 422);
  ASSERT_EQ(a.headers.size(), 1u);
  EXPECT_EQ(a.headers[0].value, "application/problem+json");
  CJsonPtr j(cJSON_Parse(a.body.c_str()));
  ASSERT_TRUE(j);
  EXPECT_STREQ(cJSON_GetObjectItem(j.get(), "type")->valuestring,
               "urn:idemproxy:problem:idempotency-key-mismatch");
  EXPECT_EQ(cJSON_GetObjectItem(j.get(), "status")->valueint, 422);
  EXPECT_STREQ(cJSON_GetObjectItem(j.get(), "detail")->valuestring, "detail text");
  EXPECT_TRUE(cJSON_IsString(cJSON_GetObjectItem(j.get(), "title")));
}

TEST(Problem, TheAbandonedAnswerIsBuiltOncePerShapeAndFollowsAChangedShape) {
  const HttpAnswer plain = problemAnswer(Problem::OutcomeUnknown,
                                         "the proxy that forwarded the original request stopped "
                                         "before recording its outcome; the request is not sent "
                                         "again");
  const HttpAnswer& first = abandonedAnswer(nullptr);
  EXPECT_EQ(first.status, 502);
  EXPECT_EQ(first.headers, plain.headers);
  EXPECT_EQ(first.body, plain.body);
  // Not formatted again for the next request: the same bytes are handed out.
  const char* bytes = first.body.data();
  EXPECT_EQ(abandonedAnswer(nullptr).body.data(), bytes);

  // A route's error shape, then the same shape changed in place (a reload), then none.
  ErrorBody shape;
  shape.templ = R"({"code": "{slug}"})";
  EXPECT_EQ(abandonedAnswer(&shape).body, R"({"code": "outcome-unknown"})");
  EXPECT_EQ(abandonedAnswer(&shape).headers, (Headers{{"Content-Type", "application/json"}}));
  shape.templ = R"({"error": "{slug}", "status": {status}})";
  shape.content_type = "application/vnd.error+json";
  EXPECT_EQ(abandonedAnswer(&shape).body, R"({"error": "outcome-unknown", "status": 502})");
  EXPECT_EQ(abandonedAnswer(&shape).headers,
            (Headers{{"Content-Type", "application/vnd.error+json"}}));
  EXPECT_EQ(abandonedAnswer(nullptr).body, plain.body);
}

TEST(Problem, EveryStatusMatchesTheSpecTable) {
  EXPECT_EQ(problemStatus(Problem::KeyMissing), 400);
  EXPECT_EQ(problemStatus(Problem::KeyInvalid), 400);
  EXPECT_EQ(problemStatus(Problem::NoRoute), 404);
  EXPECT_EQ(problemStatus(Problem::KeyInUse), 409);
  EXPECT_EQ(problemStatus(Problem::RequestTimeout), 408);
  EXPECT_EQ(problemStatus(Problem::RequestTooLarge), 413);
  EXPECT_EQ(problemStatus(Problem::KeyMismatch), 422);
  EXPECT_EQ(problemStatus(Problem::UpstreamUnavailable), 502);
  EXPECT_EQ(problemStatus(Problem::UpstreamFailed), 502);
  EXPECT_EQ(problemStatus(Problem::OutcomeUnknown), 502);
  EXPECT_EQ(problemStatus(Problem::ResponseNotReplayable), 502);
  EXPECT_EQ(problemStatus(Problem::StoreUnavailable), 503);
  EXPECT_EQ(problemStatus(Problem::UpstreamTimeout), 504);
}

}  // namespace
}  // namespace idem

namespace idem {
namespace {

TEST(BodyKey, StringOrIntegerAtAPointer) {
  EXPECT_EQ(keyFromJsonBody(R"({"idempotency_id":"abc-1"})", "/idempotency_id").key, "abc-1");
  EXPECT_EQ(keyFromJsonBody(R"({"order":{"id":4711}})", "/order/id").key, "4711");
  EXPECT_EQ(keyFromJsonBody(R"({"a/b":{"m~n":"x"}})", "/a~1b/m~0n").key, "x");
  EXPECT_EQ(keyFromJsonBody(R"({"ids":["p","q"]})", "/ids/1").key, "q");
  EXPECT_EQ(keyFromJsonBody(R"({"k":"abc"})", "/k").status, KeyStatus::Ok);
}

TEST(BodyKey, MissingWhenNotJsonOrAbsent) {
  EXPECT_EQ(keyFromJsonBody("not json", "/k").status, KeyStatus::Missing);
  EXPECT_EQ(keyFromJsonBody("", "/k").status, KeyStatus::Missing);
  EXPECT_EQ(keyFromJsonBody(R"({"other":"x"})", "/k").status, KeyStatus::Missing);
  EXPECT_EQ(keyFromJsonBody(R"({"k":null})", "/k").status, KeyStatus::Missing);
  EXPECT_EQ(keyFromJsonBody(R"({"ids":["p"]})", "/ids/01").status, KeyStatus::Missing);
  EXPECT_EQ(keyFromJsonBody(R"("k")", "/k").status, KeyStatus::Missing);
}

TEST(BodyKey, InvalidValuesAreRefusedLikeAHeader) {
  EXPECT_EQ(keyFromJsonBody(R"({"k":""})", "/k").status, KeyStatus::Invalid);
  EXPECT_EQ(keyFromJsonBody(R"({"k":"a b"})", "/k").status, KeyStatus::Invalid);
  EXPECT_EQ(keyFromJsonBody(R"({"k":1.5})", "/k").status, KeyStatus::Invalid);
  EXPECT_EQ(keyFromJsonBody(R"({"k":12345678901234567890})", "/k").status, KeyStatus::Invalid);
  EXPECT_EQ(keyFromJsonBody(R"({"k":true})", "/k").status, KeyStatus::Invalid);
  EXPECT_EQ(keyFromJsonBody(R"({"k":{"x":1}})", "/k").status, KeyStatus::Invalid);
  EXPECT_EQ(keyFromJsonBody("{\"k\":\"" + std::string(256, 'a') + "\"}", "/k").status,
            KeyStatus::Invalid);
}

}  // namespace
}  // namespace idem
