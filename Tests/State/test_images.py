"""Images that grow (FORMAT.md, "Images grow"): a fresh `tessera up` holds a few steps of
disk per image, not the images' configured sizes, and `tessera status` shows both; a disk
that fills under a growing image is a clean error, and the image checks clean and takes
changes again once there is room.

Run by scripts/test with TESSERA=.build/release/tessera. The full-disk case needs root (a
small tmpfs is mounted for it).
"""

import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_cluster_state import MiB, TESSERA, LocalCluster  # noqa: E402


def held(path):
    """Bytes of disk under `path` (a file, or a folder's files), as du counts them."""
    if os.path.isfile(path):
        return os.stat(path).st_blocks * 512
    return sum(os.stat(os.path.join(d, f)).st_blocks * 512 for d, _, files in os.walk(path) for f in files)


class FreshUpTest(unittest.TestCase):
    def test_a_fresh_up_holds_little_disk_and_status_shows_it(self):
        c = LocalCluster()
        self.addCleanup(c.close)
        servers = [l for l in c.status() if "server" in l and "data_image" in l]
        self.assertEqual(len(servers), 3, c.status())
        images = 0
        for s in servers:
            # Configured sizes (the metadata image in whole pages after its log).
            self.assertTrue(511 * MiB < int(s["meta_image"]) <= 512 * MiB, s)
            self.assertEqual(int(s["data_image"]), 2048 * MiB, s)
            on_disk = int(s["meta_image_on_disk"]) + int(s["data_image_on_disk"])
            n = s["server"]
            # Read at two moments: a write in between may grow an image by a step.
            now = held(os.path.join(c.state, f"server-{n}", "meta.img")) + held(os.path.join(c.state, f"server-{n}", "data.img"))
            self.assertLessEqual(abs(on_disk - now), 8 * MiB + 64 * 1024, s)
            images += on_disk
        everything = held(c.state)
        print(f"fresh up: images {images / MiB:.1f} MiB on disk; the state folder {everything / MiB:.1f} MiB, "
              f"of which etcd {held(os.path.join(c.state, 'etcd')) / MiB:.1f} MiB")
        self.assertLess(images, 100 * MiB)
        out = subprocess.run([TESSERA, "status", "--dir", c.state], capture_output=True, text=True, timeout=60).stdout
        self.assertIn("on disk", out)


class FullDiskTest(unittest.TestCase):
    def setUp(self):
        if os.geteuid() != 0:
            self.skipTest("mounting a tmpfs needs root")
        self.dir = tempfile.mkdtemp(prefix="tessera-full-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tessera-full", self.dir], capture_output=True, text=True)
        if r.returncode != 0:
            self.skipTest(f"cannot mount a tmpfs: {r.stderr}")
        self.addCleanup(subprocess.run, ["umount", "-l", self.dir])

    def test_a_full_disk_is_a_clean_error_and_the_image_recovers_with_room(self):
        image = os.path.join(self.dir, "meta.img")
        r = subprocess.run([TESSERA, "mkfs", "--meta", image, "--size", "256M", "--log-size", "16M"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertTrue(255 * MiB < os.stat(image).st_size <= 256 * MiB)
        self.assertLess(held(image), 20 * MiB)
        # 100 MB of records into a 40 MB disk.
        r = subprocess.run([TESSERA, "debug", "fill", image, "--records", "100000", "--value-size", "1000"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 1, f"fill: exit {r.returncode} (a crash is negative): {r.stdout[-500:]} {r.stderr[-2000:]}")
        self.assertIn("cannot grow the image", r.stderr)
        self.assertIn("the disk under it is full", r.stderr)
        r = subprocess.run(["mount", "-o", "remount,size=400m", self.dir], capture_output=True, text=True)
        self.assertEqual(r.returncode, 0, r.stderr)
        # Recovery (the log replayed) and an audit of every tree.
        r = subprocess.run([TESSERA, "check", image], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, f"check after the disk filled: {r.stdout[-2000:]} {r.stderr[-2000:]}")
        # With room, the image takes the whole load.
        os.unlink(image)
        r = subprocess.run([TESSERA, "mkfs", "--meta", image, "--size", "256M", "--log-size", "16M"], capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 0, r.stderr)
        r = subprocess.run([TESSERA, "debug", "fill", image, "--records", "100000", "--value-size", "1000"], capture_output=True, text=True, timeout=300)
        self.assertEqual(r.returncode, 0, r.stderr[-2000:])


if __name__ == "__main__":
    unittest.main()
