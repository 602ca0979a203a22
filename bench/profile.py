#!/usr/bin/env python3
"""Measurements that stay valid on a busy machine: counts per request, not rates.

  bench/profile.py alloc     # malloc-family calls per request: idemproxy and nginx (LD_PRELOAD)
  bench/profile.py syscalls  # system calls per request by name (strace -c), idemproxy and nginx
  bench/profile.py sysrate   # system calls per request at full rate (perf stat, tracepoints)
  bench/profile.py fsync     # fsync/fdatasync/msync per new key, durability full (strace)
  bench/profile.py perf      # perf record of idemproxy under wrk; where the CPU goes
  bench/profile.py disk      # this disk's limits (bench/disk_limits.cpp): fdatasync, group
                             # commit of N appends, LMDB commits of N random ~600-byte puts
  bench/profile.py layout    # LMDB pages and writer CPU per new key for the records table keyed
                             # by hash (today) and in arrival order (bench/layout_limits.cpp)
  bench/profile.py threads   # CPU µs per request of each thread, the backend and the idle server
                             # core; --sched splits the idle time by period length (perf sched)
  bench/profile.py bounds    # what durability costs: new keys as they are, with the log never
                             # synced, and with no store at all (a -DIDEMPROXY_BOUNDS=ON build),
                             # interleaved with nginx proxy_pass for --rounds rounds

Each mode starts the nginx backend and the server under test the way bench.py does (same
configs, same wrk scripts, one worker, pinned), drives it with wrk at --conns connections for
--duration seconds after a warm-up, and divides the counter's difference by the requests wrk
completed. Counts per request do not depend on how busy the machine is (perf percentages
barely do); rates and latencies do, which is why they are left to bench/run.sh on an idle
machine. Output: a markdown summary on stdout and files under build/bench/profile-<time>/.
"""

import argparse
import glob
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import bench  # noqa: E402  (the harness: servers, configs, wrk)

PAY, PASS = bench.PAY_PATH, bench.PASS_PATH


def make_bench(a):
    sys_argv = sys.argv
    sys.argv = ["bench.py", "--out", a.out, "--runs", "1", "--duration", str(a.duration),
                "--log-level", a.log_level, "--port-base", str(a.port_base), "--nice", "0"]
    if a.bin:
        sys.argv += ["--bin", a.bin]
    try:
        ba = bench.parse_args()
    finally:
        sys.argv = sys_argv
    return bench.Bench(ba)


class Run:
    """One server under test with an optional environment (LD_PRELOAD) for its processes."""

    def __init__(self, b, a):
        self.b, self.a = b, a

    def start(self, kind, env_extra=None):
        old = {k: os.environ.get(k) for k in (env_extra or {})}
        os.environ.update(env_extra or {})
        try:
            if kind == "direct":
                return self.b.backend
            if kind == "proxy_pass":
                return self.b.start_nginx("proxy", "nginx-proxy.conf.in", self.b.a.port_base + 11,
                                          dict(BACKEND_PORT=self.b.backend.port))
            durability = "relaxed" if kind == "new-relaxed" else "full"
            return self.b.start_idemproxy(kind, durability)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def load(self, kind, srv):
        """(script, args) for a scenario; replay preloads its keys first."""
        if kind in ("direct", "proxy_pass", "passthrough"):
            return "plain.lua", [PASS]
        if kind.startswith("new"):
            return "newkeys.lua", None  # a fresh key prefix per wrk run (see wrk())
        n = self.a.replay_keys
        got, _ = self.b.preload(srv, "replay", n, timeout=max(60, n / 100))
        if got < n:
            raise bench.Fail(f"only {got} of {n} keys preloaded")
        return "replay.lua", ["replay", n, PAY, 1]

    def wrk(self, srv, script, args, seconds, label):
        if args is None:  # new keys: never the warm-up's keys again
            args = [f"r{random.randrange(1 << 48):x}", PAY]
        return self.b.wrk(srv.port, script, args, self.a.conns, seconds, label)


