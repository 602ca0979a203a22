#include "request/idempotency.h"

#include <algorithm>

#include "base/c_handles.h"
#include "base/digest.h"

namespace idem {

ParsedKey parseIdempotencyKey(const std::vector<std::string_view>& values) {
  return parseIdempotencyKey(values.empty() ? std::string_view() : values.front(), values.size());
}

ParsedKey parseIdempotencyKey(std::string_view first, size_t count) {
  ParsedKey out;
  if (count == 0) return out;
  out.status = KeyStatus::Invalid;
  if (count > 1) {
    out.reason = "the key header appears more than once";
    return out;
  }
  std::string_view v = first;
  // evhttp keeps the field value without surrounding whitespace, but be strict anyway.
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  std::string key;
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
    // RFC 8941 sf-string: printable ASCII; backslash escapes only \" and \\.
    std::string_view inner = v.substr(1, v.size() - 2);
    for (size_t i = 0; i < inner.size(); ++i) {
      char c = inner[i];
      if (c == '\\') {
        if (i + 1 >= inner.size() || (inner[i + 1] != '"' && inner[i + 1] != '\\')) {
          out.reason = "the quoted key has an invalid escape";
          return out;
        }
        key.push_back(inner[++i]);
      } else if (c == '"') {
        out.reason = "the quoted key has an unescaped quote";
        return out;
      } else {
        key.push_back(c);
      }
    }
  } else {
    key.assign(v);
  }
  return validatedKey(std::move(key));
}

ParsedKey validatedKey(std::string key) {
  ParsedKey out;
  out.status = KeyStatus::Invalid;
  if (key.empty()) {
    out.reason = "the key is empty";
    return out;
  }
  if (key.size() > 255) {
    out.reason = "the key is longer than 255 characters";
    return out;
  }
  for (char c : key) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7e) {
      out.reason = "the key has a character outside printable ASCII (0x21-0x7E)";
      return out;
    }
  }
  out.status = KeyStatus::Ok;
  out.key = std::move(key);
  return out;
}

JsonText jsonTextAt(std::string_view body, std::string_view pointer) {
  JsonText out;  // status Missing
  CJsonPtr root(cJSON_ParseWithLength(body.data(), body.size()));
  if (!root) return out;
  const cJSON* node = root.get();
  std::string_view rest = pointer;
  while (!rest.empty() && node != nullptr) {
    rest.remove_prefix(1);  // the '/'
    const size_t end = rest.find('/');
    std::string token;
    for (size_t i = 0; i < std::min(end, rest.size()); ++i) {  // RFC 6901 §4: ~1 then ~0
      if (rest[i] == '~' && i + 1 < rest.size()) {
        token.push_back(rest[i + 1] == '1' ? '/' : '~');
        ++i;
      } else {
        token.push_back(rest[i]);
      }
    }
    rest = end == std::string_view::npos ? std::string_view() : rest.substr(end);
    if (cJSON_IsObject(node)) {
      node = cJSON_GetObjectItemCaseSensitive(node, token.c_str());
    } else if (cJSON_IsArray(node)) {
      const bool digits = !token.empty() && token.size() <= 9 &&
                          token.find_first_not_of("0123456789") == std::string::npos &&
                          (token == "0" || token.front() != '0');
      node = digits ? cJSON_GetArrayItem(node, std::stoi(token)) : nullptr;
    } else {
      node = nullptr;
    }
  }
  if (node == nullptr || cJSON_IsNull(node)) return out;
  if (cJSON_IsString(node)) {
    out.status = JsonText::Status::Ok;
    out.text = node->valuestring;
    return out;
  }
  out.status = JsonText::Status::Invalid;
  if (cJSON_IsNumber(node)) {
    const double v = node->valuedouble;
    constexpr double kExact = 9007199254740992.0;  // 2^53: integers beyond are not exact
    if (v == static_cast<double>(static_cast<long long>(v)) && v > -kExact && v < kExact) {
      out.status = JsonText::Status::Ok;
      out.text = std::to_string(static_cast<long long>(v));
      return out;
    }
    out.reason = "a number that is not an integer of at most 15 digits";
    return out;
  }
  out.reason = "neither a string nor an integer";
  return out;
}

ParsedKey keyFromJsonBody(std::string_view body, std::string_view pointer) {
  JsonText t = jsonTextAt(body, pointer);
  switch (t.status) {
    case JsonText::Status::Missing:
      return ParsedKey{};
    case JsonText::Status::Ok:
      return validatedKey(std::move(t.text));
    case JsonText::Status::Invalid:
      break;
  }
  ParsedKey invalid;
  invalid.status = KeyStatus::Invalid;
  invalid.reason = "the body's key is " + t.reason +
                   (t.reason.rfind("a number", 0) == 0 ? "; send it as a string" : "");
  return invalid;
}

std::vector<std::string> scopeValues(const IdempotencyConfig& cfg, const Headers& headers) {
  return scopeValuesOf(cfg, [&](HeaderVisitor fn) {
    for (const auto& h : headers) fn(h.name, h.value);
  });
}

