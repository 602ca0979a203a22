"""Several proxies ("hosts") on one PostgreSQL database (SPEC §5 store.backend: postgres, §7):
one key space, forwarded once; a stopped or hung database is never bypassed."""
import re
import threading
import time
import unittest

import pg
from harness import ProxyTestCase, concurrent, poll_until, request, requires_proxy


@requires_proxy
@unittest.skipUnless(pg.available, "PostgreSQL is not installed")
class PostgresStoreTest(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.cluster = pg.Cluster.start()

    @classmethod
    def tearDownClass(cls):
        if cls.cluster:
            cls.cluster.destroy()

    def setUp(self):
        super().setUp()
        self.conninfo = self.cluster.fresh_schema()

    def hosts(self, n, **store):
        return [self.start_proxy(store=pg.postgres_store(self.conninfo, **store), admin_port=0)
                for _ in range(n)]

    def ready(self, proxy):
        return request(proxy.admin_port, "GET", "/readyz").status == 200

    def metric(self, proxy, name, **labels):
        """The value of one series on the proxy's /metrics (0 when absent)."""
        text = request(proxy.admin_port, "GET", "/metrics").body.decode()
        want = ",".join('%s="%s"' % kv for kv in sorted(labels.items()))
        m = re.search(r"^%s%s (\S+)$" % (re.escape(name), re.escape("{%s}" % want) if want else ""),
                      text, re.M)
        return float(m.group(1)) if m else 0.0

    def test_a_waiter_on_another_host_is_woken_by_the_owners_record(self):
        a, b = self.hosts(2)
        self.assertTrue(poll_until(lambda: self.metric(b, "idemproxy_store_notifies") == 1, 10),
                        "B's listening connection is not up")
        self.up.script(queue=[{"gate": "owner", "body": '{"id": "pay_n"}'}])
        key = self.new_key()
        answers = {}

        def send(name, host):
            answers[name] = self.post(host, key=key, timeout=30)

        owner = threading.Thread(target=send, args=("a", a))
        owner.start()
        self.assertTrue(self.up.wait_for_count(1), "the owner did not forward")
        waiter = threading.Thread(target=send, args=("b", b))
        waiter.start()
        # B waits on A's lease. Once its fallback poll has backed off (4 polls: the next one is
        # 1.6 s away), A's answer is let through: B must hear of the record, not poll for it.
        self.assertTrue(poll_until(
            lambda: self.metric(b, "idemproxy_wait_wakeups_total", by="poll") >= 4, 15),
            "%r\n%s" % (answers, b.stderr_tail()))
        heard = self.metric(b, "idemproxy_wait_wakeups_total", by="notify")
        polls = self.metric(b, "idemproxy_wait_wakeups_total", by="poll")
        self.up.open_gate("owner")
        owner.join(30)
        waiter.join(30)
        self.assertEqual(answers["a"].status, 201, answers["a"])
        self.assertReplayOf(answers["b"], answers["a"])
        self.assertEqual(self.metric(b, "idemproxy_wait_wakeups_total", by="notify"), heard + 1)
        self.assertEqual(self.metric(b, "idemproxy_wait_wakeups_total", by="poll"), polls)
        self.assertCount(1)

    def test_thirty_duplicates_on_three_hosts_forward_once(self):
        hosts = self.hosts(3)
        self.up.script(default={"status": 201, "body": '{"id": "pay_1"}', "delay_ms": 300})
        key = self.new_key()
        headers = [("Content-Type", "application/json"), ("Authorization", self.AUTH),
                   ("Idempotency-Key", key)]
        results = concurrent([{"port": hosts[i % 3].port, "path": "/v1/payments/charge",
                               "headers": headers, "body": b'{"amount": 100}'}
                              for i in range(30)])
        self.assertCount(1)
        statuses = sorted(r.status for r in results)
        for r in results:
            self.assertIn(r.status, (201, 409), r)
        self.assertIn(201, statuses)
        # Afterwards every host replays the one answer.
        for h in hosts:
            r = self.post(h, key=key)
            self.assertEqual(r.status, 201, r)
            self.assertTrue(r.replayed, r)
        self.assertCount(1)

    def test_replay_and_mismatch_across_hosts(self):
        a, b = self.hosts(2)
        key = self.new_key()
        first = self.post(a, key=key)
        self.assertEqual(first.status, 201, first)
        self.assertReplayOf(self.post(b, key=key), first)
        self.assertProblem(self.post(b, key=key, body=b'{"amount": 999}'), 422,
                           "idempotency-key-mismatch")
        self.assertCount(1)

    def test_stopped_database_is_never_bypassed_then_recovers(self):
        (h,) = self.hosts(1)
        key = self.new_key()
        first = self.post(h, key=key)
        self.assertEqual(first.status, 201, first)
        self.assertTrue(self.ready(h))
        self.cluster.stop("immediate")
        try:
            for _ in range(3):
                self.assertProblem(self.post(h, key=self.new_key()), 503, "store-unavailable")
            self.assertProblem(self.post(h, key=key), 503, "store-unavailable")
            self.assertGreaterEqual(self.metric(h, "idemproxy_store_errors_total",
                                                backend="postgres", op="reserve", error="io"), 4)
            self.assertTrue(poll_until(lambda: not self.ready(h), 5), "still ready")
            self.assertCount(1)
        finally:
            self.cluster.restart()
        self.assertTrue(poll_until(lambda: self.ready(h), 10), "not ready after restart")
        r = poll_until(lambda: (lambda x: x if x.status != 503 else None)(self.post(h, key=key)),
                       10)
        self.assertIsNotNone(r)
        self.assertReplayOf(r, first)  # the record survived the restart
        self.assertEqual(self.post(h, key=self.new_key()).status, 201)
        self.assertCount(2)

    def test_starts_not_ready_while_the_database_is_down_then_serves(self):
        self.cluster.stop("immediate")
        try:
            (h,) = self.hosts(1)  # starts: the database being down is not fatal
            self.assertFalse(self.ready(h))
            for _ in range(3):
                self.assertProblem(self.post(h, key=self.new_key()), 503, "store-unavailable")
            self.assertCount(0)  # never forwarded without a reservation
            self.assertIn("store-unavailable-at-start", h.stderr_tail())
        finally:
            self.cluster.restart()
        self.assertTrue(poll_until(lambda: self.ready(h), 15), "not ready once the database is up")
        # The schema was created when the database arrived.
        self.assertEqual(self.cluster.sql("SELECT version FROM idemproxy_schema_version",
                                          self.conninfo), "1")
        key = self.new_key()
        first = self.post(h, key=key)
        self.assertEqual(first.status, 201, first)
        self.assertReplayOf(self.post(h, key=key), first)
        self.assertCount(1)

    def test_hung_database_answers_503_within_the_timeout(self):
        (h,) = self.hosts(1, timeout="700ms")
        self.assertEqual(self.post(h, key=self.new_key()).status, 201)
        self.cluster.freeze(True)
        try:
            t0 = time.monotonic()
            r = self.post(h, key=self.new_key(), timeout=10)
            took = time.monotonic() - t0
            self.assertProblem(r, 503, "store-unavailable")
            self.assertLess(took, 2.0)
        finally:
            self.cluster.freeze(False)
        self.assertCount(1)
        r = poll_until(lambda: (lambda x: x if x.status == 201 else None)(
            self.post(h, key=self.new_key())), 10)
        self.assertIsNotNone(r, "no recovery after the database woke up")
