"""Crashes, restarts, signals and the `keys` command (SPEC §1.4 abandoned, §1.6, §6, §7)."""
import signal
import socket
import threading
import time
import unittest

import harness

from harness import (ProxyTestCase, Response, build_request, poll_until, request, requires_proxy,
                     run_cli)

LEASE = {"lease": "1s", "wait_timeout": "300ms"}
SHORT_TIMEOUT = {"timeout": "800ms", "connect_timeout": "500ms"}


@requires_proxy
class CrashTest(ProxyTestCase):
    def hold_request(self, proxy, key):
        """Sends a request and keeps the connection open without reading; returns the socket."""
        s = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        self.addCleanup(s.close)
        s.sendall(build_request("POST", "/v1/payments/charge",
                                [("Authorization", self.AUTH), ("Idempotency-Key", key),
                                 ("Content-Type", "application/json")],
                                b'{"amount": 100}', host="127.0.0.1:%d" % proxy.port))
        return s

    def post_until_not_in_use(self, proxy, key, timeout=5.0):
        """After a crash the old reservation stays in flight until its lease passes; until then
        the proxy answers 409 (wait_timeout is short). Returns the first other answer."""
        def attempt():
            r = self.post(proxy, key=key)
            return None if r.status == 409 else r
        r = poll_until(attempt, timeout, interval=0.1)
        self.assertIsNotNone(r, "key still in use %.1fs after the crash" % timeout)
        return r

    def test_sigkill_after_answer_then_restart_replays(self):
        proxy = self.start_proxy()
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertEqual(r1.status, 201)
        proxy.kill()
        proxy.restart()
        self.assertReplayOf(self.post(proxy, key=k), r1)
        self.assertCount(1)

    def test_sigkill_in_flight_abandoned_fail_is_outcome_unknown(self):
        proxy = self.start_proxy(payments=dict(LEASE, abandoned="fail"), upstream=SHORT_TIMEOUT)
        self.up.script(queue=[{"hang": True}])
        k = self.new_key()
        self.hold_request(proxy, k)
        self.assertTrue(self.up.wait_for_count(1, 5))
        proxy.kill()
        proxy.restart()
        r = self.post_until_not_in_use(proxy, k)
        self.assertProblem(r, 502, "outcome-unknown")
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 502, "outcome-unknown")
        self.assertTrue(r2.replayed)
        self.assertCount(1)

    def test_sigkill_in_flight_abandoned_retry_forwards_again(self):
        proxy = self.start_proxy(payments=dict(LEASE, abandoned="retry"), upstream=SHORT_TIMEOUT)
        self.up.script(queue=[{"hang": True}])
        k = self.new_key()
        self.hold_request(proxy, k)
        self.assertTrue(self.up.wait_for_count(1, 5))
        proxy.kill()
        proxy.restart()
        r = self.post_until_not_in_use(proxy, k)
        self.assertEqual(r.status, 201, r)
        self.assertFalse(r.replayed)
        self.assertCount(2)
        self.assertReplayOf(self.post(proxy, key=k), r)
        self.assertCount(2)

    def test_stalled_owner_and_other_process_agree(self):
        """An owner stalls past its lease (SIGSTOP) while another process records
        outcome-unknown. When the owner resumes, its client and every later replay see the same
        answer (either the real outcome replacing 'unknown', or the record that stands)."""
        a = self.start_proxy(payments=LEASE, upstream=SHORT_TIMEOUT)
        b = self.start_proxy(config=self.config(payments=LEASE, upstream=SHORT_TIMEOUT))
        self.up.script(queue=[{"delay_ms": 300}])
        k = self.new_key()
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("a", self.post(a, key=k)))
        t.start()
        self.assertTrue(self.up.wait_for_count(1, 5))
        a.signal(signal.SIGSTOP)
        try:
            rb = self.post_until_not_in_use(b, k)
            self.assertProblem(rb, 502, "outcome-unknown")
        finally:
            a.signal(signal.SIGCONT)
        t.join(15)
        ra = result.get("a")
        self.assertIsInstance(ra, Response)
        replay = self.post(b, key=k)
        self.assertTrue(replay.replayed)
        self.assertEqual((replay.status, replay.body), (ra.status, ra.body))
        self.assertReplayOf(self.post(a, key=k), replay)
        self.assertCount(1)

    def test_stalled_owner_whose_key_was_taken_over_still_answers(self):
        """abandoned: retry. The owner stalls past its lease; another process takes the key over
        and is still forwarding when the owner resumes. No outcome stands yet, so the owner's
        client gets a real answer (never an empty reply); the key's outcome is the new owner's."""
        retry = dict(LEASE, abandoned="retry")
        a = self.start_proxy(payments=retry, upstream=SHORT_TIMEOUT)
        b = self.start_proxy(config=self.config(payments=retry, upstream=SHORT_TIMEOUT))
        self.up.script(queue=[{"delay_ms": 200}, {"delay_ms": 600}])
        k = self.new_key()
        result = {}
        ta = threading.Thread(target=lambda: result.setdefault("a", self.post(a, key=k)))
        ta.start()
        self.assertTrue(self.up.wait_for_count(1, 5))
        a.signal(signal.SIGSTOP)
        try:
            tb = threading.Thread(
                target=lambda: result.setdefault("b", self.post_until_not_in_use(b, k)))
            tb.start()
            self.assertTrue(self.up.wait_for_count(2, 5))  # b took the key over
        finally:
            a.signal(signal.SIGCONT)
        ta.join(15)
        tb.join(15)
        ra, rb = result.get("a"), result.get("b")
        self.assertIsInstance(ra, Response)
        self.assertIn(ra.status, (201, 504), ra)  # its own exchange's outcome
        self.assertTrue(ra.body)
        self.assertEqual(rb.status, 201, rb)
        self.assertReplayOf(self.post(b, key=k), rb)
        self.assertReplayOf(self.post(a, key=k), rb)
        self.assertCount(2)

    def test_sigterm_finishes_in_flight_exchange_and_records_it(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"delay_ms": 700}])
        k = self.new_key()
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("r", self.post(proxy, key=k)))
        t.start()
        self.assertTrue(self.up.wait_for_count(1, 5))
        rc = proxy.stop()
        t.join(10)
        self.assertEqual(rc, 0, proxy.stderr_tail())
        r1 = result.get("r")
        self.assertIsInstance(r1, Response)
        self.assertEqual(r1.status, 201)
        proxy.restart()
        self.assertReplayOf(self.post(proxy, key=k), r1)
        self.assertCount(1)


