#pragma once
// What goes upstream for a client request: the request line's parts and the header rewrite
// (SPEC §3). Pure functions, so the rules are tested without sockets.
#include <string>
#include <string_view>

#include "base/function_ref.h"
#include "base/http_types.h"
#include "request/downstream.h"

namespace idem {

// The request-target split into path and query. Origin-form ("/a?q") and absolute-form
// ("http://h/a?q") are accepted; `ok` is false for anything else ("*", "a/b", "").
struct RequestTarget {
  bool ok = false;
  std::string path;   // starts with '/'
  std::string query;  // without the '?'; empty when none
};
RequestTarget splitTarget(std::string_view target);

// The fields forwarded upstream, in the client's order: hop-by-hop fields (and those named in
// Connection), Content-Length and Expect dropped (framing is the upstream client's);
// X-Forwarded-For extended with `peer`; X-Forwarded-Proto and X-Forwarded-Host kept when a
// `trusted` proxy in front of this one set them, otherwise replaced by this hop's own (http,
// and the request's Host).
Headers forwardedFields(FunctionRef<void(FieldVisitor)> forEachField, std::string_view peer,
                        bool trusted);

// An upstream answer made fit to pass on and record. False when it must be treated as a
// malformed answer (a status outside 100–599). Drops fields whose name is not an HTTP token
// (strict clients would refuse every replay of them) and any Idempotent-Replayed field (only a
// replay by this proxy carries one; the first client must not think it got a replay).
[[nodiscard]] bool sanitizeUpstreamAnswer(HttpAnswer& answer);

}  // namespace idem
