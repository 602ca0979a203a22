"""Damage is reported, never hidden (SPEC §6): `keys list/show` and `store verify` exit 1 naming
what is wrong, and the daemon refuses a damaged store and says how to restore a backup."""
import os
import shutil
import subprocess
import unittest

from harness import ProxyTestCase, lmdb_only, requires_proxy, run_cli

MDB_COPY = shutil.which("mdb_copy")


def damage_record(data_file, key):
    """Overwrites the length field in front of every copy of `key` in the file (the live record
    and any stale copy on a free page), so that the record no longer decodes. Returns how many
    copies were changed."""
    with open(data_file, "r+b") as f:
        data = bytearray(f.read())
        needle = key.encode()
        n, pos = 0, data.find(needle)
        while pos != -1:
            data[pos - 4:pos] = b"\xff\xff\xff\x7f"
            n += 1
            pos = data.find(needle, pos + 1)
        f.seek(0)
        f.write(data)
    return n


@requires_proxy
@lmdb_only("damages the embedded store's data.mdb")
class StoreDamageTest(ProxyTestCase):
    def serve_three_keys(self):
        proxy = self.start_proxy()
        keys = [self.new_key("dmg%d" % i) for i in range(3)]
        answers = {k: self.post(proxy, key=k) for k in keys}
        for r in answers.values():
            self.assertEqual(r.status, 201, r)
        self.assertEqual(proxy.stop(), 0, proxy.stderr_tail())
        return proxy, keys, answers

    def test_sound_store_verifies(self):
        proxy, _, _ = self.serve_three_keys()
        r = run_cli(["store", "verify", "--config", proxy.config_path])
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("ok (3 records, 3 expiry index entries)", r.stdout)

    def test_undecodable_record_fails_keys_verify_and_daemon_start(self):
        proxy, keys, _ = self.serve_three_keys()
        store = proxy.config["store"]["path"]
        self.assertGreater(damage_record(os.path.join(store, "data.mdb"), keys[1]), 0)

        ls = run_cli(["keys", "list", "--config", proxy.config_path])
        self.assertEqual(ls.returncode, 1, ls.stdout)
        self.assertIn("is damaged", ls.stderr)
        self.assertIn("does not decode", ls.stderr)

        show = run_cli(["keys", "show", "--config", proxy.config_path, "--route", "payments",
                        "--key", keys[0], "--scope", self.AUTH])
        self.assertEqual(show.returncode, 1, show.stdout)
        self.assertIn("does not decode", show.stderr)

        verify = run_cli(["store", "verify", "--config", proxy.config_path])
        self.assertEqual(verify.returncode, 1, verify.stdout)
        self.assertIn("does not decode", verify.stderr)
        self.assertIn("mdb_copy", verify.stderr)

        run = subprocess.run([os.environ["IDEMPROXY_BIN"], "run", "--config", proxy.config_path],
                             capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL)
        self.assertNotEqual(run.returncode, 0, run.stderr)
        self.assertIn("is damaged", run.stderr)
        self.assertIn("mdb_copy", run.stderr)

    @unittest.skipUnless(MDB_COPY, "mdb_copy (lmdb-utils) is not installed")
    def test_restore_from_mdb_copy_backup_as_the_message_says(self):
        proxy, keys, answers = self.serve_three_keys()
        store = proxy.config["store"]["path"]
        backup = os.path.join(self.tmp, "backup")
        os.mkdir(backup, 0o700)
        subprocess.run([MDB_COPY, store, backup], check=True, timeout=30)
        damage_record(os.path.join(store, "data.mdb"), keys[2])
        self.assertEqual(run_cli(["store", "verify", "--config", proxy.config_path]).returncode, 1)
        # The restore: move the damaged directory aside, put the backup's data file in place.
        os.rename(store, store + ".damaged")
        os.mkdir(store, 0o700)
        shutil.copyfile(os.path.join(backup, "data.mdb"), os.path.join(store, "data.mdb"))
        self.assertEqual(run_cli(["store", "verify", "--config", proxy.config_path]).returncode, 0)
        proxy.restart()
        for k in keys:
            self.assertReplayOf(self.post(proxy, key=k), answers[k])
        self.assertCount(3)


if __name__ == "__main__":
    unittest.main()