def read_counts(d, pids):
    tot = [0, 0, 0]
    for p in pids:
        try:
            with open(os.path.join(d, str(p))) as f:
                vals = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            # e.g. a forked nginx worker whose counter thread did not start: say so, not 0
            raise bench.Fail(f"no allocation counts from process {p} in {d}; run again")
        for i in range(3):
            tot[i] += vals[i]
    return tot


def build_alloccount(out):
    so = os.path.join(out, "alloccount.so")
    subprocess.run(["cc", "-O2", "-shared", "-fPIC", "-o", so,
                    os.path.join(BENCH_DIR, "alloccount.c"), "-lpthread"], check=True)
    return so


def mode_alloc(r, a):
    so = build_alloccount(a.out)
    rows = []
    for kind in a.scenarios:
        d = os.path.join(a.out, f"alloc-{kind}")
        os.makedirs(d, exist_ok=True)
        env = {"LD_PRELOAD": so, "ALLOCCOUNT_DIR": d}
        if kind == "direct":  # a second backend, with the counter loaded
            os.environ.update(env)
            try:
                srv = r.b.start_nginx("backend2", "nginx-backend.conf.in", r.b.a.port_base + 12, {})
            finally:
                for k in env:
                    os.environ.pop(k, None)
        else:
            srv = r.start(kind, env)
        try:
            script, args = r.load(kind, srv)
            r.wrk(srv, script, args, 1, f"{kind} warm-up")
            time.sleep(0.2)
            c0 = read_counts(d, srv.worker_pids)
            res = r.wrk(srv, script, args, a.duration, kind)
            time.sleep(0.2)
            c1 = read_counts(d, srv.worker_pids)
            n = max(res["requests"], 1)
            rows.append((kind, n, (c1[0] - c0[0]) / n, (c1[1] - c0[1]) / n, (c1[2] - c0[2]) / n))
            bench.log(f"{kind}: {rows[-1][2]:.1f} allocations/request over {n} requests")
        finally:
            r.b.stop(srv)
    md = [f"Allocations per request (malloc/calloc/realloc/memalign calls; LD_PRELOAD counter "
          f"bench/alloccount.c), wrk -c{a.conns}, {a.duration} s after 1 s of warm-up, "
          f"log.level {a.log_level}:", "",
          "| server | requests | allocations/req | frees/req | bytes allocated/req |",
          "|---|--:|--:|--:|--:|"]
    for kind, n, al, fr, by in rows:
        md.append(f"| {kind} | {n} | {al:.1f} | {fr:.1f} | {by:.0f} |")
    return "\n".join(md)


def strace_counts(path):
    """{syscall: calls} from `strace -c` output."""
    counts = {}
    with open(path) as f:
        for line in f:
            m = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
            if m and m.group(2) != "total":
                counts[m.group(2)] = counts.get(m.group(2), 0) + int(m.group(1))
    return counts


def traced_run(r, a, kind, trace, tag):
    srv = r.start(kind)
    out = os.path.join(a.out, f"strace-{tag}.txt")
    try:
        script, args = r.load(kind, srv)
        r.wrk(srv, script, args, 1, f"{kind} warm-up")
        argv = ["strace", "-f", "-c", "-o", out]
        if trace:
            argv += ["-e", f"trace={trace}"]
        for p in srv.worker_pids:
            argv += ["-p", str(p)]
        st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
        time.sleep(0.5)  # strace attaches
        res = r.wrk(srv, script, args, a.duration, kind)
        st.send_signal(signal.SIGINT)
        st.wait(30)
        return strace_counts(out), max(res["requests"], 1)
    finally:
        if srv is not r.b.backend:
            r.b.stop(srv)


