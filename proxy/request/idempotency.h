#pragma once
// Request identity rules (SPEC §1 steps 1–3): key parsing, scope, fingerprint.
// Pure functions: no sockets, no store.
#include <string>
#include <string_view>
#include <vector>

#include "base/function_ref.h"
#include "base/http_types.h"
#include "config/config.h"
#include "store/record.h"

namespace idem {

enum class KeyStatus { Ok, Missing, Invalid };

struct ParsedKey {
  KeyStatus status = KeyStatus::Missing;
  std::string key;     // unquoted, when Ok
  std::string reason;  // why it is invalid, for the problem detail
};

// A key as given (already unquoted): 1-255 printable ASCII characters.
[[nodiscard]] ParsedKey validatedKey(std::string key);

// The member of a JSON body at an RFC 6901 `pointer`, as text: a string as it is, an integer
// as its decimal text. Missing when the body is not JSON or has no such member (or null);
// Invalid (with `reason`) for any other value.
struct JsonText {
  enum class Status { Missing, Ok, Invalid };
  Status status = Status::Missing;
  std::string text;
  std::string reason;
};
[[nodiscard]] JsonText jsonTextAt(std::string_view body, std::string_view pointer);

// The key a legacy client put in its JSON body, at `pointer`: a string, or an integer as its
// decimal text, validated like a header value. Missing when the body is not JSON or has no
// such member (or null); Invalid for any other value.
[[nodiscard]] ParsedKey keyFromJsonBody(std::string_view body, std::string_view pointer);

// `values` are every value of the key header in the request (the header may repeat).
[[nodiscard]] ParsedKey parseIdempotencyKey(const std::vector<std::string_view>& values);
// The same without a vector: `count` values of which `first` is the first (ignored when 0).
[[nodiscard]] ParsedKey parseIdempotencyKey(std::string_view first, size_t count);

// The values of the route's scope headers, in the configured order: surrounding spaces and
// tabs trimmed, "" when absent or empty, repeated fields joined with ", ".
std::vector<std::string> scopeValues(const IdempotencyConfig& cfg, const Headers& headers);
// The same over any header source: forEachHeader(fn) calls fn(name, value) for every field of
// the request, in order.
using HeaderVisitor = FunctionRef<void(std::string_view name, std::string_view value)>;
std::vector<std::string> scopeValuesOf(const IdempotencyConfig& cfg,
                                       FunctionRef<void(HeaderVisitor)> forEachHeader);

// True when none of the route's scope headers carried a value: such a request cannot be told
// apart from another tenant's (400 idempotency-scope-missing unless shared_scope).
bool scopeMissing(const std::vector<std::string>& values);
// What a record keeps of its scope values: "sha256:<hex>" of each ("" stays ""), never the
// credential itself.
std::vector<std::string> scopeDigests(const std::vector<std::string>& values);

struct RequestParts {
  std::string_view method;
  std::string_view path;
  std::string_view query;
  std::string_view body;
};

Fingerprint requestFingerprint(const IdempotencyConfig& cfg, const RequestParts& parts);

// JSON with object keys sorted and insignificant whitespace dropped; false when `text` is not
// JSON (the caller then falls back to the bytes).
[[nodiscard]] bool canonicalJson(std::string_view text, std::string& out);

}  // namespace idem
