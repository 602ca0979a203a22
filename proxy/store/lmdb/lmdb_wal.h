#pragma once
// The LMDB store's write-ahead log (store.wal; lmdb_store.cpp, "Write-ahead log", has the
// protocol). This file holds the log file itself: its checkpoint header, appending a group of
// changes, reading the groups back, and the lock file that tells a process whether it has the
// store to itself. It knows nothing of LMDB beyond the bytes of its two meta pages.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "store/record.h"

namespace idem::wal {

inline constexpr uint64_t kSlotSize = 4096;  // two header slots, at 0 and kSlotSize
inline constexpr uint64_t kLogStart = 2 * kSlotSize;
inline constexpr uint64_t kGroupHeader = 32;
inline constexpr size_t kMetaBytes = 512;  // the part of an LMDB meta page LMDB writes
inline constexpr uint64_t kDefaultCapacity = 32ull << 20;  // between checkpoints
inline constexpr uint64_t kGrowStep = 1ull << 20;          // the file grows by zeros written ahead

// A checkpoint: the data file was synced with LMDB transaction `txnid` as its newest, and these
// were the first kMetaBytes of its two meta pages then. Groups appended after it carry `salt`;
// the first has sequence number `next_seq`.
struct Checkpoint {
  uint64_t number = 0;  // increases by one per checkpoint; the valid slot with the highest wins
  uint64_t salt = 0;
  uint64_t next_seq = 0;
  uint64_t txnid = 0;
  uint32_t page_size = 0;
  bool clean = false;  // written by the last process closing the store: nothing to replay
  // The data file's identity (inode number, and its birth time in ns where the file system
  // keeps one): a log is never applied to another data file.
  uint64_t data_inode = 0;
  uint64_t data_born = 0;
  std::string meta[2];  // kMetaBytes each
};

// One change in a group: a record written (its encoded bytes) or removed.
struct Change {
  bool put = false;
  RecordId id{};
  std::string_view bytes;  // put only; points into the group being read
};

// Appends the encoding of a change to `group` (the payload of the next group).
void addPut(std::string& group, const RecordId& id, std::string_view bytes);
void addErase(std::string& group, const RecordId& id);

// The identity of the open file `fd` (inode, birth time) for Checkpoint::data_inode/data_born.
bool fileIdentity(int fd, uint64_t& inode, uint64_t& born);

// The CRC-32C of `data`, continuing from `crc`.
uint32_t crc32c(std::string_view data, uint32_t crc = 0);

class LogFile {
 public:
  LogFile() = default;
  LogFile(const LogFile&) = delete;
  LogFile& operator=(const LogFile&) = delete;
  ~LogFile();

  // Opens DIR/wal for reading and writing, to wrap after `capacity` bytes of groups. False (with
  // `error`) if it cannot; `missing` is set when there is no such file.
  bool open(const std::string& dir, uint64_t capacity, bool& missing, std::string& error);
  // Creates DIR/wal holding `first`, atomically (a temporary file synced, then renamed and the
  // directory synced).
  bool create(const std::string& dir, const Checkpoint& first, uint64_t capacity,
              std::string& error);

  // The valid checkpoint with the highest number, or nothing if neither slot is valid.
  std::optional<Checkpoint> readCheckpoint() const;
  // Writes `c` to the slot its number selects and syncs the file.
  bool writeCheckpoint(const Checkpoint& c, std::string& error);

  // Writes one group (header + payload) at `offset` and syncs the file; returns its length.
  // The file is first extended with zeros (kGrowStep at a time, up to the capacity) if the
  // group would pass its end: a group then overwrites written blocks, and its fdatasync has no
  // file size to journal, except once per step.
  bool append(uint64_t offset, uint64_t salt, uint64_t seq, std::string_view payload,
              uint64_t& length, std::string& error);
  // Overwrites the header of the group at `offset` (a group whose transaction did not commit)
  // so that it is never replayed, and syncs.
  bool invalidate(uint64_t offset, std::string& error);

  // Reads the groups that follow checkpoint `c`, in order, up to the first that is missing,
  // torn, of another salt, or out of sequence. For each, calls `fn` with its changes; stops
  // (returning false) if `fn` does. `end` is set to the offset after the last group read and
  // `next_seq` to the sequence number the next group would carry.
  template <typename Fn>
  bool replay(const Checkpoint& c, uint64_t& end, uint64_t& next_seq, Fn&& fn) const {
    return replayFrom(c.salt, kLogStart, c.next_seq, end, next_seq, fn);
  }
  // The same from the group expected at `offset` with sequence number `seq` (the groups that
  // follow the last one committed).
  template <typename Fn>
  bool replayFrom(uint64_t salt, uint64_t offset, uint64_t seq, uint64_t& end, uint64_t& next_seq,
                  Fn&& fn) const;

  uint64_t capacity() const { return capacity_; }
  int fd() const { return fd_; }

 private:
  // One group at `offset` if it is valid for (salt, seq): its payload in `out`, its length.
  bool readGroup(uint64_t offset, uint64_t salt, uint64_t seq, std::string& out,
                 uint64_t& length) const;
  static bool parseChanges(std::string_view payload, std::vector<Change>& out);

  int fd_ = -1;
  uint64_t capacity_ = 0;
  // The file's size as this process last learned it (it only grows). An append within it
  // asks the kernel nothing: a stat of the file would make the kernel keep its modification
  // time to the nanosecond (multigrain timestamps, Linux 6.13+), so every group's write would
  // change the inode and each fdatasync would write the inode too (one more I/O per group).
  uint64_t known_size_ = 0;
};

template <typename Fn>
bool LogFile::replayFrom(uint64_t salt, uint64_t offset, uint64_t seq, uint64_t& end,
                         uint64_t& next_seq, Fn&& fn) const {
  end = offset;
  next_seq = seq;
  std::string payload;
  std::vector<Change> changes;
  for (uint64_t length = 0; readGroup(end, salt, next_seq, payload, length);) {
    changes.clear();
    if (!parseChanges(payload, changes)) break;  // a valid checksum over a bad encoding
    if (!fn(changes)) return false;
    end += length;
    ++next_seq;
  }
  return true;
}

// The lock file DIR/wal.lock, with two open-file-description locks: byte 0 serialises the open
// and close of stores on DIR (across processes and within one); byte 1 is held shared by every
// process that has the store open for writing. exclusive() tells whether the holder is alone.
class Presence {
 public:
  Presence() = default;
  Presence(const Presence&) = delete;
  Presence& operator=(const Presence&) = delete;
  ~Presence();

  // Opens the lock file and takes the byte-0 lock (waiting for it).
  bool enter(const std::string& dir, std::string& error);
  // Byte 1 exclusively if nobody else holds it (true), else shared (false). While entered.
  bool joinAlone();
  // Byte 1 shared (from exclusive, atomically).
  void share();
  // Whether this process alone holds byte 1 now (tries to convert to exclusive; keeps its
  // shared lock when it cannot).
  bool tryAlone();
  // Releases the byte-0 lock (byte 1 is kept until the destructor).
  void leave();
  // Takes the byte-0 lock again (closing), if enter() succeeded before.
  bool enterAgain();
  // Whether nobody holds byte 1 (for a read-only open, which does not hold it).
  bool nobodyHolds();
  // Whether another process (another open of the lock file) holds byte 1: it has the store
  // open for writing. Asks without taking or changing any lock.
  bool othersHold();

 private:
  bool lock(short type, off_t byte, bool wait);
  int fd_ = -1;
};

}  // namespace idem::wal
