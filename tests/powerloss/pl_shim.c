/* Power-loss recorder: an LD_PRELOAD library that logs every write and sync the process makes
 * to the store's files, in completion order, for the crash-state checker (powerloss_check.cpp).
 *
 *   PL_LOG=FILE   the log (appended; other processes may append their own events to it)
 *   PL_DIR=DIR    the store directory: DIR/data.mdb (file 0) and DIR/wal (file 1, the
 *                 write-ahead log) are recorded (lock.mdb is not: LMDB rebuilds it)
 *
 * Log records, each written with one write() on an O_APPEND descriptor so that records of this
 * process and of the test driver interleave whole, in the order they happened:
 *   u8 type, u32 payload length (little-endian), payload
 *   'W' a write:            u8 file, u64 file offset, the bytes written
 *   'D' a write on an O_DSYNC/O_SYNC descriptor (durable when it returns): same payload
 *   'S' fdatasync/fsync of the file completed: u8 file
 * When the file is opened for writing, its content is logged first (see snapshot()).
 * A write is logged after it returned and only for the bytes it wrote; a sync only if it
 * succeeded. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { kMaxFd = 4096, kTracked = 1, kDsync = 2, kFiles = 2 };

static int log_fd = -1;
static char data_paths[kFiles][4096];
static unsigned char tracked[kMaxFd];
static unsigned char file_of[kMaxFd];
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static int (*real_open)(const char*, int, ...);
static int (*real_open64)(const char*, int, ...);
static int (*real_openat)(int, const char*, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void*, size_t);
static ssize_t (*real_pwrite)(int, const void*, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void*, size_t, off_t);
static ssize_t (*real_writev)(int, const struct iovec*, int);
static ssize_t (*real_pwritev)(int, const struct iovec*, int, off_t);
static ssize_t (*real_pwritev64)(int, const struct iovec*, int, off_t);
static int (*real_fdatasync)(int);
static int (*real_fsync)(int);

#define RESOLVE(name) real_##name = dlsym(RTLD_NEXT, #name)

__attribute__((constructor)) static void pl_init(void) {
  RESOLVE(open);
  RESOLVE(open64);
  RESOLVE(openat);
  RESOLVE(close);
  RESOLVE(write);
  RESOLVE(pwrite);
  RESOLVE(pwrite64);
  RESOLVE(writev);
  RESOLVE(pwritev);
  RESOLVE(pwritev64);
  RESOLVE(fdatasync);
  RESOLVE(fsync);
  const char* log = getenv("PL_LOG");
  const char* dir = getenv("PL_DIR");
  if (log == NULL || dir == NULL) return;
  static const char* const names[kFiles] = {"/data.mdb", "/wal"};
  for (int i = 0; i < kFiles; ++i) {
    if (strlen(dir) + strlen(names[i]) + 1 > sizeof data_paths[i]) abort();
    strcpy(data_paths[i], dir);
    strcat(data_paths[i], names[i]);
  }
  log_fd = real_open(log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (log_fd < 0) abort();
}

static void put_u32(unsigned char* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char* p, uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = (unsigned char)(v >> (8 * i));
}

/* Logs one record; `iov` holds the written bytes (already limited to what was written). */
static void log_record(char type, int file, uint64_t off, const struct iovec* iov, int iovcnt,
                       size_t n) {
  const size_t header = 1 + 4 + 1 + (type == 'S' ? 0 : 8);
  unsigned char* buf = malloc(header + n);
  if (buf == NULL) abort();
  buf[0] = (unsigned char)type;
  put_u32(buf + 1, (uint32_t)(header - 5 + n));
  buf[5] = (unsigned char)file;
  if (type != 'S') put_u64(buf + 6, off);
  size_t at = header, left = n;
  for (int i = 0; i < iovcnt && left > 0; ++i) {
    size_t take = iov[i].iov_len < left ? iov[i].iov_len : left;
    memcpy(buf + at, iov[i].iov_base, take);
    at += take;
    left -= take;
  }
  ssize_t w = real_write(log_fd, buf, at);
  free(buf);
  if (w != (ssize_t)at) abort(); /* a partial log would make every later state wrong */
}

/* The file's content when it is opened, logged as a durable write ('D') at offset 0: the
 * store creates data.mdb complete and synced, then links it into place (createIfMissing), and
 * the log likewise (renamed into place synced), so what a descriptor first sees is on disk.
 * (An empty file logs nothing.) */
static void snapshot(int fd, int file) {
  struct stat st;
  if (fstat(fd, &st) != 0 || st.st_size == 0) return;
  char* buf = malloc((size_t)st.st_size);
  if (buf == NULL) abort();
  const int rfd = real_open(data_paths[file], O_RDONLY | O_CLOEXEC); /* fd may be write-only */
  if (rfd < 0 || pread(rfd, buf, (size_t)st.st_size, 0) != st.st_size) abort();
  real_close(rfd);
  struct iovec all = {buf, (size_t)st.st_size};
  pthread_mutex_lock(&log_mu);
  log_record('D', file, 0, &all, 1, (size_t)st.st_size);
  pthread_mutex_unlock(&log_mu);
  free(buf);
}

