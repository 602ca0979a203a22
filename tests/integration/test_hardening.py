"""Hardening found by the security review, against the real binary: tenant isolation by
default, upstream answers passed on as they came, a drain that outlasts every exchange."""
import json
import shutil
import unittest

from harness import (ProxyTestCase, lmdb_only, request, requires_proxy, run_cli,
                     store_contents)


@requires_proxy
class TenantIsolationTest(ProxyTestCase):
    def test_request_without_any_scope_header_is_refused(self):
        proxy = self.start_proxy()
        k = self.new_key()
        r = self.post(proxy, key=k, auth=False)
        self.assertProblem(r, 400, "idempotency-scope-missing")
        # An empty or blank credential is no credential.
        self.assertProblem(self.post(proxy, key=k, auth=" "), 400, "idempotency-scope-missing")
        self.assertCount(0)
        # Tenant A's request with the same key is its own.
        self.assertEqual(self.post(proxy, key=k).status, 201)
        self.assertCount(1)

    def test_shared_scope_lets_requests_without_credentials_share_one_key_space(self):
        proxy = self.start_proxy(payments={"shared_scope": True})
        k = self.new_key()
        r1 = self.post(proxy, key=k, auth=False)
        self.assertEqual(r1.status, 201, r1)
        self.assertReplayOf(self.post(proxy, key=k, auth=False), r1)
        self.assertCount(1)

    def test_scope_values_are_compared_without_surrounding_whitespace(self):
        proxy = self.start_proxy()
        k = self.new_key()
        r1 = self.post(proxy, key=k, auth="Bearer T")
        self.assertEqual(r1.status, 201, r1)
        self.assertReplayOf(self.post(proxy, key=k, auth="\tBearer T "), r1)
        self.assertCount(1)

    def test_the_store_keeps_no_credential(self):
        proxy = self.start_proxy()
        k = self.new_key()
        self.assertEqual(self.post(proxy, key=k, auth="Bearer SECRET-TOKEN-42").status, 201)
        for name, content in store_contents(proxy.config):
            self.assertNotIn(b"SECRET-TOKEN-42", content, name)
        r = run_cli(["keys", "show", "--config", proxy.config_path, "--route", "payments",
                     "--key", k, "--scope", "Bearer SECRET-TOKEN-42"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("SECRET-TOKEN-42", r.stdout)
        self.assertTrue(json.loads(r.stdout)["scope"][0].startswith("sha256:"))

    def test_check_refuses_an_empty_scope_without_shared_scope(self):
        cfg = self.config(payments={"scope": []})
        r = self.check_config(cfg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("shared_scope: true", r.stderr + r.stdout)


@requires_proxy
class OnePathTest(ProxyTestCase):
    def test_targets_read_differently_by_backends_are_refused(self):
        routes = [{"name": "payments", "methods": ["POST"], "path": "/v1/payments/*",
                   "upstream": "backend", "idempotency": {"lease": "5s"}},
                  {"name": "rest", "path": "/*", "upstream": "backend"}]
        proxy = self.start_proxy(routes=routes)
        for target in ["/v1/payments#frag", "/v1%2Fpayments", "/v1/payments/%2e%2e/status",
                       "/v1/payments;jsessionid=1", "/v1/pay%5Cments", "/v1/payments/x%00"]:
            r = request(proxy.port, "POST", target, [("Authorization", "t"),
                                                     ("Idempotency-Key", self.new_key())])
            self.assertProblem(r, 400, "bad-request")
        self.assertCount(0)

    def test_a_target_never_leaves_the_upstream_prefix(self):
        routes = [{"name": "rest", "path": "/*", "upstream": "backend"}]
        proxy = self.start_proxy(routes=routes, upstream_url=self.up.url + "/api")
        self.assertProblem(request(proxy.port, "GET", "/../internal/admin"), 400, "bad-request")
        self.assertProblem(request(proxy.port, "GET", "/x/%2e%2e/%2e%2e/internal"), 400,
                           "bad-request")
        self.assertCount(0)
        self.assertEqual(request(proxy.port, "GET", "/x").status, 200)
        self.assertEqual(self.up.last_request()["path"], "/api/x")

    def test_the_path_routed_on_is_the_path_forwarded(self):
        proxy = self.start_proxy()
        k = self.new_key()
        r = request(proxy.port, "POST", "/v1//payments/%63harge?q=1",
                    [("Authorization", "t"), ("Idempotency-Key", k)], b"{}")
        self.assertEqual(r.status, 201, r)
        self.assertEqual(self.up.last_request()["path"], "/v1/payments/charge?q=1")
        # The same payment under its plain spelling is the same request: replayed.
        r2 = request(proxy.port, "POST", "/v1/payments/charge?q=1",
                     [("Authorization", "t"), ("Idempotency-Key", k)], b"{}")
        self.assertTrue(r2.replayed, r2)
        self.assertCount(1)


@requires_proxy
class UpstreamAnswerTest(ProxyTestCase):
    def test_an_upstream_replay_marker_is_not_passed_on(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"status": 201, "body": "{}",
                               "headers": [["Content-Type", "application/json"],
                                           ["Idempotent-Replayed", "true"]]}])
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertEqual(r1.status, 201)
        self.assertIsNone(r1.header("Idempotent-Replayed"), "the first answer is not a replay")
        r2 = self.post(proxy, key=k)
        self.assertEqual(r2.headers_all("Idempotent-Replayed"), ["true"])

    def test_field_names_that_are_not_tokens_are_dropped(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"status": 201, "body": "{}",
                               "headers": [["X Bad Name", "v"], ["X-Good", "g"]]}])
        k = self.new_key()
        r1 = self.post(proxy, key=k)
        self.assertEqual(r1.status, 201, r1)
        self.assertIsNone(r1.header("X Bad Name"))
        self.assertEqual(r1.header("X-Good"), "g")
        r2 = self.post(proxy, key=k)
        self.assertTrue(r2.replayed)
        self.assertIsNone(r2.header("X Bad Name"))

    def test_status_600_is_a_malformed_answer(self):
        proxy = self.start_proxy()
        self.up.script(queue=[{"status": 600, "body": "?"}])
        k = self.new_key()
        self.assertProblem(self.post(proxy, key=k), 502, "upstream-failed")
        r2 = self.post(proxy, key=k)
        self.assertProblem(r2, 502, "upstream-failed")
        self.assertTrue(r2.replayed)
        self.assertCount(1)


