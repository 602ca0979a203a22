"""Operating the daemon (SPEC §7, issue 4): systemd notifications, /metrics, JSON logs."""
import json
import math
import os
import re
import signal
import socket
import time
import unittest

import harness
from harness import Proxy, ProxyTestCase, free_port, request, requires_proxy

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)$')
LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*(,|$)')


def parse_prometheus(text):
    """Strict parser for the text exposition format 0.0.4: returns
    ({family: type}, [(name, {labels}, value)]); raises on any malformed line."""
    types, samples = {}, []
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("# HELP "):
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            if kind not in ("counter", "gauge", "histogram", "summary", "untyped"):
                raise ValueError("bad type line: %r" % line)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        if not m:
            raise ValueError("bad sample line: %r" % line)
        name, _, body, value = m.groups()
        labels = {}
        pos = 0
        body = body or ""
        while pos < len(body):
            lm = LABEL.match(body, pos)
            if not lm:
                raise ValueError("bad labels in %r" % line)
            labels[lm.group(1)] = lm.group(2)
            pos = lm.end()
        v = float(value)  # accepts +Inf, NaN
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        if name not in types and family not in types:
            raise ValueError("sample without TYPE: %r" % line)
        samples.append((name, labels, v))
    return types, samples


def value(samples, name, **labels):
    found = [v for n, l, v in samples if n == name and all(l.get(k) == w for k, w in labels.items())]
    if not found:
        raise KeyError("%s %s not found" % (name, labels))
    return sum(found)


