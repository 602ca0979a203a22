#!/usr/bin/env python3
"""A scriptable fake upstream for idemproxy's integration tests.

It behaves like a legacy payment API that is *not* idempotent: every POST "charges" and answers
201 with a fresh payment id. Tests start it as a subprocess; it listens on 127.0.0.1 (port 0 by
default, or --port N), prints "PORT <n>" as its first line on stdout and serves HTTP/1.1 with
keep-alive, one thread per connection (a hanging exchange never blocks another one).

Control API on the same port (never counted, never recorded):
  GET  /__control/calls                      {"count", "connections", "requests": [...]}
  GET  /__control/wait?count=N&timeout_ms=T  blocks until count >= N (or T passes); same JSON
                                             plus "reached": true|false
  POST /__control/reset                      forget calls, queue and default behaviour
  POST /__control/open?gate=NAME             let requests held by {"gate": NAME} go on
  POST /__control/script                     JSON body, one of:
         [b1, b2, ...]                         queue: behaviours for the next requests, in order
         {"queue": [...], "default": b}        both (either key optional)
         b (any other object)                  the default behaviour for requests past the queue
         {"keepalive_ms": N}                   (with or without queue/default) a request that
                                             arrives on a connection idle for more than N ms
                                             finds it closed: the connection is closed without
                                             an answer and the request is not counted (the
                                             upstream's keep-alive timer fired as it crossed);
                                             0 turns it off

A behaviour is an object; every field is optional:
  status      int            answer status (default: 201 for POST, 200 otherwise)
  headers     [[name, v]..]  answer fields, in order, repeats allowed; when given they replace
                             the default ones (Content-Type, Set-Cookie, X-Payment-Id);
                             Content-Length / Transfer-Encoding are always added by the server
  body        str            answer body (UTF-8)
  body_b64    str            answer body, base64
  body_size   int            answer body of N random bytes
  echo        bool           answer body = request body
  delay_ms    int            wait before answering
  gate        str            wait before answering until the test opens the gate of that name
  hang        bool           read the request, never answer, keep the socket open
  reset       bool           read the request, then close with RST (SO_LINGER 0)
  malformed   bool           read the request, write garbage, close
  truncate    bool           announce a longer Content-Length than is sent, then close
  chunked     bool           send the body with Transfer-Encoding: chunked
  transfer_encoding  str     send "Transfer-Encoding: <value>" and the body gzip-compressed
                             when the value names gzip, chunk-framed when it names chunked
  endless     bool           send the head without Content-Length, then body bytes for ever
                             (until the peer goes away)
  close       bool           add "Connection: close" and close after answering
Without a body field, the answer is the default JSON payment document.

Each recorded request: {"seq", "connection", "method", "path" (path + query as received),
"headers": [[name, value], ...] in wire order, "body_b64", "body_len", "behaviour"}.

SIGTERM / SIGINT: stop serving and exit 0.
"""
import argparse
import base64
import gzip
import json
import os
import signal
import socket
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

CONTROL_PREFIX = "/__control/"


