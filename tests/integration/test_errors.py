"""SPEC §1.6 (outcomes) and §4 (errors the proxy writes): what is recorded, what is released."""
import http.client
import threading
import time
import unittest

from harness import (KeepAliveClient, ProxyTestCase, lmdb_only, closed_port,
                     request, requires_proxy, run_cli, send_and_hold, send_raw, to_yaml)


@requires_proxy
class UpstreamOutcomeTest(ProxyTestCase):
    def test_upstream_down_is_502_unavailable_and_key_released(self):
        port = closed_port()
        proxy = self.start_proxy(upstream_url="http://127.0.0.1:%d" % port)
        k = self.new_key()
        r = self.post(proxy, key=k)
        self.assertProblem(r, 502, "upstream-unavailable")
        self.assertFalse(r.replayed)
        self.assertProblem(self.post(proxy, key=k), 502, "upstream-unavailable")
        # The upstream comes up on that port: the same key is forwarded and recorded.
        up = self.start_upstream(port)
        r2 = self.post(proxy, key=k)
        self.assertEqual(r2.status, 201, r2)
        self.assertFalse(r2.replayed)
        self.assertReplayOf(self.post(proxy, key=k), r2)
        self.assertEqual(up.count(), 1)

    def test_hang_is_504_recorded_and_never_resent(self):
        proxy = self.start_proxy(upstream={"timeout": "1s"})
        self.up.script(queue=[{"hang": True}])
        k = self.new_key()
        t0 = time.monotonic()
        r1 = self.post(proxy, key=k)
        self.assertProblem(r1, 504, "upstream-timeout")
        self.assertLess(time.monotonic() - t0, 5)
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 504, "upstream-timeout")
        self.assertTrue(r2.replayed, r2)
        self.assertEqual(r2.body, r1.body)
        self.assertCount(1)

    def warm_pool(self, proxy, n=4):
        for i in range(n):
            self.assertEqual(request(proxy.port, "GET", "/v1/plain/warm%d" % i).status, 200)
        self.up.reset()

    def test_reset_is_502_failed_recorded_and_not_retried(self):
        proxy = self.start_proxy()
        # Warm the upstream pool first: a reset on a reused connection must not make the
        # HTTP client silently send the POST a second time.
        self.warm_pool(proxy)
        self.up.script(queue=[{"reset": True}])
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertProblem(r1, 502, "upstream-failed")
        self.assertCount(1)
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 502, "upstream-failed")
        self.assertTrue(r2.replayed)
        self.assertCount(1)

    def test_malformed_answer_is_502_failed_recorded(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"malformed": True}])
        k = self.new_key()
        self.assertProblem(self.post(proxy, key=k), 502, "upstream-failed")
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 502, "upstream-failed")
        self.assertTrue(r2.replayed)
        self.assertCount(1)

    def test_truncated_answer_is_502_failed_recorded(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"truncate": True, "body": "partial"}])
        k = self.new_key()
        self.assertProblem(self.post(proxy, key=k), 502, "upstream-failed")
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 502, "upstream-failed")
        self.assertTrue(r2.replayed)
        self.assertCount(1)

    def test_500_is_recorded_and_replayed(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"status": 500, "body": '{"error": "db down"}',
                               "headers": [["Content-Type", "application/json"],
                                           ["X-Trace", "t1"]]}])
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertEqual((r1.status, r1.body), (500, b'{"error": "db down"}'))
        self.assertFalse(r1.replayed)
        r2 = self.post(proxy, key=k)
        self.assertReplayOf(r2, r1)
        self.assertEqual(r2.headers_all("X-Trace"), ["t1"])
        self.assertCount(1)

    def check_released(self, status):
        proxy = self.start_proxy()
        self.up.script(queue=[{"status": status, "body": "busy",
                               "headers": [["Retry-After", "1"], ["Content-Type", "text/plain"]]}])
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertEqual((r1.status, r1.body), (status, b"busy"))
        self.assertEqual(r1.header("Retry-After"), "1")
        self.assertFalse(r1.replayed)
        r2 = self.post(proxy, key=k)
        self.assertEqual(r2.status, 201, "a released key is forwarded again")
        self.assertFalse(r2.replayed)
        self.assertCount(2)
        self.assertReplayOf(self.post(proxy, key=k), r2)
        self.assertCount(2)

    def test_503_is_released(self):
        self.check_released(503)

    def test_429_is_released(self):
        self.check_released(429)

    def test_release_statuses_are_configurable(self):
        proxy = self.start_proxy(payments={"release_statuses": [409]})
        self.up.script(queue=[{"status": 409, "body": "locked"}, {"status": 503, "body": "x"}])
        k = self.new_key()
        self.assertEqual(self.post(proxy, key=k).status, 409)
        r2 = self.post(proxy, key=k)  # 409 was released, so this is forwarded: 503, recorded
        self.assertEqual(r2.status, 503)
        r3 = self.post(proxy, key=k)
        self.assertReplayOf(r3, r2)
        self.assertCount(2)

    def test_response_over_max_response_body_is_not_replayable(self):
        proxy = self.start_proxy(payments={"max_response_body": "1KiB"})
        self.up.script(queue=[{"body_size": 4096}])
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        # Not read past the limit, so not passed on either: every client sees the same outcome.
        self.assertProblem(r1, 502, "response-not-replayable")
        self.assertFalse(r1.replayed)
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 502, "response-not-replayable")
        self.assertTrue(r2.replayed)
        self.assertCount(1)

    def test_client_disconnect_does_not_abort_the_exchange(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"delay_ms": 500}])
        k = self.new_key()
        sock = send_and_hold(proxy.port, "POST", "/v1/payments/charge",
                             [("Authorization", self.AUTH), ("Idempotency-Key", k),
                              ("Content-Type", "application/json")], b'{"amount": 100}')
        try:
            self.assertTrue(self.up.wait_for_count(1, 5))
        finally:
            sock.close()  # the client goes away while the upstream is still working
        # The retry waits for the exchange (or finds it complete) and replays its answer.
        r = self.post(proxy, key=k)
        self.assertEqual(r.status, 201, r)
        self.assertTrue(r.replayed)
        self.assertEqual(r.json()["request_body_length"], len(b'{"amount": 100}'))
        self.assertCount(1)