def mode_syscalls(r, a):
    md = [f"System calls per request (strace -f -c attached to the server's processes; wrk "
          f"-c{a.conns}, {a.duration} s; strace slows the server, the counts per request hold):",
          "", "| server | requests | syscalls/req | the main ones per request |", "|---|--:|--:|---|"]
    for kind in a.scenarios:
        counts, n = traced_run(r, a, kind, None, kind)
        total = sum(counts.values())
        top = sorted(counts.items(), key=lambda kv: -kv[1])[:8]
        md.append(f"| {kind} | {n} | {total / n:.2f} | "
                  + ", ".join(f"{k} {v / n:.2f}" for k, v in top) + " |")
    return "\n".join(md)


SYSCALL_EVENTS = ["raw_syscalls:sys_enter", "syscalls:sys_enter_recvfrom",
                  "syscalls:sys_enter_sendmsg", "syscalls:sys_enter_writev",
                  "syscalls:sys_enter_write", "syscalls:sys_enter_futex",
                  "syscalls:sys_enter_epoll_wait", "syscalls:sys_enter_epoll_ctl",
                  "syscalls:sys_enter_fdatasync", "syscalls:sys_enter_pwrite64",
                  "syscalls:sys_enter_pwritev", "context-switches"]


def mode_sysrate(r, a):
    """System calls per request at full rate: perf stat on syscall tracepoints (no PMU needed,
    and far cheaper than strace, so per-batch work is amortised as it is in production)."""
    md = [f"System calls per request at full rate (perf stat -e {SYSCALL_EVENTS[0]} and per-call "
          f"tracepoints, all threads of the server; wrk -c{a.conns}, {a.duration} s):", "",
          "| server | requests | syscalls/req | " + " | ".join(e.split("sys_enter_")[-1]
                                                          for e in SYSCALL_EVENTS[1:]) + " |",
          "|---|--:|--:|" + "--:|" * (len(SYSCALL_EVENTS) - 1)]
    for kind in a.scenarios:
        srv = r.start(kind)
        out = os.path.join(a.out, f"perfstat-{kind}.txt")
        try:
            script, args = r.load(kind, srv)
            r.wrk(srv, script, args, 1, f"{kind} warm-up")
            argv = ["perf", "stat", "-e", ",".join(SYSCALL_EVENTS), "-o", out]
            argv += ["-p", ",".join(str(p) for p in srv.worker_pids)]
            ps = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True)
            time.sleep(0.3)
            res = r.wrk(srv, script, args, a.duration, kind)
            ps.send_signal(signal.SIGINT)
            ps.wait(30)
        finally:
            if srv is not r.b.backend:
                r.b.stop(srv)
        n = max(res["requests"], 1)
        counts = {}
        with open(out) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0].replace(",", "").isdigit():
                    counts[parts[1]] = int(parts[0].replace(",", ""))
        md.append(f"| {kind} | {n} | " + " | ".join(f"{counts.get(e, 0) / n:.3f}"
                                                     for e in SYSCALL_EVENTS) + " |")
    return "\n".join(md)


def mode_fsync(r, a):
    md = ["Durable-write system calls per new key, `durability: full` (strace -f -c; wrk "
          f"-c{a.conns}, {a.duration} s):", "",
          "| scenario | requests | fdatasync/req | fsync/req | msync/req | pwrite/req | writes/req |",
          "|---|--:|--:|--:|--:|--:|--:|"]
    for kind in ["new-full"]:
        counts, n = traced_run(r, a, kind, "fsync,fdatasync,msync,pwrite64,pwritev,write,writev",
                               "fsync")
        g = lambda k: counts.get(k, 0) / n  # noqa: E731
        md.append(f"| {kind} | {n} | {g('fdatasync'):.2f} | {g('fsync'):.2f} | {g('msync'):.2f} | "
                  f"{g('pwrite64') + g('pwritev'):.2f} | {g('write') + g('writev'):.2f} |")
    return "\n".join(md)


