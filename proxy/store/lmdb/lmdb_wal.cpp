// The write-ahead log file, its checkpoint header and the presence lock (lmdb_wal.h).
//
// File layout (little-endian):
//   [0, 4096)      checkpoint slot 0     [4096, 8192)  checkpoint slot 1
//   [8192, ...)    groups, one after another, from the start again after each checkpoint
// A slot: "IDPWAL01", crc32c of bytes [12, kSlotBody), then the Checkpoint's fields (number,
// salt, next_seq, txnid: u64; page_size, clean, zero: u32; data_inode, data_born: u64) and the
// two meta page prefixes. A checkpoint is written to slot (number % 2), so a torn write leaves the
// other, older one valid.
// A group: u32 magic, u32 crc32c of bytes [8, 32 + payload), u64 salt, u64 seq, u32 payload
// length, u32 zero, then the payload: changes, each u8 'P' or 'E', the 32-byte record id, and
// for 'P' a u32 length and the encoded record.
#include "store/lmdb/lmdb_wal.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>

#include "base/bounds.h"

namespace idem::wal {
namespace {

constexpr char kSlotMagic[8] = {'I', 'D', 'P', 'W', 'A', 'L', '0', '1'};
constexpr uint32_t kGroupMagic = 0x31475749;  // "IWG1"
constexpr size_t kSlotBody = 72 + 2 * kMetaBytes;
constexpr uint32_t kMaxPayload = 1u << 30;

void putLe(std::string& out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t getLe(const char* p, int n) {
  uint64_t v = 0;
  for (int i = n - 1; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

std::array<uint32_t, 256> makeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
    t[i] = c;
  }
  return t;
}

uint32_t crcTable(const unsigned char* p, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = makeTable();
  for (size_t i = 0; i < n; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
__attribute__((target("sse4.2"))) uint32_t crcHardware(const unsigned char* p, size_t n,
                                                       uint32_t crc) {
  uint64_t c = crc;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
  }
  auto c32 = static_cast<uint32_t>(c);
  for (; n > 0; --n, ++p) c32 = __builtin_ia32_crc32qi(c32, *p);
  return c32;
}
#endif

// Up to `n` bytes at `off`: fewer only at the end of the file or on an error.
size_t preadUpTo(int fd, void* buf, size_t n, uint64_t off) {
  auto* p = static_cast<char*>(buf);
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::pread(fd, p + got, n - got, static_cast<off_t>(off + got));
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  return got;
}

bool preadAll(int fd, void* buf, size_t n, uint64_t off) {
  return preadUpTo(fd, buf, n, off) == n;
}

bool pwriteAll(int fd, const void* buf, size_t n, uint64_t off) {
  const auto* p = static_cast<const char*>(buf);
  while (n > 0) {
    const ssize_t w = ::pwrite(fd, p, n, static_cast<off_t>(off));
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
    off += static_cast<uint64_t>(w);
  }
  return true;
}

// Zeros over [from, to), one page per write, so that the cache holds the log in single pages
// (store/lmdb/page_cache.h has why).
bool writeZerosByPage(int fd, uint64_t from, uint64_t to) {
  static const std::array<char, kSlotSize> zeros{};
  for (uint64_t at = from; at < to;) {
    const uint64_t n = std::min(to, (at / kSlotSize + 1) * kSlotSize) - at;
    if (!pwriteAll(fd, zeros.data(), n, at)) return false;
    at += n;
  }
  return true;
}

std::string encodeSlot(const Checkpoint& c) {
  std::string s(kSlotMagic, sizeof kSlotMagic);
  putLe(s, 0, 4);  // crc, filled below
  putLe(s, c.number, 8);
  putLe(s, c.salt, 8);
  putLe(s, c.next_seq, 8);
  putLe(s, c.txnid, 8);
  putLe(s, c.page_size, 4);
  putLe(s, c.clean ? 1 : 0, 4);
  putLe(s, 0, 4);
  putLe(s, c.data_inode, 8);
  putLe(s, c.data_born, 8);
  for (const std::string& m : c.meta) {
    std::string page = m.substr(0, kMetaBytes);
    page.resize(kMetaBytes, '\0');
    s += page;
  }
  const uint32_t crc = crc32c(std::string_view(s).substr(12));
  for (int i = 0; i < 4; ++i) s[8 + static_cast<size_t>(i)] = static_cast<char>(crc >> (8 * i));
  return s;
}

std::optional<Checkpoint> decodeSlot(std::string_view s) {
  if (s.size() < kSlotBody || std::memcmp(s.data(), kSlotMagic, sizeof kSlotMagic) != 0) {
    return std::nullopt;
  }
  if (getLe(s.data() + 8, 4) != crc32c(s.substr(12, kSlotBody - 12))) {
    return std::nullopt;
  }
  Checkpoint c;
  c.number = getLe(s.data() + 12, 8);
  c.salt = getLe(s.data() + 20, 8);
  c.next_seq = getLe(s.data() + 28, 8);
  c.txnid = getLe(s.data() + 36, 8);
  c.page_size = static_cast<uint32_t>(getLe(s.data() + 44, 4));
  c.clean = getLe(s.data() + 48, 4) != 0;
  c.data_inode = getLe(s.data() + 56, 8);
  c.data_born = getLe(s.data() + 64, 8);
  c.meta[0] = std::string(s.substr(72, kMetaBytes));
  c.meta[1] = std::string(s.substr(72 + kMetaBytes, kMetaBytes));
  return c;
}

}  // namespace

bool fileIdentity(int fd, uint64_t& inode, uint64_t& born) {
  struct statx sx {};
  if (::statx(fd, "", AT_EMPTY_PATH, STATX_INO | STATX_BTIME, &sx) != 0) return false;
  inode = sx.stx_ino;
  born = (sx.stx_mask & STATX_BTIME) != 0
             ? static_cast<uint64_t>(sx.stx_btime.tv_sec) * 1'000'000'000u + sx.stx_btime.tv_nsec
             : 0;
  return true;
}

uint32_t crc32c(std::string_view data, uint32_t crc) {
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  crc = ~crc;
#if defined(__x86_64__)
  static const bool hardware = __builtin_cpu_supports("sse4.2");
  crc = hardware ? crcHardware(p, data.size(), crc) : crcTable(p, data.size(), crc);
#else
  crc = crcTable(p, data.size(), crc);
#endif
  return ~crc;
}

void addPut(std::string& group, const RecordId& id, std::string_view bytes) {
  group.push_back('P');
  group.append(reinterpret_cast<const char*>(id.data()), id.size());
  putLe(group, bytes.size(), 4);
  group.append(bytes);
}

void addErase(std::string& group, const RecordId& id) {
  group.push_back('E');
  group.append(reinterpret_cast<const char*>(id.data()), id.size());
}

bool LogFile::parseChanges(std::string_view p, std::vector<Change>& out) {
  constexpr size_t kId = std::tuple_size_v<RecordId>;
  while (!p.empty()) {
    Change c;
    if (p.size() < 1 + kId || (p[0] != 'P' && p[0] != 'E')) return false;
    c.put = p[0] == 'P';
    std::memcpy(c.id.data(), p.data() + 1, kId);
    p.remove_prefix(1 + kId);
    if (c.put) {
      if (p.size() < 4) return false;
      const size_t n = getLe(p.data(), 4);
      p.remove_prefix(4);
      if (p.size() < n) return false;
      c.bytes = p.substr(0, n);
      p.remove_prefix(n);
    }
    out.push_back(c);
  }
  return true;
}

LogFile::~LogFile() {
  if (fd_ >= 0) ::close(fd_);
}

bool LogFile::open(const std::string& dir, uint64_t capacity, bool& missing, std::string& error) {
  const std::string path = dir + "/wal";
  missing = false;
  fd_ = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd_ < 0) {
    missing = errno == ENOENT;
    error = path + ": " + std::strerror(errno);
    return false;
  }
  capacity_ = capacity;
  return true;
}

bool LogFile::create(const std::string& dir, const Checkpoint& first, uint64_t capacity,
                     std::string& error) {
  const std::string path = dir + "/wal";
  const std::string tmp = dir + "/.wal-creating-" + std::to_string(::getpid());
  ::unlink(tmp.c_str());  // left by an earlier crash of this pid number
  const int fd = ::open(tmp.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    error = "cannot create " + tmp + ": " + std::strerror(errno);
    return false;
  }
  const std::string slot = encodeSlot(first);
  bool ok = writeZerosByPage(fd, 0, kLogStart);
  ok = ok && pwriteAll(fd, slot.data(), slot.size(), (first.number % 2) * kSlotSize) &&
       ::fdatasync(fd) == 0 && ::rename(tmp.c_str(), path.c_str()) == 0;
  if (!ok) {
    error = "cannot create " + path + ": " + std::strerror(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    return false;
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd < 0 || ::fsync(dfd) != 0) {
    error = "cannot sync " + dir + ": " + std::strerror(errno);
    if (dfd >= 0) ::close(dfd);
    ::close(fd);
    return false;
  }
  ::close(dfd);
  fd_ = fd;
  capacity_ = capacity;
  return true;
}

std::optional<Checkpoint> LogFile::readCheckpoint() const {
  // Both slots in one read (each write transaction reads them once).
  std::string buf(kSlotSize + kSlotBody, '\0');
  const size_t got = preadUpTo(fd_, buf.data(), buf.size(), 0);
  std::optional<Checkpoint> best;
  for (uint64_t slot = 0; slot < 2; ++slot) {
    if (got < slot * kSlotSize + kSlotBody) continue;
    auto c = decodeSlot(std::string_view(buf).substr(slot * kSlotSize, kSlotBody));
    if (c && (!best || c->number > best->number)) best = std::move(c);
  }
  return best;
}

bool LogFile::writeCheckpoint(const Checkpoint& c, std::string& error) {
  const std::string slot = encodeSlot(c);
  if (!pwriteAll(fd_, slot.data(), slot.size(), (c.number % 2) * kSlotSize) ||
      ::fdatasync(fd_) != 0) {
    error = std::string("cannot write the write-ahead log's checkpoint: ") + std::strerror(errno);
    return false;
  }
  return true;
}

bool LogFile::append(uint64_t offset, uint64_t salt, uint64_t seq, std::string_view payload,
                     uint64_t& length, std::string& error) {
  std::string head;
  head.reserve(kGroupHeader);
  putLe(head, kGroupMagic, 4);
  putLe(head, 0, 4);
  putLe(head, salt, 8);
  putLe(head, seq, 8);
  putLe(head, payload.size(), 4);
  putLe(head, 0, 4);
  const uint32_t crc = crc32c(payload, crc32c(std::string_view(head).substr(8)));
  for (int i = 0; i < 4; ++i) head[4 + static_cast<size_t>(i)] = static_cast<char>(crc >> (8 * i));
  const uint64_t need = offset + kGroupHeader + payload.size();
  if (need > known_size_) {
    // Another process may have extended it: only past what we know is the kernel asked.
    struct stat st {};
    if (::fstat(fd_, &st) != 0) {
      error = std::string("cannot append to the write-ahead log: ") + std::strerror(errno);
      return false;
    }
    known_size_ = static_cast<uint64_t>(st.st_size);
  }
  const uint64_t size = known_size_;
  if (need > size) {
    // Zeros written, not a hole or fallocate: later groups overwrite allocated, written blocks.
    // A page per write (writeZerosByPage).
    const uint64_t target = std::max(need, std::min(size + kGrowStep, kLogStart + capacity_));
    if (!writeZerosByPage(fd_, size, target)) {
      error = std::string("cannot extend the write-ahead log: ") + std::strerror(errno);
      return false;
    }
    known_size_ = target;
  }
  const struct iovec iov[2] = {{head.data(), head.size()},
                               {const_cast<char*>(payload.data()), payload.size()}};
  size_t want = head.size() + payload.size();
  ssize_t w;
  do {
    w = ::pwritev(fd_, iov, 2, static_cast<off_t>(offset));
  } while (w < 0 && errno == EINTR);
  if (w != static_cast<ssize_t>(want)) {
    // Short: write the rest plainly (rare; a full disk shows up here).
    const std::string all = head + std::string(payload);
    const size_t done = w > 0 ? static_cast<size_t>(w) : 0;
    if (!pwriteAll(fd_, all.data() + done, all.size() - done, offset + done)) {
      error = std::string("cannot append to the write-ahead log: ") + std::strerror(errno);
      return false;
    }
  }
  if (!bounds::skipLogSync() && ::fdatasync(fd_) != 0) {
    error = std::string("cannot sync the write-ahead log: ") + std::strerror(errno);
    return false;
  }
  length = want;
  return true;
}

bool LogFile::invalidate(uint64_t offset, std::string& error) {
  const char zeros[kGroupHeader] = {};
  if (!pwriteAll(fd_, zeros, sizeof zeros, offset) || ::fdatasync(fd_) != 0) {
    error = std::string("cannot invalidate a write-ahead log group: ") + std::strerror(errno);
    return false;
  }
  return true;
}

bool LogFile::readGroup(uint64_t offset, uint64_t salt, uint64_t seq, std::string& out,
                        uint64_t& length) const {
  char head[kGroupHeader];
  if (!preadAll(fd_, head, sizeof head, offset)) return false;
  if (getLe(head, 4) != kGroupMagic || getLe(head + 8, 8) != salt || getLe(head + 16, 8) != seq) {
    return false;
  }
  const uint64_t n = getLe(head + 24, 4);
  if (n > kMaxPayload) return false;
  out.resize(n);
  if (!preadAll(fd_, out.data(), n, offset + kGroupHeader)) return false;
  const uint32_t crc = crc32c(out, crc32c(std::string_view(head + 8, kGroupHeader - 8)));
  if (crc != getLe(head + 4, 4)) return false;
  length = kGroupHeader + n;
  return true;
}

// ---------------------------------------------------------------------------------------------
// Presence

Presence::~Presence() {
  if (fd_ >= 0) ::close(fd_);  // releases both locks (they belong to this open file description)
}

bool Presence::lock(short type, off_t byte, bool wait) {
  struct flock fl {};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  for (;;) {
    if (::fcntl(fd_, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl) == 0) return true;
    if (errno != EINTR) return false;
  }
}

bool Presence::enter(const std::string& dir, std::string& error) {
  const std::string path = dir + "/wal.lock";
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0 || !lock(F_WRLCK, 0, true)) {
    error = "cannot lock " + path + ": " + std::strerror(errno);
    return false;
  }
  return true;
}

bool Presence::joinAlone() {
  if (lock(F_WRLCK, 1, false)) return true;
  lock(F_RDLCK, 1, true);
  return false;
}

void Presence::share() {
  lock(F_RDLCK, 1, true);
}

bool Presence::tryAlone() {
  return lock(F_WRLCK, 1, false);
}

void Presence::leave() {
  lock(F_UNLCK, 0, false);
}

bool Presence::enterAgain() {
  return fd_ >= 0 && lock(F_WRLCK, 0, true);
}

bool Presence::othersHold() {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = 1;
  fl.l_len = 1;
  // (Locks of this open file description never conflict with the request: only others'.)
  if (fd_ < 0 || ::fcntl(fd_, F_OFD_GETLK, &fl) != 0) return true;
  return fl.l_type != F_UNLCK;
}

bool Presence::nobodyHolds() {
  if (!lock(F_WRLCK, 1, false)) return false;
  lock(F_UNLCK, 1, false);
  return true;
}

}  // namespace idem::wal
