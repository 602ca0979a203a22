#pragma once
// Benchmark bounds: what a part of the durable path costs, measured by leaving it out.
//
// Only a build configured with -DIDEMPROXY_BOUNDS=ON (the `bounds` preset, which
// `bench/profile.py bounds` builds into build/bounds) reads IDEMPROXY_BOUND from the environment:
//   nosync   the write-ahead log is written but never synced (nothing is durable);
//   nostore  reservations are won and records kept without touching LMDB or the log (nothing
//            is stored at all: duplicates are forwarded again).
// Such a binary is never installed or packaged, and logs `bound-not-durable` when it starts
// with a bound set. Every other build compiles both questions to a constant false, so the
// store's code paths are the same as without this header.
namespace idem::bounds {

#ifdef IDEMPROXY_BOUNDS
bool skipLogSync();
bool skipStore();
// The bound in effect ("" for none), for the start-up warning.
const char* active();
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
#endif

}  // namespace idem::bounds