std::vector<std::string> scopeValuesOf(const IdempotencyConfig& cfg,
                                       FunctionRef<void(HeaderVisitor)> forEachHeader) {
  std::vector<std::string> out;
  out.reserve(cfg.scope.size());
  for (const auto& name : cfg.scope) {
    std::string v;
    bool first = true;
    forEachHeader([&](std::string_view hname, std::string_view hvalue) {
      if (!iequals(hname, name)) return;
      // Optional whitespace around a value is not part of it (RFC 9110 §5.5): a client that
      // sends "Bearer T" once with a tab before it is the same tenant.
      while (!hvalue.empty() && (hvalue.front() == ' ' || hvalue.front() == '\t')) {
        hvalue.remove_prefix(1);
      }
      while (!hvalue.empty() && (hvalue.back() == ' ' || hvalue.back() == '\t')) {
        hvalue.remove_suffix(1);
      }
      if (hvalue.empty()) return;
      if (!first) v += ", ";
      v += hvalue;
      first = false;
    });
    out.push_back(std::move(v));
  }
  return out;
}

bool scopeMissing(const std::vector<std::string>& values) {
  return std::all_of(values.begin(), values.end(), [](const std::string& v) { return v.empty(); });
}

std::vector<std::string> scopeDigests(const std::vector<std::string>& values) {
  std::vector<std::string> out;
  out.reserve(values.size());
  for (const auto& v : values) {
    out.push_back(v.empty() ? std::string() : "sha256:" + toHex(Sha256().raw(v).finish()));
  }
  return out;
}

namespace {

void sortObjectKeys(cJSON* node) {
  if (node == nullptr) return;
  if (cJSON_IsObject(node)) {
    std::vector<cJSON*> items;
    for (cJSON* c = node->child; c != nullptr; c = c->next) items.push_back(c);
    std::stable_sort(items.begin(), items.end(), [](const cJSON* a, const cJSON* b) {
      return std::string_view(a->string) < std::string_view(b->string);
    });
    cJSON* prev = nullptr;
    for (cJSON* c : items) {
      c->prev = prev;
      c->next = nullptr;
      if (prev) prev->next = c;
      prev = c;
    }
    node->child = items.empty() ? nullptr : items.front();
    if (!items.empty()) items.front()->prev = items.back();  // cJSON keeps child->prev = tail
  }
  for (cJSON* c = node->child; c != nullptr; c = c->next) sortObjectKeys(c);
}

}  // namespace

namespace {

// Whether cJSON (numbers as doubles, strings as C strings, lenient about number syntax) would
// read `text` losing what tells two requests apart: a number with more than 15 digits (2^53 + 1
// would compare equal to 2^53; 0.000…0001 with 400 zeros would read as 0), an exponent (1e400
// reads as infinity and prints as null), a number JSON does not allow (`007`, `1.`, `-`), or a
// string with an escaped NUL (cut there). Such a body is compared by its bytes instead.
bool cJsonWouldLoseSomething(std::string_view text) {
  const auto digit = [&](size_t i) { return i < text.size() && text[i] >= '0' && text[i] <= '9'; };
  bool inString = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (inString) {
      if (c == '\\') {
        if (text.substr(i + 1, 5) == "u0000") return true;
        ++i;
      } else if (c == '"') {
        inString = false;
      }
      continue;
    }
    if (c == '"') {
      inString = true;
      continue;
    }
    if (c != '-' && !digit(i)) continue;
    // A number: -?(0|[1-9][0-9]*)(\.[0-9]+)?, at most 15 digits (the integer part's single
    // 0 not counted), no exponent.
    if (c == '-') ++i;
    if (!digit(i)) return true;
    int digits = 0;
    if (text[i] == '0') {
      ++i;
      if (digit(i)) return true;  // a leading zero
    } else {
      for (; digit(i); ++i) ++digits;
    }
    if (i < text.size() && text[i] == '.') {
      ++i;
      if (!digit(i)) return true;
      for (; digit(i); ++i) ++digits;
    }
    if (i < text.size() &&
        (text[i] == 'e' || text[i] == 'E' || text[i] == '.' || text[i] == '+' || text[i] == '-')) {
      return true;
    }
    if (digits > 15) return true;
    --i;
  }
  return false;
}

}  // namespace

bool canonicalJson(std::string_view text, std::string& out) {
  if (cJsonWouldLoseSomething(text)) return false;
  const char* end = nullptr;
  CJsonPtr root(cJSON_ParseWithLengthOpts(text.data(), text.size(), &end, false));
  if (!root) return false;
  // Only whitespace may follow the value.
  for (const char* p = end; p < text.data() + text.size(); ++p) {
    if (*p != ' ' && *p != '\t' && *p != '\r' && *p != '\n') return false;
  }
  sortObjectKeys(root.get());
  CJsonString printed(cJSON_PrintUnformatted(root.get()));
  if (!printed) return false;
  // cJSON prints a value it read exactly, but small and large magnitudes with an exponent
  // (0.00001 as 1e-05): such a form is not canonical by the rule above, so the body is compared
  // by its bytes, which keeps the canonical form a fixed point.
  if (cJsonWouldLoseSomething(printed.get())) return false;
  out.assign(printed.get());
  return true;
}

Fingerprint requestFingerprint(const IdempotencyConfig& cfg, const RequestParts& parts) {
  Sha256 h;
  h.field("idemproxy-fingerprint-v1");
  for (FingerprintPart part : cfg.fingerprint) {
    switch (part) {
      case FingerprintPart::Method:
        h.field("method").field(parts.method);
        break;
      case FingerprintPart::Path:
        h.field("path").field(parts.path);
        break;
      case FingerprintPart::Query:
        h.field("query").field(parts.query);
        break;
      case FingerprintPart::Body:
        h.field("body").field(parts.body);
        break;
      case FingerprintPart::BodyJson: {
        std::string canonical;
        if (canonicalJson(parts.body, canonical)) {
          h.field("body-json").field(canonical);
        } else {
          h.field("body").field(parts.body);
        }
        break;
      }
    }
  }
  return h.finish();
}

}  // namespace idem
