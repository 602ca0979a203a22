"""SPEC §1 (key, identity, fingerprint, reserve, expiry) and §2 (replay) against the real binary."""
import http.client
import threading
import time
import unittest

from harness import (PROBLEM_PREFIX, ProxyTestCase, lmdb_only, Response, concurrent, default_routes,
                     idempotency, requires_proxy, poll_until)


@requires_proxy
class KeyTest(ProxyTestCase):
    """§1.1: reading and validating the key."""

    def setUp(self):
        super().setUp()
        self.proxy = self.start_proxy()

    def assertInvalid(self, value, strict=True):
        r_or_err = None
        try:
            r_or_err = self.post(self.proxy, key=value)
        except (OSError, http.client.HTTPException) as e:  # a parser may drop such a request
            if strict:
                raise
            r_or_err = e
        if strict:
            self.assertProblem(r_or_err, 400, "idempotency-key-invalid")
        elif isinstance(r_or_err, Response) and r_or_err.header(
                "Content-Type", "").startswith("application/problem+json"):
            # Refused by the HTTP layer (bad-request) or by the key check.
            self.assertEqual(r_or_err.status, 400, r_or_err)
            self.assertIn(r_or_err.json().get("type"),
                          (PROBLEM_PREFIX + "idempotency-key-invalid",
                           PROBLEM_PREFIX + "bad-request"), r_or_err)
        elif isinstance(r_or_err, Response):
            self.assertEqual(r_or_err.status, 400, r_or_err)
        self.assertCount(0, "an invalid key must never reach the backend: %r" % (value,))

    def test_first_request_forwarded_later_ones_replayed(self):
        k = self.new_key()
        r1 = self.post(self.proxy, key=k)
        self.assertEqual(r1.status, 201, r1)
        self.assertFalse(r1.replayed, "a forwarded answer carries no Idempotent-Replayed")
        self.assertIsNone(r1.header("Idempotent-Replayed"))
        for _ in range(3):
            self.assertReplayOf(self.post(self.proxy, key=k), r1)
        self.assertCount(1)

    def test_header_name_is_case_insensitive(self):
        k = self.new_key()
        r1 = self.post(self.proxy, headers=[("idempotency-key", k)])
        self.assertEqual(r1.status, 201, r1)
        self.assertReplayOf(self.post(self.proxy, headers=[("IDEMPOTENCY-KEY", k)]), r1)
        self.assertCount(1)

    def test_quoted_sf_string_is_the_same_key(self):
        k = self.new_key()
        r1 = self.post(self.proxy, key=k)
        self.assertReplayOf(self.post(self.proxy, key='"%s"' % k), r1)
        k2 = self.new_key()
        r2 = self.post(self.proxy, key='"%s"' % k2)
        self.assertEqual(r2.status, 201, r2)
        self.assertReplayOf(self.post(self.proxy, key=k2), r2)
        self.assertCount(2)

    def test_255_characters_valid_256_invalid(self):
        base = self.new_key()
        k255 = (base + "x" * 255)[:255]
        k256 = (base + "y" * 256)[:256]
        r = self.post(self.proxy, key=k255)
        self.assertEqual(r.status, 201, r)
        self.assertCount(1)
        self.assertProblem(self.post(self.proxy, key=k256), 400, "idempotency-key-invalid")
        self.assertCount(1)
        self.assertReplayOf(self.post(self.proxy, key=k255), r)

    def test_length_counts_after_unquoting(self):
        k255 = (self.new_key() + "q" * 255)[:255]
        r = self.post(self.proxy, key='"%s"' % k255)  # 257 bytes on the wire, 255 unquoted
        self.assertEqual(r.status, 201, r)
        self.assertReplayOf(self.post(self.proxy, key=k255), r)
        self.assertCount(1)

    def test_every_printable_ascii_character_is_valid(self):
        k = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) != '"') + self.new_key()
        r = self.post(self.proxy, key=k)
        self.assertEqual(r.status, 201, r)
        self.assertReplayOf(self.post(self.proxy, key=k), r)
        self.assertCount(1)

    def test_empty_and_empty_quoted_are_invalid(self):
        self.assertInvalid("")
        self.assertInvalid('""')

    def test_space_tab_and_non_ascii_are_invalid(self):
        self.assertInvalid("ab c")
        self.assertInvalid("ab\tc")
        self.assertInvalid(b"caf\xc3\xa9-key")
        self.assertInvalid('"ab c"')

    def test_control_characters_are_rejected(self):
        # An HTTP parser may reject these before idemproxy's key check: 400 or a close is fine,
        # but the backend must never see the request.
        self.assertInvalid(b"ab\x01c", strict=False)
        self.assertInvalid(b"ab\x7fc", strict=False)

    def test_key_given_twice_is_invalid(self):
        k = self.new_key()
        r = self.post(self.proxy, headers=[("Idempotency-Key", k), ("Idempotency-Key", k)])
        self.assertProblem(r, 400, "idempotency-key-invalid")
        r = self.post(self.proxy, headers=[("Idempotency-Key", k), ("idempotency-key", k + "2")])
        self.assertProblem(r, 400, "idempotency-key-invalid")
        self.assertCount(0)
        # The key was not reserved by the rejected requests.
        self.assertEqual(self.post(self.proxy, key=k).status, 201)

    def test_missing_and_required_is_400_and_backend_not_called(self):
        self.assertProblem(self.post(self.proxy), 400, "idempotency-key-missing")
        self.assertCount(0)

    def test_missing_and_not_required_is_plain_pass_through(self):
        r1 = self.post(self.proxy, path="/v1/optional/charge")
        r2 = self.post(self.proxy, path="/v1/optional/charge")
        self.assertEqual((r1.status, r2.status), (201, 201))
        self.assertFalse(r1.replayed or r2.replayed)
        self.assertNotEqual(r1.body, r2.body)
        self.assertCount(2)
        # With a key, the same route is idempotent.
        k = self.new_key()
        r3 = self.post(self.proxy, path="/v1/optional/charge", key=k)
        self.assertReplayOf(self.post(self.proxy, path="/v1/optional/charge", key=k), r3)
        self.assertCount(3)

    def test_problem_document_shape(self):
        r = self.post(self.proxy, body=b'{"card": "4242424242424242"}')
        doc = self.assertProblem(r, 400, "idempotency-key-missing")
        self.assertNotIn(b"4242424242424242", r.body)
        self.assertTrue(set(doc) >= {"type", "title", "status", "detail"})


