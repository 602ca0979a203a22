"""Upstream answers the proxy must not take as they come (issue 10, §3 and §5), against the real
binary: bodies past max_response_body (bounded memory), transfer codings it does not read, and
idle connections the upstream closes. Each runs through the built-in HTTP/1.1 client (an IP
literal URL) and through libcurl (a host name)."""
import harness
import http.client
import socket
import time
import unittest

from harness import ProxyTestCase, build_request, poll_until

MIB = 1 << 20


def pattern(n):
    block = bytes(range(251))
    return (block * (n // 251 + 1))[:n]


def vm_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s in /proc/%d/status" % (field, pid))


class BothClients(ProxyTestCase):
    """A proxy through the built-in client (an IP literal URL) or libcurl (a host name)."""
    CLIENTS = ("http1", "curl")

    def url(self, client):
        return self.up.url if client == "http1" else self.up.url.replace("127.0.0.1", "localhost")

    def proxy(self, client, **kw):
        kw.setdefault("server", {"drain_timeout": "15s"})
        upstream = {"timeout": "4s"}  # below the tests' 5 s lease
        upstream.update(kw.pop("upstream", {}))
        return self.start_proxy(upstream_url=self.url(client), upstream=upstream, **kw)


class UpstreamLimits(BothClients):

    def warm(self, proxy):
        """One exchange so the worker's buffers exist; returns the proxy's peak RSS (KiB)."""
        self.up.script(queue=[{}])
        self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
        self.up.reset()
        return vm_kib(proxy.proc.pid, "VmHWM")

    def test_large_answer_is_streamed_not_buffered_and_not_replayed(self):
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client)
                before = self.warm(proxy)
                self.up.script(queue=[{"body_size": 48 * MIB}])
                k = self.new_key()
                r1 = self.post(proxy, key=k)
                self.assertEqual(r1.status, 201, r1)  # streamed to the first client
                self.assertEqual(len(r1.body), 48 * MIB)
                self.assertFalse(r1.replayed)
                r2 = self.post(proxy, key=k)
                self.assertProblem(r2, 502, "response-not-replayable")
                self.assertTrue(r2.replayed)
                self.assertCount(1)
                grown = vm_kib(proxy.proc.pid, "VmHWM") - before
                if not harness.ASAN_BUILD:
                    self.assertLess(grown, 16 * 1024, "peak RSS grew by %d KiB" % grown)
                proxy.stop()

    def test_a_pass_through_answer_past_the_upstreams_buffer_is_streamed_whole(self):
        # Pass-through buffers up to the upstream's max_response_body, then streams the rest as
        # the upstream sends it: a 48 MiB answer arrives whole, and memory stays bounded.
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client, upstream={"max_response_body": "1MiB"})
                before = self.warm(proxy)
                size = 48 * MIB + 5
                self.up.script(queue=[{"pattern_size": size, "chunked": True}])
                r = self.post(proxy, path="/v1/plain/report", method="GET", body=b"")
                self.assertEqual(r.status, 200, r)  # the test upstream's status for a GET
                self.assertEqual(r.header("Transfer-Encoding"), "chunked")
                self.assertEqual(len(r.body), size)
                self.assertTrue(r.body == pattern(size), "the streamed body differs")
                self.assertEqual(self.up.count(), 1)
                grown = vm_kib(proxy.proc.pid, "VmHWM") - before
                if not harness.ASAN_BUILD:
                    self.assertLess(grown, 16 * 1024, "peak RSS grew by %d KiB" % grown)
                # The next exchange after a streamed one is whole.
                self.up.reset()
                self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
                proxy.stop()

    def test_an_endless_pass_through_answer_streams_until_the_client_leaves(self):
        for client in self.CLIENTS:
            with self.subTest(client=client):
                proxy = self.proxy(client, upstream={"max_response_body": "256KiB"})
                before = self.warm(proxy)
                self.up.script(queue=[{"endless": True}])
                data = build_request("GET", "/v1/plain/stream", [("Authorization", self.AUTH)],
                                     b"", host="127.0.0.1:%d" % proxy.port)
                sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=15)
                sock.sendall(data)
                resp = http.client.HTTPResponse(sock, method="GET")
                resp.begin()
                self.assertEqual(resp.status, 200)
                self.assertEqual(len(resp.read(4 * MIB)), 4 * MIB)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
                sock.close()  # RST: gone
                resp.close()
                # The proxy stops reading and closes the upstream connection.
                self.assertTrue(poll_until(lambda: self.up.calls()["cut_short"] == 1, 10),
                                "the upstream kept sending after the client left")
                grown = vm_kib(proxy.proc.pid, "VmHWM") - before
                if not harness.ASAN_BUILD:
                    self.assertLess(grown, 16 * 1024, "peak RSS grew by %d KiB" % grown)
                self.up.reset()
                self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
                self.assertIn("stream-cut-short", proxy.stderr_tail(20000))
                proxy.stop()

    def test_transfer_codings_other_than_chunked_are_refused(self):
        for client in self.CLIENTS:
            for te in ("gzip, chunked", "gzip"):
                with self.subTest(client=client, te=te):
                    proxy = self.proxy(client)
                    self.up.reset()
                    self.up.script(queue=[{"transfer_encoding": te, "body": '{"id": "p"}'}])
                    k = self.new_key()
                    r1 = self.post(proxy, key=k)
                    self.assertProblem(r1, 502, "upstream-failed")
                    r2 = self.post(proxy, key=k)  # recorded: the payment may have happened
                    self.assertProblem(r2, 502, "upstream-failed")
                    self.assertTrue(r2.replayed)
                    self.assertCount(1)
                    proxy.stop()

    def test_idle_connection_is_not_reused_past_idle_timeout(self):
        for client in self.CLIENTS:
            with self.subTest(client=client):
                # The upstream's keep-alive is 1.2 s: a request that reaches a connection idle
                # longer is lost as the upstream closes it. idle_timeout 1 s stays below it.
                proxy = self.proxy(client, upstream={"idle_timeout": "1s"},
                                   server={"workers": 1, "drain_timeout": "15s"})
                self.up.reset()
                self.up._control("POST", "script", {"keepalive_ms": 1200})
                self.assertEqual(self.post(proxy, key=self.new_key()).status, 201)
                time.sleep(1.6)  # the idle time is what is tested
                r = self.post(proxy, key=self.new_key())
                self.assertEqual(r.status, 201, r)
                self.assertCount(2)
                self.up._control("POST", "script", {"keepalive_ms": 0})
                proxy.stop()


if __name__ == "__main__":
    unittest.main()
