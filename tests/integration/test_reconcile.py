"""Reconcile (SPEC §1.6) and the 409's Retry-After against the real binary: an uncertain outcome
(a recorded upstream-timeout / upstream-failed, or outcome-unknown) is settled by the route's
lookup when a retry finds it; found → that answer is the outcome; not found → the retry is
forwarded; anything else → the record stays. Across a restart and across two processes on one
store; and from the command line (`keys list --uncertain`, `keys reconcile`)."""
import json
import re
import threading
import unittest

import pg
import harness
from harness import ProxyTestCase, request, requires_proxy, run_cli

LOOKUP = {"method": "GET", "path": "/v1/payments/by-key/{key}?order={json:/order_id}",
          "found": [200], "not_found": [404]}
BODY = b'{"amount": 100, "order_id": "o 42"}'
FOUND = '{"id": "pay_found", "status": "succeeded"}'


def reconcile_counts(proxy):
    text = request(proxy.admin_port, "GET", "/metrics").body.decode()
    out = {}
    for m in re.finditer(r'^idemproxy_reconcile_total\{([^}]*)\} (\d+)$', text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        out[(labels["route"], labels["result"])] = int(m.group(2))
    return out


@requires_proxy
class ReconcileTest(ProxyTestCase):
    def start_reconciling(self, **kw):
        return self.start_proxy(payments={"reconcile": LOOKUP}, admin_port=0, **kw)

    def timed_out(self, proxy, key):
        """The first request's exchange times out: 504 upstream-timeout is its recorded outcome."""
        self.up.script(queue=[{"hang": True}])
        r = self.post(proxy, key=key, body=BODY)
        self.assertProblem(r, 504, "upstream-timeout")
        return r

    def lookup_request(self, seq):
        req = self.up.requests()[seq]
        return req["method"], req["path"]

    def test_found_becomes_the_outcome_and_is_replayed(self):
        proxy = self.start_reconciling()
        k = self.new_key()
        self.timed_out(proxy, k)
        self.up.script(queue=[{"status": 200, "body": FOUND}])
        r = self.post(proxy, key=k, body=BODY)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(r.body, FOUND.encode())
        self.assertTrue(r.replayed, r)
        self.assertEqual(self.up.count(), 2)  # the charge and the lookup, nothing else
        method, path = self.lookup_request(1)
        self.assertEqual((method, path), ("GET", "/v1/payments/by-key/%s?order=o%%2042" % k))
        lookup_headers = dict((n.lower(), v) for n, v in self.up.requests()[1]["headers"])
        self.assertEqual(lookup_headers.get("authorization"), self.AUTH)
        # Settled for good: later retries replay it without asking again.
        again = self.post(proxy, key=k, body=BODY)
        self.assertReplayOf(again, r)
        self.assertEqual(self.up.count(), 2)
        self.assertEqual(reconcile_counts(proxy).get(("payments", "found")), 1)

    def test_not_found_forwards_the_retry_under_the_same_key(self):
        proxy = self.start_reconciling()
        k = self.new_key()
        self.timed_out(proxy, k)
        self.up.script(queue=[{"status": 404, "body": "{}"}])  # the lookup; then the default
        r = self.post(proxy, key=k, body=BODY)
        self.assertEqual(r.status, 201, r)
        self.assertFalse(r.replayed, r)
        self.assertEqual(self.up.count(), 3)  # charge (timed out), lookup, charge again
        self.assertEqual(self.up.requests()[2]["method"], "POST")
        self.assertReplayOf(self.post(proxy, key=k, body=BODY), r)
        self.assertEqual(self.up.count(), 3)
        self.assertEqual(reconcile_counts(proxy).get(("payments", "not_found")), 1)

    def test_a_lookup_that_times_out_leaves_the_record(self):
        proxy = self.start_reconciling()
        k = self.new_key()
        first = self.timed_out(proxy, k)
        self.up.script(queue=[{"hang": True}])
        r = self.post(proxy, key=k, body=BODY)
        self.assertEqual(r.status, 504)
        self.assertEqual(r.body, first.body)
        self.assertTrue(r.replayed)
        self.assertEqual(reconcile_counts(proxy).get(("payments", "failed")), 1)
        # Still uncertain: the next retry asks again, and this time learns the outcome.
        self.up.script(queue=[{"status": 200, "body": FOUND}])
        self.assertEqual(self.post(proxy, key=k, body=BODY).status, 200)

    def test_a_lookup_that_fails_or_answers_otherwise_leaves_the_record(self):
        proxy = self.start_reconciling()
        k = self.new_key()
        first = self.timed_out(proxy, k)
        self.up.script(queue=[{"reset": True}, {"status": 500, "body": "oops"}])
        for _ in range(2):
            r = self.post(proxy, key=k, body=BODY)
            self.assertEqual((r.status, r.body), (504, first.body))
        counts = reconcile_counts(proxy)
        self.assertEqual(counts.get(("payments", "failed")), 1)
        self.assertEqual(counts.get(("payments", "other")), 1)
        self.assertEqual(self.up.count(), 3)  # nothing forwarded again

    def test_after_a_restart_the_lookup_is_built_from_the_record(self):
        by_order = dict(LOOKUP, path="/v1/orders/{header:X-Order-Id}")
        proxy = self.start_proxy(payments={"reconcile": by_order})
        k = self.new_key()
        self.up.script(queue=[{"hang": True}])
        r = self.post(proxy, key=k, body=BODY, headers=[("X-Order-Id", "ord/7")])
        self.assertEqual(r.status, 504)
        self.assertEqual(proxy.stop(), 0)
        proxy.restart()
        self.up.script(queue=[{"status": 200, "body": FOUND}])
        # The retry does not carry the header: the value comes from the original request,
        # kept with the record.
        r = self.post(proxy, key=k, body=BODY)
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.lookup_request(1), ("GET", "/v1/orders/ord%2F7"))

    def test_two_processes_on_one_store_send_one_lookup(self):
        a = self.start_reconciling()
        b = self.start_reconciling()
        k = self.new_key()
        self.timed_out(a, k)
        # The lookup takes a while: the other process's retry waits for it instead of sending
        # its own, then replays what it found.
        self.up.script(queue=[{"status": 200, "body": FOUND, "delay_ms": 1500}])
        results = {}
        ta = threading.Thread(target=lambda: results.setdefault("a", self.post(a, key=k, body=BODY)))
        ta.start()
        self.up.wait_for_count(2)  # a's lookup reached the backend
        results["b"] = self.post(b, key=k, body=BODY)
        ta.join(20)
        for name in ("a", "b"):
            self.assertEqual(results[name].status, 200, results[name])
            self.assertEqual(results[name].body, FOUND.encode())
        self.assertEqual(self.up.count(), 2)

    def test_an_abandoned_reservation_is_settled_by_another_process(self):
        a = self.start_reconciling()
        k = self.new_key()
        self.up.script(queue=[{"hang": True}])
        # a dies while forwarding: the lease passes (5 s) and b records outcome-unknown…
        def doomed():
            try:
                self.post(a, key=k, body=BODY, timeout=30)
            except OSError:
                pass  # its proxy is killed mid-request

        t = threading.Thread(target=doomed, daemon=True)
        t.start()
        self.up.wait_for_count(1)
        a.kill()
        b = self.start_reconciling()
        self.up.script(queue=[{"status": 404}])
        r = None
        for _ in range(3):  # 409 while the dead owner's lease lasts
            r = self.post(b, key=k, body=BODY, timeout=30)
            if r.status != 409:
                break
        # …which the lookup settles: not found, so the retry is forwarded.
        self.assertEqual(r.status, 201, r)
        self.assertEqual(self.up.count(), 3)


