"""Legacy clients against the real binary: the key in the JSON body, errors in the API's own
shape."""
import json
import unittest

from harness import ProxyTestCase, default_routes, request, requires_proxy, send_raw

STRIPE_LIKE = ('{"error": {"type": "idempotency_error", "code": "{slug}", '
               '"message": "{title}", "status": {status}}}')


@requires_proxy
class BodyKeyTest(ProxyTestCase):
    def test_a_key_in_the_body_is_a_key(self):
        proxy = self.start_proxy(payments={"key_json_pointer": "/idempotency_id"})
        k = self.new_key()
        body = json.dumps({"idempotency_id": k, "amount": 100}).encode()
        r1 = self.post(proxy, body=body)
        self.assertEqual(r1.status, 201, r1)
        self.assertReplayOf(self.post(proxy, body=body), r1)
        # The same key in the header is the same record.
        self.assertReplayOf(self.post(proxy, key=k, body=body), r1)
        self.assertCount(1)

    def test_header_and_body_that_disagree_are_refused(self):
        proxy = self.start_proxy(payments={"key_json_pointer": "/idempotency_id"})
        body = json.dumps({"idempotency_id": "from-body"}).encode()
        self.assertProblem(self.post(proxy, key="from-header", body=body), 400,
                           "idempotency-key-invalid")
        self.assertCount(0)

    def test_a_body_that_is_not_json_has_no_key(self):
        proxy = self.start_proxy(payments={"key_json_pointer": "/idempotency_id"})
        self.assertProblem(self.post(proxy, body=b"amount=100"), 400, "idempotency-key-missing")
        self.assertCount(0)


@requires_proxy
class ErrorBodyTest(ProxyTestCase):
    def test_errors_take_the_apis_own_shape(self):
        proxy = self.start_proxy(server={"error_body": {"template": STRIPE_LIKE}})
        k = self.new_key()
        self.assertEqual(self.post(proxy, key=k).status, 201)
        r = self.post(proxy, key=k, body=b'{"amount": 2}')
        self.assertEqual(r.status, 422)
        self.assertEqual(r.header("Content-Type"), "application/json")
        doc = json.loads(r.body)
        self.assertEqual(doc["error"]["code"], "idempotency-key-mismatch")
        self.assertEqual(doc["error"]["status"], 422)
        # The proxy's other errors too: 404 from the core, 413 from the front server.
        nr = request(proxy.port, "POST", "/nowhere", [("Authorization", "t")], b"{}")
        self.assertEqual((nr.status, json.loads(nr.body)["error"]["code"]), (404, "no-route"))
        big, err = send_raw(proxy.port, b"POST /v1/payments/c HTTP/1.1\r\nHost: x\r\n"
                                        b"Content-Length: 99999999\r\n\r\n", method="POST")
        self.assertIsNotNone(big, err)
        self.assertEqual(big.status, 413)
        self.assertEqual(json.loads(big.body)["error"]["code"], "request-too-large")

    def test_a_route_may_shape_its_own_errors(self):
        routes = default_routes()
        routes[0]["error_body"] = {"content_type": "text/plain",
                                   "template": "payments error {status} {slug}"}
        proxy = self.start_proxy(routes=routes,
                                 server={"error_body": {"template": STRIPE_LIKE}})
        r = self.post(proxy, key="not valid")
        self.assertEqual(r.status, 400)
        self.assertEqual(r.header("Content-Type"), "text/plain")
        self.assertEqual(r.body, b"payments error 400 idempotency-key-invalid")
        # Another route keeps the server-wide shape.
        r2 = request(proxy.port, "POST", "/v1/refunds/x",
                     [("Authorization", "t"), ("Idempotency-Key", "not valid")], b"{}")
        self.assertEqual(json.loads(r2.body)["error"]["code"], "idempotency-key-invalid")

    def test_check_refuses_a_template_that_is_not_json_once_filled(self):
        cfg = self.config(server={"error_body": {"template": '{"error": {slug}}'}})
        r = self.check_config(cfg)
        self.assertEqual(r.returncode, 1)
        self.assertIn("not valid JSON", r.stderr + r.stdout)


if __name__ == "__main__":
    unittest.main()
