#pragma once
// Benchmark bounds: what a part of the durable path costs, measured by leaving it out.
//
// Only a build configured with -DIDEMPROXY_BOUNDS=ON (the `bounds` preset, which
// `bench/profile.py bounds` builds into build/bounds) reads IDEMPROXY_BOUND from the environment:
//   nosync   the write-ahead log is written but never synced (nothing is durable);
//   nostore  reservations are won and records kept without reading or writing any record
//            (nothing is stored: duplicates are forwarded again); the writer still takes each
//            group and commits its empty LMDB transaction.
// Such a binary is never installed or packaged, logs `bound-not-durable` when it starts with a
// bound set, and refuses to start with any other value. Every other build compiles these to
// constants, so the store's code paths are the same as without this header.
namespace idem::bounds {

#ifdef IDEMPROXY_BOUNDS
bool skipLogSync();
bool skipStore();
// The bound in effect ("" for none), for the start-up warning.
const char* active();
// False if IDEMPROXY_BOUND is set to something other than nosync or nostore.
bool valid();
#else
constexpr bool skipLogSync() {
  return false;
}
constexpr bool skipStore() {
  return false;
}
constexpr const char* active() {
  return "";
}
constexpr bool valid() {
  return true;
}
#endif

}  // namespace idem::bounds