@requires_proxy
class CustomKeyHeaderTest(ProxyTestCase):
    def test_custom_key_header(self):
        proxy = self.start_proxy(payments={"key_header": "X-Request-Key"})
        k = self.new_key()
        r1 = self.post(proxy, headers=[("x-request-key", k)])
        self.assertEqual(r1.status, 201, r1)
        self.assertReplayOf(self.post(proxy, headers=[("X-Request-Key", k)]), r1)
        # Idempotency-Key is just another header on this route: the key is missing.
        self.assertProblem(self.post(proxy, key=k), 400, "idempotency-key-missing")
        self.assertCount(1)


@requires_proxy
class IdentityTest(ProxyTestCase):
    """§1.2: a record is (route, scope values, key)."""

    def setUp(self):
        super().setUp()
        self.proxy = self.start_proxy()

    def test_other_tenant_gets_its_own_record(self):
        k = self.new_key()
        a1 = self.post(self.proxy, key=k, auth="Bearer tenant-a")
        b1 = self.post(self.proxy, key=k, auth="Bearer tenant-b")
        self.assertEqual((a1.status, b1.status), (201, 201))
        self.assertFalse(b1.replayed)
        self.assertNotEqual(a1.json()["id"], b1.json()["id"])
        self.assertCount(2)
        self.assertReplayOf(self.post(self.proxy, key=k, auth="Bearer tenant-a"), a1)
        self.assertReplayOf(self.post(self.proxy, key=k, auth="Bearer tenant-b"), b1)
        self.assertCount(2)

    def test_no_authorization_is_not_another_tenants_record(self):
        k = self.new_key()
        self.post(self.proxy, key=k, auth="Bearer tenant-a")
        n1 = self.post(self.proxy, key=k, auth=False)
        self.assertProblem(n1, 400, "idempotency-scope-missing")
        self.assertCount(1)

    def test_same_key_on_two_routes_is_two_records(self):
        k = self.new_key()
        p = self.post(self.proxy, path="/v1/payments/charge", key=k)
        r = self.post(self.proxy, path="/v1/refunds/charge", key=k)
        self.assertEqual((p.status, r.status), (201, 201))
        self.assertFalse(r.replayed)
        self.assertNotEqual(p.json()["id"], r.json()["id"])
        self.assertCount(2)
        self.assertReplayOf(self.post(self.proxy, path="/v1/refunds/charge", key=k), r)
        self.assertCount(2)