@requires_proxy
class ReloadTest(ProxyTestCase):
    def test_sighup_reloads_routes_and_keeps_old_config_on_error(self):
        proxy = self.start_proxy()
        self.assertEqual(request(proxy.port, "GET", "/v2/thing").status, 404)
        proxy.config["routes"].insert(0, {"name": "v2", "path": "/v2/*", "upstream": "backend"})
        proxy.write_config()
        proxy.signal(signal.SIGHUP)
        # Each worker takes the new config from its mailbox: one may serve it before the other
        # has, so wait until a run of requests (spread over the workers) all see it.
        r = poll_until(lambda: all(request(proxy.port, "GET", "/v2/thing").status == 200
                                   for _ in range(20)), 5)
        self.assertTrue(r, "new route not served by every worker after SIGHUP")
        # An invalid file: the old config stays.
        with open(proxy.config_path, "a") as f:
            f.write("bogus_top_level_key: 1\n")
        proxy.signal(signal.SIGHUP)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            self.assertTrue(proxy.running, proxy.stderr_tail())
            self.assertEqual(request(proxy.port, "GET", "/v2/thing").status, 200)
            time.sleep(0.1)
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertReplayOf(self.post(proxy, key=k), r1)


    def test_reload_changing_an_upstream_while_a_request_is_in_flight(self):
        """The request keeps the upstream client it started with; the old client is freed
        only after its last exchange has been delivered."""
        proxy = self.start_proxy()
        self.up.script(queue=[{"status": 200, "delay_ms": 1200, "body": "slow"}])
        result = {}
        t = threading.Thread(
            target=lambda: result.setdefault("r", request(proxy.port, "GET", "/v1/plain/slow")))
        t.start()
        self.assertTrue(self.up.wait_for_count(1, 5))
        proxy.config["upstreams"]["backend"]["timeout"] = "1900ms"
        proxy.config["routes"].insert(0, {"name": "v2", "path": "/v2/*", "upstream": "backend"})
        proxy.write_config()
        proxy.signal(signal.SIGHUP)
        self.assertTrue(poll_until(
            lambda: request(proxy.port, "GET", "/v2/thing").status == 200, 5))
        t.join(10)
        r = result.get("r")
        self.assertIsInstance(r, Response)
        self.assertEqual((r.status, r.body), (200, b"slow"))
        self.assertTrue(proxy.running, proxy.stderr_tail())
        self.assertEqual(request(proxy.port, "GET", "/v1/plain/after").status, 200)


