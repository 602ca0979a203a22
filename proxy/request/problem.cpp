#include "request/problem.h"

#include <optional>

#include "base/c_handles.h"
#include "config/config_values.h"

namespace idem {
namespace {

struct ProblemInfo {
  int status;
  const char* slug;
  const char* title;
};

ProblemInfo info(Problem p) {
  switch (p) {
    case Problem::KeyMissing:
      return {400, "idempotency-key-missing", "Idempotency-Key header is required"};
    case Problem::KeyInvalid:
      return {400, "idempotency-key-invalid", "Idempotency-Key header is invalid"};
    case Problem::ScopeMissing:
      return {400, "idempotency-scope-missing",
              "The request carries none of the route's scope headers"};
    case Problem::NoRoute:
      return {404, "no-route", "No route matches this request"};
    case Problem::KeyInUse:
      return {409, "idempotency-key-in-use", "A request with this key is still in progress"};
    case Problem::RequestTimeout:
      return {408, "request-timeout", "The request was not received in time"};
    case Problem::RequestTooLarge:
      return {413, "request-too-large", "Request body is too large"};
    case Problem::KeyMismatch:
      return {422, "idempotency-key-mismatch",
              "This key was already used with a different request"};
    case Problem::UpstreamUnavailable:
      return {502, "upstream-unavailable", "The upstream could not be reached"};
    case Problem::UpstreamFailed:
      return {502, "upstream-failed", "The upstream failed after the request was sent"};
    case Problem::OutcomeUnknown:
      return {502, "outcome-unknown", "The outcome of the original request is unknown"};
    case Problem::ResponseNotReplayable:
      return {502, "response-not-replayable", "The original response was too large to replay"};
    case Problem::StoreUnavailable:
      return {503, "store-unavailable", "The idempotency store is unavailable"};
    case Problem::UpstreamTimeout:
      return {504, "upstream-timeout", "The upstream did not answer in time"};
    case Problem::BadRequest:
      return {400, "bad-request", "The request is malformed"};
    case Problem::Internal:
      break;
  }
  return {500, "internal-error", "The proxy failed to handle the request"};
}

}  // namespace

int problemStatus(Problem p) {
  return info(p).status;
}
const char* problemSlug(Problem p) {
  return info(p).slug;
}
const char* problemTitle(Problem p) {
  return info(p).title;
}

HttpAnswer problemAnswer(Problem p, std::string_view detail, const ErrorBody* shape) {
  const ProblemInfo i = info(p);
  if (shape != nullptr) {
    HttpAnswer a;
    a.status = i.status;
    a.headers.push_back({"Content-Type", shape->content_type});
    a.body = config_detail::fillErrorTemplate(shape->templ, i.status, i.slug, i.title, detail);
    return a;
  }
  CJsonPtr obj(cJSON_CreateObject());
  cJSON_AddStringToObject(obj.get(), "type",
                          (std::string("urn:idemproxy:problem:") + i.slug).c_str());
  cJSON_AddStringToObject(obj.get(), "title", i.title);
  cJSON_AddNumberToObject(obj.get(), "status", i.status);
  cJSON_AddStringToObject(obj.get(), "detail", std::string(detail).c_str());
  CJsonString text(cJSON_PrintUnformatted(obj.get()));
  HttpAnswer a;
  a.status = i.status;
  a.headers.push_back({"Content-Type", "application/problem+json"});
  a.body = text ? text.get() : "{}";
  return a;
}

const HttpAnswer& abandonedAnswer(const ErrorBody* shape) {
  struct Cached {
    std::optional<ErrorBody> shape;  // what `answer` was built for (none: the default body)
    std::optional<HttpAnswer> answer;
  };
  thread_local Cached cached;
  const bool same = cached.answer && (shape != nullptr ? cached.shape == *shape : !cached.shape);
  if (!same) {
    cached.answer = problemAnswer(Problem::OutcomeUnknown,
                                  "the proxy that forwarded the original request stopped before "
                                  "recording its outcome; the request is not sent again",
                                  shape);
    cached.shape = shape != nullptr ? std::optional<ErrorBody>(*shape) : std::nullopt;
  }
  return *cached.answer;
}

}  // namespace idem