@requires_proxy
class CustomScopeTest(ProxyTestCase):
    def test_scope_headers_are_configurable(self):
        proxy = self.start_proxy(payments={"scope": ["X-Tenant"]})
        k = self.new_key()
        r1 = self.post(proxy, key=k, auth="Bearer one", headers=[("X-Tenant", "t1")])
        # Authorization is not in scope: same tenant header → same record.
        self.assertReplayOf(
            self.post(proxy, key=k, auth="Bearer two", headers=[("X-Tenant", "t1")]), r1)
        r3 = self.post(proxy, key=k, auth="Bearer one", headers=[("X-Tenant", "t2")])
        self.assertEqual(r3.status, 201)
        self.assertFalse(r3.replayed)
        self.assertCount(2)


@requires_proxy
class FingerprintTest(ProxyTestCase):
    """§1.3: a key reused for another request is 422."""

    def setUp(self):
        super().setUp()
        routes = default_routes()
        routes.insert(0, {"name": "json", "methods": ["POST"], "path": "/v1/json/*",
                          "upstream": "backend",
                          "idempotency": idempotency(fingerprint=["method", "path", "query",
                                                                  "body_json"])})
        routes.insert(0, {"name": "loose", "methods": ["POST"], "path": "/v1/loose/*",
                          "upstream": "backend",
                          "idempotency": idempotency(fingerprint=["method", "path"])})
        self.proxy = self.start_proxy(routes=routes)

    def test_same_key_other_body_is_422_and_problem_has_no_body(self):
        k = self.new_key()
        self.assertEqual(self.post(self.proxy, key=k, body=b'{"amount": 100}').status, 201)
        r = self.post(self.proxy, key=k, body=b'{"amount": 999, "secret": "SECRET-4242"}')
        self.assertProblem(r, 422, "idempotency-key-mismatch")
        self.assertNotIn(b"SECRET-4242", r.body)
        self.assertCount(1)

    def test_same_key_other_path_is_422(self):
        k = self.new_key()
        self.assertEqual(self.post(self.proxy, path="/v1/payments/a", key=k).status, 201)
        self.assertProblem(self.post(self.proxy, path="/v1/payments/b", key=k), 422,
                           "idempotency-key-mismatch")
        self.assertCount(1)

    def test_same_key_other_query_is_422(self):
        k = self.new_key()
        self.assertEqual(self.post(self.proxy, path="/v1/payments/a?x=1", key=k).status, 201)
        self.assertProblem(self.post(self.proxy, path="/v1/payments/a?x=2", key=k), 422,
                           "idempotency-key-mismatch")
        self.assertCount(1)

    def test_same_key_other_method_is_422(self):
        k = self.new_key()
        self.assertEqual(self.post(self.proxy, key=k).status, 201)
        self.assertProblem(self.post(self.proxy, key=k, method="PUT"), 422,
                           "idempotency-key-mismatch")
        self.assertCount(1)

    def test_mismatch_does_not_disturb_the_record(self):
        k = self.new_key()
        r1 = self.post(self.proxy, key=k)
        self.assertEqual(self.post(self.proxy, key=k, body=b"other").status, 422)
        self.assertReplayOf(self.post(self.proxy, key=k), r1)
        self.assertCount(1)

    def test_mismatch_against_an_in_flight_record_is_422(self):
        self.up.script(queue=[{"delay_ms": 800}])
        k = self.new_key()
        res = {}

        t = threading.Thread(target=lambda: res.setdefault("r", self.post(self.proxy, key=k)))
        t.start()
        self.assertTrue(self.up.wait_for_count(1, 5))
        r2 = self.post(self.proxy, key=k, body=b'{"amount": 5}')
        t.join(10)
        self.assertProblem(r2, 422, "idempotency-key-mismatch")
        self.assertEqual(res["r"].status, 201)
        self.assertCount(1)

    def test_body_json_is_canonical(self):
        k = self.new_key()
        r1 = self.post(self.proxy, path="/v1/json/pay", key=k,
                       body=b'{"amount": 100, "currency": "EUR", "meta": {"b": 1, "a": [1, 2]}}')
        self.assertEqual(r1.status, 201)
        same = b'{\n  "meta" : {"a":[1,2],"b":1},\n  "currency":"EUR", "amount":100\n}\n'
        self.assertReplayOf(self.post(self.proxy, path="/v1/json/pay", key=k, body=same), r1)
        self.assertProblem(self.post(self.proxy, path="/v1/json/pay", key=k,
                                     body=b'{"amount": 101, "currency": "EUR", '
                                          b'"meta": {"b": 1, "a": [1, 2]}}'),
                           422, "idempotency-key-mismatch")
        self.assertProblem(self.post(self.proxy, path="/v1/json/pay", key=k,
                                     body=b'{"amount": 100, "currency": "EUR", '
                                          b'"meta": {"b": 1, "a": [2, 1]}}'),
                           422, "idempotency-key-mismatch")  # array order is significant
        self.assertCount(1)

    def test_body_json_falls_back_to_bytes(self):
        k = self.new_key()
        r1 = self.post(self.proxy, path="/v1/json/pay", key=k, body=b"amount=100 not json")
        self.assertEqual(r1.status, 201)
        self.assertReplayOf(self.post(self.proxy, path="/v1/json/pay", key=k,
                                      body=b"amount=100 not json"), r1)
        self.assertProblem(self.post(self.proxy, path="/v1/json/pay", key=k,
                                     body=b"amount=100  not json"),
                           422, "idempotency-key-mismatch")
        self.assertCount(1)

    def test_fingerprint_without_body_ignores_body(self):
        k = self.new_key()
        r1 = self.post(self.proxy, path="/v1/loose/pay", key=k, body=b"one")
        self.assertReplayOf(self.post(self.proxy, path="/v1/loose/pay", key=k, body=b"two"), r1)
        self.assertProblem(self.post(self.proxy, path="/v1/loose/other", key=k, body=b"one"),
                           422, "idempotency-key-mismatch")
        self.assertCount(1)


