"""SPEC §2 (what a replay carries) and §3 (what reaches the upstream)."""
import os
import re
import time
import unittest

import harness
from harness import (ProxyTestCase, decode_body, default_routes, free_port, poll_until, request,
                     requires_proxy, send_raw)


def header_values(recorded, name):
    return [v for k, v in recorded["headers"] if k.lower() == name.lower()]


@requires_proxy
class ForwardedRequestTest(ProxyTestCase):
    """§3: method, path, query, headers and body reach the upstream; hop-by-hop fields do not."""

    def setUp(self):
        super().setUp()
        self.proxy = self.start_proxy()

    def send_with_hop_by_hop(self, path, key=None):
        headers = [
            ("Host", "api.example.test"),
            ("Authorization", "Bearer tenant-a"),
            ("Content-Type", "application/json"),
            ("Connection", "keep-alive, X-Foo"),
            ("X-Foo", "hop-only"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("X-E2E", "one"),
            ("Accept", "application/json"),
            ("X-E2E", "two"),
        ]
        if key:
            headers.append(("Idempotency-Key", key))
        body = b'{"amount": 100, "note": "\\u00e9"}'
        r = request(self.proxy.port, "POST", path, headers, body)
        self.assertEqual(r.status, 201, r)
        req = self.up.last_request()
        self.assertEqual(req["method"], "POST")
        self.assertEqual(req["path"], path)
        self.assertEqual(decode_body(req), body)
        self.assertEqual(header_values(req, "Host"), ["api.example.test"])
        self.assertEqual(header_values(req, "Authorization"), ["Bearer tenant-a"])
        self.assertEqual(header_values(req, "X-E2E"), ["one", "two"])
        self.assertEqual(header_values(req, "Accept"), ["application/json"])
        for name in ("X-Foo", "Keep-Alive", "Proxy-Connection"):
            self.assertEqual(header_values(req, name), [], "%s must not be forwarded" % name)
        for v in header_values(req, "Connection"):
            self.assertNotIn("x-foo", v.lower())
        xff = header_values(req, "X-Forwarded-For")
        self.assertEqual(len(xff), 1, req["headers"])
        self.assertEqual(xff[0].split(",")[-1].strip(), "127.0.0.1")
        self.assertEqual(header_values(req, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(header_values(req, "X-Forwarded-Host"), ["api.example.test"])
        return req

    def test_idempotent_route_forwards_request_faithfully(self):
        k = self.new_key()
        req = self.send_with_hop_by_hop("/v1/payments/charge?currency=EUR&x=%20y", key=k)
        self.assertEqual(header_values(req, "Idempotency-Key"), [k])

    def test_forwarded_headers_from_a_trusted_proxy_are_extended_not_replaced(self):
        """Behind a TLS terminator listed in trusted_proxies: its X-Forwarded-Proto/Host stay;
        X-Forwarded-For grows."""
        proxy = self.start_proxy(server={"trusted_proxies": ["127.0.0.1"]})
        r = request(proxy.port, "POST", "/v1/plain/x", [
            ("Host", "internal:8080"), ("X-Forwarded-For", "203.0.113.7"),
            ("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "pay.example.com")], b"{}")
        self.assertEqual(r.status, 201, r)
        req = self.up.last_request()
        self.assertEqual(header_values(req, "X-Forwarded-Proto"), ["https"])
        self.assertEqual(header_values(req, "X-Forwarded-Host"), ["pay.example.com"])
        self.assertEqual(header_values(req, "X-Forwarded-For"), ["203.0.113.7, 127.0.0.1"])

    def test_forwarded_proto_and_host_from_an_untrusted_client_are_replaced(self):
        r = request(self.proxy.port, "POST", "/v1/plain/x", [
            ("Host", "internal:8080"), ("X-Forwarded-Proto", "https"),
            ("X-Forwarded-Host", "pay.example.com")], b"{}")
        self.assertEqual(r.status, 201, r)
        req = self.up.last_request()
        self.assertEqual(header_values(req, "X-Forwarded-Proto"), ["http"])
        self.assertEqual(header_values(req, "X-Forwarded-Host"), ["internal:8080"])

    def test_routes_match_the_normalised_path(self):
        """Spellings of an idempotent path that a backend would treat as the same path cannot
        slip past its route into a pass-through one."""
        for path in ("//v1/payments/charge", "/v1/%70ayments/charge", "/v1/payments//c"):
            r = request(self.proxy.port, "POST", path, [("Authorization", "t")], b"{}")
            self.assertProblem(r, 400, "idempotency-key-missing")
        # Dot segments are refused outright (backends disagree on them): see test_hardening.
        for path in ("/v1/plain/../payments/c", "/v1/./payments//c"):
            r = request(self.proxy.port, "POST", path, [("Authorization", "t")], b"{}")
            self.assertProblem(r, 400, "bad-request")
        self.assertCount(0)
        # Same key, same request under another spelling: a replay, not a second charge.
        k = self.new_key()
        first = self.post(self.proxy, path="/v1/payments/charge", key=k)
        again = self.post(self.proxy, path="/v1//payments/%63harge", key=k)
        self.assertReplayOf(again, first)
        self.assertCount(1)

    def test_plain_route_forwards_request_faithfully(self):
        self.send_with_hop_by_hop("/v1/plain/anything/deeper?a=1&a=2")

    def test_plain_route_is_pass_through(self):
        k = self.new_key()
        h = [("Idempotency-Key", k), ("Authorization", "Bearer tenant-a")]
        r1 = request(self.proxy.port, "POST", "/v1/plain/charge", h, b"x")
        r2 = request(self.proxy.port, "POST", "/v1/plain/charge", h, b"x")
        self.assertEqual((r1.status, r2.status), (201, 201))
        self.assertFalse(r1.replayed or r2.replayed)
        self.assertNotEqual(r1.body, r2.body)
        g = request(self.proxy.port, "GET", "/v1/plain/status?q=1")
        self.assertEqual(g.status, 200)
        self.assertEqual(self.up.last_request()["method"], "GET")
        d = request(self.proxy.port, "DELETE", "/v1/plain/thing/7")
        self.assertEqual(d.status, 200)
        self.assertCount(4)
        # A pass-through answer keeps its Set-Cookie.
        self.assertTrue(r1.header("Set-Cookie"))

    def test_prefix_route_matches_its_root(self):
        r = request(self.proxy.port, "GET", "/v1/plain")
        self.assertEqual(r.status, 200, r)
        self.assertEqual(self.up.last_request()["path"], "/v1/plain")

    def test_no_route_is_404(self):
        self.assertProblem(request(self.proxy.port, "GET", "/nowhere"), 404, "no-route")
        # payments is POST|PUT only
        self.assertProblem(request(self.proxy.port, "GET", "/v1/payments/x"), 404, "no-route")
        # "/v1/plain/*" does not match "/v1/plainly"
        self.assertProblem(request(self.proxy.port, "GET", "/v1/plainly"), 404, "no-route")
        self.assertCount(0)

    def test_upstream_keep_alive_pool(self):
        for i in range(10):
            self.assertEqual(request(self.proxy.port, "GET", "/v1/plain/%d" % i).status, 200)
        calls = self.up.calls()
        self.assertEqual(calls["count"], 10)
        # two workers may each hold a connection; ten fresh connections means no pooling
        self.assertLessEqual(calls["connections"], 4, "upstream connections are not reused")

    def test_chunked_client_body_is_forwarded_and_fingerprinted_decoded(self):
        k = self.new_key()
        data = (b"POST /v1/payments/charge HTTP/1.1\r\nHost: x\r\n"
                b"Authorization: Bearer tenant-a\r\nIdempotency-Key: " + k.encode() +
                b"\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
        r1, err = send_raw(self.proxy.port, data, method="POST")
        self.assertIsNone(err)
        self.assertEqual(r1.status, 201, r1)
        self.assertEqual(decode_body(self.up.last_request()), b"hello world")
        r2 = self.post(self.proxy, key=k, body=b"hello world")
        self.assertReplayOf(r2, r1)
        self.assertCount(1)


@requires_proxy
class UpstreamPathPrefixTest(ProxyTestCase):
    def test_upstream_url_path_is_a_prefix(self):
        proxy = self.start_proxy(upstream_url=self.up.url + "/base")
        r = request(proxy.port, "GET", "/v1/plain/x?q=1")
        self.assertEqual(r.status, 200)
        self.assertEqual(self.up.last_request()["path"], "/base/v1/plain/x?q=1")
        k = self.new_key()
        self.assertEqual(self.post(proxy, path="/v1/payments/p?a=b", key=k).status, 201)
        self.assertEqual(self.up.last_request()["path"], "/base/v1/payments/p?a=b")


@requires_proxy
class ReplayTest(ProxyTestCase):
    """§2: status, headers and body exactly; hop-by-hop, Date and Set-Cookie not replayed."""

    SCRIPTED_HEADERS = [
        ["Content-Type", "application/vnd.pay+json; charset=utf-8"],
        ["Link", "<https://a.example/1>; rel=\"next\""],
        ["Set-Cookie", "a=1; Path=/"],
        ["X-Custom", "one"],
        ["Link", "<https://a.example/2>; rel=\"prev\""],
        ["Set-Cookie", "b=2; Path=/"],
        ["Cache-Control", "no-store"],
        ["Connection", "X-Hop"],
        ["X-Hop", "hop-value"],
        ["Keep-Alive", "timeout=5"],
        ["X-Secret", "s3cr3t"],
        ["Link", "<https://a.example/3>; rel=\"last\""],
        ["X-Custom", "two"],
        ["Location", "/v1/payments/pay_1"],
        ["Date", "Mon, 01 Jan 2001 00:00:00 GMT"],
    ]

    def setUp(self):
        super().setUp()
        self.proxy = self.start_proxy(
            refunds={"replay_drop_headers": ["Set-Cookie", "X-Secret"]})

    def check(self, path, dropped):
        body = b'{"id": "pay_1", "status": "succeeded"}'
        self.up.script(queue=[{"status": 202, "headers": self.SCRIPTED_HEADERS,
                               "body": body.decode()}])
        k = self.new_key()
        first = self.post(self.proxy, path=path, key=k)
        self.assertEqual(first.status, 202, first)
        self.assertEqual(first.body, body)
        self.assertFalse(first.replayed)
        # The forwarded answer keeps every end-to-end field, in order.
        self.assertEqual(first.headers_all("Link"), [v for n, v in self.SCRIPTED_HEADERS
                                                     if n == "Link"])
        self.assertEqual(first.headers_all("Set-Cookie"), ["a=1; Path=/", "b=2; Path=/"])
        self.assertEqual(first.headers_all("X-Custom"), ["one", "two"])
        self.assertEqual(first.headers_all("X-Secret"), ["s3cr3t"])
        self.assertEqual(first.headers_all("X-Hop"), [], "hop-by-hop field passed on")

        replay = self.post(self.proxy, path=path, key=k)
        self.assertReplayOf(replay, first)
        self.assertEqual(replay.headers_all("Idempotent-Replayed"), ["true"])
        self.assertEqual(replay.header("Content-Type"), "application/vnd.pay+json; charset=utf-8")
        self.assertEqual(replay.headers_all("Link"), first.headers_all("Link"))
        self.assertEqual(replay.headers_all("X-Custom"), ["one", "two"])
        self.assertEqual(replay.headers_all("Cache-Control"), ["no-store"])
        self.assertEqual(replay.headers_all("Location"), ["/v1/payments/pay_1"])
        self.assertEqual(replay.headers_all("X-Hop"), [])
        self.assertEqual(replay.headers_all("Keep-Alive"), [])
        for name in dropped:
            self.assertEqual(replay.headers_all(name), [], "%s replayed" % name)
        self.assertEqual(len(replay.headers_all("Date")), 1, replay.headers)
        self.assertNotEqual(replay.header("Date"), "Mon, 01 Jan 2001 00:00:00 GMT",
                            "Date is regenerated on replay, not the recorded one")
        # Relative order of the replayed end-to-end fields is the recorded order.
        order = [n.lower() for n, _ in replay.headers
                 if n.lower() in ("link", "x-custom", "location", "cache-control")]
        expected = [n.lower() for n, _ in self.SCRIPTED_HEADERS
                    if n.lower() in ("link", "x-custom", "location", "cache-control")]
        self.assertEqual(order, expected)
        self.assertCount(1)

    def test_replayed_headers(self):
        self.check("/v1/payments/charge", dropped=["Set-Cookie"])

    def test_replay_drop_headers_is_configurable(self):
        self.check("/v1/refunds/charge", dropped=["Set-Cookie", "X-Secret"])

    def test_binary_body_round_trip(self):
        body = bytes(range(256)) * 16 + b"\x00\r\n\r\n\x00"
        self.up.script(queue=[{"echo": True, "headers": [["Content-Type",
                                                          "application/octet-stream"]]}])
        k = self.new_key()
        first = self.post(self.proxy, key=k, body=body,
                          headers=[("Content-Type", "application/octet-stream")])
        self.assertEqual(first.status, 201)
        self.assertEqual(decode_body(self.up.last_request()), body)
        self.assertEqual(first.body, body)
        replay = self.post(self.proxy, key=k, body=body,
                           headers=[("Content-Type", "application/octet-stream")])
        self.assertReplayOf(replay, first)
        self.assertCount(1)

    def test_one_mebibyte_request_and_response(self):
        req_body = os.urandom(1 << 20)
        self.up.script(queue=[{"body_size": 1 << 20,
                               "headers": [["Content-Type", "application/octet-stream"]]}])
        k = self.new_key()
        first = self.post(self.proxy, key=k, body=req_body, timeout=30)
        self.assertEqual(first.status, 201)
        self.assertEqual(decode_body(self.up.last_request()), req_body)
        self.assertEqual(len(first.body), 1 << 20)
        replay = self.post(self.proxy, key=k, body=req_body, timeout=30)
        self.assertReplayOf(replay, first)
        self.assertCount(1)

    def test_chunked_upstream_answer_is_recorded_whole(self):
        self.up.script(queue=[{"chunked": True, "body_size": 50000,
                               "headers": [["Content-Type", "application/octet-stream"]]}])
        k = self.new_key()
        first = self.post(self.proxy, key=k)
        self.assertEqual(len(first.body), 50000)
        replay = self.post(self.proxy, key=k)
        self.assertReplayOf(replay, first)
        self.assertCount(1)

    def test_empty_body_answer(self):
        self.up.script(queue=[{"status": 204, "headers": [["X-Done", "yes"]], "body": ""}])
        k = self.new_key()
        first = self.post(self.proxy, key=k)
        self.assertEqual((first.status, first.body), (204, b""))
        replay = self.post(self.proxy, key=k)
        self.assertReplayOf(replay, first)
        self.assertEqual(replay.headers_all("X-Done"), ["yes"])
        self.assertCount(1)


@requires_proxy
class AdminTest(ProxyTestCase):
    def test_metrics_and_health(self):
        proxy = self.start_proxy(admin_port=0)
        admin = proxy.admin_port
        k = self.new_key()
        self.post(proxy, key=k)
        self.post(proxy, key=k)
        self.post(proxy, key="not valid")
        self.assertEqual(request(admin, "GET", "/healthz").status, 200)
        self.assertEqual(request(admin, "GET", "/readyz").status, 200)
        m = request(admin, "GET", "/metrics")
        self.assertEqual(m.status, 200)
        text = m.body.decode()
        values = {}
        for line in text.splitlines():
            mm = re.match(r"^idemproxy_requests_total\{([^}]*)\}\s+(\S+)", line)
            if mm:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', mm.group(1)))
                values[(labels.get("route"), labels.get("outcome"))] = float(mm.group(2))
        self.assertGreaterEqual(values.get(("payments", "forwarded"), 0), 1, text[:2000])
        self.assertGreaterEqual(values.get(("payments", "replayed"), 0), 1, text[:2000])
        self.assertGreaterEqual(values.get(("payments", "invalid"), 0), 1, text[:2000])


if __name__ == "__main__":
    unittest.main()