@requires_proxy
class RequestErrorTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.proxy = self.start_proxy(server={"max_request_body": "1KiB"})

    def test_request_too_large_is_413_and_not_forwarded(self):
        k = self.new_key()
        big = b"x" * 8192
        self.assertProblem(self.post(self.proxy, key=k, body=big), 413, "request-too-large")
        self.assertProblem(request(self.proxy.port, "POST", "/v1/plain/x", [], big), 413,
                           "request-too-large")
        self.assertCount(0)
        # Nothing was reserved: the key still works with an acceptable body.
        self.assertEqual(self.post(self.proxy, key=k, body=b"small").status, 201)
        self.assertCount(1)

    def test_malformed_requests_get_400_or_close_and_proxy_keeps_serving(self):
        garbage = [
            b"\x00\x01\x02\x03 garbage \xff\r\n\r\n",
            b"NOT A REQUEST LINE AT ALL\r\n\r\n",
            b"POST /v1/plain/x HTTP/1.1\r\nHost: x\r\nthis line has no colon\r\n\r\n",
            b"POST /v1/plain/x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nabc",
            b"POST /v1/plain/x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
            b"Content-Length: 5\r\n\r\nabcde",
            b"POST /v1/plain/x HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
            b"POST /v1/plain/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz\r\nabc\r\n0\r\n\r\n",
        ]
        for data in garbage:
            r, err = send_raw(self.proxy.port, data, timeout=3, method="POST")
            if r is not None:
                self.assertGreaterEqual(r.status, 400, (data, r))
                self.assertLess(r.status, 500, (data, r))
            self.assertCount(0, "malformed request reached the backend: %r" % data)
        k = self.new_key()
        self.assertEqual(self.post(self.proxy, key=k, body=b"ok").status, 201)
        self.assertEqual(request(self.proxy.port, "GET", "/v1/plain/still-up").status, 200)


@requires_proxy
@lmdb_only("fills the embedded store's map (store.max_size)")
class StoreUnavailableTest(ProxyTestCase):
    """§4 503 store-unavailable: a full store forwards nothing. The store is filled through the
    proxy itself (a small map, tiny records), bounded in time."""

    def test_full_store_is_503_and_nothing_forwarded(self):
        cfg = self.config(store={"max_size": "1MiB", "durability": "relaxed"})
        path = self.tmp + "/small-store.yaml"
        with open(path, "w") as f:
            f.write(to_yaml(cfg) + "\n")
        chk = run_cli(["check", "--config", path])
        if chk.returncode != 0:
            self.skipTest("validator refuses a 1MiB store: " + (chk.stderr + chk.stdout)[:300])
        proxy = self.start_proxy(config=cfg)
        # 4 KiB answers fill the 1 MiB map after a few hundred records, even under ASan.
        self.up.script(default={"status": 201, "headers": [], "body_size": 4096})
        first_key = self.new_key("first")
        first = self.post(proxy, key=first_key)
        self.assertEqual(first.status, 201)

        lock = threading.Lock()
        outcome = {"forwarded": 1, "full": None, "other": []}
        stop = threading.Event()
        deadline = time.monotonic() + 40

        def worker(w):
            c = KeepAliveClient(proxy.port)
            i = 0
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    i += 1
                    r = c.request("POST", "/v1/payments/c", [
                        ("Authorization", "t"), ("Idempotency-Key", "f%d-%d" % (w, i))], b"")
                    with lock:
                        if r.status == 201:
                            outcome["forwarded"] += 1
                        elif r.status == 503 and b"store-unavailable" in r.body:
                            outcome["full"] = r
                            stop.set()
                        else:
                            outcome["other"].append(r)
                            stop.set()
            except (OSError, http.client.HTTPException) as e:
                with lock:
                    outcome["other"].append(e)
                stop.set()
            finally:
                c.close()

        threads = [threading.Thread(target=worker, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertFalse(outcome["other"], outcome["other"][:3])
        self.assertIsNotNone(outcome["full"], "store never reported full within 40s")
        self.assertProblem(outcome["full"], 503, "store-unavailable")
        # Every 201 was forwarded once; no 503 store-unavailable request reached the backend.
        self.assertCount(outcome["forwarded"])
        # Completed records are still replayed from a full store.
        self.assertReplayOf(self.post(proxy, key=first_key), first)


if __name__ == "__main__":
    unittest.main()
