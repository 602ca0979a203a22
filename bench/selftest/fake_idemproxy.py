#!/usr/bin/env python3
"""A stand-in for idemproxy, only to exercise bench/ while the real binary does not exist:
    IDEMPROXY_BIN=bench/selftest/fake_idemproxy.py bench/run.sh --runs 1 --duration 2
Understands just the config that bench/idemproxy.yaml.in renders. Slow by design (Python);
its numbers mean nothing."""
import http.client
import http.server
import os
import re
import tempfile
import sys
import threading

if "--version" in sys.argv:
    print("fake-idemproxy (bench self-test)")
    sys.exit(0)
conf = open(sys.argv[sys.argv.index("--config") + 1]).read()
port = int(re.search(r'server: \{listen: "127\.0\.0\.1:(\d+)"', conf).group(1))
admin = int(re.search(r'admin: \{listen: "127\.0\.0\.1:(\d+)"', conf).group(1))
m = re.search(r'store: \{path: "([^"]+)"', conf)
# A PostgreSQL store block (pg-* scenarios): the stand-in keeps its log in a temp dir instead.
store = m.group(1) if m else tempfile.mkdtemp(prefix="fake-idemproxy-")
durable = "durability: full" in conf
up_port = int(re.search(r'url: "http://127\.0\.0\.1:(\d+)"', conf).group(1))
records, lock, local = {}, threading.Lock(), threading.local()
counts = {"forwarded": 0, "replayed": 0, "passthrough": 0}
os.makedirs(store, exist_ok=True)
log = open(os.path.join(store, "data.log"), "ab")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 65536                # one write per answer (flushed after each request)
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def forward(self, body):
        if not hasattr(local, "c"):
            local.c = http.client.HTTPConnection("127.0.0.1", up_port, timeout=5)
        local.c.request(self.command, self.path, body=body,
                        headers={"Content-Type": self.headers.get("Content-Type", "")})
        r = local.c.getresponse()
        return r.status, r.read()

    def answer(self, status, body, replayed=False):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if replayed:
            self.send_header("Idempotent-Replayed", "true")
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        key = self.headers.get("Idempotency-Key")
        if not self.path.startswith("/pay/"):
            counts["passthrough"] += 1
            return self.answer(*self.forward(body))
        with lock:
            rec = records.get(key)
        if rec:
            counts["replayed"] += 1
            return self.answer(*rec, replayed=True)
        status, data = self.forward(body)
        with lock:
            records[key] = (status, data)
            log.write(key.encode() + b" " + data + b"\n")
            log.flush()
            if durable:
                os.fdatasync(log.fileno())
        counts["forwarded"] += 1
        self.answer(status, data)

    def do_GET(self):
        text = "".join(f'idemproxy_requests_total{{route="pay",outcome="{k}"}} {v}\n' for k, v in counts.items())
        text += f"idemproxy_store_records {len(records)}\n"
        self.answer(200, text.encode())


class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 2048
    daemon_threads = True


threading.Thread(target=Server(("127.0.0.1", admin), Handler).serve_forever, daemon=True).start()
Server(("127.0.0.1", port), Handler).serve_forever()
