#!/usr/bin/env python3
"""A legacy, non-idempotent payment API: every POST /v1/payments charges again.

It is the backend the quick start puts idemproxy in front of. Standard library only.

  POST /v1/payments      charge: 201 with a fresh payment id (every time!)
  GET  /charges          how many charges happened: {"charges": N}

Usage: legacy_payments.py [--port 9000] [--delay-ms 0]
"""
import argparse
import itertools
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_lock = threading.Lock()
_charges = itertools.count(1)
_total = 0


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay_s = 0.0

    def log_message(self, fmt, *args):  # quiet
        pass

    def _send(self, status, obj, extra=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/charges":
            self._send(200, {"charges": _total})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        global _total
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.delay_s:
            time.sleep(self.delay_s)
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            self._send(400, {"error": "body must be JSON"})
            return
        with _lock:
            n = next(_charges)
            _total = n
        payment = {
            "id": "pay_%d_%s" % (n, uuid.uuid4().hex[:8]),
            "amount": request.get("amount"),
            "currency": request.get("currency"),
            "status": "charged",
            "charge_number": n,
        }
        self._send(201, payment, [("Set-Cookie", "session=%s" % uuid.uuid4().hex[:12])])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay-ms", type=int, default=0)
    args = ap.parse_args()
    Handler.delay_s = args.delay_ms / 1000.0
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    print("legacy payments API on 127.0.0.1:%d" % args.port, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
