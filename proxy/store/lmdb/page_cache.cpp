#include "store/lmdb/page_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

namespace idem::lmdb {

namespace {

// Forced readahead (which makes single pages) of [from, to). The kernel reads at most
// max(read_ahead_kb, the device's io size) per call and drops the rest silently, so it is
// asked in pieces well under any default (128 KiB).
void readAheadInPieces(int fd, uint64_t from, uint64_t to) {
  constexpr uint64_t kPiece = 64 << 10;
  for (uint64_t at = from; at < to; at += kPiece) {
    ::posix_fadvise(fd, static_cast<off_t>(at), static_cast<off_t>(std::min(kPiece, to - at)),
                    POSIX_FADV_WILLNEED);
  }
}

}  // namespace

void keepSmallPages(int fd) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  // Read back now, as single pages, rather than one page at a time as a partial write or a
  // read first touches each (appends go through every page of the log in turn).
  readAheadInPieces(fd, 0, static_cast<uint64_t>(st.st_size));
}

void GrowthAhead::prepare(int fd, uint64_t used, uint64_t ahead, uint64_t limit) {
  const uint64_t target = std::min(used + 2 * ahead, limit);
  // Enough prepared already, or as far as the map goes.
  if (used + ahead <= prepared_to_ || target <= prepared_to_ || target <= used) return;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  if (static_cast<uint64_t>(st.st_size) < target &&
      ::ftruncate(fd, static_cast<off_t>(target)) != 0) {
    return;
  }
  // Nothing past the last committed page holds live data, so this usually reads no disk (a
  // hole); pages an earlier process wrote there (a failed commit, a log replay that started
  // from an older checkpoint) are read back.
  readAheadInPieces(fd, std::max(prepared_to_, used), target);
  prepared_to_ = target;
}

}  // namespace idem::lmdb
