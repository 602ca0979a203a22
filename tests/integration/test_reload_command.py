"""`idemproxy reload --config FILE --pid PID` (issue 16): the systemd unit's ExecReload=.
Validate, then SIGHUP; or fail with error lines and signal nothing."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import unittest

import harness
from harness import make_config, requires_proxy, run_cli, to_yaml


def pending_signals(pid):
    """The process's pending signals (shared and thread-directed) as a bit mask: kill(2) marks
    a blocked signal pending before it returns, so this shows synchronously what was sent."""
    mask = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(("ShdPnd:", "SigPnd:")):
                mask |= int(line.split()[1], 16)
    return mask


def sighup_pending(pid):
    return bool(pending_signals(pid) & (1 << (signal.SIGHUP - 1)))


@requires_proxy
class ReloadCommandTest(unittest.TestCase):
    """`idemproxy reload --config FILE --pid PID`: validate, then SIGHUP, or fail and send
    nothing. The target here is a process that blocks SIGHUP, so a sent signal stays pending."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="idemproxy-reload-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.target = subprocess.Popen(
            [sys.executable, "-c",
             "import signal, sys, time\n"
             "signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGHUP])\n"
             "print('ready', flush=True)\n"
             "time.sleep(120)\n"],
            stdout=subprocess.PIPE, text=True)
        self.addCleanup(self._stop_target)
        self.assertEqual(self.target.stdout.readline().strip(), "ready")

    def _stop_target(self):
        self.target.kill()
        self.target.wait(10)
        self.target.stdout.close()

    def write_config(self, extra=""):
        path = os.path.join(self.tmp, "idemproxy.yaml")
        with open(path, "w") as f:
            f.write(to_yaml(make_config(harness.free_port(), os.path.join(self.tmp, "store"),
                                        "http://127.0.0.1:9")) + "\n" + extra)
        return path

    def test_valid_file_signals_the_daemon(self):
        path = self.write_config()
        r = run_cli(["reload", "--config", path, "--pid", str(self.target.pid)])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(sighup_pending(self.target.pid))

    def test_invalid_file_fails_with_error_lines_and_sends_nothing(self):
        path = self.write_config("bogus_setting: 1\n")
        r = run_cli(["reload", "--config", path, "--pid", str(self.target.pid)])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertFalse(sighup_pending(self.target.pid))
        lines = [json.loads(l) for l in r.stderr.splitlines() if l.strip()]
        self.assertTrue(lines, r.stderr)
        for line in lines:
            self.assertEqual(line["level"], "error")
            self.assertEqual(line["event"], "reload-rejected")
        self.assertIn("bogus_setting", r.stderr)
        self.assertIn(path + ":", r.stderr)  # FILE:LINE:COL

    def test_missing_file_fails_and_sends_nothing(self):
        r = run_cli(["reload", "--config", os.path.join(self.tmp, "absent.yaml"), "--pid",
                     str(self.target.pid)])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertFalse(sighup_pending(self.target.pid))

    def test_refuses_pids_that_would_signal_more_than_one_process(self):
        path = self.write_config()
        for pid in ("0", "-1", "1", "abc", ""):
            r = run_cli(["reload", "--config", path, "--pid", pid])
            self.assertEqual(r.returncode, 2, "pid %r: %s" % (pid, r.stderr))
        r = run_cli(["reload", "--config", path])
        self.assertEqual(r.returncode, 2, r.stderr)


if __name__ == "__main__":
    unittest.main()