def post_call(port, key, path="/v1/payments/charge", body=b'{"amount": 100}',
              auth="Bearer tenant-a"):
    return {"port": port, "method": "POST", "path": path, "body": body,
            "headers": [("Content-Type", "application/json"), ("Authorization", auth),
                        ("Idempotency-Key", key)]}


@requires_proxy
class ConcurrencyTest(ProxyTestCase):
    """§1.4: one reservation per key, whatever the concurrency."""

    def assertAllResponses(self, results):
        bad = [r for r in results if not isinstance(r, Response)]
        self.assertFalse(bad, bad[:3])

    def test_50_concurrent_identical_requests_wait_mode(self):
        proxy = self.start_proxy()
        self.up.script(default={"delay_ms": 500})
        k = self.new_key()
        results = concurrent([post_call(proxy.port, k) for _ in range(50)])
        self.assertAllResponses(results)
        self.assertCount(1)
        self.assertEqual({r.status for r in results}, {201}, [r.status for r in results])
        self.assertEqual(len({r.body for r in results}), 1)
        self.assertEqual(sum(1 for r in results if not r.replayed), 1,
                         "exactly one answer is the forwarded one")

    def test_50_concurrent_identical_requests_reject_mode(self):
        proxy = self.start_proxy(payments={"concurrent": "reject"})
        self.up.script(default={"delay_ms": 1000})
        k = self.new_key()
        results = concurrent([post_call(proxy.port, k) for _ in range(50)])
        self.assertAllResponses(results)
        self.assertCount(1)
        ok = [r for r in results if r.status == 201]
        conflicts = [r for r in results if r.status != 201]
        self.assertEqual(len(ok), 1, [r.status for r in results])
        self.assertEqual(len(conflicts), 49)
        for r in conflicts:
            self.assertProblem(r, 409, "idempotency-key-in-use")
            self.assertRegex(r.header("Retry-After", ""), r"^\d+$", r)
        # Once complete, the key replays.
        self.assertReplayOf(self.post(proxy, key=k), ok[0])
        self.assertCount(1)

    def test_wait_timeout_gives_409_with_retry_after(self):
        proxy = self.start_proxy(payments={"wait_timeout": "300ms"})
        self.up.script(queue=[{"delay_ms": 1500}])
        k = self.new_key()
        results = {}
        t = threading.Thread(target=lambda: results.setdefault("first", self.post(proxy, key=k)))
        t.start()
        self.assertTrue(self.up.wait_for_count(1, 5))
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 409, "idempotency-key-in-use")
        self.assertRegex(r2.header("Retry-After", ""), r"^\d+$")
        t.join(10)
        first = results["first"]
        self.assertEqual(first.status, 201)
        self.assertReplayOf(self.post(proxy, key=k), first)
        self.assertCount(1)

    def test_20_keys_times_10_concurrent(self):
        proxy = self.start_proxy()
        self.up.script(default={"delay_ms": 300})
        keys = [self.new_key("k%02d" % i) for i in range(20)]
        calls = [post_call(proxy.port, k) for k in keys for _ in range(10)]
        results = concurrent(calls, timeout=30)
        self.assertAllResponses(results)
        self.assertCount(20)
        bodies = {}
        for call, r in zip(calls, results):
            self.assertEqual(r.status, 201, r)
            key = dict(call["headers"])["Idempotency-Key"]
            bodies.setdefault(key, set()).add(r.body)
        self.assertEqual(len(bodies), 20)
        for key, b in bodies.items():
            self.assertEqual(len(b), 1, "answers for %s differ" % key)
        self.assertEqual(len({next(iter(b)) for b in bodies.values()}), 20)

    def test_two_processes_on_one_store_forward_once(self):
        cfg_a = self.config()
        cfg_b = self.config()
        a = self.start_proxy(config=cfg_a)
        b = self.start_proxy(config=cfg_b)
        self.assertNotEqual(a.port, b.port)
        self.up.script(default={"delay_ms": 500})
        k = self.new_key()
        calls = [post_call(a.port if i % 2 else b.port, k) for i in range(20)]
        results = concurrent(calls)
        self.assertAllResponses(results)
        self.assertCount(1)
        self.assertEqual({r.status for r in results}, {201})
        self.assertEqual(len({r.body for r in results}), 1)
        # Sequential: recorded through one, replayed through the other.
        k2 = self.new_key()
        r1 = self.post(a, key=k2)
        self.assertReplayOf(self.post(b, key=k2), r1)
        self.assertCount(2)


