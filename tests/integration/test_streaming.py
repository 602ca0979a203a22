"""Answers past max_response_body are streamed to the first client (SPEC §1.6, issue 10 §3),
against the real binary and a real upstream: the compact `response-not-replayable` outcome is
durable first, then the whole body goes to the client as the upstream sends it, framed by
Content-Length, chunked or read-until-close, through both upstream clients; memory stays bounded
for a slow client; a client that leaves mid-stream ends the exchange, not the record."""
import http.client
import harness
import socket
import time
import unittest

from harness import build_request, poll_until
from test_upstream_limits import MIB, BothClients, pattern, vm_kib


class Streaming(BothClients):
    """Payments with a 1 MiB max_response_body, through either client."""

    def proxy(self, client, **kw):
        kw.setdefault("payments", {"max_response_body": "1MiB"})
        return super().proxy(client, **kw)

    def open_post(self, proxy, key):
        """Sends a payment request; returns the socket and an unread HTTPResponse."""
        data = build_request("POST", "/v1/payments/charge",
                             [("Authorization", self.AUTH), ("Idempotency-Key", key),
                              ("Content-Type", "application/json")], b'{"amount": 100}',
                             host="127.0.0.1:%d" % proxy.port)
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
        sock.sendall(data)
        resp = http.client.HTTPResponse(sock, method="POST")
        return sock, resp

    def test_the_first_client_gets_the_whole_body_retries_the_compact_outcome(self):
        size = 8 * MIB + 123
        framings = {"length": {}, "chunked": {"chunked": True}, "until_close": {"until_close": True}}
        for client in self.CLIENTS:
            proxy = self.proxy(client)
            for name, extra in framings.items():
                with self.subTest(client=client, framing=name):
                    self.up.reset()
                    self.up.script(queue=[dict({"pattern_size": size,
                                                "headers": [["X-Payment-Id", "p1"]]}, **extra)])
                    k = self.new_key()
                    r1 = self.post(proxy, key=k)
                    self.assertEqual(r1.status, 201, r1)
                    self.assertEqual(r1.header("X-Payment-Id"), "p1")
                    self.assertFalse(r1.replayed)
                    self.assertEqual(len(r1.body), size)
                    self.assertTrue(r1.body == pattern(size), "the streamed body differs")
                    if name == "length":
                        self.assertEqual(r1.header("Content-Length"), str(size))
                    else:
                        self.assertEqual(r1.header("Transfer-Encoding"), "chunked")
                    r2 = self.post(proxy, key=k)
                    self.assertProblem(r2, 502, "response-not-replayable")
                    self.assertTrue(r2.replayed)
                    self.assertCount(1)
            # The connection after a streamed answer: the next exchange is whole.
            self.up.reset()
            r = self.post(proxy, key=self.new_key())
            self.assertEqual(r.status, 201, r)
            self.assertEqual(r.json()["object"], "payment")
            proxy.stop()

    def test_an_http10_client_gets_a_body_ended_by_the_close(self):
        size = 3 * MIB + 7
        proxy = self.proxy("http1")
        self.up.script(queue=[{"pattern_size": size, "chunked": True}])
        body = b'{"amount": 100}'
        data = (b"POST /v1/payments/charge HTTP/1.0\r\nHost: x\r\nAuthorization: "
                + self.AUTH.encode() + b"\r\nIdempotency-Key: " + self.new_key().encode()
                + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=15) as sock:
            sock.sendall(data)
            resp = http.client.HTTPResponse(sock, method="POST")
            resp.begin()
            self.assertEqual(resp.status, 201)
            self.assertIsNone(resp.getheader("Transfer-Encoding"))  # not for HTTP/1.0
            self.assertIsNone(resp.getheader("Content-Length"))
            self.assertEqual(resp.getheader("Connection"), "close")
            got = resp.read()
        self.assertTrue(got == pattern(size), "%d bytes" % len(got))

    def test_a_slow_client_keeps_the_proxys_memory_bounded(self):
        size = 48 * MIB
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client, server={"drain_timeout": "30s",
                                                   "client_timeout": "20s"})
                self.up.script(queue=[{}])
                self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
                before = vm_kib(proxy.proc.pid, "VmHWM")
                self.up.reset()
                self.up.script(queue=[{"pattern_size": size}])
                sock, resp = self.open_post(proxy, self.new_key())
                with sock:
                    resp.begin()
                    self.assertEqual(resp.status, 201)
                    # Read far slower than the upstream writes: without back-pressure the proxy
                    # would hold most of the body.
                    got = 0
                    while True:
                        piece = resp.read(256 * 1024)
                        if not piece:
                            break
                        got += len(piece)
                        time.sleep(0.004)
                    self.assertEqual(got, size)
                grown = vm_kib(proxy.proc.pid, "VmHWM") - before
                if not harness.ASAN_BUILD:
                    self.assertLess(grown, 12 * 1024, "peak RSS grew by %d KiB" % grown)
                self.assertCount(1)
                proxy.stop()

    def test_a_client_that_leaves_mid_stream_ends_the_exchange_not_the_record(self):
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client)
                self.up.reset()
                self.up.script(queue=[{"endless": True}])  # only the client's leaving ends it
                k = self.new_key()
                sock, resp = self.open_post(proxy, k)
                resp.begin()
                self.assertEqual(resp.status, 201)
                self.assertEqual(len(resp.read(2 * MIB)), 2 * MIB)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.close()  # RST: gone
                resp.close()
                # The proxy stops reading and closes the upstream connection.
                self.assertTrue(poll_until(lambda: self.up.calls()["cut_short"] == 1, 10),
                                "the upstream kept sending after the client left")
                r2 = self.post(proxy, key=k)
                self.assertProblem(r2, 502, "response-not-replayable")
                self.assertTrue(r2.replayed)
                r3 = self.post(proxy, key=self.new_key())
                self.assertEqual(r3.status, 201, r3)
                self.assertCount(2)
                self.assertIn("stream-cut-short", proxy.stderr_tail(20000))
                proxy.stop()

    def test_an_upstream_that_stops_mid_body_cuts_the_clients_answer_short(self):
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client)
                self.up.reset()
                # Announces 2 MiB + 1000 bytes, sends 2 MiB, closes.
                self.up.script(queue=[{"pattern_size": 2 * MIB, "truncate": True}])
                k = self.new_key()
                sock, resp = self.open_post(proxy, k)
                with sock:
                    resp.begin()
                    self.assertEqual(resp.status, 201)
                    self.assertEqual(resp.getheader("Content-Length"), str(2 * MIB + 1000))
                    with self.assertRaises(http.client.IncompleteRead):
                        resp.read()
                self.assertProblem(self.post(proxy, key=k), 502, "response-not-replayable")
                self.assertCount(1)
                proxy.stop()

    def test_a_released_status_past_the_limit_is_streamed_and_the_key_released(self):
        size = 3 * MIB
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client)
                self.up.reset()
                self.up.script(queue=[{"status": 503, "pattern_size": size}, {}])
                k = self.new_key()
                r1 = self.post(proxy, key=k)
                self.assertEqual(r1.status, 503, r1)
                self.assertTrue(r1.body == pattern(size))
                r2 = self.post(proxy, key=k)  # released: forwarded again
                self.assertEqual(r2.status, 201, r2)
                self.assertFalse(r2.replayed)
                self.assertCount(2)
                proxy.stop()


if __name__ == "__main__":
    unittest.main()