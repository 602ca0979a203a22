"""Self-tests of the fake upstream and the harness (no idemproxy binary needed)."""
import base64
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import shutil
import time
import unittest

import harness
from harness import FakeUpstream, request, send_raw, concurrent, decode_body


class FakeUpstreamTest(unittest.TestCase):
    def setUp(self):
        self.up = FakeUpstream().start()
        self.addCleanup(self.up.stop)

    def post(self, path="/v1/payments/x", body=b'{"amount": 1}', headers=(), timeout=5):
        return request(self.up.port, "POST", path,
                       [("Content-Type", "application/json")] + list(headers), body, timeout)

    def test_default_post_charges_and_counts(self):
        r1 = self.post()
        r2 = self.post(body=b"12345")
        self.assertEqual(r1.status, 201)
        self.assertEqual(r2.status, 201)
        d1, d2 = r1.json(), r2.json()
        self.assertNotEqual(d1["id"], d2["id"])
        self.assertEqual(d2["request_body_length"], 5)
        self.assertTrue(r1.header("Set-Cookie", "").startswith("session="))
        self.assertEqual(r1.header("X-Payment-Id"), d1["id"])
        self.assertEqual(self.up.count(), 2)

    def test_get_answers_200_and_control_is_not_counted(self):
        r = request(self.up.port, "GET", "/v1/plain/a?b=c")
        self.assertEqual(r.status, 200)
        self.up.calls()
        self.up.calls()
        calls = self.up.calls()
        self.assertEqual(calls["count"], 1)
        self.assertEqual(calls["requests"][0]["path"], "/v1/plain/a?b=c")
        self.assertEqual(calls["requests"][0]["method"], "GET")

    def test_records_headers_in_order_and_body(self):
        body = bytes(range(256))
        self.post(body=body, headers=[("X-A", "1"), ("X-B", "2"), ("X-A", "3")])
        req = self.up.last_request()
        names = [h[0] for h in req["headers"]]
        self.assertEqual([v for k, v in req["headers"] if k == "X-A"], ["1", "3"])
        self.assertLess(names.index("X-A"), names.index("X-B"))
        self.assertEqual(decode_body(req), body)
        self.assertEqual(req["body_len"], 256)

    def test_chunked_request_body_is_decoded(self):
        data = (b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
        r, err = send_raw(self.up.port, data, method="POST")
        self.assertIsNone(err)
        self.assertEqual(r.status, 201)
        self.assertEqual(decode_body(self.up.last_request()), b"abcde")

    def test_reset_clears_everything(self):
        self.up.script(queue=[{"status": 500}], default={"status": 202})
        self.post()
        self.up.reset()
        self.assertEqual(self.up.count(), 0)
        self.assertEqual(self.post().status, 201)

    def test_script_queue_then_default(self):
        self.up.script(queue=[
            {"status": 500, "body": "boom", "headers": [["Content-Type", "text/plain"]]},
            {"status": 200, "headers": [["Link", "<x>"], ["X-Other", "o"], ["Link", "<y>"],
                                        ["Set-Cookie", "a=1"], ["Set-Cookie", "b=2"]],
             "body": "ok"},
        ], default={"status": 202, "body": "dflt"})
        r1, r2, r3, r4 = (self.post() for _ in range(4))
        self.assertEqual((r1.status, r1.body), (500, b"boom"))
        self.assertEqual((r2.status, r2.body), (200, b"ok"))
        self.assertEqual(r2.headers_all("Link"), ["<x>", "<y>"])
        self.assertEqual(r2.headers_all("Set-Cookie"), ["a=1", "b=2"])
        self.assertEqual((r3.status, r3.body), (202, b"dflt"))
        self.assertEqual((r4.status, r4.body), (202, b"dflt"))
        self.assertEqual(self.up.count(), 4)

    def test_plain_object_sets_default(self):
        r = request(self.up.port, "POST", "/__control/script", [], json.dumps({"status": 204,
                                                                              "body": ""}).encode())
        self.assertEqual(r.status, 200)
        self.assertEqual(self.post().status, 204)

    def test_body_variants(self):
        raw = os.urandom(1000) + b"\x00\x00"
        self.up.script(queue=[{"body_b64": base64.b64encode(raw).decode()},
                              {"body_size": 1 << 20},
                              {"echo": True},
                              {"chunked": True, "body": "chunky body text"},
                              {"chunked": True, "body_size": 100000}])
        self.assertEqual(self.post().body, raw)
        self.assertEqual(len(self.post().body), 1 << 20)
        self.assertEqual(self.post(body=b"\x01\x02echo").body, b"\x01\x02echo")
        r = self.post()
        self.assertEqual(r.body, b"chunky body text")
        self.assertEqual(r.header("Transfer-Encoding"), "chunked")
        self.assertEqual(len(self.post().body), 100000)

    def test_delay(self):
        self.up.script(queue=[{"delay_ms": 300}])
        t0 = time.monotonic()
        self.assertEqual(self.post().status, 201)
        self.assertGreaterEqual(time.monotonic() - t0, 0.3)

    def test_hang_does_not_block_others(self):
        self.up.script(queue=[{"hang": True}])
        with socket.create_connection(("127.0.0.1", self.up.port), timeout=5) as s:
            s.sendall(harness.build_request("POST", "/hang", [], b"x"))
            self.assertTrue(self.up.wait_for_count(1, 5))
            # another connection is served while the first hangs
            self.assertEqual(self.post().status, 201)
            s.settimeout(0.3)
            with self.assertRaises(socket.timeout):
                s.recv(1)
        self.assertEqual(self.up.count(), 2)

    def test_reset_sends_rst(self):
        self.up.script(queue=[{"reset": True}])
        r, err = send_raw(self.up.port, harness.build_request("POST", "/r", [], b"x"),
                          method="POST")
        self.assertIsNone(r)
        self.assertIsInstance(err, ConnectionResetError)
        self.assertEqual(self.up.count(), 1)

    def test_malformed_and_truncated(self):
        self.up.script(queue=[{"malformed": True}, {"truncate": True, "body": "abc"}])
        r, err = send_raw(self.up.port, harness.build_request("POST", "/m", [], b"x"),
                          method="POST")
        self.assertIsNone(r)
        self.assertIsNotNone(err)
        r, err = send_raw(self.up.port, harness.build_request("POST", "/t", [], b"x"),
                          method="POST")
        self.assertIsNone(r)
        self.assertIsNotNone(err)

    def test_keep_alive_and_connection_count(self):
        c = harness.KeepAliveClient(self.up.port)
        try:
            for _ in range(5):
                self.assertEqual(c.request("POST", "/k", [], b"x").status, 201)
        finally:
            c.close()
        calls = self.up.calls()
        self.assertEqual(calls["count"], 5)
        self.assertEqual(calls["connections"], 1)
        self.assertEqual(len({r["connection"] for r in calls["requests"]}), 1)

    def test_wait_for_count(self):
        self.assertFalse(self.up.wait_for_count(1, 0.1))
        self.post()
        self.assertTrue(self.up.wait_for_count(1, 0.1))

    def test_concurrent_helper_and_delay_overlap(self):
        self.up.script(default={"delay_ms": 400})
        t0 = time.monotonic()
        res = concurrent([{"port": self.up.port, "path": "/c/%d" % i, "body": b"x"}
                          for i in range(20)])
        elapsed = time.monotonic() - t0
        self.assertTrue(all(isinstance(r, harness.Response) and r.status == 201 for r in res),
                        res)
        self.assertLess(elapsed, 4.0)  # served in parallel, not 20 × 0.4 s
        self.assertEqual(self.up.count(), 20)
        self.assertEqual(len({r.json()["id"] for r in res}), 20)

    def test_sigterm_exits_zero_even_with_a_hanging_exchange(self):
        self.up.script(queue=[{"hang": True}])
        s = socket.create_connection(("127.0.0.1", self.up.port), timeout=5)
        try:
            s.sendall(harness.build_request("POST", "/hang", [], b"x"))
            self.assertTrue(self.up.wait_for_count(1, 5))
            self.assertEqual(self.up.stop(), 0)
        finally:
            s.close()

    def test_fixed_port(self):
        port = self.up.port
        self.assertEqual(self.up.stop(), 0)
        up2 = FakeUpstream(port).start()
        self.addCleanup(up2.stop)
        self.assertEqual(up2.port, port)
        self.assertEqual(request(port, "POST", "/x", [], b"").status, 201)


@unittest.skipUnless(os.path.isdir("/usr/lib/postgresql") and os.geteuid() == 0,
                     "needs PostgreSQL and root")
class PgClusterScriptTest(unittest.TestCase):
    """tests/support/pg-cluster.sh as root: PostgreSQL runs as `nobody`, which cannot enter a
    0700 directory such as a `mktemp -d` or /root, where a clone (and its build tree) may live."""

    def test_a_cluster_under_a_directory_nobody_cannot_enter_starts_and_is_destroyed(self):
        import pg
        tmp = tempfile.mkdtemp(prefix="idemproxy-private-")
        self.addCleanup(shutil.rmtree, tmp, True)
        os.chmod(tmp, 0o700)
        where = os.path.join(tmp, "build", "cluster")
        r = pg._script("start", where)
        self.addCleanup(pg._script, "destroy", where)
        self.assertEqual(r.returncode, 0, r.stderr)
        out = subprocess.run(["psql", "-X", "-At", "-d", r.stdout.strip(), "-c", "SELECT 6*7"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout.strip(), "42", out.stderr)
        real = os.path.realpath(where)
        # A second start (the ctest fixture's shared cluster) reuses the running one.
        again = pg._script("start", where)
        self.assertEqual((again.returncode, again.stdout), (0, r.stdout), again.stderr)
        r = pg._script("destroy", where)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertFalse(os.path.lexists(where))
        self.assertFalse(os.path.exists(real), "the cluster's own directory is left behind")


class HarnessTest(unittest.TestCase):
    def test_yaml_emitter_shapes(self):
        cfg = harness.make_config(8080, "/tmp/st ore", "http://127.0.0.1:9000/base")
        text = harness.to_yaml(cfg)
        self.assertIn("  listen: 127.0.0.1:8080\n", text)
        self.assertIn('  path: "/tmp/st ore"\n', text)
        self.assertIn("  - name: payments\n    methods: [POST, PUT]\n", text)
        self.assertIn("      release_statuses: [429, 503]\n", text)
        self.assertIn("      required: true\n", text)
        self.assertIn('    path: "/v1/payments/*"\n', text)

    def test_build_request(self):
        data = harness.build_request("POST", "/a?b", [("Idempotency-Key", b"\xc3\xa9")], b"xy",
                                     host="h:1")
        self.assertEqual(data, b"POST /a?b HTTP/1.1\r\nHost: h:1\r\n"
                               b"Idempotency-Key: \xc3\xa9\r\nContent-Length: 2\r\n\r\nxy")

    def test_closed_port_refuses(self):
        port = harness.closed_port()
        with self.assertRaises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()

    def test_proxy_wrapper_with_a_stub_binary(self):
        """Start/readiness/SIGTERM logic of harness.Proxy, against a stand-in executable."""
        tmp = tempfile.mkdtemp(prefix="idemproxy-selftest-")
        self.addCleanup(shutil.rmtree, tmp, True)
        stub = os.path.join(tmp, "stub")
        with open(stub, "w") as f:
            f.write("#!%s\n" % sys.executable + STUB_SOURCE)
        os.chmod(stub, 0o755)
        old = harness.IDEMPROXY_BIN
        harness.IDEMPROXY_BIN = stub
        try:
            cfg = harness.make_config(0, os.path.join(tmp, "store"), "http://127.0.0.1:1")
            p = harness.Proxy(tmp, cfg).start(timeout=10)
            self.assertTrue(p.running)
            r = p.request("GET", "/x")
            self.assertEqual(r.status, 404)
            self.assertEqual(p.stop(), 0)
            p.restart()
            self.assertEqual(p.request("GET", "/x").status, 404)
            p.kill()
            self.assertFalse(p.running)
        finally:
            harness.IDEMPROXY_BIN = old


STUB_SOURCE = r'''
import re, signal, sys, http.server, threading
cfg = open(sys.argv[sys.argv.index("--config") + 1]).read()
port = int(re.search(r"listen: 127\.0\.0\.1:(\d+)", cfg).group(1))
class H(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        self.send_response(404); self.send_header("Content-Length", "0"); self.end_headers()
    def log_message(self, *a): pass
srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
sys.stderr.write('{"event":"started","port":%d,"admin_port":0}\n' % srv.server_address[1])
sys.stderr.flush()
signal.signal(signal.SIGTERM, lambda *a: threading.Thread(target=srv.shutdown).start())
srv.serve_forever(0.05)
sys.exit(0)
'''


if __name__ == "__main__":
    unittest.main()