def attached_run(r, a, kind, tool_argv, read=None):
    """Starts `kind`, warms it up, attaches `tool_argv(worker_pids)` (a perf command, stopped by
    SIGINT; None: no tool) for one measured wrk run, and returns wrk's result. `read(srv)`, if
    given, is called right before and right after that run; returns (result, before, after)."""
    srv = r.start(kind)
    try:
        script, args = r.load(kind, srv)
        r.wrk(srv, script, args, 1, f"{kind} warm-up")
        tool = None
        if tool_argv is not None:
            tool = subprocess.Popen(tool_argv(srv.worker_pids), stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            time.sleep(0.5)
        before = read(srv) if read else None
        res = r.wrk(srv, script, args, a.duration, kind)
        after = read(srv) if read else None
        if tool is not None:
            tool.send_signal(signal.SIGINT)
            tool.wait(60)
        return (res, before, after) if read else res
    finally:
        if srv is not r.b.backend:
            r.b.stop(srv)


def mode_perf(r, a):
    md = []
    for kind in a.scenarios:
        data = os.path.join(a.out, f"perf-{kind}.data")
        # PERF_CG="--call-graph dwarf": user-space call graphs (the release build has no frame
        # pointers, so -g stops at the first idemproxy frame).
        call_graph = os.environ.get("PERF_CG", "-g").split()
        res = attached_run(r, a, kind, lambda pids: ["perf", "record", "-F", "4999", *call_graph,
                                                     "-o", data, "-p", str(pids[0])])
        rep = {}
        for sort in ("dso", "dso,sym"):
            cp = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort,
                                 "--stdio", "-g", "none", "--percent-limit", "0.7"],
                                capture_output=True, text=True)
            rep[sort] = cp.stdout
            with open(os.path.join(a.out, f"perf-{kind}-{sort.replace(',', '-')}.txt"), "w") as f:
                f.write(cp.stdout)
        md.append(f"### perf: {kind}, wrk -c{a.conns}, {res['requests']} requests\n")
        for sort in ("dso", "dso,sym"):
            lines = [ln for ln in rep[sort].splitlines() if ln.strip() and not ln.startswith("#")]
            md.append("```\n" + "\n".join(lines[:45]) + "\n```\n")
    return "\n".join(md)


def mode_latency(r, a):
    """Where a request's wall time goes: perf trace -s (system calls per thread with their
    durations) attached to the server under wrk; the blocking calls (fdatasync, futex,
    epoll_wait) show the waits between threads and on the disk."""
    md = []
    for kind in a.scenarios:
        out = os.path.join(a.out, f"trace-{kind}.txt")
        res = attached_run(r, a, kind, lambda pids: ["perf", "trace", "-s", "-o", out, "-p",
                                                     ",".join(str(p) for p in pids)])
        with open(out) as f:
            text = f.read()
        md.append(f"### perf trace -s: {kind}, wrk -c{a.conns}, {res['requests']} requests "
                  f"(msec; per thread)\n\n```\n{text.strip()}\n```\n")
    return "\n".join(md)


def thread_ticks(pids):
    """utime+stime clock ticks per thread name (/proc/PID/task/*/stat and comm)."""
    out = {}
    for pid in pids:
        for t in glob.glob(f"/proc/{pid}/task/*"):
            try:
                with open(t + "/stat") as f:
                    st = f.read()
                with open(t + "/comm") as f:
                    name = f.read().strip()
            except OSError:
                continue  # a thread that ended meanwhile
            fields = st[st.rindex(")") + 2:].split()
            out[name] = out.get(name, 0) + int(fields[11]) + int(fields[12])
    return out


