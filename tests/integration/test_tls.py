"""HTTPS upstreams (SPEC §3): verified against the upstream's `tls_ca_file`."""
import os
import ssl
import subprocess
import threading
import unittest
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import ProxyTestCase, requires_proxy


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with self.server.lock:
            self.server.calls += 1
            n = self.server.calls
        out = b'{"charge": %d, "echo_len": %d}' % (n, len(body))
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


class TlsUpstream:
    """A real HTTPS server on 127.0.0.1 with a self-signed certificate made for the test."""

    def __init__(self, directory):
        self.cert = os.path.join(directory, "upstream.crt")
        key = os.path.join(directory, "upstream.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", key, "-out", self.cert],
                       check=True, capture_output=True, timeout=60)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.calls = 0
        self.server.lock = threading.Lock()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()

    @property
    def calls(self):
        with self.server.lock:
            return self.server.calls

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@requires_proxy
class HttpsUpstreamTest(ProxyTestCase):
    def setUp(self):
        super().setUp()
        self.tls = TlsUpstream(self.tmp)
        self.addCleanup(self.tls.stop)

    def test_https_upstream_forwarded_once_and_replayed(self):
        proxy = self.start_proxy(upstream_url="https://127.0.0.1:%d" % self.tls.port,
                                 upstream={"tls_ca_file": self.tls.cert})
        k = self.new_key()
        first = self.post(proxy, key=k, body=b'{"amount": 5}')
        self.assertEqual(first.status, 201, first)
        self.assertEqual(first.json()["echo_len"], 13)
        self.assertReplayOf(self.post(proxy, key=k, body=b'{"amount": 5}'), first)
        self.assertEqual(self.tls.calls, 1)

    def test_unverifiable_certificate_is_unavailable_and_releases_the_key(self):
        proxy = self.start_proxy(upstream_url="https://127.0.0.1:%d" % self.tls.port)
        k = self.new_key()
        self.assertProblem(self.post(proxy, key=k), 502, "upstream-unavailable")
        self.assertEqual(self.tls.calls, 0)


if __name__ == "__main__":
    unittest.main()
