"""Reads `strace -f -yy` logs of the proxy and checks the order of store syncs (DESIGN
"Durability": sync before the upstream write, sync before the client write).

A trace is a list of system calls, each with the line where it started and the line where it
completed (strace prints an `<unfinished ...>` line and a `<... resumed>` line for a call that
another thread interrupted). Lines are in the order strace saw the events, so "completed before
started" is a comparison of line numbers.
"""
import re
import shutil

STRACE = shutil.which("strace")
TRACED = "openat,pwrite64,pwritev,pwritev2,write,writev,fdatasync,fsync,msync,sendto,sendmsg"

_LINE = re.compile(r"^(\d+)\s+(?:\d\d:\d\d:\d\d\.\d+\s+)?(.*)$")
_CALL = re.compile(r"^(\w+)\((.*)$")
_RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
_FD = re.compile(r"^(\d+)<((?:->|[^>])*)>")
_RESULT = re.compile(r"\)\s+=\s+(-?\d+)")


class Call:
    def __init__(self, pid, name, start, text):
        self.pid = pid
        self.name = name
        self.start = start
        self.end = None
        self.text = text  # the arguments and result as printed (both halves when split)
        m = _FD.match(text)
        self.fd = int(m.group(1)) if m else None
        self.target = m.group(2) if m else ""  # a file path, or "TCP:[a:p->b:q]"

    def result(self):
        m = _RESULT.search(self.text)
        return int(m.group(1)) if m else None

    def __repr__(self):
        return "Call(%s@%s-%s %s)" % (self.name, self.start, self.end, self.text[:120])


# Calls that read a file's attributes (traced on request, see Trace.time_stats).
STATS = "newfstatat,fstat,stat,lstat,statx"
_STATX_TIMES = re.compile(r"STATX_(BASIC_STATS|ALL|MTIME|CTIME)")


# Calls that read a file's bytes (traced on request, see Trace.reads_of).
READS = "pread64,preadv,read"


def strace_command(log_path, argv, stats=False, reads=False):
    traced = TRACED + ("," + STATS if stats else "") + ("," + READS if reads else "")
    return [STRACE, "-f", "-qq", "-yy", "-s", "65536", "-e", "trace=" + traced, "-o", log_path] \
        + list(argv)


def parse(path):
    calls, pending = [], {}
    with open(path, "r", encoding="latin-1") as f:
        for i, line in enumerate(f):
            m = _LINE.match(line.rstrip("\n"))
            if not m:
                continue
            pid, rest = int(m.group(1)), m.group(2)
            r = _RESUMED.match(rest)
            if r:
                call = pending.pop(pid, None)
                if call is not None:
                    call.text += r.group(2)
                    call.end = i
                continue
            c = _CALL.match(rest)
            if not c:
                continue  # signals, exits
            call = Call(pid, c.group(1), i, c.group(2))
            if rest.endswith("<unfinished ...>"):
                pending[pid] = call
            else:
                call.end = i
            calls.append(call)
    return [c for c in calls if c.end is not None]


def _port_side(target, local):
    """The port of a TCP socket target "TCP:[a:p->b:q]": p if local else q."""
    m = re.search(r"\[(.*):(\d+)->(.*):(\d+)\]", target)
    if not m:
        return None
    return int(m.group(2) if local else m.group(4))


class Trace:
    WRITES = {"pwrite64", "pwritev", "pwritev2", "write", "writev", "sendto", "sendmsg"}
    SYNCS = {"fdatasync", "fsync", "msync"}

    def __init__(self, path, store_file, proxy_port, upstream_port, meta=True):
        """`store_file`: the file whose writes and syncs make an operation durable: LMDB's
        data file (meta=True: a transaction is durable once its meta page is), or the store's
        write-ahead log (meta=False: a group is durable once synced)."""
        self.calls = parse(path)
        self.store_file = store_file
        self.meta = meta
        self.dsync_fds = set()
        # fds opened on the store file with O_DSYNC/O_SYNC: a write on them is itself a sync.
        # (fds are reused, so this is tracked in order and consulted through `_is_dsync`.)
        self._dsync_opens = []
        for c in self.calls:
            if c.name == "openat" and store_file in c.text:
                fd = c.result()
                if fd is not None and fd >= 0:
                    self._dsync_opens.append((c.end, fd, "O_DSYNC" in c.text or "O_SYNC" in c.text))
        self.store_writes = [c for c in self.calls
                             if c.name in self.WRITES and c.target.endswith(store_file)]
        self.upstream_sends = [c for c in self.calls if c.name in self.WRITES
                               and _port_side(c.target, local=False) == upstream_port]
        self.client_sends = [c for c in self.calls if c.name in self.WRITES
                             and _port_side(c.target, local=True) == proxy_port]
        self.durable_points = sorted(
            [c.end for c in self.calls if c.name in self.SYNCS and c.target.endswith(store_file)]
            + [c.end for c in self.store_writes if self._is_dsync(c)])

    def _is_dsync(self, call):
        dsync = False
        for line, fd, flag in self._dsync_opens:
            if line < call.start and fd == call.fd:
                dsync = flag
        return dsync

    def time_stats(self, path):
        """Attribute reads of `path` (by name or by an fd open on it) that ask for its
        modification or change time: on Linux 6.13+ (multigrain timestamps) such a read makes
        the kernel keep the file's times to the nanosecond, so that the next write dirties its
        inode and the next fdatasync writes the inode as well. Needs strace_command(stats=True).
        """
        return [c for c in self.stats_of(path)
                if c.name != "statx" or _STATX_TIMES.search(c.text)]

    def reads_of(self, path):
        """Reads of `path`'s bytes through an fd open on it. Needs strace_command(reads=True)."""
        return [c for c in self.calls if c.name in READS.split(",") and c.target == path]

    def stats_of(self, path):
        """Attribute reads of `path`, by name or by an fd open on it (stats=True)."""
        return [c for c in self.calls if c.name in STATS.split(",")
                and (path + ">" in c.text or '"%s"' % path in c.text)]

    def syncs_of(self, path):
        return [c for c in self.calls if c.name in self.SYNCS and c.target == path]

    def first_send(self, sends, token):
        for c in sends:
            if token in c.text:
                return c
        return None

    def durable_before(self, token, deadline_line, also=None):
        """Whether the last store write carrying `token` before `deadline_line` was made durable
        before `deadline_line`: a sync of the store completed after it, then a store write
        started (LMDB's meta page, which makes the transaction visible) and was itself durable
        (written on an O_DSYNC descriptor, or followed by a completed sync) before the deadline.
        `also`: a second token the same write must carry. Returns (ok, explanation)."""
        writes = [c for c in self.store_writes if token in c.text and c.end < deadline_line
                  and (also is None or also in c.text)]
        if not writes:
            return False, "no store write carrying %r before line %d" % (token, deadline_line)
        w = writes[-1]
        syncs = [p for p in self.durable_points if w.end < p < deadline_line]
        if not syncs:
            return False, ("store write at line %d carrying %r: no sync completed before "
                           "line %d" % (w.end, token, deadline_line))
        if not self.meta:
            return True, ""
        for m in self.store_writes:
            if m.start <= syncs[0] or m.end >= deadline_line:
                continue
            if self._is_dsync(m) or any(m.end < p < deadline_line for p in self.durable_points):
                return True, ""
        return False, ("store write at line %d carrying %r: data synced at line %d, but no meta "
                       "page made durable before line %d" % (w.end, token, syncs[0],
                                                             deadline_line))