def thread_switches(pids):
    """(voluntary, involuntary) context switches per thread name (/proc/PID/task/*/status)."""
    out = {}
    for pid in pids:
        for t in glob.glob(f"/proc/{pid}/task/*"):
            try:
                with open(t + "/status") as f:
                    st = dict(line.split(":", 1) for line in f if ":" in line)
            except OSError:
                continue  # a thread that ended meanwhile
            name = st["Name"].strip()
            v, i = out.get(name, (0, 0))
            out[name] = (v + int(st["voluntary_ctxt_switches"]),
                         i + int(st["nonvoluntary_ctxt_switches"]))
    return out


def idle_ticks(cpu):
    """idle + iowait clock ticks of one CPU (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return v[3] + v[4]
    return 0


def idle_periods(data, t0, t1):
    """Idle periods on the recorded CPU between CLOCK_MONOTONIC times t0 and t1, by length, from
    `perf sched timehist` (recorded with -k CLOCK_MONOTONIC): total µs per length class."""
    cp = subprocess.run(["perf", "sched", "timehist", "-i", data], capture_output=True, text=True)
    edges = [(50, "< 50 µs"), (200, "50–200 µs"), (1000, "0.2–1 ms"), (5000, "1–5 ms"),
             (float("inf"), "≥ 5 ms")]
    tot = {label: 0.0 for _, label in edges}
    for line in cp.stdout.splitlines():
        parts = line.split()
        if len(parts) < 6 or parts[2] != "<idle>":
            continue
        try:
            end, length = float(parts[0]), float(parts[5]) / 1000  # s; the period ends at `end`
        except ValueError:
            continue
        inside = min(end, t1) - max(end - length, t0)  # the part within the wrk run
        if inside > 0:
            tot[next(label for edge, label in edges if length * 1e6 < edge)] += inside * 1e6
    return tot


def mode_threads(r, a):
    """Where the server core's time goes per request: CPU µs per request of each thread of the
    server under test (by name) and of the backend, and the core's idle time per request. With
    --sched, `perf sched record` on the server core during the same run splits the idle time by
    the length of its periods (many short waits, or a few long stalls behind the disk)."""
    cpu = r.b.a.server_cpu
    md = [f"CPU and idle time on the server core (CPU {cpu}) per request (µs; wrk -c{a.conns}, "
          f"{a.duration} s; /proc/PID/task/*/stat by thread name, /proc/stat idle + iowait):", ""]

    def read(srv):
        backend = r.b.backend.worker_pids if srv is not r.b.backend else []
        return (thread_ticks(srv.worker_pids), bench.cpu_ticks(backend), idle_ticks(cpu),
                time.monotonic(), bool(backend), thread_switches(srv.worker_pids),
                thread_switches(backend))

    for kind in a.scenarios:
        data = os.path.join(a.out, f"sched-{kind}.data")
        sched = None
        if a.sched:
            sched = lambda _pids: ["perf", "sched", "record", "-k", "CLOCK_MONOTONIC",  # noqa: E731
                                   "-C", str(cpu), "-o", data]
        res, (t0, b0, i0, w0, has_backend, s0, bs0), (t1, b1, i1, w1, _, s1, bs1) = attached_run(
            r, a, kind, sched, read)
        n = max(res["requests"], 1)
        us = lambda ticks: ticks * 1e6 / bench.CLK_TCK / n  # noqa: E731
        per = {k: us(v - t0.get(k, 0)) for k, v in t1.items()}
        md.append(f"### {kind}: {n} requests, {n * 1e6 / max(res['duration_us'], 1):.0f} req/s\n")
        sw = {k: ((v[0] - s0.get(k, (0, 0))[0]) / n, (v[1] - s0.get(k, (0, 0))[1]) / n)
              for k, v in s1.items()}
        md.append("| on the server core | µs/request | switches/request: voluntary | "
                  "involuntary |")
        md.append("|---|--:|--:|--:|")
        for k, v in sorted(per.items(), key=lambda kv: -kv[1]):
            if v >= 0.05:
                vol, invol = sw.get(k, (0, 0))
                md.append(f"| {k} | {v:.1f} | {vol:.2f} | {invol:.2f} |")
        md.append(f"| (all threads) | {sum(per.values()):.1f} | "
                  f"{sum(v[0] for v in sw.values()):.2f} | {sum(v[1] for v in sw.values()):.2f} |")
        if has_backend:
            bvol = sum(v[0] for v in bs1.values()) - sum(v[0] for v in bs0.values())
            binv = sum(v[1] for v in bs1.values()) - sum(v[1] for v in bs0.values())
            md.append(f"| backend | {us(b1 - b0):.1f} | {bvol / n:.2f} | {binv / n:.2f} |")
        md.append(f"| idle | {us(i1 - i0):.1f} | | |")
        if a.sched:
            periods = idle_periods(data, w0, w1)
            md.append("")
            md.append("Idle time by the length of its periods (`perf sched`; µs per request, "
                      "the recording itself costs the core some time):")
            md.append("")
            md.append("| " + " | ".join(periods) + " |")
            md.append("|" + "--:|" * len(periods))
            md.append("| " + " | ".join(f"{v / n:.1f}" for v in periods.values()) + " |")
        md.append("")
    return "\n".join(md)


BOUNDS_DIR = os.path.join(bench.REPO_DIR, "build", "bounds")
# (label, scenario, IDEMPROXY_BOUND): the bounds binary with each bound, and the references.
BOUND_VARIANTS = [("backend direct", "direct", None), ("nginx proxy_pass", "proxy_pass", None),
                  ("new keys, durable (as shipped)", "new-full", ""),
                  ("new keys, log never synced", "new-full", "nosync"),
                  ("new keys, no store at all", "new-full", "nostore")]


def build_bounds():
    """build/bounds/idemproxy: the `bounds` preset (base/bounds.h), built if missing or stale."""
    for argv in (["cmake", "--preset", "bounds"],
                 ["cmake", "--build", BOUNDS_DIR, "--target", "idemproxy"]):
        cp = subprocess.run(argv, cwd=bench.REPO_DIR, capture_output=True, text=True)
        if cp.returncode != 0:
            raise bench.Fail(f"{' '.join(argv)} failed:\n{cp.stdout[-2000:]}{cp.stderr[-2000:]}")
    return os.path.join(BOUNDS_DIR, "idemproxy")


def mode_bounds(r, a):
    """What the durable path costs at --conns, by leaving parts of it out: new keys through the
    store as shipped, with the write-ahead log written but never synced, and with no store at
    all (reservations won and records kept without LMDB or the log), all from one binary built
    with -DIDEMPROXY_BOUNDS=ON, interleaved with nginx `proxy_pass` (and the backend direct at
    c1, the reference of the added p50) in each of --rounds rounds. Same minutes, same binary:
    the differences are what the sync and the store cost on this machine."""
    binary = build_bounds()
    cpu = r.b.a.server_cpu
    variants = [v for v in BOUND_VARIANTS if a.conns == 1 or v[1] != "direct"]
    rows = {label: [] for label, _, _ in variants}

    def read(srv):
        backend = r.b.backend.worker_pids if srv is not r.b.backend else []
        return (thread_ticks(srv.worker_pids), bench.cpu_ticks(backend), idle_ticks(cpu))

    saved_bin, saved_bound = r.b.a.bin, os.environ.pop("IDEMPROXY_BOUND", None)
    refs = [v for v in variants if v[2] is None]
    mine = [v for v in variants if v[2] is not None]
    try:
        for rnd in range(a.rounds):
            ref = {}
            # The references first; the three builds' order turns each round, so that none is
            # always the one that follows another's writeback.
            turn = rnd % len(mine)
            for label, kind, bound in refs + mine[turn:] + mine[:turn]:
                r.b.a.bin = binary if bound is not None else saved_bin
                probe = None
                if a.conns == 1 and bound == "":
                    # As bench.py does for its c1 new-key rows: the flush probe just before.
                    os.makedirs(r.b.a.store_root, exist_ok=True)
                    probe = bench.fsync_latency(r.b.a.store_root)[0]
                if bound:
                    os.environ["IDEMPROXY_BOUND"] = bound
                try:
                    res, (t0, b0, i0), (t1, b1, i1) = attached_run(r, a, kind, None, read)
                finally:
                    os.environ.pop("IDEMPROXY_BOUND", None)
                n = max(res["requests"], 1)
                us = lambda ticks: ticks * 1e6 / bench.CLK_TCK / n  # noqa: E731
                row = dict(rps=n * 1e6 / max(res["duration_us"], 1), p50=res["p50_us"],
                           errors=sum(res.get(k, 0) for k in ("err_connect", "err_read",
                                                              "err_write", "err_status",
                                                              "err_timeout")),
                           cpu=us(sum(t1.values()) - sum(t0.values())) if kind != "direct" else 0,
                           backend=us(b1 - b0), idle=us(i1 - i0))
                if kind in ("direct", "proxy_pass"):
                    ref[kind] = row
                row["x"] = row["rps"] / ref["proxy_pass"]["rps"] if "proxy_pass" in ref else 0
                row["added"] = row["p50"] - ref["direct"]["p50"] if "direct" in ref else None
                row["limit"] = 2 * probe + 150 if probe is not None else None
                rows[label].append(row)
                bench.log(f"round {rnd + 1}, {label}: {row['rps']:.0f} req/s, p50 {row['p50']} µs, "
                          f"CPU {row['cpu']:.1f} µs/req")
    finally:
        r.b.a.bin = saved_bin
        if saved_bound is not None:
            os.environ["IDEMPROXY_BOUND"] = saved_bound
    md = [f"What durability costs, wrk -c{a.conns}, {a.duration} s per run, {a.rounds} rounds "
          f"(each round runs every row once: the references first, then the idemproxy rows in "
          f"an order that turns each round); one binary built with -DIDEMPROXY_BOUNDS=ON "
          f"({binary}) for the idemproxy rows. Per row: the rounds' values, then their "
          "median.", "",
          "| run | req/s | × proxy_pass | p50 µs | " + ("+p50 vs direct | 2 fsync probes + 150 "
                                                          "µs | " if a.conns == 1 else "")
          + "server CPU µs/req | backend µs/req | idle µs/req | errors |",
          "|---|--:|--:|--:|" + ("--:|--:|" if a.conns == 1 else "") + "--:|--:|--:|--:|"]

    def cell(vals, fmt):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "—"
        med = statistics.median(vals)
        return ", ".join(fmt.format(v) for v in vals) + f" (**{fmt.format(med)}**)"

    for label, kind, _ in variants:
        rs = rows[label]
        md.append(f"| {label} | {cell([x['rps'] for x in rs], '{:.0f}')} | "
                  f"{cell([x['x'] for x in rs] if kind != 'direct' else [], '{:.2f}')} | "
                  f"{cell([x['p50'] for x in rs], '{}')} | "
                  + (f"{cell([x['added'] for x in rs] if kind != 'direct' else [], '{:+}')} | "
                     f"{cell([x['limit'] for x in rs], '{:.0f}')} | " if a.conns == 1 else "")
                  + f"{cell([x['cpu'] for x in rs] if kind != 'direct' else [], '{:.1f}')} | "
                  f"{cell([x['backend'] for x in rs], '{:.1f}')} | "
                  f"{cell([x['idle'] for x in rs], '{:.1f}')} | {sum(x['errors'] for x in rs)} |")
    return "\n".join(md)


def run_probe(a, name, compile_flags, run_prefix, run_args):
    """Builds bench/NAME.cpp with c++ and runs it on a fresh directory of the store's file
    system (removed afterwards); returns what it printed."""
    exe = os.path.join(a.out, name)
    subprocess.run(["c++", "-O2", "-std=c++20", "-o", exe, os.path.join(BENCH_DIR, name + ".cpp")]
                   + compile_flags, check=True)
    d = os.path.join(a.store_dir or a.out, name + ".d")
    os.makedirs(d, exist_ok=True)
    try:
        return subprocess.run(run_prefix + [exe, d] + run_args, capture_output=True, text=True,
                              check=True).stdout
    finally:
        shutil.rmtree(d, ignore_errors=True)


def mode_disk(r, a):
    return run_probe(a, "disk_limits", ["-llmdb"], [], [str(a.disk_seconds)])


def mode_layout(r, a):
    return run_probe(a, "layout_limits", ["-llmdb"], ["taskset", "-c", str(r.b.a.server_cpu)], [])


def mode_handoff(r, a):
    if not os.path.exists("/usr/include/liburing.h"):
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        subprocess.run(sudo + ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "liburing-dev"],
                       check=True, stdout=subprocess.DEVNULL)
    # pinned to the servers' CPU, as the bench pins them
    return run_probe(a, "handoff_limits", ["-pthread", "-luring"],
                     ["taskset", "-c", str(r.b.a.server_cpu)], [])


MODES = {"alloc": mode_alloc, "syscalls": mode_syscalls, "sysrate": mode_sysrate, "fsync": mode_fsync, "perf": mode_perf,
         "latency": mode_latency, "disk": mode_disk, "handoff": mode_handoff,
         "layout": mode_layout, "threads": mode_threads, "bounds": mode_bounds}
DEFAULT_SCENARIOS = {"alloc": "direct,proxy_pass,passthrough,replay",
                     "syscalls": "direct,proxy_pass,passthrough,replay",
                     "sysrate": "direct,proxy_pass,passthrough,replay",
                     "perf": "replay,passthrough", "latency": "new-full", "threads": "passthrough,new-full", "bounds": "", "fsync": "", "disk": "", "handoff": "", "layout": ""}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=list(MODES))
    ap.add_argument("--scenarios", default=None,
                    help="comma list of direct, proxy_pass, passthrough, replay, new-full, "
                         "new-relaxed")
    ap.add_argument("--conns", type=int, default=50)
    ap.add_argument("--duration", type=int, default=3)
    ap.add_argument("--replay-keys", type=int, default=2000)
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--port-base", type=int, default=28080)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--store-dir", default=None, help="where the disk probe writes (the store's "
                    "file system; default: the output directory)")
    ap.add_argument("--disk-seconds", type=float, default=2.0, help="per disk probe (2)")
    ap.add_argument("--rounds", type=int, default=3, help="bounds: rounds of runs (3)")
    ap.add_argument("--sched", action="store_true", help="threads: also split the server core's "
                    "idle time by period length (perf sched record)")
    a = ap.parse_args()
    a.scenarios = [s for s in (a.scenarios or DEFAULT_SCENARIOS[a.mode]).split(",") if s]
    a.out = os.path.abspath(a.out or os.path.join(bench.REPO_DIR, "build", "bench",
                                                  "profile-" + time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(a.out, exist_ok=True)
    b = make_bench(a)
    r = Run(b, a)

    def on_signal(sig, _frame):
        raise KeyboardInterrupt(f"signal {sig}")
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    rc = 0
    try:
        if a.mode not in ("disk", "handoff", "layout"):
            b.backend = b.start_nginx("backend", "nginx-backend.conf.in", b.a.port_base + 10, {})
        md = MODES[a.mode](r, a)
        print(md)
        with open(os.path.join(a.out, f"{a.mode}.md"), "w") as f:
            f.write(md + "\n")
    except bench.Fail as ex:
        bench.log(f"error: {ex}")
        rc = 1
    except KeyboardInterrupt:
        rc = 130
    finally:
        b.procs.stop_all()
        shutil.rmtree(b.a.store_root, ignore_errors=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