class State:
    """Everything the control API shows or changes, guarded by one condition variable."""

    def __init__(self):
        self.cond = threading.Condition()
        self.count = 0
        self.requests = []
        self.connections = set()  # connection ids that carried at least one counted request
        self.queue = []
        self.default = None
        self.keepalive_ms = 0
        self.payment_seq = 0
        self.connection_seq = 0
        self.stopping = threading.Event()
        self.gates = {}  # name -> threading.Event

    def gate(self, name):
        with self.cond:
            return self.gates.setdefault(name, threading.Event())

    def snapshot(self):
        with self.cond:
            return {
                "count": self.count,
                "connections": len(self.connections),
                "requests": list(self.requests),
            }

    def reset(self):
        with self.cond:
            self.count = 0
            self.requests = []
            self.connections = set()
            self.queue = []
            self.default = None
            self.keepalive_ms = 0
            self.cond.notify_all()

    def script(self, doc):
        with self.cond:
            if isinstance(doc, list):
                self.queue = [dict(b) for b in doc]
            elif isinstance(doc, dict) and ("queue" in doc or "default" in doc
                                            or "keepalive_ms" in doc):
                if "keepalive_ms" in doc:
                    self.keepalive_ms = int(doc["keepalive_ms"])
                if "queue" in doc:
                    self.queue = [dict(b) for b in doc["queue"]]
                if "default" in doc:
                    self.default = dict(doc["default"]) if doc["default"] else None
            elif isinstance(doc, dict):
                self.default = dict(doc)
            else:
                raise ValueError("script must be a JSON list or object")

    def record(self, connection_id, method, path, headers, body):
        """Counts one request and picks its behaviour, atomically."""
        with self.cond:
            self.count += 1
            self.payment_seq += 1
            self.connections.add(connection_id)
            if self.queue:
                behaviour = self.queue.pop(0)
            else:
                behaviour = dict(self.default) if self.default else {}
            self.requests.append({
                "seq": self.count,
                "connection": connection_id,
                "method": method,
                "path": path,
                "headers": [[k, v] for k, v in headers],
                "body_b64": base64.b64encode(body).decode("ascii"),
                "body_len": len(body),
                "behaviour": behaviour,
            })
            self.cond.notify_all()
            return behaviour, self.payment_seq

    def wait_for(self, count, timeout_s):
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while self.count < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True