static void after_open(int fd, const char* path, int flags) {
  if (fd < 0 || fd >= kMaxFd || log_fd < 0) return;
  tracked[fd] = 0;
  char resolved[4096];
  const char* p = path;
  if (realpath(path, resolved) != NULL) p = resolved;
  for (int i = 0; i < kFiles; ++i) {
    if (strcmp(p, data_paths[i]) == 0 && (flags & O_ACCMODE) != O_RDONLY) {
      tracked[fd] = kTracked | ((flags & O_DSYNC) == O_DSYNC ? kDsync : 0);
      file_of[fd] = (unsigned char)i;
      snapshot(fd, i);
    }
  }
}

static int is_tracked(int fd) {
  return fd >= 0 && fd < kMaxFd && log_fd >= 0 && tracked[fd] != 0;
}

int open(const char* path, int flags, ...) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  int fd = real_open(path, flags, mode);
  after_open(fd, path, flags);
  return fd;
}

int open64(const char* path, int flags, ...) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  int fd = real_open64(path, flags, mode);
  after_open(fd, path, flags);
  return fd;
}

int openat(int dirfd, const char* path, int flags, ...) {
  mode_t mode = 0;
  if (flags & (O_CREAT | O_TMPFILE)) {
    va_list ap;
    va_start(ap, flags);
    mode = va_arg(ap, mode_t);
    va_end(ap);
  }
  int fd = real_openat(dirfd, path, flags, mode);
  if (path[0] == '/' || dirfd == AT_FDCWD) after_open(fd, path, flags);
  return fd;
}

int close(int fd) {
  if (fd >= 0 && fd < kMaxFd) tracked[fd] = 0;
  return real_close(fd);
}

/* Runs the write with the log locked, so that the log's order is the order of completion. */
#define LOGGED_WRITE(fd, iov, iovcnt, off, call)                                          \
  do {                                                                                    \
    pthread_mutex_lock(&log_mu);                                                          \
    ssize_t n_ = (call);                                                                  \
    int saved_ = errno;                                                                   \
    if (n_ > 0)                                                                           \
      log_record((tracked[fd] & kDsync) ? 'D' : 'W', file_of[fd], (uint64_t)(off), (iov), \
                 (iovcnt), (size_t)n_);                                                   \
    pthread_mutex_unlock(&log_mu);                                                        \
    errno = saved_;                                                                       \
    return n_;                                                                            \
  } while (0)

ssize_t pwrite(int fd, const void* buf, size_t len, off_t off) {
  if (!is_tracked(fd)) return real_pwrite(fd, buf, len, off);
  struct iovec one = {(void*)buf, len};
  LOGGED_WRITE(fd, &one, 1, off, real_pwrite(fd, buf, len, off));
}

ssize_t pwrite64(int fd, const void* buf, size_t len, off_t off) {
  if (!is_tracked(fd)) return real_pwrite64(fd, buf, len, off);
  struct iovec one = {(void*)buf, len};
  LOGGED_WRITE(fd, &one, 1, off, real_pwrite64(fd, buf, len, off));
}

ssize_t write(int fd, const void* buf, size_t len) {
  if (!is_tracked(fd)) return real_write(fd, buf, len);
  struct iovec one = {(void*)buf, len};
  const off_t off = lseek(fd, 0, SEEK_CUR);
  LOGGED_WRITE(fd, &one, 1, off, real_write(fd, buf, len));
}

ssize_t writev(int fd, const struct iovec* iov, int iovcnt) {
  if (!is_tracked(fd)) return real_writev(fd, iov, iovcnt);
  const off_t off = lseek(fd, 0, SEEK_CUR);
  LOGGED_WRITE(fd, iov, iovcnt, off, real_writev(fd, iov, iovcnt));
}

ssize_t pwritev(int fd, const struct iovec* iov, int iovcnt, off_t off) {
  if (!is_tracked(fd)) return real_pwritev(fd, iov, iovcnt, off);
  LOGGED_WRITE(fd, iov, iovcnt, off, real_pwritev(fd, iov, iovcnt, off));
}

/* With _FILE_OFFSET_BITS=64 a call to pwritev links to pwritev64. */
ssize_t pwritev64(int fd, const struct iovec* iov, int iovcnt, off_t off) {
  if (!is_tracked(fd)) return real_pwritev64(fd, iov, iovcnt, off);
  LOGGED_WRITE(fd, iov, iovcnt, off, real_pwritev64(fd, iov, iovcnt, off));
}

static int logged_sync(int fd, int (*op)(int)) {
  if (!is_tracked(fd)) return op(fd);
  pthread_mutex_lock(&log_mu);
  int rc = op(fd);
  int saved = errno;
  if (rc == 0) log_record('S', file_of[fd], 0, NULL, 0, 0);
  pthread_mutex_unlock(&log_mu);
  errno = saved;
  return rc;
}

int fdatasync(int fd) {
  return logged_sync(fd, real_fdatasync);
}
int fsync(int fd) {
  return logged_sync(fd, real_fsync);
}
