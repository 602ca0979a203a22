"""Issue 9: the strict front door, against the real binary with raw bytes.

Each test sends the bytes of one finding of the security review and fails on the evhttp front
(which executes smuggled requests, cuts values at NUL, restarts its timeout with every byte,
buffers endless chunk-size lines and spins on EMFILE).
"""
import json
import os
import resource
import signal
import socket
import threading
import time
import unittest

from harness import ProxyTestCase, build_request, poll_until, request, requires_proxy
from test_operations import parse_prometheus, value

def exchange(port, data, timeout=5.0, drip=None):
    """Sends `data` (all at once, or one byte every `drip` seconds) and reads until the server
    closes or `timeout` passes. Returns (bytes read, closed by server, seconds spent)."""
    t0 = time.monotonic()
    out = bytearray()
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            if drip is None:
                s.sendall(data)
            else:
                s.settimeout(drip)
                for i in range(len(data)):
                    s.sendall(data[i:i + 1])
                    try:
                        chunk = s.recv(65536)
                    except socket.timeout:
                        continue
                    if not chunk:
                        closed = True
                        break
                    out += chunk
                    if time.monotonic() - t0 > timeout:
                        break
        except (BrokenPipeError, ConnectionResetError):
            closed = True
        s.settimeout(max(0.1, timeout - (time.monotonic() - t0)))
        while not closed:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                closed = True
                break
            if not chunk:
                closed = True
                break
            out += chunk
    return bytes(out), closed, time.monotonic() - t0


def responses(data):
    """[(status, {lower-case name: value}, body)] for the complete responses in `data`."""
    out = []
    while True:
        end = data.find(b"\r\n\r\n")
        if end < 0:
            return out
        lines = data[:end].decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ")[1])
        fields = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        length = 0 if status == 100 else int(fields.get("content-length", "0"))
        out.append((status, fields, data[end + 4:end + 4 + length]))
        data = data[end + 4 + length:]


def post(fields, body=b"", key=b"outer", path=b"/v1/payments/charge"):
    return (b"POST " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer tenant-a\r\n"
            b"Idempotency-Key: " + key + b"\r\n" + fields + b"\r\n" + body)


SMUGGLED = post(b"Content-Length: 2\r\n", b"{}", key=b"SMUG")


