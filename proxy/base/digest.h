#pragma once
// SHA-256 (OpenSSL), the Digest type and the record identity.
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace idem {

using Digest = std::array<uint8_t, 32>;  // SHA-256

// For hash maps keyed by a digest: its first bytes are already uniformly distributed.
struct DigestHash {
  size_t operator()(const Digest& d) const noexcept {
    size_t h;
    static_assert(sizeof(h) <= sizeof(Digest));
    __builtin_memcpy(&h, d.data(), sizeof h);
    return h;
  }
};

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  // Feeds a length-prefixed field, so ("ab","c") and ("a","bc") never collide.
  Sha256& field(std::string_view bytes);
  // Feeds raw bytes.
  Sha256& raw(std::string_view bytes);
  Digest finish();

 private:
  void* ctx_;
};

// Identity of a record: digest of (route name, scope header values in order, key).
Digest recordId(std::string_view route, const std::vector<std::string>& scope,
                std::string_view key);

std::string toHex(const Digest& d);
// Short, non-reversible label for logs: first 16 hex chars of SHA-256(key).
std::string keyHashForLog(std::string_view key);
// The same 16 characters, without an allocation (for the per-request log line).
void keyHashForLog(std::string_view key, char (&out)[16]);

}  // namespace idem