@requires_proxy
@lmdb_only("a full map (store.max_size) and a deleted store directory")
class NoAnswerWithoutItsRecordTest(ProxyTestCase):
    def test_a_full_store_never_lets_an_answer_out_without_its_record(self):
        # Small reservations still fit once 12 KB answers no longer do: each answer that leaves
        # must be settled in the store, so a retry agrees with it and nothing runs twice.
        proxy = self.start_proxy(store={"max_size": "1MiB"})
        self.up.script(default={"body_size": 12000})
        answered = {}
        last = None
        for i in range(400):
            k = self.new_key("fill")
            last = self.post(proxy, key=k)
            if last.status != 201:
                break
            answered[k] = last
        self.assertProblem(last, 503, "store-unavailable")
        forwarded = self.up.count()
        self.assertGreater(len(answered), 10)
        compact = 0
        for k, first in answered.items():
            r = self.post(proxy, key=k, timeout=5)
            self.assertTrue(r.replayed, (k, r))
            if r.status == 201:
                self.assertEqual(r.body, first.body)
            else:
                self.assertProblem(r, 502, "response-not-replayable")
                compact += 1
        self.assertGreater(compact, 0, "the store never reached the point the test is about")
        self.assertCount(forwarded)

    def test_readyz_is_not_ready_while_the_store_is_full(self):
        proxy = self.start_proxy(store={"max_size": "1MiB"}, admin_port=0)
        self.assertEqual(request(proxy.admin_port, "GET", "/readyz").status, 200)
        self.up.script(default={"body_size": 12000})
        for _ in range(400):
            if self.post(proxy, key=self.new_key("fill")).status == 503:
                break
        self.assertEqual(request(proxy.admin_port, "GET", "/readyz").status, 503)

    def test_a_deleted_store_is_detected_never_written_to(self):
        proxy = self.start_proxy(admin_port=0)
        k = self.new_key()
        self.assertEqual(self.post(proxy, key=k).status, 201)
        shutil.rmtree(proxy.config["store"]["path"])
        r = self.post(proxy, key=self.new_key())
        self.assertProblem(r, 503, "store-unavailable")
        self.assertCount(1)
        self.assertEqual(request(proxy.admin_port, "GET", "/readyz").status, 503)


@requires_proxy
class DrainTimeoutTest(ProxyTestCase):
    def test_a_drain_shorter_than_an_upstream_timeout_is_refused(self):
        cfg = self.config(server={"drain_timeout": "10s"}, upstream={"timeout": "20s"})
        r = self.check_config(cfg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("drain_timeout 10s must be at least the timeout 20s", r.stderr + r.stdout)


if __name__ == "__main__":
    unittest.main()
