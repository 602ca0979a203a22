#include "request/forwarding.h"

#include "upstream/upstream.h"

namespace idem {

RequestTarget splitTarget(std::string_view target) {
  RequestTarget t;
  if (!target.starts_with('/')) {
    // absolute-form: scheme "://" authority, then the path (RFC 9112 §3.2.2).
    const size_t scheme = target.find("://");
    if (scheme == std::string_view::npos || scheme == 0) return t;
    const size_t start = target.find_first_of("/?", scheme + 3);
    target = start == std::string_view::npos ? std::string_view("/") : target.substr(start);
    if (target.starts_with('?')) {
      t.ok = true;
      t.path = "/";
      t.query.assign(target.substr(1));
      return t;
    }
  }
  const size_t q = target.find('?');
  t.path.assign(target.substr(0, q));
  if (q != std::string_view::npos) t.query.assign(target.substr(q + 1));
  t.ok = true;
  return t;
}

Headers forwardedFields(FunctionRef<void(FieldVisitor)> forEachField, std::string_view peer,
                        bool trusted) {
  // One vector, filtered in place, with room for the three fields added below: the fields are
  // copied out of the client's buffer once, and the vector is not regrown.
  Headers out;
  size_t count = 0;
  forEachField([&](std::string_view, std::string_view) { ++count; });
  out.reserve(count + 3);
  forEachField([&](std::string_view name, std::string_view value) {
    out.push_back({std::string(name), std::string(value)});
  });
  removeHopByHopFields(out);
  std::string forwardedFor;
  std::string host;
  bool hasProto = false;  // set by a trusted proxy in front of us (e.g. a TLS terminator): kept
  bool hasHost = false;
  size_t kept = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    Header& h = out[i];
    if (iequals(h.name, "Content-Length") || iequals(h.name, "Expect")) continue;
    const bool proto = iequals(h.name, "X-Forwarded-Proto");
    const bool fhost = iequals(h.name, "X-Forwarded-Host");
    if ((proto || fhost) && !trusted) continue;  // a client's claim: replaced below
    hasProto |= proto;
    hasHost |= fhost;
    if (iequals(h.name, "X-Forwarded-For")) {
      forwardedFor += forwardedFor.empty() ? h.value : ", " + h.value;
      continue;
    }
    if (iequals(h.name, "Host")) host = h.value;
    if (kept != i) out[kept] = std::move(h);
    ++kept;
  }
  out.resize(kept);
  if (!peer.empty()) {
    if (!forwardedFor.empty()) forwardedFor += ", ";
    forwardedFor += peer;
  }
  if (!forwardedFor.empty()) out.push_back({"X-Forwarded-For", std::move(forwardedFor)});
  if (!hasProto) out.push_back({"X-Forwarded-Proto", "http"});
  if (!hasHost && !host.empty()) out.push_back({"X-Forwarded-Host", std::move(host)});
  return out;
}

bool sanitizeUpstreamAnswer(HttpAnswer& answer) {
  std::erase_if(answer.headers, [](const Header& h) {
    return !isHttpToken(h.name) || iequals(h.name, "Idempotent-Replayed");
  });
  return answer.status >= 100 && answer.status <= 599;
}

}  // namespace idem
