#include "config/redis_url.h"

#include <charconv>

namespace idem {

namespace {

bool parseNumber(std::string_view s, unsigned max, unsigned& out) {
  if (s.empty()) return false;
  unsigned v = 0;
  const auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > max) return false;
  out = v;
  return true;
}

// %XX escapes in user and password (a password may hold '@' or ':').
bool percentDecode(std::string_view in, std::string& out) {
  out.clear();
  for (size_t i = 0; i < in.size(); ++i) {
    if (in[i] != '%') {
      out.push_back(in[i]);
      continue;
    }
    unsigned v = 0;
    if (i + 2 >= in.size()) return false;
    const auto [p, ec] = std::from_chars(in.data() + i + 1, in.data() + i + 3, v, 16);
    if (ec != std::errc() || p != in.data() + i + 3) return false;
    out.push_back(static_cast<char>(v));
    i += 2;
  }
  return true;
}

// "[user]:password@" before the host or path; absent → nothing.
bool splitCredentials(std::string_view& rest, RedisUrl& out, std::string& error) {
  const size_t at = rest.rfind('@');
  if (at == std::string_view::npos) return true;
  const std::string_view cred = rest.substr(0, at);
  rest.remove_prefix(at + 1);
  const size_t colon = cred.find(':');
  const std::string_view user = colon == std::string_view::npos ? cred : cred.substr(0, colon);
  const std::string_view pass =
      colon == std::string_view::npos ? std::string_view() : cred.substr(colon + 1);
  if (!percentDecode(user, out.user) || !percentDecode(pass, out.password)) {
    error = "a bad %-escape in the user or password";
    return false;
  }
  if (colon == std::string_view::npos) {  // redis://secret@host: the password alone
    out.password = std::move(out.user);
    out.user.clear();
  }
  return true;
}

}  // namespace

bool parseRedisUrl(std::string_view text, RedisUrl& out, std::string& error) {
  RedisUrl u;
  constexpr std::string_view kTcp = "redis://", kUnix = "unix://", kTls = "rediss://";
  if (text.starts_with(kTls)) {
    error =
        "rediss:// (TLS) is not supported: hiredis 0.14 has no TLS. Use a unix socket "
        "(unix:///run/redis/redis-server.sock) on the Redis host, or a local TLS tunnel "
        "(stunnel, spiped or ghostunnel listening on 127.0.0.1) and point redis:// at it";
    return false;
  }
  if (text.starts_with(kUnix)) {
    std::string_view rest = text.substr(kUnix.size());
    const size_t q = rest.find('?');
    std::string_view query = q == std::string_view::npos ? std::string_view() : rest.substr(q + 1);
    rest = rest.substr(0, q);
    if (!splitCredentials(rest, u, error)) return false;
    if (!rest.starts_with('/') || rest.size() < 2) {
      error = "expected unix:///absolute/path/to/redis.sock";
      return false;
    }
    u.unix_socket = true;
    u.path = std::string(rest);
    if (!query.empty()) {
      if (!query.starts_with("db=") || !parseNumber(query.substr(3), 1'000'000, u.db)) {
        error = "expected ?db=N after the socket path";
        return false;
      }
    }
    out = std::move(u);
    return true;
  }
  if (!text.starts_with(kTcp)) {
    error = "expected redis://host:port/db or unix:///path/to/redis.sock";
    return false;
  }
  std::string_view rest = text.substr(kTcp.size());
  const size_t slash = rest.find('/');
  std::string_view dbText =
      slash == std::string_view::npos ? std::string_view() : rest.substr(slash + 1);
  rest = rest.substr(0, slash);
  if (!splitCredentials(rest, u, error)) return false;
  std::string_view portText;
  if (rest.starts_with('[')) {  // [::1]:6379
    const size_t close = rest.find(']');
    if (close == std::string_view::npos) {
      error = "an IPv6 address needs its closing ']'";
      return false;
    }
    u.host = std::string(rest.substr(1, close - 1));
    rest.remove_prefix(close + 1);
    if (!rest.empty()) {
      if (!rest.starts_with(':')) {
        error = "expected ':port' after the IPv6 address";
        return false;
      }
      portText = rest.substr(1);
      if (portText.empty()) portText = "x";  // "[::1]:" is an error
    }
  } else {
    const size_t colon = rest.rfind(':');
    u.host = std::string(rest.substr(0, colon));
    if (colon != std::string_view::npos) {
      portText = rest.substr(colon + 1);
      if (portText.empty()) portText = "x";
    }
  }
  if (u.host.empty()) {
    error = "expected a host name or address after redis://";
    return false;
  }
  if (!portText.empty() && (!parseNumber(portText, 65535, u.port) || u.port == 0)) {
    error = "expected a port from 1 to 65535";
    return false;
  }
  if (!dbText.empty() && !parseNumber(dbText, 1'000'000, u.db)) {
    error = "expected a database number after the '/'";
    return false;
  }
  out = std::move(u);
  return true;
}

std::string RedisUrl::masked() const {
  std::string cred;
  if (!user.empty() || !password.empty()) {
    cred = user + (password.empty() ? "" : ":***") + "@";
  }
  if (unix_socket) {
    return "unix://" + cred + path + (db != 0 ? "?db=" + std::to_string(db) : "");
  }
  const bool v6 = host.find(':') != std::string::npos;
  return "redis://" + cred + (v6 ? "[" + host + "]" : host) + ":" + std::to_string(port) + "/" +
         std::to_string(db);
}

}  // namespace idem
