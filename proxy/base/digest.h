#pragma once
// SHA-256 (OpenSSL) and the record identity.
#include <string>
#include <string_view>
#include <vector>

#include "store/record.h"

namespace idem {

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
RecordId recordId(std::string_view route, const std::vector<std::string>& scope,
                  std::string_view key);

std::string toHex(const Digest& d);
// Short, non-reversible label for logs: first 16 hex chars of SHA-256(key).
std::string keyHashForLog(std::string_view key);

}  // namespace idem
