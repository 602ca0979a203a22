"""durability: full, proven from system calls (SPEC §1 steps 3 and 6, DESIGN "Durability").

The real binary runs under `strace -f`. For every new key, the store write that carries the key
(its reservation) must be synced, meta page included, before the first byte of the request is
written to the upstream socket; and the store write that carries the upstream's answer (its
record) must be synced before the answer is written to the client socket. A SIGKILL test cannot
show this (the page cache survives SIGKILL); the order of the system calls does.

The planted bug (IDEMPROXY_TEST_PLANT=answer-before-commit, a test-only switch in the store)
completes operations before committing them; the same checks must catch it.
"""
import os
import re
import signal
import unittest

from harness import IDEMPROXY_BIN, Proxy, ProxyTestCase, lmdb_only, requires_proxy
from syscall_trace import STRACE, Trace, strace_command

KEYS = 12


def child_pid(pid):
    """The single child process of `pid` (the proxy started by strace)."""
    for tid in os.listdir("/proc/%d/task" % pid):
        with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
            kids = f.read().split()
        if kids:
            return int(kids[0])
    return None


@requires_proxy
@unittest.skipUnless(STRACE, "strace is not installed")
@lmdb_only("traces the embedded store's fsyncs")
class SyncOrderTest(ProxyTestCase):
    WAL = False  # the subclass below: the same checks on a store with a write-ahead log

    def traced_run(self, plant=None, keys=KEYS, payments=None, behaviour=None, stats=False,
                   reads=False):
        store = os.path.join(self.tmp, "store-%s" % (plant or "clean"))
        log = os.path.join(self.tmp, "strace-%s.log" % (plant or "clean"))
        settings = {"durability": "full", "wal": self.WAL}
        if self.WAL:
            settings["wal_size"] = "64KiB"
        cfg = self.config(store_path=store, store=settings, payments=payments)
        p = Proxy(self.tmp, cfg)
        p.command = lambda: strace_command(log, [IDEMPROXY_BIN, "run", "--config", p.config_path],
                                           stats=stats, reads=reads)
        p.env = dict(os.environ)
        p.env.pop("IDEMPROXY_TEST_PLANT", None)
        # Only a benchmark-bounds build (-DIDEMPROXY_BOUNDS=ON, never installed) would skip the
        # log's sync for this; every build under test must ignore it, which these checks show.
        p.env["IDEMPROXY_BOUND"] = "nosync"
        # LeakSanitizer cannot run under ptrace (an ASan build would exit 1 at the end); leaks
        # are checked by every other test of that build.
        p.env["ASAN_OPTIONS"] = ":".join(filter(None, [p.env.get("ASAN_OPTIONS"),
                                                       "detect_leaks=0"]))
        if plant:
            p.env["IDEMPROXY_TEST_PLANT"] = plant
        p.start(timeout=30)
        self.addCleanup(p.kill)
        sent = []
        if behaviour:
            self.up.script(default=behaviour)
        for i in range(keys):
            k = self.new_key("sync%d" % i)
            r = self.post(p, key=k)
            self.assertEqual(r.status, 201, r)
            self.assertFalse(r.replayed)
            sent.append((k, r.header("X-Payment-Id")))
        pid = child_pid(p.proc.pid)
        self.assertIsNotNone(pid)
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(p.proc.wait(30), 0, p.stderr_tail())
        self.assertCount(keys)
        if self.WAL:
            return Trace(log, os.path.join(store, "wal"), p.port, self.up.port, meta=False), sent
        return Trace(log, os.path.join(store, "data.mdb"), p.port, self.up.port), sent

    def violations(self, trace, sent):
        found = []
        for key, pay_id in sent:
            up = trace.first_send(trace.upstream_sends, key)
            if up is None:
                found.append("%s: no upstream write carries the key" % key)
            else:
                ok, why = trace.durable_before(key, up.start)
                if not ok:
                    found.append("%s: reservation not durable before the upstream write "
                                 "(line %d): %s" % (key, up.start, why))
            down = trace.first_send(trace.client_sends, pay_id)
            if down is None:
                found.append("%s: no client write carries %s" % (key, pay_id))
            else:
                ok, why = trace.durable_before(pay_id, down.start)
                if not ok:
                    found.append("%s: answer not durable before the client write (line %d): %s"
                                 % (key, down.start, why))
        return found

    def test_full_syncs_before_upstream_write_and_before_client_write(self):
        trace, sent = self.traced_run()
        self.assertTrue(trace.store_writes, "no store writes traced")
        self.assertTrue(trace.durable_points, "no store syncs traced")
        self.assertEqual(self.violations(trace, sent), [])

    def test_a_streamed_answer_follows_its_durable_compact_record(self):
        # Past max_response_body the answer is streamed, recorded as response-not-replayable:
        # that record (the store write carrying the key and the problem) is durable before the
        # first byte of the answer reaches the client.
        trace, sent = self.traced_run(keys=4, payments={"max_response_body": "1KiB"},
                                      behaviour={"pattern_size": 256 * 1024})
        self.assertEqual(self.streamed_violations(trace, sent), [])

    def test_planted_bug_is_caught_for_a_streamed_answer(self):
        trace, sent = self.traced_run(plant="answer-before-commit", keys=4,
                                      payments={"max_response_body": "1KiB"},
                                      behaviour={"pattern_size": 256 * 1024})
        self.assertNotEqual(self.streamed_violations(trace, sent), [])

    def streamed_violations(self, trace, sent):
        found = []
        for key, pay_id in sent:
            down = trace.first_send(trace.client_sends, pay_id)
            if down is None:
                found.append("%s: no client write carries %s" % (key, pay_id))
                continue
            ok, why = trace.durable_before(key, down.start, also="response-not-replayable")
            if not ok:
                found.append("%s: compact record not durable before the client write (line "
                             "%d): %s" % (key, down.start, why))
        return found

    def test_planted_answer_before_commit_is_caught(self):
        trace, sent = self.traced_run(plant="answer-before-commit")
        found = self.violations(trace, sent)
        caught = {v.split(":")[0] for v in found}
        # The plant answers 20 ms before it commits, so (measured) every key shows both wrong
        # orders; at least half of them, and both kinds, must be caught.
        self.assertGreaterEqual(len(caught), KEYS // 2, found)
        self.assertTrue(any("reservation not durable" in v for v in found), found)
        self.assertTrue(any("answer not durable" in v for v in found), found)


class WalSyncOrderTest(SyncOrderTest):
    """With store.wal the durable write is the log's: the group carrying the key (or the answer)
    is appended to DIR/wal and synced before the upstream (or client) write; the data file is
    not synced per commit at all."""
    WAL = True

    def test_the_data_file_is_not_synced_per_request(self):
        trace, sent = self.traced_run()
        data_syncs = [c for c in trace.calls if c.name in Trace.SYNCS
                      and c.target.endswith("/data.mdb")]
        # At open (its checkpoint) and at close (the clean one), and maybe a timed checkpoint:
        # not one per commit (a new key is two).
        self.assertLess(len(data_syncs), len(sent), data_syncs)

    def test_no_commit_asks_for_the_store_files_times(self):
        # A stat of the log or the data file that asks for its times makes Linux (6.13+) keep
        # them to the nanosecond: every group's write then dirties the log's inode, and every
        # fdatasync writes the inode too (measured: one more I/O per group, +100 µs on this
        # machine's disk). Opening the store may ask; a commit must not.
        trace, sent = self.traced_run(stats=True)
        store = os.path.dirname(trace.store_file)
        for name in ("wal", "data.mdb"):
            asked = trace.time_stats(os.path.join(store, name))
            self.assertLess(len(asked), len(sent), "%s: %s" % (name, asked[:4]))

    def test_a_group_reads_the_log_and_stats_the_data_file_little(self):
        # Each group costs system calls on the writer's path to the client: one read of the
        # log's two checkpoint slots and one of the header after the last committed group, per
        # write transaction (walAppend uses the checkpoint its transaction read), and one statx
        # of data.mdb's name (the open file's identity is known). Before: five reads of the log
        # and two stats per group.
        trace, sent = self.traced_run(stats=True, reads=True)
        store = os.path.dirname(trace.store_file)
        wal = os.path.join(store, "wal")
        groups = len(trace.syncs_of(wal))
        self.assertGreaterEqual(groups, 2 * len(sent))
        reads = trace.reads_of(wal)
        # (Opening and closing the store read the log too: replay, checkpoints.)
        self.assertLessEqual(len(reads), 2 * groups + 12, reads[:12])
        # The checkpoint slots (offset 0) once per write transaction at most, which may hold
        # several groups: read again by each group's append, they were read twice per group.
        slots = [c for c in reads if re.search(r", 0\)\s+=\s+\d+\s*$", c.text)]
        self.assertLessEqual(len(slots), groups + 6, slots[:8])
        stats = trace.stats_of(os.path.join(store, "data.mdb"))
        self.assertLessEqual(len(stats), groups + 6, stats[:8])


if __name__ == "__main__":
    unittest.main()