@requires_proxy
class FrontDoorTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.proxy = self.start_proxy(server={"max_request_body": "1MiB"})

    def assertRefused(self, data, status=400, slug="bad-request"):
        out, closed, _ = exchange(self.proxy.port, data)
        rs = responses(out)
        self.assertEqual(len(rs), 1, out)
        self.assertEqual(rs[0][0], status, out)
        self.assertEqual(rs[0][1].get("content-type"), "application/problem+json", out)
        self.assertEqual(json.loads(rs[0][2])["type"], "urn:idemproxy:problem:" + slug)
        self.assertEqual(rs[0][1].get("connection"), "close", out)
        self.assertTrue(closed, "the connection stays open after a refusal")
        return rs[0]

    def forwarded_keys(self):
        keys = []
        for r in self.up.requests():
            for name, value in r["headers"]:
                if name.lower() == "idempotency-key":
                    keys.append(value)
        return keys

    # ---- request smuggling ----

    def test_xchunked_smuggle_runs_nothing(self):
        self.assertRefused(post(b"Transfer-Encoding: xchunked\r\n") + SMUGGLED)
        self.assertEqual(self.up.count(), 0)
        self.assertNotIn("SMUG", self.forwarded_keys())

    def test_other_transfer_codings_are_refused(self):
        for te in (b"identity", b"gzip", b"gzip, chunked", b"chunked, gzip"):
            self.assertRefused(post(b"Transfer-Encoding: " + te + b"\r\n") + SMUGGLED)
        self.assertEqual(self.up.count(), 0)

    def test_whitespace_before_colon_is_refused(self):
        self.assertRefused(post(b"Content-Length : %d\r\n" % len(SMUGGLED), SMUGGLED))
        self.assertRefused(post(b"Transfer-Encoding : chunked\r\n") + SMUGGLED)
        self.assertEqual(self.up.count(), 0)

    def test_content_length_with_transfer_encoding_is_refused(self):
        self.assertRefused(post(b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
                                b"0\r\n\r\n") + SMUGGLED)
        self.assertEqual(self.up.count(), 0)

    # ---- values and names ----

    def test_nul_in_key_is_refused_not_cut(self):
        ok = request(self.proxy.port, "POST", "/v1/payments/charge",
                     [("Authorization", "Bearer tenant-a"), ("Idempotency-Key", "abc")], b"{}")
        self.assertEqual(ok.status, 201, ok)
        self.assertRefused(post(b"Content-Length: 2\r\n", b"{}", key=b"abc\x00tail2"))
        self.assertEqual(self.up.count(), 1)

    def test_invalid_content_length_is_refused(self):
        for value in (b"+2", b"1,2", b"2, 2", b"-1", b""):
            self.assertRefused(post(b"Content-Length: " + value + b"\r\n", b"{}"))
        self.assertEqual(self.up.count(), 0)

    def test_two_host_fields_are_refused(self):
        data = post(b"Host: y\r\nContent-Length: 2\r\n", b"{}")
        self.assertRefused(data)
        self.assertEqual(self.up.count(), 0)

    def test_bad_chunk_size_is_a_400_problem(self):
        self.assertRefused(post(b"Transfer-Encoding: chunked\r\n", b"zz\r\n{}\r\n0\r\n\r\n"))
        self.assertEqual(self.up.count(), 0)

    def test_bare_cr_in_target_is_refused(self):
        self.assertRefused(post(b"Content-Length: 2\r\n", b"{}", path=b"/v1/payments/a\rb"))
        self.assertEqual(self.up.count(), 0)

    def test_non_token_field_name_is_400_not_502(self):
        self.assertRefused(post(b"X(bad): v\r\nContent-Length: 2\r\n", b"{}"))
        self.assertEqual(self.up.count(), 0)

    def test_many_connection_tokens_and_fields_are_refused_at_once(self):
        # Within evhttp's 64 KiB head limit (which forwarded it), over the 100-field cap.
        tokens = b",".join(b"x-%d" % i for i in range(5000))
        fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
        data = post(b"Connection: " + tokens + b"\r\n" + fields + b"Content-Length: 2\r\n",
                    b"{}")
        out, closed, spent = exchange(self.proxy.port, data)
        self.assertEqual(responses(out)[0][0], 400, out[:300])
        self.assertLess(spent, 2)
        self.assertEqual(self.up.count(), 0)

    # ---- sizes and time ----

    def test_expect_continue_over_the_limit_gets_413_at_once(self):
        data = post(b"Content-Length: 10485760\r\nExpect: 100-continue\r\n")
        out, closed, spent = exchange(self.proxy.port, data, timeout=5)
        self.assertLess(spent, 2, out)
        rs = responses(out)
        self.assertEqual([r[0] for r in rs], [413], out)
        self.assertTrue(closed)

    def test_expect_continue_within_the_limit_gets_100_then_the_answer(self):
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=5) as s:
            s.sendall(post(b"Content-Length: 2\r\nExpect: 100-continue\r\n"))
            self.assertEqual(s.recv(100), b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"{}")
            out = b""
            while not responses(out):
                chunk = s.recv(65536)
                self.assertTrue(chunk)
                out += chunk
        self.assertEqual(responses(out)[0][0], 201, out)

    def test_slowloris_is_cut_off_at_client_timeout(self):
        proxy = self.start_proxy(server={"client_timeout": "1s"})
        data = post(b"X-Pad: " + b"a" * 200 + b"\r\nContent-Length: 2\r\n", b"{}")
        out, closed, spent = exchange(proxy.port, data, timeout=6, drip=0.2)
        self.assertTrue(closed, "a client sending a byte every 200 ms keeps its connection")
        self.assertLess(spent, 3)
        self.assertEqual(self.up.count(), 0)
        # It is told why (408: nothing was done with the request, it may retry).
        rs = responses(out)
        self.assertEqual([r[0] for r in rs], [408], out)
        self.assertEqual(json.loads(rs[0][2])["type"], "urn:idemproxy:problem:request-timeout")
        self.assertEqual(rs[0][1].get("connection"), "close", out)

    def test_an_idle_connection_is_closed_without_an_answer(self):
        proxy = self.start_proxy(server={"client_timeout": "1s"})
        out, closed, spent = exchange(proxy.port, b"", timeout=6)
        self.assertTrue(closed)
        self.assertEqual(out, b"", "an idle keep-alive close is not a refusal")

    def test_refusals_are_counted_by_reason_and_open_connections_are_a_gauge(self):
        proxy = self.start_proxy(admin_port=0, server={"client_timeout": "1s",
                                                       "max_request_body": "1KiB"})

        def scrape():
            return parse_prometheus(request(proxy.admin_port, "GET", "/metrics").body.decode())

        types, s = scrape()
        self.assertEqual(types.get("idemproxy_front_refusals_total"), "counter")
        self.assertEqual(types.get("idemproxy_front_connections"), "gauge")
        reasons = ("malformed", "too_large", "timeout", "answer_timeout")
        for reason in reasons:
            self.assertEqual(value(s, "idemproxy_front_refusals_total", reason=reason), 0, reason)

        exchange(proxy.port, post(b"Content-Length: 2\r\nContent-Length: 2\r\n", b"{}"))
        exchange(proxy.port, post(b"Content-Length: 5000\r\n"))
        out, _, _ = exchange(proxy.port, post(b"Content-Length: 10\r\n", b"{"), timeout=6)
        self.assertEqual(responses(out)[0][0], 408, out)
        # A client that never reads its (endless, pass-through) answer is cut off.
        self.up.script(queue=[{"endless": True}])
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as c:
            c.sendall(build_request("GET", "/v1/plain/stream",
                                    [("Authorization", "Bearer tenant-a")], b"",
                                    host="127.0.0.1:%d" % proxy.port))
            self.assertTrue(poll_until(lambda: value(
                scrape()[1], "idemproxy_front_refusals_total", reason="answer_timeout") == 1, 10))
        s = scrape()[1]
        self.assertEqual([value(s, "idemproxy_front_refusals_total", reason=r) for r in reasons],
                         [1, 1, 1, 1])
        self.assertEqual(self.up.count(), 1)  # only the pass-through request reached it

        # Connections: open ones are counted, closed ones leave the gauge.
        self.assertTrue(poll_until(
            lambda: value(scrape()[1], "idemproxy_front_connections") == 0, 10))
        a = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        b = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        self.assertTrue(poll_until(
            lambda: value(scrape()[1], "idemproxy_front_connections") == 2, 10))
        a.close()
        b.close()
        self.assertTrue(poll_until(
            lambda: value(scrape()[1], "idemproxy_front_connections") == 0, 10))

    def test_endless_chunk_size_line_is_refused_without_buffering(self):
        pid = self.proxy.proc.pid
        rss_before = rss_kib(pid)
        head = post(b"Transfer-Encoding: chunked\r\n", b"1;")
        result = {}

        def send_endless():
            with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
                s.sendall(head)
                piece = b"a" * 65536
                try:
                    for _ in range(256):  # 16 MiB without a line end
                        s.sendall(piece)
                except OSError:
                    pass
                s.settimeout(5)
                out = b""
                try:
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            break
                        out += chunk
                except OSError:
                    pass
                result["out"] = out

        t0 = time.monotonic()
        t = threading.Thread(target=send_endless)
        t.start()
        t.join(30)
        self.assertLess(time.monotonic() - t0, 10)
        self.assertTrue(result.get("out", b"").startswith(b"HTTP/1.1 400 "), result)
        self.assertLess(rss_kib(pid) - rss_before, 4096)

    # ---- what must keep working ----

    def test_pipelined_requests_are_answered_in_order(self):
        data = b"".join(post(b"Content-Length: 2\r\n", b"{}", key=b"pipe-%d" % i)
                        for i in range(3))
        with socket.create_connection(("127.0.0.1", self.proxy.port), timeout=10) as s:
            s.sendall(data)
            out = b""
            while len(responses(out)) < 3:
                chunk = s.recv(65536)
                self.assertTrue(chunk, out)
                out += chunk
        self.assertEqual([r[0] for r in responses(out)], [201, 201, 201])
        self.assertEqual(self.forwarded_keys(), ["pipe-0", "pipe-1", "pipe-2"])

    def test_out_of_descriptors_backs_off_with_one_json_event(self):
        if binary_is_sanitized():
            # UBSan's vptr check opens a pipe to probe memory: with no descriptor left it
            # reports every virtual call as an invalid vptr and aborts the process.
            self.skipTest("sanitizer runtimes need descriptors of their own")
        pid = self.proxy.proc.pid
        soft, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
        open_now = len(os.listdir("/proc/%d/fd" % pid))
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (open_now + 2, hard))
        clients = []
        try:
            for _ in range(8):
                clients.append(socket.create_connection(("127.0.0.1", self.proxy.port)))
            self.assertTrue(poll_until(lambda: b"accept-failed" in self.stderr(), 5))
            cpu_before = cpu_seconds(pid)
            time.sleep(1.0)  # pacing: the window in which a busy loop would burn CPU
            self.assertLess(cpu_seconds(pid) - cpu_before, 0.3)
        finally:
            resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))
            for c in clients:
                c.close()
        lines = [l for l in self.stderr().splitlines() if l.strip()]
        for line in lines:
            json.loads(line)  # every line JSON: no libevent [warn] flood
        self.assertLessEqual(sum(b"accept-failed" in l for l in lines), 2)
        ok = request(self.proxy.port, "GET", "/v1/plain/after")
        self.assertEqual(ok.status, 200, ok)

    def test_max_request_body_follows_a_reload(self):
        body = b"{" + b" " * 2000 + b"}"
        data = lambda key: post(b"Connection: close\r\nContent-Length: %d\r\n" % len(body), body,
                                key=key)
        self.proxy.config["server"]["max_request_body"] = "1KiB"
        self.proxy.write_config()
        self.proxy.signal(signal.SIGHUP)
        self.assertTrue(poll_until(
            lambda: responses(exchange(self.proxy.port, data(b"x"))[0])[0][0] == 413, 5))
        self.proxy.config["server"]["max_request_body"] = "4KiB"
        self.proxy.write_config()
        self.proxy.signal(signal.SIGHUP)
        self.assertTrue(poll_until(
            lambda: responses(exchange(self.proxy.port, data(b"big-2"))[0])[0][0] == 201, 5))

    def stderr(self):
        with open(self.proxy.stderr_path, "rb") as f:
            return f.read()


def binary_is_sanitized():
    with open(os.environ["IDEMPROXY_BIN"], "rb") as f:
        return b"__ubsan_handle" in f.read()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    unittest.main()
