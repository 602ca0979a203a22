// LD_PRELOAD allocation counter for bench/profile.py: counts malloc, calloc, realloc,
// posix_memalign/aligned_alloc/memalign and free calls of the process it is loaded into, and
// every 50 ms writes the totals to $ALLOCCOUNT_DIR/<pid> as one line
//   "<allocations> <frees> <bytes allocated>"
// so that a harness can read them before and after a load run and divide by the requests.
// A forked child (an nginx worker) gets its own file: the writer thread is restarted in it.
//
// Build: cc -O2 -shared -fPIC -o alloccount.so bench/alloccount.c -lpthread
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern void* __libc_malloc(size_t);
extern void* __libc_calloc(size_t, size_t);
extern void* __libc_realloc(void*, size_t);
extern void* __libc_memalign(size_t, size_t);
extern void __libc_free(void*);

static atomic_ulong g_allocs;
static atomic_ulong g_frees;
static atomic_ulong g_bytes;

static void counted(size_t n) {
  atomic_fetch_add_explicit(&g_allocs, 1, memory_order_relaxed);
  atomic_fetch_add_explicit(&g_bytes, n, memory_order_relaxed);
}

void* malloc(size_t n) {
  counted(n);
  return __libc_malloc(n);
}
void* calloc(size_t a, size_t b) {
  counted(a * b);
  return __libc_calloc(a, b);
}
void* realloc(void* p, size_t n) {
  counted(n);
  return __libc_realloc(p, n);
}
void free(void* p) {
  if (p != NULL) atomic_fetch_add_explicit(&g_frees, 1, memory_order_relaxed);
  __libc_free(p);
}
int posix_memalign(void** out, size_t align, size_t n) {
  counted(n);
  void* p = __libc_memalign(align, n);
  if (p == NULL) return 12;  // ENOMEM
  *out = p;
  return 0;
}
void* aligned_alloc(size_t align, size_t n) {
  counted(n);
  return __libc_memalign(align, n);
}
void* memalign(size_t align, size_t n) {
  counted(n);
  return __libc_memalign(align, n);
}

static void* writer(void* arg) {
  (void)arg;
  const char* dir = getenv("ALLOCCOUNT_DIR");
  if (dir == NULL) return NULL;
  char path[512];
  snprintf(path, sizeof path, "%s/%d", dir, (int)getpid());
  const int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return NULL;
  for (;;) {
    char line[96];
    const int len = snprintf(line, sizeof line, "%lu %lu %lu\n", atomic_load(&g_allocs),
                             atomic_load(&g_frees), atomic_load(&g_bytes));
    if (pwrite(fd, line, (size_t)len, 0) < 0) break;
    const struct timespec ts = {0, 50 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  close(fd);
  return NULL;
}

static void start_writer(void) {
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  pthread_create(&t, &attr, writer, NULL);
  pthread_attr_destroy(&attr);
}

__attribute__((constructor)) static void init(void) {
  pthread_atfork(NULL, NULL, start_writer);
  start_writer();
}
