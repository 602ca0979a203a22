#include "request/reconcile.h"

#include <algorithm>

namespace idem {

namespace {

constexpr size_t kMaxLookupValue = 1024;  // bytes a record keeps of one placeholder value

std::string_view trimmed(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

void percentEncode(std::string_view v, std::string& out) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  for (char ch : v) {
    const auto c = static_cast<unsigned char>(ch);
    const bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
                            (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out.push_back(ch);
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 0xf]);
    }
  }
}

const std::string* keptValue(const std::vector<std::string>& values, const std::string& name) {
  for (size_t i = 0; i + 1 < values.size(); i += 2) {
    if (values[i] == name) return &values[i + 1];
  }
  return nullptr;
}

}  // namespace

std::vector<std::string> lookupValues(const ReconcileConfig& rc,
                                      FunctionRef<void(HeaderVisitor)> forEachHeader,
                                      std::string_view body) {
  std::vector<std::string> out;
  for (const LookupPart& p : rc.parts) {
    if (p.kind != LookupPart::Kind::Header && p.kind != LookupPart::Kind::Json) continue;
    const std::string name = p.valueName();
    if (keptValue(out, name) != nullptr) continue;  // the same placeholder twice
    std::optional<std::string> value;
    if (p.kind == LookupPart::Kind::Header) {
      forEachHeader([&](std::string_view n, std::string_view v) {
        if (!value && iequals(n, p.text) && !trimmed(v).empty() &&
            trimmed(v).size() <= kMaxLookupValue) {
          value = std::string(trimmed(v));
        }
      });
    } else {
      JsonText t = jsonTextAt(body, p.text);
      if (t.status == JsonText::Status::Ok && !t.text.empty() && t.text.size() <= kMaxLookupValue) {
        value = std::move(t.text);
      }
    }
    if (!value) continue;
    out.push_back(name);
    out.push_back(std::move(*value));
  }
  return out;
}

std::optional<UpstreamRequest> buildLookup(const IdempotencyConfig& ic, std::string_view key,
                                           const std::vector<std::string>& values,
                                           const std::vector<std::string>& scope,
                                           std::string_view host, std::string& missing) {
  const ReconcileConfig& rc = *ic.reconcile;
  UpstreamRequest req;
  req.method = rc.method;
  for (const LookupPart& p : rc.parts) {
    switch (p.kind) {
      case LookupPart::Kind::Literal:
        req.path_and_query += p.text;
        break;
      case LookupPart::Kind::Key:
        percentEncode(key, req.path_and_query);
        break;
      case LookupPart::Kind::Header:
      case LookupPart::Kind::Json: {
        const std::string name = p.valueName();
        const std::string* v = keptValue(values, name);
        if (v == nullptr) {
          missing = name;
          return std::nullopt;
        }
        percentEncode(*v, req.path_and_query);
        break;
      }
    }
  }
  if (!host.empty()) req.headers.push_back({"Host", std::string(host)});
  for (size_t i = 0; i < ic.scope.size() && i < scope.size(); ++i) {
    if (!scope[i].empty()) req.headers.push_back({ic.scope[i], scope[i]});
  }
  req.max_response_body = ic.max_response_body;
  return req;
}

const char* toString(LookupVerdict v) {
  switch (v) {
    case LookupVerdict::Found:
      return "found";
    case LookupVerdict::NotFound:
      return "not_found";
    case LookupVerdict::Other:
      return "other";
    case LookupVerdict::Failed:
      return "failed";
    case LookupVerdict::Skipped:
      return "skipped";
  }
  return "?";
}

HttpAnswer recordableAnswer(const IdempotencyConfig& ic, const HttpAnswer& a, bool head) {
  HttpAnswer out;
  out.status = a.status;
  out.body = a.body;
  const auto& drop = ic.replay_drop_headers;
  for (const auto& h : a.headers) {
    if (isHopByHop(h.name) || iequals(h.name, "Date")) continue;
    if (std::any_of(drop.begin(), drop.end(),
                    [&](const std::string& n) { return iequals(n, h.name); }))
      continue;
    if (iequals(h.name, "Content-Length") && !head) continue;
    out.headers.push_back(h);
  }
  return out;
}

LookupVerdict classifyLookup(const ReconcileConfig& rc, const UpstreamResult& r) {
  if (r.failure != UpstreamFailure::None || r.body_over_limit) return LookupVerdict::Failed;
  const auto in = [&](const std::vector<int>& list) {
    return std::find(list.begin(), list.end(), r.answer.status) != list.end();
  };
  if (in(rc.found)) return LookupVerdict::Found;
  if (in(rc.not_found)) return LookupVerdict::NotFound;
  return LookupVerdict::Other;
}

}  // namespace idem
