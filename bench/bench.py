#!/usr/bin/env python3
"""idemproxy benchmark driver. Run it through bench/run.sh (which installs wrk and nginx).

Starts an nginx backend (return 201, 64-byte JSON), then for each scenario starts the server
under test pinned to CPU 1, drives it with wrk pinned to CPU 0, and reads the server's CPU time
(/proc/PID/stat utime+stime) and peak RSS (VmHWM, reset through /proc/PID/clear_refs before each
measurement). Prints a markdown table with ratios to nginx. See bench/README.md.
"""

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import http.client

import bench_pg
import bench_redis

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
CLK_TCK = os.sysconf("SC_CLK_TCK")
RESPONSE_BODY = '{"id":"pay_0123456789abcdef","status":"succeeded","amount":2599}'
BODY_LEN = 305
PAY_PATH = "/pay/charges"
PASS_PATH = "/pass/charges"

NGINX_SCENARIOS = ["direct", "proxy_pass"]
IDEM_SCENARIOS = ["passthrough", "new-full", "new-pages", "new-relaxed", "replay", "c1000", "pg-new",
                  "pg-replay", "redis-new", "redis-replay"]
ALL = NGINX_SCENARIOS + IDEM_SCENARIOS + ["scale"]
GROUPS = {"nginx": NGINX_SCENARIOS, "idemproxy": IDEM_SCENARIOS, "all": NGINX_SCENARIOS + IDEM_SCENARIOS}

TITLES = {
    "direct": "backend direct (nginx return 201)",
    "proxy_pass": "nginx proxy_pass (keepalive)",
    "passthrough": "idemproxy pass-through route",
    "new-full": "idemproxy new keys, durability full",
    "new-pages": "idemproxy new keys, durability full, no write-ahead log (`wal: false`)",
    "new-relaxed": "idemproxy new keys, durability relaxed",
    "replay": "idemproxy replay",
    "pg-new": "idemproxy new keys, PostgreSQL",
    "pg-replay": "idemproxy replay, PostgreSQL",
    "redis-new": "idemproxy new keys, Redis",
    "redis-replay": "idemproxy replay, Redis",
}
# Reference row for the ratio columns.
REFERENCE = {"proxy_pass": "direct", "passthrough": "proxy_pass", "new-full": "proxy_pass",
             "new-relaxed": "proxy_pass", "new-pages": "proxy_pass", "replay": "direct", "pg-new": "proxy_pass",
             "pg-replay": "direct", "redis-new": "proxy_pass", "redis-replay": "direct"}


def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Fail(Exception):
    pass


# ---------------------------------------------------------------- processes and /proc

class Procs:
    """Every process the harness starts, each in its own process group, killed on exit."""

    def __init__(self, pidfile):
        self.pidfile = pidfile
        self.procs = []

    def start(self, argv, logpath, env=None):
        out = open(logpath, "ab")
        p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             start_new_session=True, env=env)
        out.close()
        self.procs.append(p)
        self._write()
        return p

    def _write(self):
        with open(self.pidfile, "w") as f:
            for p in self.procs:
                if p.poll() is None:
                    f.write(f"{p.pid}\n")

    def stop(self, p, timeout=10.0):
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)
        # nginx workers may outlive a killed master for a moment; sweep the group
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if p in self.procs:
            self.procs.remove(p)
        self._write()

    def stop_all(self):
        for p in list(reversed(self.procs)):
            self.stop(p, timeout=5.0)


def children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
        return kids
    except OSError:
        pass
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
                if int(st[st.rindex(")") + 2:].split()[1]) == pid:
                    kids.append(int(d))
            except (OSError, ValueError):
                pass
    return kids


def cpu_ticks(pids):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        fields = st[st.rindex(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    return total


def machine_busy_ticks():
    """Busy jiffies of all CPUs together (user+nice+system+irq+softirq+steal) from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def foreign_load(seconds):
    """CPUs' worth of work done by other processes over `seconds` (nothing of ours is running)."""
    b0 = machine_busy_ticks()
    time.sleep(seconds)
    return (machine_busy_ticks() - b0) / CLK_TCK / seconds


SLOWED = 0.85  # a run whose server core ran below this share of its fastest speed is repeated


def core_speed(cpu, seconds=0.05):
    """Iterations per second of a fixed pure-Python loop on `cpu` (between runs, when the servers
    are idle). On a VM the host can slow a core without the guest seeing steal time (this
    machine's /proc/stat shows none), so a row measured on a slowed core is flagged by comparing
    this figure across the run."""
    try:
        before = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(cpu)})
    except (OSError, ValueError):
        return None
    try:
        n, t0 = 0, time.perf_counter()
        deadline = t0 + seconds
        while True:
            x = 0
            for i in range(2000):
                x += i * i
            n += 2000
            t = time.perf_counter()
            if t >= deadline:
                return n / (t - t0)
    finally:
        os.sched_setaffinity(0, before)


