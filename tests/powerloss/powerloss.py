#!/usr/bin/env python3
"""Power-loss simulation of the store under the real proxy (DESIGN "Durability").

1. Record: the real `idemproxy run` serves KEYS new keys (CLIENTS at a time) with the recorder
   (pl_shim.so) preloaded, which logs every write and sync to the store's data file. This
   script's own upstream appends a 'U' event to the same log when a request reaches it (before
   answering), and each client appends an 'A' event (key, status, body) when it has read its
   answer. The log is one O_APPEND file, so its order is the order in which things happened.
2. Check: powerloss_check rebuilds crash states from the log and opens each with the real
   store code (see powerloss_check.cpp), and prints a summary line.

Usage: powerloss.py --mode full|relaxed|wal|planted|planted-wal --bin IDEMPROXY --shim pl_shim.so
                    --checker powerloss_check [--states N] [--seed S] [--keys K]
Exit 0 when the mode's expectation holds:
  full     0 corrupt states, 0 lost answers, 0 keys forwardable twice
  relaxed  0 corrupt states (losses are reported, and allowed)
  wal      as full, on a store with a write-ahead log (store.wal) of the smallest size, so
           that the run checkpoints and wraps the log many times; the log is created by a run
           of the proxy before the recorded one (the recorder follows files by their names)
  planted  full durability with IDEMPROXY_TEST_PLANT=answer-before-commit: violations found
  planted-wal  the same plant on a store with a write-ahead log
"""
import argparse
import http.server
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "integration"))
import harness  # noqa: E402

AUTH = "Bearer tenant-a"


class EventLog:
    def __init__(self, path):
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def append(self, kind, payload):
        data = kind.encode() + struct.pack("<I", len(payload)) + payload
        if os.write(self.fd, data) != len(data):
            raise RuntimeError("short write to the event log")


def upstream_server(log):
    seq = [0]
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            key = self.headers.get("Idempotency-Key", "")
            log.append("U", key.encode())
            with lock:
                seq[0] += 1
                n = seq[0]
            answer = ('{"id":"pay_%06d","key":"%s","len":%d}' % (n, key, len(body))).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def record(args, work):
    log_path = os.path.join(work, "events.log")
    log = EventLog(log_path)
    up = upstream_server(log)
    store = os.path.join(work, "store")
    os.mkdir(store, 0o700)
    settings = {"durability": "relaxed" if args.mode == "relaxed" else "full",
                "max_size": "64MiB"}
    with_wal = args.mode in ("wal", "planted-wal")
    settings["wal"] = with_wal  # (the default is true: full and planted test the page commits)
    if with_wal:
        settings["wal_size"] = "64KiB"
    cfg = harness.make_config(0, store, "http://127.0.0.1:%d" % up.server_address[1],
                              store=settings)
    if with_wal:
        first = harness.Proxy(work, cfg)
        first.start(timeout=30)
        if first.stop() != 0 or not os.path.exists(os.path.join(store, "wal")):
            raise RuntimeError("the run creating the log failed\n" + first.stderr_tail())
    proxy = harness.Proxy(work, cfg)
    proxy.env = dict(os.environ, LD_PRELOAD=args.shim, PL_LOG=log_path,
                     PL_DIR=os.path.realpath(store))
    proxy.env.pop("IDEMPROXY_TEST_PLANT", None)
    if args.mode.startswith("planted"):
        proxy.env["IDEMPROXY_TEST_PLANT"] = "answer-before-commit"
    proxy.start(timeout=30)
    errors = []

    def client(first):
        for i in range(first, args.keys, args.clients):
            key = "pl-%05d" % i
            r = harness.request(proxy.port, "POST", "/v1/payments/charge",
                                [("Authorization", AUTH), ("Idempotency-Key", key),
                                 ("Content-Type", "application/json")], b'{"amount": %d}' % i)
            if r.status != 201:
                errors.append(r)
                continue
            k = key.encode()
            log.append("A", struct.pack("<HI", r.status, len(k)) + k + r.body)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rc = proxy.stop()
    up.shutdown()
    if errors or rc != 0:
        raise RuntimeError("recording run failed: %r rc=%s\n%s" % (errors[:3], rc,
                                                                  proxy.stderr_tail()))
    return log_path, cfg


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["full", "relaxed", "wal", "planted", "planted-wal"],
                    required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--shim", required=True)
    ap.add_argument("--checker", required=True)
    ap.add_argument("--states", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--keys", type=int, default=200)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    harness.IDEMPROXY_BIN = args.bin
    work = tempfile.mkdtemp(prefix="idemproxy-powerloss-")
    try:
        log_path, _ = record(args, work)
        durability = "relaxed" if args.mode == "relaxed" else "full"
        # The states are opened writable (the daemon's path), which syncs: on tmpfs that is
        # free, and the states are checked faster.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else work
        states = tempfile.mkdtemp(prefix="idemproxy-powerloss-", dir=shm)
        check = subprocess.run([args.checker, "--log", log_path, "--work", states, "--states", str(args.states),
                                "--seed", str(args.seed), "--durability", durability,
                                "--route", "payments", "--scope", AUTH],
                               capture_output=True, text=True, timeout=900)
        shutil.rmtree(states, ignore_errors=True)
        sys.stdout.write(check.stdout)
        sys.stderr.write(check.stderr)
        if check.returncode not in (0, 1):
            print("powerloss: the checker failed (exit %d)" % check.returncode)
            return 2
        summary = dict(kv.split("=") for kv in check.stdout.split("\n")[-2].split()[1:])
        corrupt = int(summary["corrupt"])
        lost = int(summary["lost_answers"])
        twice = int(summary["forwardable_twice"])
        states = int(summary["states"])
        if states < args.states:
            print("powerloss: only %d crash states built" % states)
            return 1
        if args.mode in ("full", "wal"):
            ok = corrupt == 0 and lost == 0 and twice == 0
        elif args.mode == "relaxed":
            ok = corrupt == 0
        else:
            ok = corrupt + lost + twice > 0
        print("powerloss %s: %s" % (args.mode, "as expected" if ok else "NOT as expected"))
        return 0 if ok else 1
    finally:
        if os.environ.get("IDEMPROXY_KEEP_TMP"):
            sys.stderr.write("kept %s\n" % work)
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    sys.exit(main())