@requires_proxy
@unittest.skipUnless(pg.available, "PostgreSQL is not installed")
class ReconcilePostgresTest(ProxyTestCase):
    """Two hosts on one PostgreSQL store: the lookup's values and its claim live in the
    database."""

    @classmethod
    def setUpClass(cls):
        cls.cluster = pg.Cluster.start()

    @classmethod
    def tearDownClass(cls):
        if cls.cluster:
            cls.cluster.destroy()

    def test_a_timeout_on_one_host_is_settled_by_a_retry_on_another(self):
        conninfo = self.cluster.fresh_schema()
        a, b = [self.start_proxy(store=pg.postgres_store(conninfo),
                                 payments={"reconcile": LOOKUP}) for _ in range(2)]
        k = self.new_key()
        self.up.script(queue=[{"hang": True}])
        self.assertEqual(self.post(a, key=k, body=BODY).status, 504)
        self.up.script(queue=[{"status": 200, "body": FOUND, "delay_ms": 1000}])
        results = {}
        t = threading.Thread(target=lambda: results.setdefault("b", self.post(b, key=k, body=BODY)))
        t.start()
        self.up.wait_for_count(2)  # b's lookup reached the backend
        results["a"] = self.post(a, key=k, body=BODY)
        t.join(20)
        for name in ("a", "b"):
            self.assertEqual((results[name].status, results[name].body), (200, FOUND.encode()),
                             results[name])
        self.assertEqual(self.up.count(), 2)  # one lookup for both
        self.assertEqual(self.up.requests()[1]["path"],
                         "/v1/payments/by-key/%s?order=o%%2042" % k)

    def test_not_found_on_postgres_forwards_the_retry(self):
        conninfo = self.cluster.fresh_schema()
        proxy = self.start_proxy(store=pg.postgres_store(conninfo), payments={"reconcile": LOOKUP})
        k = self.new_key()
        self.up.script(queue=[{"hang": True}, {"status": 404}])
        self.assertEqual(self.post(proxy, key=k, body=BODY).status, 504)
        r = self.post(proxy, key=k, body=BODY)
        self.assertEqual(r.status, 201, r)
        self.assertReplayOf(self.post(proxy, key=k, body=BODY), r)
        self.assertEqual(self.up.count(), 3)


