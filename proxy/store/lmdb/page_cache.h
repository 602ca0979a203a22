#pragma once
// Small pages in the page cache for the store's two files, which are written a page or less at
// a time in place.
//
// Linux keeps a file's cached pages in large folios (up to 2 MiB) wherever one write or
// readahead covers many pages, on file systems that support them (XFS since 5.18, ext4 since
// 6.16). Every later write into such a folio walks all of the folio's blocks
// (ext4_block_write_begin and block_commit_write), and its fdatasync does too: measured on this
// project's benchmark machine (Linux 6.18, ext4), a 4 KiB pwrite costs 2.8 µs into a 4 KiB
// folio, 7.3 µs into a 256 KiB one and 30 µs into a 2 MiB one, and a log append with its
// fdatasync ~11 µs more into a file grown by 1 MiB writes than into one grown page by page
// (bench/README.md, round 6). The store writes both its files a page or less at a time (LMDB's
// dirty pages; the log's groups), so the writer keeps their cache in single pages: the log is
// grown page by page (wal::LogFile::append) and read back as single pages when a writer opens
// it (keepSmallPages), and the data file
// is grown ahead of LMDB (ftruncate) and its new pages brought into the cache by forced
// readahead, which makes single pages, before LMDB's commit writes runs of contiguous new pages
// in one writev. Where the page cache makes no large folios, this costs a few system calls per
// 2 MiB of growth and a file up to 4 MiB longer (a hole).
#include <cstddef>
#include <cstdint>

namespace idem::lmdb {

// For a file this process writes in place and reads back with read(2) (the log, by a process
// that writes to it): readahead off for `fd` (it may bring pages in as large folios), and the
// file's clean cached pages dropped and read back as single pages, so that large folios left
// by earlier processes or other readers (a backup, cp) go. The whole file is read: for files
// of a few tens of MiB. Advice only: failures are ignored.
void keepSmallPages(int fd);

// The data file grown ahead of LMDB's last page. Only the holder of the LMDB write lock may call
// prepare (no process writes a page past the last committed one but the writer, at its commit,
// and the file is only ever extended, never shortened).
class GrowthAhead {
 public:
  // `used`: bytes of the data file that LMDB's last commit uses (last page + 1, in bytes).
  // When fewer than `ahead` bytes past `used` are prepared, the file is extended to
  // used + 2 × ahead, but never past `limit` (the map size), and the new part read into the
  // cache as single pages (of zeros: a hole).
  void prepare(int fd, uint64_t used, uint64_t ahead, uint64_t limit);

 private:
  uint64_t prepared_to_ = 0;  // bytes from 0 known to be extended and read ahead
};

}  // namespace idem::lmdb
