"""A throwaway PostgreSQL for the integration tests (tests/support/pg-cluster.sh): a unix socket
in its own directory, no TCP port. Standard library only."""
import os
import signal
import subprocess
import tempfile

import harness

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "support", "pg-cluster.sh")


def _script(*args):
    return subprocess.run([SCRIPT] + list(args), capture_output=True, text=True, timeout=180)


def _psql_bin():
    return "psql"


class Cluster:
    def __init__(self, directory, conninfo, owned):
        self.dir = directory
        self.conninfo = conninfo
        self.owned = owned
        self._schemas = 0

    @classmethod
    def start(cls):
        """A cluster of its own (a test may stop or freeze it); None when PostgreSQL is absent."""
        base = tempfile.mkdtemp(prefix="idemproxy-pg-")
        r = _script("start", os.path.join(base, "cluster"))
        if r.returncode == 77:
            return None
        if r.returncode != 0:
            raise RuntimeError("cannot start PostgreSQL: " + r.stderr)
        c = cls(os.path.join(base, "cluster"), r.stdout.strip(), True)
        c.base = base
        return c

    def fresh_schema(self):
        """A connection string whose search_path is a new, empty schema."""
        self._schemas += 1
        name = "it%d_%d" % (os.getpid(), self._schemas)
        self.sql("CREATE SCHEMA " + name)
        return self.conninfo + " options='-c search_path=%s'" % name

    def sql(self, statement, conninfo=None):
        r = subprocess.run([_psql_bin(), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                            "-d", conninfo or self.conninfo, "-c", statement],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            raise RuntimeError(r.stderr)
        return r.stdout.strip()

    def stop(self, mode="fast"):
        r = _script("stop", self.dir, mode)
        assert r.returncode == 0, r.stderr

    def restart(self):
        r = _script("restart", self.dir)
        assert r.returncode == 0, r.stderr

    def postmaster(self):
        with open(os.path.join(self.dir, "data", "postmaster.pid")) as f:
            return int(f.readline())

    def freeze(self, frozen):
        """SIGSTOP (or SIGCONT) the postmaster and all its children (the backends)."""
        pm = self.postmaster()
        sig = signal.SIGSTOP if frozen else signal.SIGCONT
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % entry) as f:
                    stat = f.read()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[1]) == pm:
                os.kill(int(entry), sig)
        os.kill(pm, sig)

    def destroy(self):
        if not self.owned:
            return
        try:
            self.freeze(False)
        except OSError:
            pass
        _script("destroy", self.dir)
        if not os.environ.get("IDEMPROXY_KEEP_TMP"):
            import shutil
            shutil.rmtree(self.base, ignore_errors=True)


_shared = None
_schemas = {}


def shared_cluster():
    """The cluster the ctest fixture started (IDEMPROXY_TEST_PG_DIR, reused as it is), else one
    of this process's own, stopped at exit."""
    global _shared
    if _shared is None:
        directory = os.environ.get("IDEMPROXY_TEST_PG_DIR")
        if directory:
            r = _script("start", directory)
            if r.returncode != 0:
                raise RuntimeError("cannot reach the fixture's PostgreSQL: " + r.stderr)
            _shared = Cluster(directory, r.stdout.strip(), False)
        else:
            _shared = Cluster.start()
            if _shared is None:
                raise RuntimeError("IDEMPROXY_TEST_STORE=postgres but PostgreSQL is not installed")
            import atexit
            atexit.register(_shared.destroy)
    return _shared


def store_for(store_path):
    """harness.store_settings for IDEMPROXY_TEST_STORE=postgres: a schema of its own on the shared
    cluster per LMDB store path, so proxies configured with one path share one key space and
    every test starts empty."""
    if store_path not in _schemas:
        _schemas[store_path] = shared_cluster().fresh_schema()
    return postgres_store(_schemas[store_path], timeout="2s")


def store_contents(conninfo):
    """harness.store_contents: every row of the records table, as text and with the raw bytes
    of its bytea columns (a text rendering would show those in hex)."""
    rows = shared_cluster().sql(
        "SELECT encode(convert_to(t::text, 'UTF8') || t.id || t.fingerprint || t.scope || "
        "t.headers || t.body, 'hex') FROM idemproxy_records t", conninfo)
    return [("idemproxy_records row %d" % i, bytes.fromhex(line))
            for i, line in enumerate(rows.split("\n")) if line]


def postgres_store(conninfo, **overrides):
    """The store: block of a config that uses PostgreSQL."""
    return {"backend": "postgres",
            "postgres": dict({"url": conninfo, "connections": 2, "timeout": "1s"}, **overrides)}


available = harness.IDEMPROXY_BIN and os.path.exists("/usr/lib/postgresql")
