"""`idemproxy keys` run as root on a store that belongs to the service's user (issue 16): it
must never leave the store, or the lock file LMDB creates, to root."""
import os
import shutil
import tempfile
import unittest

import harness
from harness import lmdb_only, make_config, requires_proxy, run_cli, to_yaml

SCRATCH_UID = 65534  # nobody: stands for the service's DynamicUser= uid
SCRATCH_GID = 65534


@requires_proxy
@unittest.skipUnless(os.geteuid() == 0, "needs root: keys run as root on another user's store")
@lmdb_only("file ownership of the embedded store")
class KeysAsRootTest(unittest.TestCase):
    """The packaged layout in miniature: the store directory belongs to the service's uid and
    is reached through a root-only directory (/var/lib/private, 0700)."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="idemproxy-keys-root-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        private = os.path.join(self.tmp, "private")
        os.mkdir(private, 0o700)
        self.store = os.path.join(private, "idemproxy")
        self.config = os.path.join(self.tmp, "idemproxy.yaml")
        with open(self.config, "w") as f:
            f.write(to_yaml(make_config(harness.free_port(), self.store,
                                        "http://127.0.0.1:9")) + "\n")

    def make_service_store(self):
        os.mkdir(self.store, 0o700)
        os.chown(self.store, SCRATCH_UID, SCRATCH_GID)
        # A store the way the service leaves it: `forget` opens it for writing, creating it.
        r = run_cli(["keys", "forget", "--config", self.config, "--route", "payments", "--key",
                     "k"])
        self.assertEqual(r.returncode, 1, r.stderr)  # "not found"
        self.assertIn("not found", r.stdout)

    FILES = ("data.mdb", "lock.mdb", "wal", "wal.lock")  # wal*: the write-ahead log (store.wal)

    def owned_by(self, uid, gid):
        return {name: (uid, gid) for name in self.FILES}

    def owners(self):
        return {name: (os.stat(os.path.join(self.store, name)).st_uid,
                       os.stat(os.path.join(self.store, name)).st_gid)
                for name in sorted(os.listdir(self.store))}

    def test_keys_list_after_restore_leaves_the_store_to_its_owner(self):
        self.make_service_store()
        self.assertEqual(self.owners(), self.owned_by(SCRATCH_UID, SCRATCH_GID))
        os.remove(os.path.join(self.store, "lock.mdb"))  # what the documented restore does
        r = run_cli(["keys", "list", "--config", self.config])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ROUTE", r.stdout)
        self.assertEqual(self.owners(), self.owned_by(SCRATCH_UID, SCRATCH_GID))
        self.assertEqual(os.stat(self.store).st_uid, SCRATCH_UID)

    def test_keys_show_and_forget_act_as_the_owner_too(self):
        self.make_service_store()
        os.remove(os.path.join(self.store, "lock.mdb"))
        r = run_cli(["keys", "show", "--config", self.config, "--route", "payments", "--key",
                     "k"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertIn("no record", r.stderr)
        self.assertEqual(self.owners()["lock.mdb"], (SCRATCH_UID, SCRATCH_GID))

    def test_a_root_owned_store_stays_roots(self):
        os.mkdir(self.store, 0o700)
        r = run_cli(["keys", "forget", "--config", self.config, "--route", "payments", "--key",
                     "k"])
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertEqual(self.owners(), self.owned_by(0, 0))

    def test_a_missing_store_is_an_error_and_is_not_created(self):
        for args in (["list"], ["forget", "--route", "payments", "--key", "k"]):
            r = run_cli(["keys"] + args + ["--config", self.config])
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("cannot open the store", r.stderr)
            self.assertFalse(os.path.exists(self.store), args)


if __name__ == "__main__":
    unittest.main()
