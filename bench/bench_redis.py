"""Redis for the redis-new and redis-replay scenarios: a throwaway redis-server on a unix socket
in the run's directory (tests/support/redis-server.sh), on the same machine as everything else,
with the append-only file fsynced on every write (`appendfsync always`, what docs/operations.md
asks of a store that must not lose an answer). Each scenario gets a key prefix of its own.
Standard library only."""
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "tests", "support", "redis-server.sh")


def available():
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


class Server:
    def __init__(self, directory):
        self.dir = directory
        self.url = None
        self.prefixes = 0

    def start(self):
        r = subprocess.run([SCRIPT, "start", self.dir], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError("cannot start redis-server in %s: %s" % (self.dir, r.stderr.strip()))
        self.url = r.stdout.strip()
        return self

    def stop(self):
        if self.url:
            subprocess.run([SCRIPT, "stop", self.dir], capture_output=True, timeout=60)
            self.url = None

    def store_block(self, name):
        """The idemproxy store: block (YAML flow mapping) for a new, empty key prefix."""
        self.prefixes += 1
        prefix = "bench-%s-%d:" % (name, self.prefixes)
        return '{backend: redis, redis: {url: "%s", key_prefix: "%s", timeout: 5s}}' % (
            self.url, prefix)
