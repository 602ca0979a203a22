"""PostgreSQL for the pg-new and pg-replay scenarios: a throwaway cluster on a unix socket in
the run's directory (tests/support/pg-cluster.sh), on the same machine as everything else, with
fsync, full_page_writes and synchronous_commit on (the test suite turns fsync off; a benchmark
must not). Each scenario gets a schema of its own. Standard library only."""
import json
import os
import shutil
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "..", "tests", "support", "pg-cluster.sh")
DURABLE = "-c fsync=on -c full_page_writes=on -c synchronous_commit=on"


def available():
    return os.path.isdir("/usr/lib/postgresql") and shutil.which("psql") is not None


class Cluster:
    def __init__(self, directory):
        self.dir = directory
        self.conninfo = None
        self.schemas = 0

    def start(self):
        env = dict(os.environ, PG_CLUSTER_OPTIONS=DURABLE)
        r = subprocess.run([SCRIPT, "start", self.dir], capture_output=True, text=True,
                           timeout=180, env=env)
        if r.returncode != 0:
            raise RuntimeError("cannot start PostgreSQL in %s: %s" % (self.dir, r.stderr.strip()))
        self.conninfo = r.stdout.strip()
        return self

    def stop(self):
        if self.conninfo:
            subprocess.run([SCRIPT, "stop", self.dir], capture_output=True, timeout=120)
            subprocess.run([SCRIPT, "destroy", self.dir], capture_output=True, timeout=120)
            self.conninfo = None

    def store_block(self, name, connections=4):
        """The idemproxy store: block (YAML flow mapping) for a new, empty schema."""
        self.schemas += 1
        schema = "bench_%s_%d" % (name.replace("-", "_"), self.schemas)
        r = subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.conninfo,
                            "-c", "CREATE SCHEMA " + schema], capture_output=True, text=True,
                           timeout=60)
        if r.returncode != 0:
            raise RuntimeError("cannot create schema %s: %s" % (schema, r.stderr.strip()))
        url = self.conninfo + " options='-c search_path=%s'" % schema
        return "{backend: postgres, postgres: {url: %s, connections: %d, timeout: 5s}}" % (
            json.dumps(url), connections)