STATE = State()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-upstream/1"

    def setup(self):
        super().setup()
        with STATE.cond:
            STATE.connection_seq += 1
            self.connection_id = STATE.connection_seq

    def log_message(self, fmt, *args):  # quiet
        pass

    # One method for every verb.
    def handle_one_request(self):
        try:
            self.raw_requestline = self.rfile.readline(65537)
            if len(self.raw_requestline) > 65536:
                self.send_error(414)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():
                return
            last = getattr(self, "answered_at", None)
            with STATE.cond:
                keepalive_ms = STATE.keepalive_ms
            if (keepalive_ms and last is not None and not self.path.startswith(CONTROL_PREFIX)
                    and (time.monotonic() - last) * 1000 > keepalive_ms):
                self.close_connection = True  # closed at the keep-alive timeout: no answer
                return
            self.dispatch()
            self.answered_at = time.monotonic()
            try:
                self.wfile.flush()
            except (OSError, ValueError):
                self.close_connection = True
        except (ConnectionError, TimeoutError, OSError):
            self.close_connection = True

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ConnectionError("eof in chunked body")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    # trailers until an empty line
                    while True:
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline(65537)  # CRLF after the chunk
            return b"".join(chunks)
        length = self.headers.get("Content-Length")
        if length:
            return self.rfile.read(int(length))
        return b""

    def dispatch(self):
        body = self.read_body()
        if self.path.startswith(CONTROL_PREFIX):
            self.control(body)
            return
        behaviour, seq = STATE.record(self.connection_id, self.command, self.path,
                                      self.headers.items(), body)
        self.behave(behaviour, seq, body)

    # ---- control API -------------------------------------------------------------------
    def send_json(self, status, doc):
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def control(self, body):
        url = urlsplit(self.path)
        what = url.path[len(CONTROL_PREFIX):]
        try:
            if what == "calls" and self.command == "GET":
                self.send_json(200, STATE.snapshot())
            elif what == "wait" and self.command == "GET":
                q = parse_qs(url.query)
                count = int(q.get("count", ["1"])[0])
                timeout_ms = int(q.get("timeout_ms", ["5000"])[0])
                reached = STATE.wait_for(count, timeout_ms / 1000.0)
                doc = STATE.snapshot()
                doc["reached"] = reached
                self.send_json(200, doc)
            elif what == "reset" and self.command == "POST":
                STATE.reset()
                self.send_json(200, {"ok": True})
            elif what == "open" and self.command == "POST":
                STATE.gate(parse_qs(url.query)["gate"][0]).set()
                self.send_json(200, {"ok": True})
            elif what == "script" and self.command == "POST":
                STATE.script(json.loads(body.decode() or "null"))
                self.send_json(200, {"ok": True})
            else:
                self.send_json(404, {"error": "unknown control endpoint"})
        except (ValueError, TypeError, KeyError) as e:
            self.send_json(400, {"error": str(e)})

    # ---- the fake payment API ----------------------------------------------------------
    def behave(self, b, seq, request_body):
        if b.get("gate"):
            gate = STATE.gate(b["gate"])
            while not gate.wait(0.05):
                if STATE.stopping.is_set():
                    return
        if b.get("delay_ms"):
            if STATE.stopping.wait(b["delay_ms"] / 1000.0):
                return
        if b.get("hang"):
            STATE.stopping.wait()
            self.close_connection = True
            return
        if b.get("reset"):
            self.close_connection = True
            sock = self.connection
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.rfile.close()  # drop the makefile reference so close() is real
                sock.close()
            except OSError:
                pass
            return
        if b.get("malformed"):
            self.close_connection = True
            self.wfile.write(b"\x00\x01\x02 THIS IS NOT HTTP \xff\xfe\r\n\r\n")
            return

        status = int(b.get("status", 201 if self.command == "POST" else 200))
        if "body" in b:
            body = b["body"].encode()
        elif "body_b64" in b:
            body = base64.b64decode(b["body_b64"])
        elif "body_size" in b:
            body = os.urandom(int(b["body_size"]))
        elif b.get("echo"):
            body = request_body
        else:
            body = None
        pay_id = "pay_%06d_%s" % (seq, os.urandom(4).hex())
        if body is None:
            body = json.dumps({
                "id": pay_id,
                "object": "payment",
                "method": self.command,
                "path": self.path,
                "request_body_length": len(request_body),
            }).encode()
        if "headers" in b:
            headers = [(str(k), str(v)) for k, v in b["headers"]]
        else:
            headers = [
                ("Content-Type", "application/json"),
                ("X-Payment-Id", pay_id),
                ("Set-Cookie", "session=%s; Path=/" % os.urandom(6).hex()),
            ]

        self.send_response_only(status)
        for k, v in headers:
            self.send_header(k, v)
        if b.get("close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        if b.get("truncate"):
            self.send_header("Content-Length", str(len(body) + 1000))
            self.end_headers()
            self.wfile.write(body)
            self.close_connection = True
            return
        if b.get("endless"):
            self.close_connection = True
            self.end_headers()
            block = b"x" * 65536
            try:
                while not STATE.stopping.is_set():
                    self.wfile.write(block)
            except (OSError, ValueError):
                pass
            return
        if b.get("transfer_encoding"):
            te = b["transfer_encoding"]
            self.send_header("Transfer-Encoding", te)
            self.end_headers()
            if "gzip" in te.lower():
                body = gzip.compress(body)
            if "chunked" in te.lower():
                self.wfile.write(b"%x\r\n" % len(body) + body + b"\r\n0\r\n\r\n")
            else:
                self.wfile.write(body)
                self.close_connection = True
            return
        if b.get("chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            step = max(1, len(body) // 3) if body else 1
            for i in range(0, len(body), step):
                part = body[i:i + step]
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args()

    server = Server((args.host, args.port), Handler)
    stop = threading.Event()

    def on_signal(signum, frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              daemon=True)
    thread.start()
    sys.stdout.write("PORT %d\n" % server.server_address[1])
    sys.stdout.flush()

    while not stop.wait(1.0):
        pass
    STATE.stopping.set()
    server.shutdown()
    server.server_close()
    sys.stdout.flush()
    os._exit(0)  # daemon threads may still sit in a hanging exchange


if __name__ == "__main__":
    main()
