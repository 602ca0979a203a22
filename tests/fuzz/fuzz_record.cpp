// Stored records (what a damaged or foreign store file may hold): decodeRecord and
// decodeRecordView accept exactly the same inputs, agree on the result, and a decoded record
// encodes back to the same bytes (the encoding is canonical).
#include <cstdint>
#include <string>
#include <string_view>

#include "store/record.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  idem::Record rec;
  idem::RecordView view;
  const idem::DecodeError a = idem::decodeRecord(in, rec);
  const idem::DecodeError b = idem::decodeRecordView(in, view);
  if (a != b) __builtin_trap();
  if (a != idem::DecodeError::None) return 0;
  if (!(view.toRecord() == rec)) __builtin_trap();
  if (idem::encodeRecord(rec) != in) __builtin_trap();
  size_t fields = 0;
  view.forEachHeader([&](std::string_view, std::string_view) { ++fields; });
  if (fields != rec.answer.headers.size()) __builtin_trap();
  return 0;
}