@requires_proxy
class ReconcileCliTest(ProxyTestCase):
    def test_keys_list_uncertain_and_keys_reconcile(self):
        proxy = self.start_proxy(payments={"reconcile": LOOKUP})
        done, uncertain = self.new_key(), self.new_key()
        self.assertEqual(self.post(proxy, key=done, body=BODY).status, 201)
        self.up.script(queue=[{"hang": True}])
        self.assertEqual(self.post(proxy, key=uncertain, body=BODY).status, 504)
        r = run_cli(["keys", "list", "--config", proxy.config_path, "--uncertain", "--json"])
        self.assertEqual(r.returncode, 0, r.stderr)
        keys = [json.loads(line)["key"] for line in r.stdout.splitlines()]
        self.assertEqual(keys, [uncertain])
        everything = run_cli(["keys", "list", "--config", proxy.config_path, "--json"])
        self.assertEqual(len(everything.stdout.splitlines()), 2)

        self.up.script(queue=[{"status": 200, "body": FOUND}])
        r = run_cli(["keys", "reconcile", "--config", proxy.config_path, "--route", "payments",
                     "--key", uncertain, "--scope", self.AUTH])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["result"], "found")
        self.assertEqual(self.up.requests()[2]["path"],
                         "/v1/payments/by-key/%s?order=o%%2042" % uncertain)
        # The daemon replays what the command line recorded; nothing is uncertain any more.
        replay = self.post(proxy, key=uncertain, body=BODY)
        self.assertEqual((replay.status, replay.body), (200, FOUND.encode()))
        self.assertTrue(replay.replayed)
        self.assertEqual(self.up.count(), 3)
        r = run_cli(["keys", "list", "--config", proxy.config_path, "--uncertain", "--json"])
        self.assertEqual(r.stdout.strip(), "")

    def test_keys_reconcile_not_found_frees_the_key(self):
        proxy = self.start_proxy(payments={"reconcile": LOOKUP})
        k = self.new_key()
        self.up.script(queue=[{"hang": True}, {"status": 404}])
        self.assertEqual(self.post(proxy, key=k, body=BODY).status, 504)
        r = run_cli(["keys", "reconcile", "--config", proxy.config_path, "--route", "payments",
                     "--key", k, "--scope", self.AUTH])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(json.loads(r.stdout)["result"], "not_found")
        self.assertEqual(self.post(proxy, key=k, body=BODY).status, 201)
        self.assertEqual(self.up.count(), 3)
        # A key that is not uncertain is refused.
        r = run_cli(["keys", "reconcile", "--config", proxy.config_path, "--route", "payments",
                     "--key", k, "--scope", self.AUTH])
        self.assertEqual(r.returncode, 1)
        self.assertIn("not uncertain", r.stderr)


