"""Object data with a server down and after it (REPLICATION.md, "Object data"): writes of
every kind go on with a server failed in the map, every acknowledged byte reads back
through parity, and the server that returns (or a blank one put in its place) has its
units rebuilt before it is online, so that the next server to fail leaves everything
readable from it.

Each test runs `tessera up --s3 ADDR DIR` with short timings (test_cluster_state.py's
LocalCluster) and reads back through the gateway, which keeps no data cache. Run by
scripts/test with TESSERA=.build/release/tessera.
"""

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import pid_alive, random_bytes  # noqa: E402
from test_cluster_state import BUCKET, GRACE, MiB, TESSERA, TTL, LocalCluster, wait_for  # noqa: E402


class DataRepairTest(unittest.TestCase):
    def setUp(self):
        self.c = LocalCluster()
        self.expected = {}  # key in BUCKET -> bytes
        self.gone = set()

    def tearDown(self):
        self.c.close()

    # Helpers

    def put(self, key, body):
        self.c.s3.put_object(Bucket=BUCKET, Key=key, Body=body)
        self.expected[key] = body

    def write_file(self, name, body):
        with open(os.path.join(self.c.mnt, name), "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        self.expected[name] = body

    def check(self):
        """Every expected object reads back whole through S3; every removed one is gone."""
        for key, body in sorted(self.expected.items()):
            got = self.c.s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            self.assertEqual(len(got), len(body), key)
            self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(body).hexdigest(), key)
        for key in self.gone:
            with self.assertRaises(self.c.s3.exceptions.NoSuchKey):
                self.c.s3.get_object(Bucket=BUCKET, Key=key)

    def fail(self, n):
        self.c.kill(f"server-{n}")
        wait_for(f"server {n} failed in the map", lambda: self.c.map_states().get(n) == "failed", GRACE + TTL + 10)

    def repair_wait(self):
        r = subprocess.run([TESSERA, "repair", "--dir", self.c.state, "--wait", "--timeout", "240"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, f"tessera repair --wait: {r.stdout} {r.stderr}")
        self.assertEqual(set(self.c.map_states().values()), {"online"})

    def used_by(self, n):
        return next(int(l["data_used"]) for l in self.c.status() if l.get("server") == str(n) and "data_used" in l)

    def repair_of(self, n):
        line = next(l for l in self.c.status() if l.get("repair") == str(n))
        print(f"repair of server {n}: {line}")
        return line

    def repaired(self, *servers):
        """Whether the data walk of every one of `servers` is done (as `tessera status` says)."""
        lines = {l.get("repair"): l for l in self.c.status() if "repair" in l}
        return all(lines.get(str(n), {}).get("data") == "done" for n in servers)

    @contextlib.contextmanager
    def putting(self, seed):
        """PUTs `during-I` of growing bodies from a thread while the block runs; yields the
        acknowledged ones (key -> body), which are expected back. A PUT that fails (servers
        down) was not acknowledged and is not expected."""
        stop = threading.Event()
        written = {}

        def writer():
            i = 0
            while not stop.is_set():
                body = random_bytes(MiB + 4096 * i, seed + i)
                try:
                    self.c.s3.put_object(Bucket=BUCKET, Key=f"during-{i}", Body=body)
                    written[f"during-{i}"] = body
                except Exception:  # noqa: BLE001 - an unacknowledged PUT may fail; it is not expected back
                    time.sleep(0.2)
                i += 1

        t = threading.Thread(target=writer)
        t.start()
        try:
            yield written
        finally:
            stop.set()
            t.join()
        self.expected.update(written)

    def before(self):
        for i, size in enumerate([0, 1, 4096, 3 * MiB + 5, 9 * MiB]):
            self.put(f"before-{i}", random_bytes(size, 100 + i))
        self.write_file("before-file", random_bytes(5 * MiB + 3, 7))
        self.write_file("before-cut", random_bytes(3 * MiB, 8))
        self.put("before-del", random_bytes(2 * MiB, 9))
        self.write_file("before-unlink", random_bytes(1 * MiB, 10))

    # Tests

    def test_writes_go_on_with_a_server_failed_and_its_units_are_rebuilt_when_it_returns(self):
        c = self.c
        self.before()
        self.fail(1)
        # Every kind of write, with server 1's units skipped.
        for i, size in enumerate([1, 4096, MiB + 7, 20 * MiB]):
            self.put(f"while-{i}", random_bytes(size, 200 + i))
        self.write_file("while-file", random_bytes(20 * MiB, 12))
        up = c.s3.create_multipart_upload(Bucket=BUCKET, Key="while-multipart")
        parts = [random_bytes(5 * MiB, 300), random_bytes(3 * MiB + 1, 301)]
        etags = [c.s3.upload_part(Bucket=BUCKET, Key="while-multipart", UploadId=up["UploadId"], PartNumber=n + 1, Body=p)["ETag"] for n, p in enumerate(parts)]
        c.s3.complete_multipart_upload(Bucket=BUCKET, Key="while-multipart", UploadId=up["UploadId"],
                                       MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n + 1} for n, e in enumerate(etags)]})
        self.expected["while-multipart"] = b"".join(parts)
        # A read-modify-write inside an existing file, a truncation, removals.
        patch = random_bytes(100_000, 13)
        with open(os.path.join(c.mnt, "before-file"), "r+b") as f:
            f.seek(2 * MiB - 50_000)
            f.write(patch)
            f.flush()
            os.fsync(f.fileno())
        b = self.expected["before-file"]
        self.expected["before-file"] = b[:2 * MiB - 50_000] + patch + b[2 * MiB - 50_000 + len(patch):]
        os.truncate(os.path.join(c.mnt, "before-cut"), MiB + 17)
        self.expected["before-cut"] = self.expected["before-cut"][:MiB + 17]
        c.s3.delete_object(Bucket=BUCKET, Key="before-del")
        os.unlink(os.path.join(c.mnt, "before-unlink"))
        for key in ["before-del", "before-unlink"]:
            del self.expected[key]
            self.gone.add(key)
        self.check()  # degraded reads
        # Back: repaired (its units rebuilt), then online; then another server fails and
        # everything reads from the rebuilt units.
        c.up()
        self.repair_wait()
        done = self.repair_of(1)
        self.assertEqual(done.get("data"), "done", done)
        self.assertGreater(int(done["units"]), 0, "the units written while it was failed were rebuilt")
        self.assertGreater(int(done["data_written"]), 20 * MiB // 3, done)
        self.fail(2)
        self.check()
        c.up()
        self.repair_wait()
        # A second walk of a whole cluster rewrites nothing.
        r = subprocess.run([TESSERA, "repair", "--dir", c.state, "--id", "0", "--wait", "--timeout", "240"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr)
        again = self.repair_of(0)
        self.assertEqual((again.get("data"), again.get("units")), ("done", "0"), again)
        self.assertGreater(int(again["groups"]), 0, again)

    def test_a_replaced_server_gets_every_unit_back(self):
        c = self.c
        self.before()
        held = self.used_by(0)
        self.fail(0)
        self.put("while-0", random_bytes(7 * MiB, 400))  # 4 groups: at most 4 MiB of units on server 0
        for name in os.listdir(os.path.join(c.state, "server-0")):
            os.unlink(os.path.join(c.state, "server-0", name))
        r = subprocess.run([TESSERA, "replace", "--dir", c.state, "--id", "0"], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.repair_wait()
        done = self.repair_of(0)
        self.assertGreater(int(done["data_written"]), 10 * MiB, done)
        rebuilt = self.used_by(0)
        self.assertGreaterEqual(rebuilt, held * 0.95, f"server 0 held {held} bytes of data, {rebuilt} once replaced")
        self.assertLessEqual(rebuilt, held * 1.05 + 4 * MiB, f"server 0 held {held} bytes of data, {rebuilt} once replaced")
        for other in [1, 2]:
            self.fail(other)
            self.check()
            c.up()
            self.repair_wait()

    def test_a_server_killed_mid_write_and_started_again_at_once_is_repaired(self):
        """A SIGKILL loses what a server answered at tx_close and had not logged; started
        again within the grace period it is never failed, but it comes back `repairing`
        (it did not stop cleanly), serves no data until its units are checked, and writers
        wait for it meanwhile."""
        c = self.c
        self.before()
        with self.putting(500) as written:
            time.sleep(1)
            c.kill("server-2")
            c.up()
            time.sleep(2)
        self.assertGreater(len(written), 2)
        self.repair_wait()
        self.fail(0)
        self.check()
        c.up()
        self.repair_wait()

    def test_two_servers_killed_together_and_started_again_are_both_repaired(self):
        """Two of three servers SIGKILLed together and started again at once: each comes
        back `repairing`, and the repair of each would wait for the other to be online. The
        one that left last takes its place `unrepaired`, the other is repaired, then the
        first is walked again (REPLICATION.md, "Two or more back at once"). Every
        acknowledged write reads back, and afterwards any one server can fail."""
        c = self.c
        self.before()
        with self.putting(700):
            time.sleep(1)
            pids = [c.pid("server-1"), c.pid("server-2")]
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            for pid in pids:
                wait_for(f"pid {pid} to exit", lambda pid=pid: not pid_alive(pid), 60)
            c.up()
            # Both back: one online unrepaired, the other repaired, then the first walked again.
            wait_for("one of them online unrepaired, or both repaired",
                     lambda: "online-unrepaired" in c.map_states().values() or self.repaired(1, 2), 60)
            self.put("between", random_bytes(3 * MiB, 800))
        self.repair_wait()
        for n in [1, 2]:
            done = self.repair_of(n)
            self.assertEqual(done.get("data"), "done", done)
        self.check()
        self.fail(0)
        self.check()
        c.up()
        self.repair_wait()

    def fsck(self):
        r = subprocess.run([TESSERA, "fsck", "--dir", self.c.state], capture_output=True, text=True, timeout=300)
        print(f"fsck: exit {r.returncode}: {r.stdout[-1500:]} {r.stderr[-500:]}")
        return r

    def test_fsck_finds_bad_blocks_and_scrub_mends_them(self):
        """`tessera fsck` exits 0 on a clean cluster, 1 with the problems listed once blocks
        of a data image go bad, 2 with a server down; `tessera scrub` rebuilds the bad units
        from parity, after which fsck is clean again and every object reads back."""
        c = self.c
        self.before()
        for i in range(20):
            self.put(f"small-{i}", random_bytes(300_000, 600 + i))
        r = self.fsck()
        self.assertEqual(r.returncode, 0)
        self.assertIn("clean", r.stdout)
        # Flip one byte in each of many blocks of server 1's data image (past its header).
        path = os.path.join(c.state, "server-1", "data.img")
        with open(path, "r+b") as f:
            for block in range(1, 3000):
                f.seek(block * 4096 + 100)
                b = f.read(1)
                f.seek(block * 4096 + 100)
                f.write(bytes([b[0] ^ 0xFF]))
        r = self.fsck()
        self.assertEqual(r.returncode, 1)
        self.assertIn("failed its CRC32C check", r.stdout)
        r = subprocess.run([TESSERA, "scrub", "--dir", c.state], capture_output=True, text=True, timeout=600)
        print(f"scrub: exit {r.returncode}: {r.stdout[-2000:]} {r.stderr[-500:]}")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("walking server 1 again", r.stdout)
        r = self.fsck()
        self.assertEqual(r.returncode, 0)
        self.fail(2)  # everything now reads with server 1's rebuilt units
        self.check()
        r = self.fsck()
        self.assertEqual(r.returncode, 2, "a server down: the cluster cannot be checked")
        self.assertIn("server 2", r.stderr)
        c.up()
        self.repair_wait()


if __name__ == "__main__":
    unittest.main()
