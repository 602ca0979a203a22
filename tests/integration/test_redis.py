"""Several proxies ("hosts") on one Redis (SPEC §5 store.backend: redis, §7): one key space,
forwarded once, waiters woken across hosts; a killed, hung, forgetful or full Redis is never
bypassed, and recorded answers survive a restart from the append-only file."""
import json
import re
import threading
import time
import unittest

import redis_support
from harness import ProxyTestCase, concurrent, poll_until, request, requires_proxy, run_cli


def metric(proxy, series):
    """The value of one series (name, or name{labels} as written) on /metrics, or None."""
    body = request(proxy.admin_port, "GET", "/metrics").body.decode()
    m = re.search(r"^%s ([0-9.e+]+)$" % re.escape(series), body, re.M)
    return float(m.group(1)) if m else None


@requires_proxy
@unittest.skipUnless(redis_support.available, "redis-server is not installed")
class RedisStoreTest(ProxyTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = redis_support.Server.shared()

    @classmethod
    def tearDownClass(cls):
        if cls.server:
            cls.server.destroy()

    def setUp(self):
        super().setUp()
        self.prefix = self.server.fresh_prefix()

    def hosts(self, n, **store):
        return [self.start_proxy(store=redis_support.redis_store(self.server.url, self.prefix,
                                                                 **store), admin_port=0)
                for _ in range(n)]

    def ready(self, proxy):
        return request(proxy.admin_port, "GET", "/readyz").status == 200

    def answered(self, proxy, key, status=201):
        """The first answer with `status` for key within 10 s (None if none came)."""
        return poll_until(lambda: (lambda x: x if x.status == status else None)(
            self.post(proxy, key=key)), 10)

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
        for r in results:
            self.assertIn(r.status, (201, 409), r)
        self.assertIn(201, [r.status for r in results])
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

    def test_a_waiter_on_another_host_is_woken_by_the_owners_publish(self):
        a, b = self.hosts(2)
        self.assertTrue(poll_until(lambda: metric(b, "idemproxy_store_notifies") == 1, 10),
                        "B never subscribed")

        def count(by):
            return metric(b, 'idemproxy_wait_wakeups_total{by="%s"}' % by) or 0

        self.up.script(queue=[{"gate": "owner", "status": 201, "body": '{"id": "slow"}'}])
        key = self.new_key()
        answers = {}

        def send(name, host):
            answers[name] = self.post(host, key=key, timeout=30)

        owner = threading.Thread(target=send, args=("a", a))
        owner.start()
        self.assertTrue(self.up.wait_for_count(1, 10))  # A has forwarded: the key is in flight
        waiter = threading.Thread(target=send, args=("b", b))
        waiter.start()
        # B waits on A's lease. Once its fallback poll has backed off (4 polls: the next one is
        # 1.6 s away), A's answer is let through: B must hear of the record, not poll for it
        # (a fixed upstream delay raced B's fourth poll on a loaded machine).
        self.assertTrue(poll_until(lambda: count("poll") >= 4, 15),
                        "%r\n%s" % (answers, b.stderr_tail()))
        notified = count("notify")
        polls = count("poll")
        self.up.open_gate("owner")
        owner.join(30)
        waiter.join(30)
        self.assertEqual(answers["a"].status, 201, answers["a"])
        self.assertReplayOf(answers["b"], answers["a"])
        self.assertEqual(count("notify"), notified + 1)
        self.assertEqual(count("poll"), polls)
        self.assertCount(1)

    def test_killed_redis_is_never_bypassed_and_answers_replay_after_restart_from_aof(self):
        server = redis_support.Server.start()
        self.addCleanup(server.destroy)
        store = redis_support.redis_store(server.url, self.prefix)
        (h,) = [self.start_proxy(store=store, admin_port=0)]
        key = self.new_key()
        first = self.post(h, key=key)
        self.assertEqual(first.status, 201, first)
        self.assertTrue(self.ready(h))
        server.kill()
        try:
            for _ in range(3):
                self.assertProblem(self.post(h, key=self.new_key()), 503, "store-unavailable")
            self.assertProblem(self.post(h, key=key), 503, "store-unavailable")
            self.assertTrue(poll_until(lambda: not self.ready(h), 5), "still ready")
            self.assertCount(1)
        finally:
            server.restart()
        self.assertTrue(poll_until(lambda: self.ready(h), 10), "not ready after restart")
        r = poll_until(lambda: (lambda x: x if x.status != 503 else None)(self.post(h, key=key)),
                       10)
        self.assertIsNotNone(r)
        self.assertReplayOf(r, first)  # the record came back from the append-only file
        self.assertEqual(self.post(h, key=self.new_key()).status, 201)
        self.assertCount(2)

    def _mid_run(self, break_it, mend_it):
        """Four clients keep sending new keys; Redis breaks after a few and is mended after a
        few 503s. No key reaches the upstream twice, every first answer was 201 or 503, and
        afterwards every key answers: a 201 is replayed; a 503's key is free, or replays what
        was recorded for it (outcome-unknown when its record never made it)."""
        server = redis_support.Server.start()
        self.addCleanup(server.destroy)
        h = self.start_proxy(store=redis_support.redis_store(server.url, self.prefix,
                                                             timeout="700ms"), admin_port=0)
        self.up.script(default={"status": 201, "body": '{"ok": true}', "delay_ms": 20})
        keys = [self.new_key() for _ in range(40)]
        first = {}
        lock = threading.Lock()
        broken = threading.Event()
        mended = threading.Event()

        def client(mine):
            for k in mine:
                r = self.post(h, key=k, timeout=20)
                with lock:
                    first[k] = r
                    if r.status == 503 and sum(x.status == 503 for x in first.values()) >= 4:
                        mended.set()

        threads = [threading.Thread(target=client, args=(keys[i::4],)) for i in range(4)]
        for t in threads:
            t.start()
        self.assertTrue(self.up.wait_for_count(5, 10))
        break_it(server)
        broken.set()
        mended.wait(20)
        mend_it(server)
        for t in threads:
            t.join()
        for k, r in first.items():
            self.assertIn(r.status, (201, 503), r)
        self.assertIn(503, [r.status for r in first.values()])
        self.assertTrue(poll_until(lambda: self.ready(h), 10), "not ready after mending")
        def forwarded():
            per_key = {}
            for req in self.up.requests():
                for name, value in req["headers"]:
                    if name.lower() == "idempotency-key":
                        per_key[value] = per_key.get(value, 0) + 1
            return per_key

        before = forwarded()
        for k in keys:
            again = poll_until(lambda: (lambda x: x if x.status != 503 else None)(
                self.post(h, key=k)), 10)
            self.assertIsNotNone(again, k)
            if first[k].status == 201:
                self.assertReplayOf(again, first[k])
            elif again.status == 502:
                # Forwarded, then its record could not be written within the lease: the
                # outcome is unknown, and the key is never forwarded again.
                self.assertProblem(again, 502, "outcome-unknown")
                self.assertIn(k, before, "outcome-unknown for a key never forwarded")
            else:
                self.assertEqual(again.status, 201, again)
        per_key = forwarded()
        self.assertEqual(max(per_key.values()), 1, per_key)
        self.assertEqual(sorted(per_key), sorted(keys))

    def test_redis_killed_mid_run(self):
        self._mid_run(lambda s: s.kill(), lambda s: s.restart())

    def test_redis_stopped_mid_run(self):
        self._mid_run(lambda s: s.freeze(True), lambda s: s.freeze(False))

    def test_hung_redis_answers_503_and_recovers(self):
        server = redis_support.Server.start()
        self.addCleanup(server.destroy)
        h = self.start_proxy(store=redis_support.redis_store(server.url, self.prefix,
                                                             timeout="700ms"), admin_port=0)
        self.assertEqual(self.post(h, key=self.new_key()).status, 201)
        server.freeze(True)
        try:
            self.assertProblem(self.post(h, key=self.new_key(), timeout=10), 503,
                               "store-unavailable")
            self.assertCount(1)
        finally:
            server.freeze(False)
        self.assertIsNotNone(self.answered(h, self.new_key()), "no recovery after SIGCONT")
        self.assertCount(2)

    def test_script_flush_mid_run_changes_nothing(self):
        a, b = self.hosts(2)
        key = self.new_key()
        self.assertEqual(self.server.cli("SCRIPT", "FLUSH"), "OK")
        first = self.post(a, key=key)
        self.assertEqual(first.status, 201, first)
        self.assertEqual(self.server.cli("SCRIPT", "FLUSH"), "OK")
        self.assertReplayOf(self.post(b, key=key), first)
        self.assertCount(1)

    def test_full_redis_answers_503_and_never_evicts_a_record(self):
        server = redis_support.Server.start()
        self.addCleanup(server.destroy)
        h = self.start_proxy(store=redis_support.redis_store(server.url, self.prefix),
                             admin_port=0)
        key = self.new_key()
        first = self.post(h, key=key)
        self.assertEqual(first.status, 201, first)
        self.assertEqual(server.cli("CONFIG", "SET", "maxmemory", "1"), "OK")
        try:
            self.assertProblem(self.post(h, key=self.new_key()), 503, "store-unavailable")
            self.assertTrue(poll_until(lambda: not self.ready(h), 5), "still ready")
            self.assertCount(1)
        finally:
            server.cli("CONFIG", "SET", "maxmemory", "0")
        self.assertTrue(poll_until(lambda: self.ready(h), 5), "not ready with memory back")
        self.assertReplayOf(self.post(h, key=key), first)  # still there: nothing evicted
        self.assertCount(1)

    def test_keys_list_show_forget(self):
        (h,) = self.hosts(1)
        k = self.new_key()
        self.assertEqual(self.post(h, key=k).status, 201)
        ls = run_cli(["keys", "list", "--config", h.config_path])
        self.assertEqual(ls.returncode, 0, ls.stderr)
        self.assertIn(k, ls.stdout)
        show = run_cli(["keys", "show", "--config", h.config_path, "--route", "payments",
                        "--key", k, "--scope", self.AUTH])
        self.assertEqual(show.returncode, 0, show.stderr)
        self.assertIn("201", show.stdout)
        forget = run_cli(["keys", "forget", "--config", h.config_path, "--route", "payments",
                          "--key", k, "--scope", self.AUTH])
        self.assertEqual(forget.returncode, 0, forget.stderr)
        r = self.post(h, key=k)
        self.assertEqual(r.status, 201, r)
        self.assertFalse(r.replayed)
        self.assertCount(2)

    def test_start_up_warns_about_settings_that_can_lose_records(self):
        (good,) = self.hosts(1)
        self.assertNotIn("store-setting-can-lose-records", good.stderr_tail())
        server = redis_support.Server.start()
        self.addCleanup(server.destroy)
        server.cli("CONFIG", "SET", "appendfsync", "everysec")
        server.cli("CONFIG", "SET", "maxmemory-policy", "allkeys-lru")
        h = self.start_proxy(store=redis_support.redis_store(server.url, self.prefix))
        warned = [json.loads(l) for l in h.stderr_tail(100000).splitlines()
                  if "store-setting-can-lose-records" in l]
        self.assertEqual(sorted(w["setting"] for w in warned),
                         ["appendfsync", "maxmemory-policy"], warned)
        self.assertEqual(self.post(h, key=self.new_key()).status, 201)  # a warning, not a refusal

    def test_check_refuses_rediss_and_names_the_way_around(self):
        cfg = self.config(store=redis_support.redis_store("rediss://cache:6380/0", "p:"))
        r = self.check_config(cfg)
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        out = r.stdout + r.stderr
        self.assertIn("hiredis 0.14 has no TLS", out)
        self.assertIn("tunnel", out)
        self.assertRegex(out, r"check\.yaml:\d+:\d+: store\.redis\.url")

    def test_check_accepts_reconcile_on_the_redis_store(self):
        cfg = self.config(store=redis_support.redis_store("redis://127.0.0.1:6379/0", "p:"),
                          payments={"reconcile": {"path": "/v1/payments/by-key/{key}"}})
        r = self.check_config(cfg)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

if __name__ == "__main__":
    unittest.main()