@requires_proxy
class ReconcileConfigTest(ProxyTestCase):
    def check(self, reconcile):
        r = self.check_config(self.config(payments={"reconcile": reconcile}))
        return r.returncode, r.stdout + r.stderr

    def test_check_validates_the_block_and_its_placeholders(self):
        self.assertEqual(self.check(LOOKUP)[0], 0)
        for bad, says in [
                (dict(LOOKUP, path="/by/{order}"), "unknown placeholder {order}"),
                (dict(LOOKUP, path="/by/{json:order}"), "unknown placeholder"),
                (dict(LOOKUP, path="/by/{header:Bad Name}"), "unknown placeholder"),
                (dict(LOOKUP, path="/by/{key"), "without its '}'"),
                (dict(LOOKUP, path="by/{key}"), "absolute path"),
                (dict(LOOKUP, found=[200], not_found=[200]), "in both found and not_found"),
                (dict(LOOKUP, found=[700]), "from 100 to 599"),
                (dict(LOOKUP, method="G ET"), "HTTP method"),
                ({"method": "GET"}, "missing required key 'path'"),
                (dict(LOOKUP, extra=1), "extra")]:
            code, out = self.check(bad)
            self.assertEqual(code, 1, bad)
            self.assertIn(says, out, bad)
            self.assertIn("reconcile", out, bad)


@requires_proxy
class RetryAfterTest(ProxyTestCase):
    def test_a_short_exchange_gives_a_short_retry_after_not_the_lease(self):
        proxy = self.start_proxy(payments={"concurrent": "reject", "lease": "60s"})
        for _ in range(3):  # the route's exchanges take milliseconds
            self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
        k = self.new_key()
        self.up.script(queue=[{"delay_ms": 1500}])
        first = {}
        t = threading.Thread(target=lambda: first.setdefault("r", self.post(proxy, key=k)))
        t.start()
        self.up.wait_for_count(4)
        r = self.post(proxy, key=k)
        t.join(20)
        self.assertProblem(r, 409, "idempotency-key-in-use")
        self.assertEqual(r.header("Retry-After"), "1")
        self.assertEqual(first["r"].status, 201)

    def test_without_any_exchange_yet_the_lease_bounds_it(self):
        proxy = self.start_proxy(payments={"concurrent": "reject", "lease": "60s"})
        k = self.new_key()
        self.up.script(queue=[{"delay_ms": 1500}])
        t = threading.Thread(target=lambda: self.post(proxy, key=k))
        t.start()
        self.up.wait_for_count(1)
        r = self.post(proxy, key=k)
        t.join(20)
        self.assertEqual(r.status, 409)
        self.assertIn(r.header("Retry-After"), ("59", "60"))


if __name__ == "__main__":
    unittest.main()