@requires_proxy
class ExpiryTest(ProxyTestCase):
    """§1.7: a record lives ttl from its reservation; expiry is checked on lookup."""

    def test_ttl_expiry_forwards_again(self):
        proxy = self.start_proxy(payments={"ttl": "1s", "lease": "900ms"}, upstream={"timeout": "500ms"},
                                   store={"sweep_interval": "1h"})
        k = self.new_key()
        t0 = time.monotonic()
        r1 = self.post(proxy, key=k)
        self.assertEqual(r1.status, 201)
        self.assertReplayOf(self.post(proxy, key=k), r1)
        self.assertCount(1)

        def forwarded_again():
            r = self.post(proxy, key=k)
            return r if not r.replayed else None

        r2 = poll_until(forwarded_again, timeout=4, interval=0.1)
        self.assertIsNotNone(r2, "the key did not expire within 4s of a 1s ttl")
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        self.assertEqual(r2.status, 201)
        self.assertNotEqual(r2.json()["id"], r1.json()["id"])
        self.assertCount(2)
        self.assertReplayOf(self.post(proxy, key=k), r2)
        self.assertCount(2)

    def test_expired_record_accepts_another_fingerprint(self):
        proxy = self.start_proxy(payments={"ttl": "1s", "lease": "900ms"}, upstream={"timeout": "500ms"},
                                   store={"sweep_interval": "1h"})
        k = self.new_key()
        self.assertEqual(self.post(proxy, key=k, body=b"one").status, 201)
        time.sleep(1.2)  # past the ttl: this is the behaviour under test
        r = self.post(proxy, key=k, body=b"two")
        self.assertEqual(r.status, 201, r)
        self.assertFalse(r.replayed)
        self.assertCount(2)


@requires_proxy
@lmdb_only("store.durability is the embedded store's fsync policy")
class DurabilityTest(ProxyTestCase):
    def test_relaxed_durability_records_and_replays(self):
        proxy = self.start_proxy(store={"durability": "relaxed"})
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertEqual(r1.status, 201)
        self.assertReplayOf(self.post(proxy, key=k), r1)
        self.assertCount(1)


if __name__ == "__main__":
    unittest.main()
