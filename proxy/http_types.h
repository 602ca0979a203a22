#pragma once
// Plain HTTP value types shared by the store, the upstream client and the server.
#include <string>
#include <vector>

namespace idem {

// One header field as it appeared on the wire; order and repeats are significant.
struct Header {
  std::string name;
  std::string value;
  bool operator==(const Header&) const = default;
};

using Headers = std::vector<Header>;

// A complete HTTP answer: what is recorded and replayed.
struct HttpAnswer {
  int status = 0;
  Headers headers;
  std::string body;
  bool operator==(const HttpAnswer&) const = default;
};

// ASCII case-insensitive comparison for header names.
bool iequals(std::string_view a, std::string_view b);

}  // namespace idem
