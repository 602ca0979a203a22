#include "request/observer.h"

namespace idem {

const char* toString(Outcome o) {
  switch (o) {
    case Outcome::Forwarded:
      return "forwarded";
    case Outcome::Replayed:
      return "replayed";
    case Outcome::Conflict:
      return "conflict";
    case Outcome::Mismatch:
      return "mismatch";
    case Outcome::Invalid:
      return "invalid";
    case Outcome::Passthrough:
      return "passthrough";
    case Outcome::Released:
      return "released";
    case Outcome::Error:
      return "error";
  }
  return "error";
}

const char* toString(FrontRefusal r) {
  switch (r) {
    case FrontRefusal::Malformed:
      return "malformed";
    case FrontRefusal::TooLarge:
      return "too_large";
    case FrontRefusal::Timeout:
      return "timeout";
    case FrontRefusal::AnswerTimeout:
      return "answer_timeout";
  }
  return "malformed";
}

}  // namespace idem