@requires_proxy
class DrainTest(ProxyTestCase):
    def test_sigterm_closes_busy_keep_alive_connections_and_exits(self):
        """A client that keeps sending on one keep-alive connection does not hold the drain
        open: answers during the drain carry Connection: close, and the process exits 0."""
        proxy = self.start_proxy(server={"drain_timeout": "30s"})
        self.up.script(default={"status": 200, "delay_ms": 50, "body": "ok"})
        seen = {"close": False, "answers": 0, "error": None}
        stop = threading.Event()

        def client():
            c = harness.KeepAliveClient(proxy.port, timeout=10)
            try:
                while not stop.is_set():
                    r = c.request("GET", "/v1/plain/x")
                    seen["answers"] += 1
                    if (r.header("Connection") or "").lower() == "close":
                        seen["close"] = True
                        return
            except Exception as e:  # the connection may also be closed under us
                seen["error"] = e
            finally:
                c.close()

        t = threading.Thread(target=client)
        t.start()
        self.assertTrue(self.up.wait_for_count(3, 5))
        proxy.signal(signal.SIGTERM)
        try:
            rc = proxy.proc.wait(10)
        finally:
            stop.set()
            t.join(10)
        self.assertEqual(rc, 0, proxy.stderr_tail())
        self.assertTrue(seen["close"], seen)


@requires_proxy
class KeysCommandTest(ProxyTestCase):
    def test_keys_list_show_forget_while_running(self):
        proxy = self.start_proxy(upstream={"timeout": "1s"})
        self.up.script(queue=[{"hang": True}])
        k = self.new_key()
        self.assertProblem(self.post(proxy, key=k), 504, "upstream-timeout")
        self.assertProblem(self.post(proxy, key=k), 504, "upstream-timeout")
        self.assertCount(1)

        ls = run_cli(["keys", "list", "--config", proxy.config_path])
        self.assertEqual(ls.returncode, 0, ls.stderr)
        self.assertIn(k, ls.stdout)
        self.assertIn("payments", ls.stdout)

        show = run_cli(["keys", "show", "--config", proxy.config_path, "--route", "payments",
                        "--key", k, "--scope", self.AUTH])
        self.assertEqual(show.returncode, 0, show.stderr)
        self.assertIn("504", show.stdout)

        forget = run_cli(["keys", "forget", "--config", proxy.config_path, "--route", "payments",
                          "--key", k, "--scope", self.AUTH])
        self.assertEqual(forget.returncode, 0, forget.stderr)
        r = self.post(proxy, key=k)
        self.assertEqual(r.status, 201, r)
        self.assertFalse(r.replayed)
        self.assertCount(2)
        self.assertReplayOf(self.post(proxy, key=k), r)


if __name__ == "__main__":
    unittest.main()
