#include "base/digest.h"

#include <openssl/evp.h>

#include <cstdio>
#include <cstdlib>

namespace idem {

namespace {
// Fetched once: EVP_sha256() makes every EVP_DigestInit_ex do an implicit provider fetch
// (a lock and a hash-table lookup), which showed up at ~4% of a replay's CPU.
const EVP_MD* sha256Md() {
  static const EVP_MD* md = [] {
    const EVP_MD* m = EVP_MD_fetch(nullptr, "SHA256", nullptr);
    return m != nullptr ? m : EVP_sha256();
  }();
  return md;
}

// Contexts are kept per thread and reused: a request hashes two or three times, and a fresh
// EVP_MD_CTX each time was a malloc/free pair (plus OpenSSL's own) per digest.
struct CtxPool {
  static constexpr size_t kMax = 4;
  EVP_MD_CTX* free[kMax] = {};
  size_t count = 0;
  CtxPool() = default;
  CtxPool(const CtxPool&) = delete;
  CtxPool& operator=(const CtxPool&) = delete;
  ~CtxPool() {
    for (size_t i = 0; i < count; ++i) EVP_MD_CTX_free(free[i]);
  }
};
thread_local CtxPool tCtxPool;

}  // namespace

Sha256::Sha256() {
  CtxPool& pool = tCtxPool;
  EVP_MD_CTX* ctx = pool.count > 0 ? pool.free[--pool.count] : EVP_MD_CTX_new();
  if (ctx == nullptr || EVP_DigestInit_ex2(ctx, sha256Md(), nullptr) != 1) {
    std::abort();  // broken invariant: OpenSSL cannot hash
  }
  ctx_ = ctx;
}

Sha256::~Sha256() {
  auto* ctx = static_cast<EVP_MD_CTX*>(ctx_);
  CtxPool& pool = tCtxPool;
  if (pool.count < CtxPool::kMax) {
    pool.free[pool.count++] = ctx;
  } else {
    EVP_MD_CTX_free(ctx);
  }
}

Sha256& Sha256::raw(std::string_view bytes) {
  EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), bytes.data(), bytes.size());
  return *this;
}

Sha256& Sha256::field(std::string_view bytes) {
  uint8_t len[8];
  uint64_t n = bytes.size();
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(n >> (8 * i));
  raw(std::string_view(reinterpret_cast<const char*>(len), sizeof len));
  return raw(bytes);
}

Digest Sha256::finish() {
  Digest out{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), out.data(), &n);
  return out;
}

Digest recordId(std::string_view route, const std::vector<std::string>& scope,
                std::string_view key) {
  Sha256 h;
  h.field("idemproxy-record-v1").field(route);
  h.field(std::to_string(scope.size()));
  for (const auto& s : scope) h.field(s);
  h.field(key);
  return h.finish();
}

std::string toHex(const Digest& d) {
  static const char* digits = "0123456789abcdef";
  std::string s;
  s.reserve(d.size() * 2);
  for (uint8_t b : d) {
    s.push_back(digits[b >> 4]);
    s.push_back(digits[b & 15]);
  }
  return s;
}

void keyHashForLog(std::string_view key, char (&out)[16]) {
  static constexpr char kDigits[] = "0123456789abcdef";
  Sha256 h;
  h.field("idemproxy-log").raw(key);
  const Digest d = h.finish();
  for (size_t i = 0; i < 8; ++i) {
    out[2 * i] = kDigits[d[i] >> 4];
    out[2 * i + 1] = kDigits[d[i] & 15];
  }
}

std::string keyHashForLog(std::string_view key) {
  char out[16];
  keyHashForLog(key, out);
  return std::string(out, sizeof out);
}

}  // namespace idem