@requires_proxy
class NotifyTest(ProxyTestCase):
    def test_ready_reloading_stopping_in_order(self):
        sock_path = os.path.join(self.tmp, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(sock_path)
        self.addCleanup(sock.close)
        sock.settimeout(30)  # generous: a ThreadSanitizer build under load is slow to reload

        cfg = self.config()
        p = Proxy(self.tmp, cfg)
        p.env = dict(os.environ, NOTIFY_SOCKET=sock_path)
        self._proxies.append(p)
        p.start()

        def next_state(wanted):
            """Reads datagrams until one carries `wanted`; returns every assignment seen."""
            seen = []
            while True:
                msg = sock.recv(4096).decode()
                seen.extend(msg.split("\n"))
                if wanted in msg.split("\n"):
                    return seen

        next_state("READY=1")
        p.signal(signal.SIGHUP)
        seen = next_state("RELOADING=1")
        self.assertNotIn("READY=1", seen)
        next_state("READY=1")
        p.signal(signal.SIGTERM)
        next_state("STOPPING=1")
        self.assertEqual(p.proc.wait(15), 0)


def store_gauges(admin):
    """(records held, whether store bytes used > 0) from /metrics."""
    _, s = parse_prometheus(request(admin, "GET", "/metrics").body.decode())
    return value(s, "idemproxy_store_records"), value(s, "idemproxy_store_bytes_used") > 0


@requires_proxy
class MetricsTest(ProxyTestCase):
    def test_metrics_count_a_forward_and_its_replay(self):
        proxy = self.start_proxy(admin_port=0)
        admin = proxy.admin_port
        types, before = parse_prometheus(request(admin, "GET", "/metrics").body.decode())
        self.assertEqual(types.get("idemproxy_requests_total"), "counter")
        self.assertEqual(value(before, "idemproxy_requests_total", route="payments",
                               outcome="forwarded"), 0)

        k = self.new_key()
        self.assertEqual(self.post(proxy, key=k).status, 201)
        self.assertTrue(self.post(proxy, key=k).replayed)
        self.assertEqual(self.post(proxy).status, 400)  # key missing → invalid

        m = request(admin, "GET", "/metrics")
        self.assertEqual(m.status, 200)
        self.assertTrue(m.header("Content-Type").startswith("text/plain"))
        types, s = parse_prometheus(m.body.decode())
        self.assertEqual(value(s, "idemproxy_requests_total", route="payments",
                               outcome="forwarded"), 1)
        self.assertEqual(value(s, "idemproxy_requests_total", route="payments",
                               outcome="replayed"), 1)
        self.assertEqual(value(s, "idemproxy_requests_total", route="payments",
                               outcome="invalid"), 1)
        for outcome in ("conflict", "mismatch", "passthrough", "released", "error"):
            self.assertEqual(value(s, "idemproxy_requests_total", route="payments",
                                   outcome=outcome), 0, outcome)
        self.assertEqual(types.get("idemproxy_upstream_latency_seconds"), "histogram")
        self.assertEqual(value(s, "idemproxy_upstream_latency_seconds_count",
                               upstream="backend"), 1)
        self.assertEqual(value(s, "idemproxy_upstream_latency_seconds_bucket",
                               upstream="backend", le="+Inf"), 1)
        self.assertEqual(types.get("idemproxy_store_commit_latency_seconds"), "histogram")
        # One reserve and one record, possibly in one group commit.
        self.assertGreaterEqual(value(s, "idemproxy_store_commit_latency_seconds_count"), 1)
        # Every store operation timed, by backend: a reserve per request (a network store also
        # reserves to replay) and one record; no errors.
        backend = harness.STORE_BACKEND
        self.assertEqual(types.get("idemproxy_store_operation_seconds"), "histogram")
        self.assertGreaterEqual(value(s, "idemproxy_store_operation_seconds_count",
                                      backend=backend, op="reserve"), 1)
        self.assertEqual(value(s, "idemproxy_store_operation_seconds_count", backend=backend,
                               op="record"), 1)
        self.assertEqual(value(s, "idemproxy_store_operation_seconds_count", backend=backend,
                               op="release"), 0)
        self.assertEqual(types.get("idemproxy_store_errors_total"), "counter")
        for op in ("reserve", "record", "release", "forget", "sweep"):
            for error in ("full", "io", "closed"):
                self.assertEqual(value(s, "idemproxy_store_errors_total", backend=backend, op=op,
                                       error=error), 0, (op, error))
        # A network store's gauges are counted in the background when scraped (a scrape never
        # waits for the database): poll.
        self.assertTrue(harness.poll_until(lambda: store_gauges(admin) == (1, True), 10),
                        store_gauges(admin))
        self.assertEqual(value(s, "idemproxy_upstream_in_flight"), 0)
        self.assertEqual(value(s, "idemproxy_waiters"), 0)

    def test_background_sweep_deletes_expired_records(self):
        proxy = self.start_proxy(admin_port=0, payments={"ttl": "5s", "lease": "900ms"},
                                 upstream={"timeout": "500ms"}, store={"sweep_interval": "200ms"})
        admin = proxy.admin_port

        def records():
            _, s = parse_prometheus(request(admin, "GET", "/metrics").body.decode())
            return value(s, "idemproxy_store_records")

        for _ in range(3):
            self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
        # Held until their TTL passes (a slow machine may already have swept the first ones
        # when the last is counted), then swept without any request touching them.
        self.assertTrue(harness.poll_until(lambda: records() >= 1, 10), records())
        self.assertTrue(harness.poll_until(lambda: records() == 0, 30),
                        "expired records were not swept")

    def test_readyz_and_healthz(self):
        proxy = self.start_proxy(admin_port=0)
        admin = proxy.admin_port
        self.assertEqual(request(admin, "GET", "/healthz").status, 200)
        self.assertEqual(request(admin, "GET", "/readyz").status, 200)
        self.assertEqual(request(admin, "GET", "/nope").status, 404)


@requires_proxy
class ThreadNamesTest(ProxyTestCase):
    def test_threads_are_named_for_top_perf_and_gdb(self):
        store = {"wal": True} if harness.STORE_BACKEND == "lmdb" else None
        proxy = self.start_proxy(server={"workers": 2}, store=store)
        self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
        task = "/proc/%d/task" % proxy.proc.pid
        names = {}
        for tid in os.listdir(task):
            with open(os.path.join(task, tid, "comm")) as f:
                names[int(tid)] = f.read().strip()
        self.assertEqual(names.pop(proxy.proc.pid), "idemproxy")  # the main thread
        # (A sanitizer's own threads keep the process's name, so no "all named" check here.)
        expected = {"idem-worker-0", "idem-worker-1"}
        expected |= {"lmdb": {"idem-lmdb-write", "idem-checkpoint"},
                     "postgres": {"idem-pg-io"},
                     "redis": {"idem-redis-io"}}[harness.STORE_BACKEND]
        self.assertTrue(expected <= set(names.values()),
                        "missing %s in %s" % (expected - set(names.values()), names))


@requires_proxy
class LogTest(ProxyTestCase):
    def test_logs_are_json_lines_without_secrets(self):
        proxy = self.start_proxy()
        secret_auth = "Bearer sk_live_" + os.urandom(8).hex()
        secret_body = b'{"card": "4111111111111111", "nonce": "%s"}' % os.urandom(6).hex().encode()
        key = self.new_key("secretkey")
        r = self.post(proxy, key=key, auth=secret_auth, body=secret_body)
        self.assertEqual(r.status, 201)
        self.assertEqual(self.post(proxy, key=key, auth=secret_auth, body=b"{}").status, 422)
        self.assertEqual(proxy.stop(), 0)
        with open(proxy.stderr_path, "rb") as f:
            raw = f.read()
        self.assertNotIn(secret_auth.encode(), raw)
        self.assertNotIn(b"4111111111111111", raw)
        self.assertNotIn(key.encode(), raw)
        events = []
        for line in raw.decode().splitlines():
            obj = json.loads(line)  # every line is one JSON object
            for field in ("time", "level", "event"):
                self.assertIn(field, obj, line)
            events.append(obj)
        # The core logs a request after answering it, so the second request's line may come
        # first: order them by outcome.
        requests = sorted((e for e in events if e["event"] == "request"),
                          key=lambda e: e["outcome"])
        self.assertEqual([e["outcome"] for e in requests], ["forwarded", "mismatch"])
        self.assertEqual(requests[0]["status"], 201)
        self.assertEqual(requests[0]["route"], "payments")
        self.assertEqual(requests[0]["key_hash"], requests[1]["key_hash"])
        self.assertTrue(math.isfinite(requests[0]["duration_ms"]))


if __name__ == "__main__":
    unittest.main()