def status_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_hwm(pids):
    ok = True
    for pid in pids:
        try:
            with open(f"/proc/{pid}/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            ok = False
    return ok


def port_open(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port, proc, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if port_open(port):
            return True
        time.sleep(0.05)
    return False


def http_post(port, path, key=None, body=None):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Content-Type": "application/json", "Authorization": "Bearer bench"}
    if key is not None:
        headers["Idempotency-Key"] = key
    c.request("POST", path, body=body if body is not None else BODY, headers=headers)
    r = c.getresponse()
    data = r.read()
    hdrs = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hdrs, data


def http_get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def read_body_from_lua():
    src = open(os.path.join(BENCH_DIR, "common.lua")).read()
    m = re.search(r"M\.body = (.*?)\n\n", src, re.S)
    parts = re.findall(r"'([^']*)'", m.group(1))
    return "".join(parts).encode()


BODY = read_body_from_lua()


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


def render(template, out, values):
    s = open(os.path.join(BENCH_DIR, template)).read()
    for k, v in values.items():
        s = s.replace(f"@{k}@", str(v))
    if re.search(r"@[A-Z_]+@", s):
        raise Fail(f"unrendered placeholder in {template}")
    with open(out, "w") as f:
        f.write(s)
    return out


def dir_bytes(path):
    """Allocated bytes (du) and apparent bytes of a directory tree."""
    alloc = apparent = 0
    for root, _, files in os.walk(path):
        for fn in files:
            st = os.lstat(os.path.join(root, fn))
            alloc += st.st_blocks * 512
            apparent += st.st_size
    return alloc, apparent


def mdb_used_bytes(path):
    exe = shutil.which("mdb_stat")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-e", path], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    psize = re.search(r"Page size:\s*(\d+)", out)
    used = re.search(r"Number of pages used:\s*(\d+)", out)
    if psize and used:
        return int(psize.group(1)) * int(used.group(1))
    return None


def metrics(admin_port):
    try:
        st, data = http_get(admin_port, "/metrics")
    except OSError:
        return {}
    if st != 200:
        return {}
    out = {}
    for line in data.decode(errors="replace").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        try:
            name, value = line.rsplit(None, 1)
            out[name] = float(value)
        except ValueError:
            pass
    return out


def metric_sum(m, prefix, contains=""):
    return sum(v for k, v in m.items() if k.startswith(prefix) and contains in k)


def fsync_latency(directory, seconds=1.0):
    """p50/p99 of a 4 KiB pwrite + fdatasync in the store's file system, in µs."""
    path = os.path.join(directory, "fsync-probe")
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
    buf = os.urandom(4096)
    samples = []
    try:
        deadline = time.time() + seconds
        i = 0
        while time.time() < deadline and len(samples) < 2000:
            t0 = time.perf_counter()
            os.pwrite(fd, buf, (i % 16) * 4096)
            os.fdatasync(fd)
            samples.append((time.perf_counter() - t0) * 1e6)
            i += 1
    finally:
        os.close(fd)
        os.unlink(path)
    samples.sort()
    return samples[len(samples) // 2], samples[min(len(samples) - 1, int(len(samples) * 0.99))]


def fs_type(path):
    best, typ = "", "?"
    try:
        with open("/proc/mounts") as f:
            for line in f:
                parts = line.split()
                mnt = parts[1]
                if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                    best, typ = mnt, parts[2]
    except OSError:
        pass
    return typ


# ---------------------------------------------------------------- servers

class Server:
    def __init__(self, name, proc, port, worker_pids, admin_port=None, store=None):
        self.name, self.proc, self.port = name, proc, port
        self.worker_pids = worker_pids      # what CPU and RSS are read from
        self.admin_port, self.store = admin_port, store


class Bench:
    def __init__(self, a):
        self.a = a
        self.out = a.out
        self.procs = Procs(os.environ.get("BENCH_PIDFILE") or os.path.join(self.out, "pids"))
        self.results = {}       # (scenario, conns) -> measurement
        self.notes = []
        self.scale = []
        self.env = {}
        self.core_ref = None  # the fastest server-core speed seen (core_speed)
        self.backend = None
        self.pg = None          # bench_pg.Cluster, started by the first PostgreSQL scenario
        self.redis = None       # bench_redis.Server, started by the first Redis scenario
        self.wrk_env = dict(os.environ, LUA_PATH=os.path.join(BENCH_DIR, "?.lua") + ";;")

    def pin(self, cpu):
        """taskset to one CPU; with --nice (root), a higher priority than other work on it."""
        argv = ["taskset", "-c", cpu]
        if self.a.nice:
            argv += ["nice", "-n", str(self.a.nice)]
        return argv

    # -- starting servers

    def start_nginx(self, name, template, port, extra):
        d = os.path.join(self.out, "nginx")
        os.makedirs(d, exist_ok=True)
        conf = render(template, os.path.join(d, f"{name}.conf"),
                      dict(DIR=d, PORT=port, RESPONSE=RESPONSE_BODY, **extra))
        if port_open(port):
            raise Fail(f"port {port} is already in use (use --port-base)")
        p = self.procs.start(self.pin(self.a.server_cpu) + [self.a.nginx, "-p", d, "-c", conf],
                             os.path.join(d, f"{name}.out"))
        if not wait_port(port, p):
            raise Fail(f"nginx {name} did not start:\n{tail(os.path.join(d, f'{name}.out'))}\n"
                       f"{tail(os.path.join(d, name + '-error.log'))}")
        workers = []
        for _ in range(50):
            workers = children(p.pid)
            if workers:
                break
            time.sleep(0.05)
        if not workers:
            raise Fail(f"nginx {name}: no worker process found")
        return Server(name, p, port, workers)

    def start_idemproxy(self, tag, durability, max_size="4GiB", store_block=None, wal=None):
        d = os.path.join(self.out, "idemproxy", tag)
        store = os.path.join(self.a.store_root, tag, "store")
        shutil.rmtree(os.path.dirname(store), ignore_errors=True)
        os.makedirs(store, exist_ok=True)
        os.makedirs(d, exist_ok=True)
        port, admin = self.a.port_base + 1, self.a.port_base + 1101
        conf = render("idemproxy.yaml.in", os.path.join(d, "idemproxy.yaml"),
                      dict(PORT=port, ADMIN_PORT=admin,
                           STORE_BLOCK=store_block or '{path: "%s", max_size: %s, durability: %s%s}'
                           % (store, max_size, durability,
                              "" if wal is None else ", wal: %s" % str(wal).lower()),
                           BACKEND_PORT=self.backend.port,
                           LOG_LEVEL=self.a.log_level))
        for pp in (port, admin):
            if port_open(pp):
                raise Fail(f"port {pp} is already in use (use --port-base)")
        logpath = os.path.join(d, "idemproxy.log")
        p = self.procs.start(self.pin(self.a.server_cpu) + [self.a.bin, "run", "--config", conf],
                             logpath)
        if not wait_port(port, p, timeout=15):
            self.procs.stop(p)
            raise Fail(f"idemproxy ({tag}) did not start listening on 127.0.0.1:{port} "
                       f"(exit code {p.returncode}); log tail:\n{tail(logpath)}")
        return Server("idemproxy", p, port, [p.pid], admin_port=admin, store=store)

    def stop(self, srv):
        if srv:
            self.procs.stop(srv.proc)

    # -- one wrk run

    def wrk(self, port, script, script_args, conns, duration, label, extra_timeout=60):
        argv = self.pin(self.a.client_cpu) + [self.a.wrk, "-t1", f"-c{conns}", f"-d{duration}s",
                "--timeout", "10s", "-s", os.path.join(BENCH_DIR, script),
                f"http://127.0.0.1:{port}", "--"] + [str(x) for x in script_args]
        ru0 = os.times()
        try:
            cp = subprocess.run(argv, capture_output=True, text=True, env=self.wrk_env,
                                timeout=duration + extra_timeout)
        except subprocess.TimeoutExpired:
            raise Fail(f"wrk {label} did not finish in time")
        ru1 = os.times()
        with open(os.path.join(self.out, "wrk.log"), "a") as f:
            f.write(f"### {label}: {' '.join(argv)}\n{cp.stdout}{cp.stderr}\n")
        return self._parse_wrk(cp, label, ru1.children_user + ru1.children_system
                               - ru0.children_user - ru0.children_system)

    @staticmethod
    def _parse_wrk(cp, label, client_cpu_s):
        res, pre = None, None
        for line in cp.stdout.splitlines():
            if line.startswith("BENCHJSON "):
                res = json.loads(line[len("BENCHJSON "):])
            elif line.startswith("PRELOADJSON "):
                pre = json.loads(line[len("PRELOADJSON "):])
        if res is None:
            raise Fail(f"wrk {label} failed (exit {cp.returncode}): {cp.stderr.strip()[:500]}")
        if pre is not None:
            res["preload"] = pre
        res["client_cpu_s"] = client_cpu_s
        return res

    def measure(self, srv, script, script_args, conns, label):
        """Warm-up, then --runs measured runs; returns the per-metric medians."""
        # This disk's flush latency drifts by 2x within minutes: a new-key row at one connection
        # (whose target is counted in flushes) gets its own fsync probe, taken just before its
        # warm-up (the store is still idle then, so its own writeback does not slow the probe).
        probe = fsync_latency(self.a.store_root) if conns == 1 and label.startswith("new-") else None
        if probe:
            log(f"  {label}: fsync probe p50 {probe[0]:.0f} µs, p99 {probe[1]:.0f} µs")
        if self.a.warmup > 0:
            self.wrk(srv.port, script, script_args(), conns, self.a.warmup, label + " warm-up")
        runs, good = [], []
        backend_pids = self.backend.worker_pids if srv is not self.backend else []
        # A run measured while the host had slowed the server core (its speed under
        # SLOWED × the fastest seen) is kept in the log but not in the medians, and another
        # run is made in its place, up to twice --runs in all.
        i = -1
        while len(good) < self.a.runs and len(runs) < 2 * self.a.runs:
            i += 1
            if srv.proc.poll() is not None:
                raise Fail(f"{srv.name} exited during {label}")
            speed = core_speed(self.a.server_cpu)
            if speed and (self.core_ref is None or speed > self.core_ref):
                self.core_ref = speed
            hwm_reset = reset_hwm(srv.worker_pids)
            c0, b0, m0 = cpu_ticks(srv.worker_pids), cpu_ticks(backend_pids), machine_busy_ticks()
            r = self.wrk(srv.port, script, script_args(), conns, self.a.duration, f"{label} run {i + 1}")
            c1, b1, m1 = cpu_ticks(srv.worker_pids), cpu_ticks(backend_pids), machine_busy_ticks()
            n = max(r["requests"], 1)
            secs = r["duration_us"] / 1e6
            r["rps"] = r["requests"] / secs
            r["cpu_us"] = (c1 - c0) / CLK_TCK * 1e6 / n
            r["backend_cpu_us"] = (b1 - b0) / CLK_TCK * 1e6 / n if backend_pids else None
            r["server_core_pct"] = ((c1 - c0) + (b1 - b0)) / CLK_TCK / secs * 100
            r["client_cpu_pct"] = r["client_cpu_s"] / secs * 100
            # CPU used by anything but wrk and the servers (other work on the machine), in CPUs
            r["foreign_cpus"] = max(0.0, ((m1 - m0) - (c1 - c0) - (b1 - b0)) / CLK_TCK
                                    - r["client_cpu_s"]) / secs
            r["rss_kib"] = sum(status_kib(p, "VmHWM") for p in srv.worker_pids)
            r["core_speed"] = speed
            r["slowed"] = bool(speed and self.core_ref and speed < SLOWED * self.core_ref)
            r["rss_since"] = "measurement" if hwm_reset else "process start"
            r["errors"] = r["err_connect"] + r["err_read"] + r["err_write"] + r["err_status"] + r["err_timeout"]
            runs.append(r)
            if not r["slowed"]:
                good.append(r)
            log(f"  {label} run {i + 1}{' (core slowed: not counted)' if r['slowed'] else ''}: {r['rps']:.0f} req/s, p50 {r['p50_us']} µs, p99 {r['p99_us']} µs, "
                f"cpu {r['cpu_us']:.1f} µs/req, rss {r['rss_kib'] / 1024:.1f} MiB, errors {r['errors']}, "
                f"wrk {r['client_cpu_pct']:.0f}%, other load {r['foreign_cpus']:.2f} CPUs"
                + (f", core speed {speed / 1e6:.2f} M loop/s" if speed else ""))
        used = good or runs
        med = {}
        for k in ["rps", "p50_us", "p90_us", "p99_us", "p999_us", "cpu_us", "backend_cpu_us",
                  "server_core_pct", "client_cpu_pct", "rss_kib", "foreign_cpus"]:
            vals = [r[k] for r in used if r[k] is not None]
            med[k] = statistics.median(vals) if vals else None
        speeds = [r["core_speed"] for r in used if r["core_speed"]]
        med["core_speed"] = min(speeds) if speeds else None
        med["slowed_runs"] = len(runs) - len(good)
        med["only_slowed"] = not good
        med["rss_kib"] = max(r["rss_kib"] for r in runs)
        med["foreign_cpus"] = max(r["foreign_cpus"] for r in used)
        med["errors"] = sum(r["errors"] for r in runs)
        med["requests"] = sum(r["requests"] for r in runs)
        med["runs"] = runs
        med["rss_since"] = runs[0]["rss_since"]
        if probe:
            med["fsync_p50_us"] = probe[0]
        return med

    def preload(self, srv, setname, count, timeout):
        marker = os.path.join(self.out, f"preload-{setname}.done")
        if os.path.exists(marker):
            os.unlink(marker)
        argv = self.pin(self.a.client_cpu) + [self.a.wrk, "-t1", f"-c{self.a.preload_conns}",
                f"-d{int(timeout)}s", "--timeout", "10s", "-s", os.path.join(BENCH_DIR, "preload.lua"),
                f"http://127.0.0.1:{srv.port}", "--", setname, str(count), marker, PAY_PATH]
        t0 = time.time()
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=self.wrk_env, start_new_session=True)
        self.procs.procs.append(p)
        last = t0
        while p.poll() is None and time.time() - t0 < timeout + 30:
            if os.path.exists(marker):
                p.send_signal(signal.SIGINT)
                break
            if time.time() - last > 15:
                last = time.time()
                log(f"  preloading {setname}: {time.time() - t0:.0f} s")
            time.sleep(0.1)
        try:
            stdout, stderr = p.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.procs.stop(p)
            raise Fail("preload wrk did not stop")
        self.procs.procs.remove(p)
        elapsed = time.time() - t0
        with open(os.path.join(self.out, "wrk.log"), "a") as f:
            f.write(f"### preload {setname}: {' '.join(argv)}\n{stdout}{stderr}\n")
        r = self._parse_wrk(subprocess.CompletedProcess(argv, p.returncode, stdout, stderr),
                            f"preload {setname}", 0)
        pre = r.get("preload", {})
        firsts = pre.get("firsts", 0)
        log(f"  preloaded {firsts} of {count} keys of set {setname} in {elapsed:.1f} s "
            f"({firsts / max(elapsed, 1e-9):.0f}/s), {pre.get('bad', '?')} non-2xx")
        return firsts, elapsed

    # -- scenarios

    def check(self, cond, what):
        if not cond:
            msg = f"CHECK FAILED: {what}"
            log(msg)
            self.notes.append(msg)
        return cond

    def check_plain(self, srv, path, scenario):
        st, h, body = http_post(srv.port, path)
        self.check(st == 201 and body == RESPONSE_BODY.encode(),
                   f"{scenario}: POST {path} answered {st} with {len(body)} bytes, expected 201 and "
                   f"the 64-byte backend body")
        self.check("idempotent-replayed" not in h, f"{scenario}: pass-through answer carries Idempotent-Replayed")

    def check_idempotent(self, srv, scenario):
        key = f"check-{scenario}-{random.randrange(1 << 40)}"
        st1, h1, b1 = http_post(srv.port, PAY_PATH, key)
        st2, h2, b2 = http_post(srv.port, PAY_PATH, key)
        self.check(st1 == 201 and b1 == RESPONSE_BODY.encode() and "idempotent-replayed" not in h1,
                   f"{scenario}: first request with a new key answered {st1} ({len(b1)} bytes, "
                   f"replayed={h1.get('idempotent-replayed')})")
        self.check(st2 == 201 and b2 == b1 and h2.get("idempotent-replayed", "").lower() == "true",
                   f"{scenario}: second request with the same key answered {st2} "
                   f"(replayed={h2.get('idempotent-replayed')}, same body={b2 == b1})")

    def run_rows(self, scenario, srv, script, args_fn):
        for c in self.a.conns:
            label = f"{scenario} c{c}"
            log(f"measuring {label}")
            self.results[(scenario, c)] = self.measure(srv, script, args_fn, c, label)

    def sc_direct(self):
        self.check_plain(self.backend, PASS_PATH, "direct")
        self.run_rows("direct", self.backend, "plain.lua", lambda: [PASS_PATH])

    def sc_proxy_pass(self):
        srv = self.start_nginx("proxy", "nginx-proxy.conf.in", self.a.port_base + 11,
                               dict(BACKEND_PORT=self.backend.port))
        try:
            self.check_plain(srv, PASS_PATH, "proxy_pass")
            self.run_rows("proxy_pass", srv, "plain.lua", lambda: [PASS_PATH])
        finally:
            self.stop(srv)

    def sc_passthrough(self):
        srv = self.start_idemproxy("passthrough", "full")
        try:
            self.check_plain(srv, PASS_PATH, "passthrough")
            self.run_rows("passthrough", srv, "plain.lua", lambda: [PASS_PATH])
        finally:
            self.stop(srv)

    def sc_new(self, durability, wal=None):
        scenario = f"new-{durability}" if wal is None else "new-pages"
        srv = self.start_idemproxy(scenario, durability, wal=wal)
        try:
            self.check_idempotent(srv, scenario)
            self.run_rows(scenario, srv, "newkeys.lua",
                          lambda: [f"r{random.randrange(1 << 48):x}", PAY_PATH])
            self.results_store(scenario, srv)
        finally:
            self.stop(srv)

    def results_store(self, scenario, srv):
        alloc, _ = dir_bytes(srv.store)
        recs = sum(self.results[(scenario, c)]["requests"] for c in self.a.conns)
        self.env[f"store after {scenario}"] = f"{alloc / 2**20:.1f} MiB allocated after ~{recs} new keys"

    def pg_store(self, name):
        """A store: block on the run's PostgreSQL (started on first use), a schema per scenario."""
        if self.pg is None:
            self.pg = bench_pg.Cluster(os.path.join(self.out, "postgres")).start()
            self.env["PostgreSQL"] = ("same machine, unix socket, fsync/full_page_writes/"
                                      "synchronous_commit on, no synchronous standby")
        return self.pg.store_block(name)

    def redis_store(self, name):
        """A store: block on the run's redis-server (started on first use), a prefix per scenario."""
        if self.redis is None:
            self.redis = bench_redis.Server(os.path.join(self.out, "redis")).start()
            self.env["Redis"] = ("same machine, unix socket, appendonly yes, appendfsync always, "
                                 "no replica (min_replicas 0)")
        return self.redis.store_block(name)

    def sc_redis_new(self):
        srv = self.start_idemproxy("redis-new", "full", store_block=self.redis_store("redis-new"))
        try:
            self.check_idempotent(srv, "redis-new")
            self.run_rows("redis-new", srv, "newkeys.lua",
                          lambda: [f"r{random.randrange(1 << 48):x}", PAY_PATH])
        finally:
            self.stop(srv)

    def sc_pg_new(self):
        srv = self.start_idemproxy("pg-new", "full", store_block=self.pg_store("pg-new"))
        try:
            self.check_idempotent(srv, "pg-new")
            self.run_rows("pg-new", srv, "newkeys.lua",
                          lambda: [f"r{random.randrange(1 << 48):x}", PAY_PATH])
        finally:
            self.stop(srv)

    def sc_replay(self, scenario="replay", store_block=None):
        srv = self.start_idemproxy(scenario, "full", store_block=store_block)
        try:
            n = self.a.replay_keys
            log(f"preloading {n} keys for replay")
            got, _ = self.preload(srv, "replay", n, timeout=max(60, n / 100))
            self.check(got >= n, f"replay: only {got} of {n} keys preloaded")
            st, h, b = http_post(srv.port, PAY_PATH, "replay-1")
            self.check(st == 201 and h.get("idempotent-replayed", "").lower() == "true"
                       and b == RESPONSE_BODY.encode(),
                       f"replay: preloaded key answered {st}, replayed={h.get('idempotent-replayed')}")
            m0 = metrics(srv.admin_port)
            rows = self.a.conns if scenario in self.a.only else []
            for c in rows:
                label = f"{scenario} c{c}"
                log(f"measuring {label}")
                self.results[(scenario, c)] = self.measure(srv, "replay.lua",
                                                           lambda: ["replay", n, PAY_PATH, 1], c, label)
            if "c1000" in self.a.only and scenario == "replay":
                log(f"measuring replay c{self.a.c_many}")
                self.results[("replay", self.a.c_many)] = self.measure(
                    srv, "replay.lua", lambda: ["replay", n, PAY_PATH, 1], self.a.c_many,
                    f"replay c{self.a.c_many}")
            m1 = metrics(srv.admin_port)
            fwd = metric_sum(m1, "idemproxy_requests_total", 'outcome="forwarded"') - \
                metric_sum(m0, "idemproxy_requests_total", 'outcome="forwarded"')
            if m1:
                self.check(fwd <= 10, f"{scenario}: /metrics shows {fwd:.0f} forwarded requests during replay")
        finally:
            self.stop(srv)

    def sc_direct_many(self):
        c = self.a.c_many
        log(f"measuring direct c{c}")
        self.results[("direct", c)] = self.measure(self.backend, "plain.lua", lambda: [PASS_PATH], c,
                                                   f"direct c{c}")

    def sc_scale(self):
        sizes = [self.a.scale_small, self.a.scale_records]
        for n in sizes:
            tag = f"scale-{n}"
            srv = self.start_idemproxy(tag, "relaxed",
                                       max_size=f"{max(1, (n * 4096) // 2**30 + 1)}GiB")
            try:
                log(f"scale: preloading {n} records (durability relaxed)")
                got, secs = self.preload(srv, "s", n, timeout=self.a.scale_timeout)
                self.check(got >= n, f"scale: only {got} of {n} records preloaded in {secs:.0f} s")
                alloc, apparent = dir_bytes(srv.store)
                used = mdb_used_bytes(srv.store)
                m = metrics(srv.admin_port)
                row = dict(records=n, preloaded=got, preload_s=secs, store_alloc=alloc,
                           store_apparent=apparent, mdb_used=used,
                           metric_records=m.get("idemproxy_store_records"),
                           metric_bytes=m.get("idemproxy_store_bytes"))
                last = max(2, min(n, got))
                for c in self.a.conns:
                    label = f"scale {n} replay c{c}"
                    log(f"measuring {label}")
                    row[c] = self.measure(srv, "replay.lua", lambda: ["s", last, PAY_PATH, 1], c, label)
                self.scale.append(row)
            finally:
                self.stop(srv)
                if not self.a.keep_stores:
                    shutil.rmtree(os.path.dirname(srv.store), ignore_errors=True)

    # -- driver

    def environment(self):
        e = self.env
        e["date"] = datetime.datetime.now().isoformat(timespec="seconds")
        speeds = [core_speed(self.a.server_cpu) for _ in range(5)]
        self.core_ref = max((v for v in speeds if v), default=None)
        e["core_speed_ref"] = self.core_ref
        e["kernel"] = platform.release()
        model = "?"
        try:
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        e["cpu"] = (f"{model}, {os.cpu_count()} CPUs; wrk on CPU {self.a.client_cpu}, servers on CPU "
                    f"{self.a.server_cpu}" + (f", nice {self.a.nice}" if self.a.nice else ""))
        e["nginx"] = subprocess.run([self.a.nginx, "-v"], capture_output=True, text=True).stderr.strip()
        e["wrk"] = subprocess.run([self.a.wrk, "-v"], capture_output=True, text=True).stdout.splitlines()[0].strip()
        if self.a.bin and os.access(self.a.bin, os.X_OK):
            v = subprocess.run([self.a.bin, "--version"], capture_output=True, text=True, timeout=10)
            e["idemproxy"] = (v.stdout.strip() or v.stderr.strip()).splitlines()[0] if (v.stdout or v.stderr) else "?"
        if self.a.wait_idle > 0:
            deadline = time.time() + self.a.wait_idle
            said = 0.0
            while True:
                load = foreign_load(1.0)
                if load <= self.a.max_foreign or time.time() >= deadline:
                    break
                if time.time() - said >= 15:
                    said = time.time()
                    log(f"machine busy ({load:.2f} CPUs used by other processes); waiting up to "
                        f"{deadline - time.time():.0f} s more for it to be idle")
            e["other load at start"] = f"{load:.2f} CPUs"
        e["store fs"] = f"{fs_type(self.a.store_root)} ({self.a.store_root})"
        os.makedirs(self.a.store_root, exist_ok=True)
        p50, p99 = fsync_latency(self.a.store_root)
        e["fsync_p50_us"] = p50
        e["fsync (4 KiB pwrite+fdatasync)"] = f"p50 {p50:.0f} µs, p99 {p99:.0f} µs"
        e["method"] = (f"wrk -t1, {self.a.warmup} s warm-up, median of {self.a.runs} runs of "
                       f"{self.a.duration} s; POST {len(BODY)}-byte JSON, 201 with 64-byte JSON; "
                       f"idemproxy log.level {self.a.log_level}")

    def run(self):
        a = self.a
        if len(BODY) != BODY_LEN:
            raise Fail(f"request body is {len(BODY)} bytes, expected {BODY_LEN}")
        self.environment()
        want_idem = [s for s in a.only if s in IDEM_SCENARIOS + ["scale"]]
        have_bin = bool(a.bin) and os.path.isfile(a.bin) and os.access(a.bin, os.X_OK)
        if want_idem and not have_bin:
            msg = (f"SKIPPED idemproxy scenarios ({', '.join(want_idem)}): binary {a.bin!r} not found; "
                   f"build it (cmake --preset release && cmake --build --preset release) or set IDEMPROXY_BIN")
            log(msg)
            self.notes.append(msg)
        self.backend = self.start_nginx("backend", "nginx-backend.conf.in", a.port_base + 10, {})
        log(f"backend nginx on 127.0.0.1:{self.backend.port}, workers {self.backend.worker_pids}")
        steps = [("direct", self.sc_direct), ("proxy_pass", self.sc_proxy_pass)]
        if have_bin:
            steps += [("passthrough", self.sc_passthrough),
                      ("new-full", lambda: self.sc_new("full")),
                      ("new-pages", lambda: self.sc_new("full", wal=False)),
                      ("new-relaxed", lambda: self.sc_new("relaxed"))]
            if "replay" in a.only or "c1000" in a.only:
                steps.append(("replay", self.sc_replay))
            want_pg = [s for s in ("pg-new", "pg-replay") if s in a.only]
            if want_pg and not bench_pg.available():
                msg = f"SKIPPED {', '.join(want_pg)}: PostgreSQL (postgresql, psql) is not installed"
                log(msg)
                self.notes.append(msg)
            elif want_pg:
                steps += [("pg-new", self.sc_pg_new),
                          ("pg-replay", lambda: self.sc_replay("pg-replay", self.pg_store("pg-replay")))]
            want_redis = [s for s in ("redis-new", "redis-replay") if s in a.only]
            if want_redis and not bench_redis.available():
                msg = f"SKIPPED {', '.join(want_redis)}: redis-server is not installed"
                log(msg)
                self.notes.append(msg)
            elif want_redis:
                steps += [("redis-new", self.sc_redis_new),
                          ("redis-replay",
                           lambda: self.sc_replay("redis-replay", self.redis_store("redis-replay")))]
        if "c1000" in a.only:
            steps.append(("c1000", self.sc_direct_many))
        if have_bin and "scale" in a.only:
            steps.append(("scale", self.sc_scale))
        for name, fn in steps:
            if name not in a.only and not (name == "replay" and "c1000" in a.only):
                continue
            log(f"== {name}")
            try:
                fn()
            except Fail as ex:
                msg = f"FAILED {name}: {ex}"
                log(msg)
                self.notes.append(msg)
                if name in NGINX_SCENARIOS:
                    raise

    # -- report

    def report(self):
        a = self.a
        L = []
        L.append("## idemproxy benchmark\n")
        for k, v in self.env.items():
            if k.endswith("_us"):
                continue
            L.append(f"- **{k}**: {v}")
        L.append("")
        if not self.results:
            L.append("(no rows)")
        L.append("| scenario | conns | req/s | req/s × ref | p50 µs | p99 µs | +p50 µs vs direct "
                 "| proxy CPU µs/req | CPU × ref | backend CPU µs/req | peak RSS MiB | errors |")
        L.append("|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|")
        order = ["direct", "proxy_pass", "passthrough", "new-full", "new-pages", "new-relaxed", "replay", "pg-new",
                 "pg-replay", "redis-new", "redis-replay"]
        conns_all = sorted({c for (_, c) in self.results})
        for sc in order:
            for c in conns_all:
                r = self.results.get((sc, c))
                if not r:
                    continue
                ref_name = REFERENCE.get(sc)
                ref = self.results.get((ref_name, c)) if ref_name else None
                direct = self.results.get(("direct", c))
                f = lambda x, fmt="{:.0f}": "—" if x is None else fmt.format(x)
                ratio = lambda x, y: "—" if (x is None or not y) else f"{x / y:.2f}× {ref_name}"
                added = (r["p50_us"] - direct["p50_us"]) if (direct and sc != "direct") else None
                L.append(f"| {TITLES[sc]} | {c} | {f(r['rps'])} | {ratio(r['rps'], ref and ref['rps'])} "
                         f"| {f(r['p50_us'])} | {f(r['p99_us'])} | {f(added, '{:+.0f}')} "
                         f"| {f(r['cpu_us'], '{:.1f}')} | {ratio(r['cpu_us'], ref and ref['cpu_us'])} "
                         f"| {f(r['backend_cpu_us'], '{:.1f}')} | {f(r['rss_kib'] / 1024, '{:.1f}')} "
                         f"| {r['errors']} |")
        L.append("")
        L.append("CPU µs/req: utime+stime of the server under test (nginx: its worker) over the "
                 "requests wrk completed; for the direct rows, of the backend itself. Peak RSS: VmHWM "
                 "(for nginx, of its worker), reset before each measurement. Ratios: proxies against "
                 "nginx proxy_pass, replay against nginx direct, at the same connection count.")
        bound = [f"{sc} c{c} ({r['client_cpu_pct']:.0f}%)" for (sc, c), r in sorted(self.results.items())
                 if r.get("client_cpu_pct") and r["client_cpu_pct"] > 90]
        if bound:
            L.append(f"\nwrk's core was saturated (>90% busy) in: {', '.join(bound)} — these req/s "
                     f"figures may be limited by the load generator.")
        busy = [f"{sc} c{c} ({r['foreign_cpus']:.2f})" for (sc, c), r in sorted(self.results.items())
                if r.get("foreign_cpus", 0) > self.a.max_foreign]
        dropped = [f"{sc} c{c} ({r['slowed_runs']})" for (sc, c), r in sorted(self.results.items())
                   if r.get("slowed_runs")]
        if dropped:
            L.append(f"\nRuns made while the host had slowed the server core (a fixed loop on CPU "
                     f"{self.a.server_cpu} below {SLOWED} of its fastest, {self.core_ref / 1e6:.1f} M loop/s) "
                     f"were repeated and left out of the medians: {', '.join(dropped)}.")
        slow = [f"{sc} c{c}" for (sc, c), r in sorted(self.results.items()) if r.get("only_slowed")]
        if slow:
            L.append(f"\n**Server core slowed by the host** in every run of: {', '.join(slow)}. "
                     f"Those rows are not trustworthy; rerun.")
        if busy:
            L.append(f"\n**Machine not idle**: other processes used more than {self.a.max_foreign} CPUs "
                     f"during: {', '.join(busy)}. Those rows are not trustworthy; rerun on an idle machine.")
        if self.scale:
            L.append("\n### Scale: replay against store size\n")
            L.append("| records | preload s | store allocated MiB | bytes/record (du) | bytes/record (LMDB pages used) "
                     + "".join(f"| replay p50 µs c{c} | p99 µs c{c} | req/s c{c} " for c in a.conns) + "|")
            L.append("|--:|--:|--:|--:|--:" + "|--:|--:|--:" * len(a.conns) + "|")
            for row in self.scale:
                n = max(1, row["preloaded"])
                used = row["mdb_used"]
                cells = "".join(f"| {row[c]['p50_us']:.0f} | {row[c]['p99_us']:.0f} | {row[c]['rps']:.0f} "
                                for c in a.conns if c in row)
                L.append(f"| {row['preloaded']} | {row['preload_s']:.1f} | {row['store_alloc'] / 2**20:.1f} "
                         f"| {row['store_alloc'] / n:.0f} | {'—' if used is None else f'{used / n:.0f}'} "
                         f"{cells}|")
        tg = self.targets()
        if tg:
            L.append("\n### Issue 13 targets (informational; benchmarks are not tests)\n")
            L.append("| target | measured | met |")
            L.append("|---|---|---|")
            for t, m, ok in tg:
                L.append(f"| {t} | {m} | {'yes' if ok else '**no**'} |")
        if self.notes:
            L.append("\n### Notes\n")
            for n in self.notes:
                L.append(f"- {n}")
        return "\n".join(L) + "\n"

    def targets(self):
        """Issue 13's targets (the issue 5 round's were stricter on paper and are superseded)."""
        R, out = self.results, []
        c_hi = max(self.a.conns)

        def g(sc, c):
            return R.get((sc, c))
        pt, pp, d = g("passthrough", c_hi), g("proxy_pass", c_hi), g("direct", c_hi)
        rp = g("replay", c_hi)
        if rp and d:
            x = rp["rps"] / d["rps"]
            out.append((f"replay req/s ≥ 0.8× nginx `return 201` (c{c_hi})", f"{x:.2f}×", x >= 0.8))
        if pt and pp:
            x = pt["cpu_us"] / pp["cpu_us"]
            out.append((f"pass-through CPU/req ≤ 1.2× nginx `proxy_pass` (c{c_hi})", f"{x:.2f}×", x <= 1.2))
        nf = g("new-full", c_hi)
        if nf and pp:
            x = nf["rps"] / pp["rps"]
            out.append((f"new keys, durability full, req/s ≥ 0.5× nginx `proxy_pass` (c{c_hi})",
                        f"{x:.2f}×", x >= 0.5))
        d1, f1 = g("direct", 1), g("new-full", 1)
        if f1 and d1:
            added = f1["p50_us"] - d1["p50_us"]
            fs = f1.get("fsync_p50_us") or self.env["fsync_p50_us"]
            lim = 2 * fs + 150
            out.append((f"new keys, durability full, c1: added p50 ≤ 2 fsyncs + 150 µs (fsync p50 {fs:.0f} µs "
                        f"just before the row; {self.env['fsync_p50_us']:.0f} µs at the run's start)",
                        f"{added:.0f} µs (limit {lim:.0f} µs)", added <= lim))
        many = g("replay", self.a.c_many)
        if many:
            mib = many["rss_kib"] / 1024
            out.append((f"peak RSS ≤ 64 MiB with {self.a.c_many} keep-alive clients",
                        f"{mib:.1f} MiB", mib <= 64))
        if len(self.scale) == 2:
            small, big = self.scale
            for c in self.a.conns:
                if c in small and c in big:
                    x = big[c]["p50_us"] / max(1, small[c]["p50_us"])
                    out.append((f"replay p50 at {big['records']:,} records ≤ 1.2× at {small['records']:,} (c{c})",
                                f"{x:.2f}×", x <= 1.2))
        return out


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="all",
                    help="comma list of: " + ", ".join(ALL) + ", or groups nginx, idemproxy, all")
    ap.add_argument("--scale", action="store_true", help="add the scale run (1,000,000 records)")
    ap.add_argument("--duration", type=int, default=5, help="seconds per measured run (5)")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of warm-up per row (1)")
    ap.add_argument("--runs", type=int, default=3, help="measured runs per row; the median is reported (3)")
    ap.add_argument("--conns", default="1,50", help="connection counts (1,50)")
    ap.add_argument("--many", dest="c_many", type=int, default=1000, help="clients of the RSS run (1000)")
    ap.add_argument("--replay-keys", type=int, default=10000, help="keys preloaded for replay (10000)")
    ap.add_argument("--scale-records", type=int, default=1000000)
    ap.add_argument("--scale-small", type=int, default=10000)
    ap.add_argument("--scale-timeout", type=int, default=900, help="bound on one scale preload, s (900)")
    ap.add_argument("--preload-conns", type=int, default=50)
    ap.add_argument("--bin", default=os.environ.get("IDEMPROXY_BIN",
                                                    os.path.join(REPO_DIR, "build/release/idemproxy")))
    ap.add_argument("--port-base", type=int, default=18080,
                    help="idemproxy BASE+1 (admin BASE+1101), backend BASE+10, nginx proxy BASE+11")
    ap.add_argument("--out", default=None, help="results and logs (build/bench/<time>)")
    ap.add_argument("--store-root", default=None, help="where stores go (<out>/stores)")
    ap.add_argument("--keep-stores", action="store_true")
    ap.add_argument("--wait-idle", type=int, default=30,
                    help="wait up to this many seconds for other processes to go quiet (30)")
    ap.add_argument("--max-foreign", type=float, default=0.1,
                    help="CPUs of other load above which a row is flagged (0.1)")
    ap.add_argument("--log-level", default="info", choices=["debug", "info", "warn", "error"],
                    help="idemproxy log.level (info, the default: one JSON access line per "
                         "request, written in batches; warn: none, like nginx's access_log off)")
    ap.add_argument("--nice", type=int, default=None,
                    help="nice value for wrk and the servers (-20 as root, so that other work on a "
                         "shared machine disturbs less; 0 turns it off)")
    ap.add_argument("--client-cpu", default="0")
    ap.add_argument("--server-cpu", default="1")
    a = ap.parse_args()
    only = set()
    for s in a.only.split(","):
        s = s.strip()
        if s in GROUPS:
            only |= set(GROUPS[s])
        elif s in ALL:
            only.add(s)
        else:
            ap.error(f"unknown scenario {s!r}")
    if a.scale:
        only.add("scale")
    a.only = only
    a.conns = [int(x) for x in a.conns.split(",")]
    if a.out is None:
        a.out = os.path.join(REPO_DIR, "build", "bench", time.strftime("%Y%m%d-%H%M%S"))
    a.out = os.path.abspath(a.out)
    os.makedirs(a.out, exist_ok=True)
    a.store_root = os.path.abspath(a.store_root or os.path.join(a.out, "stores"))
    a.bin = os.path.abspath(a.bin) if a.bin else a.bin
    a.nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    a.wrk = shutil.which("wrk") or "wrk"
    if a.nice is None:
        a.nice = -20 if os.geteuid() == 0 else 0
    if (os.cpu_count() or 1) < 2:
        a.client_cpu = a.server_cpu = "0"
    return a


def main():
    a = parse_args()
    b = Bench(a)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rc = 0
    try:
        b.run()
    except Fail as ex:
        log(f"error: {ex}")
        rc = 1
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    finally:
        b.procs.stop_all()
        if b.pg is not None:
            b.pg.stop()
        if b.redis is not None:
            b.redis.stop()
        if not a.keep_stores:
            shutil.rmtree(a.store_root, ignore_errors=True)
    if b.results or b.scale or b.notes:
        md = b.report()
        print(md)
        with open(os.path.join(a.out, "results.md"), "w") as f:
            f.write(md)
        with open(os.path.join(a.out, "results.json"), "w") as f:
            json.dump({"environment": b.env,
                       "results": [dict(scenario=s, conns=c, **{k: v for k, v in r.items()})
                                   for (s, c), r in b.results.items()],
                       "scale": b.scale, "notes": b.notes}, f, indent=1, default=str)
        latest = os.path.join(os.path.dirname(a.out), "latest")
        try:
            if os.path.islink(latest):
                os.unlink(latest)
            os.symlink(a.out, latest)
        except OSError:
            pass
        log(f"results in {a.out}/results.md and results.json; logs in {a.out}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
