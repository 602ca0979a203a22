"""SPEC §5 (config errors name FILE:LINE:COL) and §6 (command line)."""
import os
import re
import shutil
import tempfile
import unittest

import harness
from harness import ProxyTestCase, make_config, requires_proxy, run_cli, to_yaml


@requires_proxy
class CliTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="idemproxy-cli-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def write(self, name, text):
        path = os.path.join(self.tmp, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def valid_config(self):
        return to_yaml(make_config(0, os.path.join(self.tmp, "store"),
                                   "http://127.0.0.1:9")) + "\n"

    def test_version(self):
        r = run_cli(["--version"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"\d+\.\d+(\.\d+)?")

    def test_help(self):
        r = run_cli(["--help"])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("check", r.stdout + r.stderr)

    def test_check_valid_config(self):
        path = self.write("ok.yaml", self.valid_config())
        r = run_cli(["check", "--config", path])
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)

    def test_check_unknown_key_names_file_line_column(self):
        text = self.valid_config().replace("  workers: 2\n", "  workers: 2\n  wrokers: 3\n", 1)
        lines = text.split("\n")
        line = lines.index("  wrokers: 3") + 1
        path = self.write("unknown.yaml", text)
        r = run_cli(["check", "--config", path])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("%s:%d:3" % (path, line), r.stdout + r.stderr)

    def test_check_unknown_key_in_a_route(self):
        text = self.valid_config().replace("      lease: 5s\n", "      lease: 5s\n      leese: 5s\n",
                                           1)
        line = text.split("\n").index("      leese: 5s") + 1
        path = self.write("route.yaml", text)
        r = run_cli(["check", "--config", path])
        self.assertEqual(r.returncode, 1)
        self.assertIn("%s:%d:7" % (path, line), r.stdout + r.stderr)

    def check_bad(self, old, new):
        text = self.valid_config()
        self.assertIn(old, text)
        text = text.replace(old, new, 1)
        line = text.split("\n").index(new.rstrip("\n").split("\n")[0]) + 1
        path = self.write("bad.yaml", text)
        r = run_cli(["check", "--config", path])
        self.assertEqual(r.returncode, 1, (new, r.stdout + r.stderr))
        self.assertRegex(r.stdout + r.stderr, re.escape("%s:%d:" % (path, line)) + r"\d+")

    def test_check_wrong_type(self):
        self.check_bad("  workers: 2\n", "  workers: many\n")

    def test_check_bad_duration(self):
        self.check_bad("      ttl: 24h\n", "      ttl: 5 parsecs\n")

    def test_check_bad_size(self):
        self.check_bad("  max_request_body: 4MiB\n", "  max_request_body: lots\n")

    def test_check_bad_enum(self):
        self.check_bad("      concurrent: wait\n", "      concurrent: sometimes\n")

    def test_check_timeout_not_shorter_than_lease(self):
        # upstream timeout 2s, lease 5s in the valid config; a lease of 1s is shorter.
        text = self.valid_config().replace("      lease: 5s\n", "      lease: 1s\n", 1)
        path = self.write("lease.yaml", text)
        r = run_cli(["check", "--config", path])
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn(path + ":", r.stdout + r.stderr)

    def test_check_unknown_upstream(self):
        self.check_bad("    upstream: backend\n    idempotency:\n",
                       "    upstream: nowhere\n    idempotency:\n")

    def test_run_refuses_an_invalid_config(self):
        path = self.write("bad.yaml", self.valid_config().replace("  workers: 2\n",
                                                                  "  workers: -4\n", 1))
        r = run_cli(["run", "--config", path], timeout=10)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(path + ":", r.stdout + r.stderr)


@requires_proxy
class RunWithoutSubcommandTest(ProxyTestCase):
    def test_run_is_the_default_command(self):
        proxy = harness.Proxy(self.tmp, self.config())
        proxy.command = lambda: [harness.IDEMPROXY_BIN, "-c", proxy.config_path]
        self.addCleanup(self._stop_proxy, proxy, True)
        proxy.start()
        k = self.new_key()
        r = self.post(proxy, key=k)
        self.assertEqual(r.status, 201)
        self.assertReplayOf(self.post(proxy, key=k), r)


if __name__ == "__main__":
    unittest.main()
