"""At drain the shared listening socket is closed only after every worker's event loop removed it
from its epoll set (issue 10, "also fixed"), proven from the real binary's system calls under
`strace -f`. libevent's EPOLL_USE_CHANGELIST applies a worker's removal at that loop's next
dispatch; a close before it would let epoll_ctl act on a closed (or reused) descriptor number.
ThreadSanitizer cannot show this (the suite ignores noninstrumented modules), the trace can."""
import os
import re
import signal
import threading
import unittest

from harness import IDEMPROXY_BIN, Proxy, ProxyTestCase, requires_proxy
from syscall_trace import STRACE, parse
from test_sync_order import child_pid

WORKERS = 4


def listener_calls(log, port):
    """(line, kind, call) for the epoll_ctl DELs and the close of the listening socket on
    `port`, at the line where strace saw each complete. The descriptor is named by its first
    appearance with the listening address (strace -yy: "7<TCP:[127.0.0.1:PORT]>", no "->")."""
    fd = None
    events = []
    target = re.compile(r"(\d+)<TCP(?:v6)?:\[[^\]>]*:%d\]>" % port)
    for c in parse(log):
        if fd is None:
            m = target.search(c.text)
            if m:
                fd = int(m.group(1))
        if fd is None:
            continue
        if c.name == "epoll_ctl" and re.search(r"EPOLL_CTL_DEL, %d[<,]" % fd, c.text):
            events.append((c.end, "del", c.text))
        elif c.name == "close" and c.fd == fd and target.search(c.text):
            events.append((c.end, "close", c.text))
    return fd, events


@requires_proxy
@unittest.skipUnless(STRACE, "strace is not installed")
class ListenerCloseTest(ProxyTestCase):
    def test_the_listener_is_closed_after_every_worker_removed_it(self):
        log = os.path.join(self.tmp, "strace-listener.log")
        # The upstream answers after 1.5 s; a 4 s timeout (under the 5 s lease) leaves room for a
        # loaded machine, strace and a network store, so every exchange still answers 201.
        cfg = self.config(server={"workers": WORKERS}, upstream={"timeout": "4s"})
        p = Proxy(self.tmp, cfg)
        p.command = lambda: [STRACE, "-f", "-qq", "-yy", "-e", "trace=epoll_ctl,close",
                             "-o", log, IDEMPROXY_BIN, "run", "--config", p.config_path]
        p.env = dict(os.environ)
        p.env["ASAN_OPTIONS"] = ":".join(filter(None, [p.env.get("ASAN_OPTIONS"),
                                                       "detect_leaks=0"]))
        p.start(timeout=30)
        self.addCleanup(p.kill)
        # Exchanges in flight at SIGTERM keep every worker's loop turning while it drains, so
        # each one dispatches its removal (a loop told to stop in the same pass never does).
        self.up.script(default={"delay_ms": 1500})
        answers = []
        threads = [threading.Thread(target=lambda: answers.append(
            self.post(p, key=self.new_key()).status)) for _ in range(2 * WORKERS)]
        for t in threads:
            t.start()
        self.assertTrue(self.up.wait_for_count(2 * WORKERS, 10))
        pid = child_pid(p.proc.pid)
        self.assertIsNotNone(pid)
        os.kill(pid, signal.SIGTERM)
        for t in threads:
            t.join(30)
        self.assertEqual(p.proc.wait(30), 0, p.stderr_tail())
        self.assertEqual(answers, [201] * (2 * WORKERS))
        fd, events = listener_calls(log, p.port)
        self.assertIsNotNone(fd, "the listening socket is not in the trace")
        closes = [e for e in events if e[1] == "close"]
        dels = [e for e in events if e[1] == "del"]
        self.assertEqual(len(closes), 1, events)
        self.assertGreaterEqual(len(dels), 1, events)
        late = [d for d in dels if d[0] > closes[0][0]]
        self.assertEqual(late, [], "epoll_ctl DEL after the listener was closed: %r" % events)
        for d in dels:
            self.assertEqual(re.search(r"=\s+(-?\d+)", d[2]).group(1), "0",
                             "a removal failed: %r" % (d,))


if __name__ == "__main__":
    unittest.main()