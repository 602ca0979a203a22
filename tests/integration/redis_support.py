"""A throwaway redis-server for the integration tests (tests/support/redis-server.sh): a unix
socket in its own directory, no TCP port, the append-only file fsynced on every write.
Standard library only; redis-cli for the tests' own commands."""
import os
import shutil
import signal
import subprocess
import tempfile

import harness

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support",
                      "redis-server.sh")


def _script(*args):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=60)


class Server:
    def __init__(self, directory, url, owned, base=None):
        self.dir = directory
        self.url = url
        self.owned = owned
        self.base = base
        self._prefixes = 0

    @classmethod
    def start(cls):
        """A server of its own (a test may kill, freeze or starve it); None without redis."""
        base = tempfile.mkdtemp(prefix="idemproxy-redis-")
        d = os.path.join(base, "server")
        r = _script("start", d)
        if r.returncode == 77:
            return None
        if r.returncode != 0:
            raise RuntimeError("cannot start redis-server: " + r.stderr)
        return cls(d, r.stdout.strip(), True, base)

    @classmethod
    def shared(cls):
        """The ctest fixture's server (IDEMPROXY_TEST_REDIS_DIR), else one of its own."""
        d = os.environ.get("IDEMPROXY_TEST_REDIS_DIR")
        if not d:
            return cls.start()
        r = _script("start", d)
        if r.returncode != 0:
            raise RuntimeError("cannot reach the fixture's redis-server: " + r.stderr)
        return cls(d, r.stdout.strip(), False)

    def fresh_prefix(self):
        """A key prefix no other test uses: one key space per test on a shared server."""
        self._prefixes += 1
        return "it%d_%d_%s:" % (os.getpid(), self._prefixes, os.urandom(3).hex())

    def cli(self, *args):
        r = subprocess.run(["redis-cli", "-s", os.path.join(self.dir, "redis.sock")] +
                           list(args), capture_output=True, text=True, timeout=30)
        return r.stdout.strip()

    def pid(self):
        with open(os.path.join(self.dir, "redis.pid")) as f:
            return int(f.read().strip())

    def kill(self):
        """SIGKILL; the append-only file stays."""
        r = _script("stop", self.dir)
        assert r.returncode == 0, r.stderr

    def restart(self):
        """Start again from the append-only file."""
        r = _script("start", self.dir)
        assert r.returncode == 0, r.stderr

    def freeze(self, frozen):
        os.kill(self.pid(), signal.SIGSTOP if frozen else signal.SIGCONT)

    def destroy(self):
        if not self.owned:
            return
        try:
            self.freeze(False)
        except OSError:
            pass
        _script("stop", self.dir)
        if not os.environ.get("IDEMPROXY_KEEP_TMP"):
            shutil.rmtree(self.base, ignore_errors=True)


def redis_store(url, key_prefix, **overrides):
    """The store: block of a config that uses Redis."""
    return {"backend": "redis",
            "redis": dict({"url": url, "key_prefix": key_prefix, "timeout": "1s"}, **overrides)}


available = bool(harness.IDEMPROXY_BIN) and shutil.which("redis-server") is not None


_suite_server = None


def _suite():
    global _suite_server
    if _suite_server is None:
        _suite_server = Server.shared()
    return _suite_server


def store_for(store_path):
    """The store: block that runs a test written for LMDB against Redis (IDEMPROXY_TEST_STORE=
    redis): the fixture's server, one key space per LMDB store path, so proxies that share a
    path share a key space, as on LMDB."""
    import hashlib  # noqa: PLC0415
    prefix = "suite:" + hashlib.sha256(store_path.encode()).hexdigest()[:16] + ":"
    return redis_store(_suite().url, prefix)


def store_contents(redis_config):
    """Every record under the config's key prefix, as (key, raw HGETALL bytes) pairs."""
    sock = redis_config["url"][len("unix://"):]
    prefix = redis_config.get("key_prefix", "idemproxy:")
    keys = subprocess.run(["redis-cli", "-s", sock, "--scan", "--pattern", prefix + "{*}"],
                          capture_output=True, timeout=30).stdout.split()
    out = []
    for k in sorted(keys):
        raw = subprocess.run(["redis-cli", "-s", sock, "--raw", "HGETALL", k],
                             capture_output=True, timeout=30).stdout
        out.append((k.decode(), raw))
    return out
