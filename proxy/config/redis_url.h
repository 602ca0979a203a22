#pragma once
// store.redis.url (SPEC §5): redis://[[user]:password@]host[:port][/db] or
// unix://[[user]:password@]/path[?db=N]. rediss:// is refused: hiredis 0.14 has no TLS.
#include <string>
#include <string_view>

namespace idem {

struct RedisUrl {
  bool unix_socket = false;
  std::string host;  // TCP: a name or an IP literal (IPv6 without brackets)
  unsigned port = 6379;
  std::string path;  // unix socket
  unsigned db = 0;
  std::string user;      // AUTH user (Redis 6 ACLs); empty: AUTH with the password only
  std::string password;  // never logged: see masked()
  // For logs and errors: the URL with any password replaced by "***".
  std::string masked() const;
};

// False with `error` (which never repeats the password) when the text is not such a URL.
[[nodiscard]] bool parseRedisUrl(std::string_view text, RedisUrl& out, std::string& error);

}  // namespace idem
