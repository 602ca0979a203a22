#include "store/lmdb/page_cache.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <vector>

namespace idem::lmdb {

bool writeZerosByPage(int fd, uint64_t from, uint64_t to, size_t page) {
  const std::vector<char> zeros(page, '\0');
  uint64_t at = from;
  while (at < to) {
    // Up to the next page boundary: one page (or its tail) per write.
    const uint64_t n = std::min<uint64_t>(to, (at / page + 1) * page) - at;
    const ssize_t w = ::pwrite(fd, zeros.data(), n, static_cast<off_t>(at));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    if (w == 0) {
      errno = EIO;
      return false;
    }
    at += static_cast<uint64_t>(w);
  }
  return true;
}

void keepSmallPages(int fd) {
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  // Read back now, as single pages (this readahead makes no large folios), rather than page by
  // page as a partial write or read first touches each.
  ::posix_fadvise(fd, 0, 0, POSIX_FADV_WILLNEED);
}

void GrowthAhead::prepare(int fd, uint64_t used, uint64_t ahead) {
  if (used + ahead <= prepared_to_) return;
  const uint64_t target = used + 2 * ahead;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return;
  if (static_cast<uint64_t>(st.st_size) < target &&
      ::ftruncate(fd, static_cast<off_t>(target)) != 0) {
    return;
  }
  // Nothing past the last committed page holds data (at most the pages of a commit that failed),
  // so this reads no disk: readahead of a hole makes single pages of zeros.
  const uint64_t from = std::max(prepared_to_, used);
  ::posix_fadvise(fd, static_cast<off_t>(from), static_cast<off_t>(target - from),
                  POSIX_FADV_WILLNEED);
  prepared_to_ = target;
}

}  // namespace idem::lmdb
