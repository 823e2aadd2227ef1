"""The mount, end to end: `tessera up --s3 ADDR DIR` in a temporary state folder, then real
tools and system calls on DIR, and boto3 through the gateway on the same bucket.

Run by scripts/test with TESSERA=.build/release/tessera. Every process started here is
stopped by its pid (from the state folder's pid files), every mount is unmounted, and the
temporary folder is removed.
"""

import ctypes
import errno
import mmap
import os
import sys
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import time
import unittest

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import free_port, read_pid, pid_alive, is_mounted, wait_until  # noqa: E402

TESSERA = os.environ.get("TESSERA", os.path.join(os.path.dirname(__file__), "../../.build/release/tessera"))
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "../.."))
BUCKET = "tessera"


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
_libc = ctypes.CDLL(None, use_errno=True)


def renameat2(a, b, flags):
    AT_FDCWD = -100
    if _libc.renameat2(AT_FDCWD, a.encode(), AT_FDCWD, b.encode(), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


class MountTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="tessera-fs-")
        cls.state = os.path.join(cls.tmp, "state")
        cls.mnt = os.path.join(cls.tmp, "mnt")
        cls.port = free_port()
        try:
            cls.up()
        except BaseException:
            cls.tearDownClass()  # unittest skips it when setUpClass fails
            raise

    @classmethod
    def up(cls):
        r = subprocess.run(
            [TESSERA, "up", "--dir", cls.state, "--data-size", "3G", "--ttl", "2s", "--grace", "2s", "--sweep-interval", "1s",
             "--s3", f"127.0.0.1:{cls.port}", cls.mnt],
            capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"tessera up failed: {r.stderr}")
        out = r.stdout
        env = dict(line[len("export "):].split("=", 1) for line in out.splitlines() if line.startswith("export "))
        cls.s3 = boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
            config=Config(retries={"max_attempts": 1}))

    @classmethod
    def pids(cls):
        names = ["mount.pid", "gateway.pid", "etcd.pid"] + [f"server-{i}.pid" for i in range(3)]
        return [p for p in (read_pid(os.path.join(cls.state, n)) for n in names) if p]

    @classmethod
    def tearDownClass(cls):
        subprocess.run([TESSERA, "down", "--dir", cls.state], capture_output=True, timeout=180)
        if is_mounted(cls.mnt):
            subprocess.run(["fusermount3", "-u", "-z", cls.mnt])
        for pid in cls.pids():
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def path(self, *parts):
        return os.path.join(self.mnt, *parts)

    @staticmethod
    def read(path):
        with open(path, "rb") as f:
            return f.read()

    def remount(self):
        """Unmounts (the daemon exits), then mounts again with `tessera up`."""
        pid = read_pid(os.path.join(self.state, "mount.pid"))
        subprocess.run(["fusermount3", "-u", self.mnt], check=True)
        deadline = time.time() + 60
        while pid and pid_alive(pid) and time.time() < deadline:
            time.sleep(0.05)
        self.assertFalse(pid and pid_alive(pid), "the mount daemon outlived its unmount")
        self.assertFalse(is_mounted(self.mnt))
        self.up()

    # --- trees -----------------------------------------------------------------------

    def test_copy_real_tree(self):
        sources = [d for d in ["/usr/share/zoneinfo", "/usr/lib/python3.11", "/usr/include/linux"] if os.path.isdir(d)]
        self.assertTrue(sources)
        os.mkdir(self.path("trees"))
        count = 0
        for src in sources:
            dst = self.path("trees", os.path.basename(src))
            subprocess.run(["cp", "-a", src, dst], check=True)
            subprocess.run(["diff", "-r", "--no-dereference", src, dst], check=True)
            for dirpath, dirs, files in os.walk(src):
                count += len(dirs) + len(files)
                for name in files:
                    a, b = os.lstat(os.path.join(dirpath, name)), os.lstat(os.path.join(dst, os.path.relpath(dirpath, src), name))
                    self.assertEqual((a.st_mode, a.st_size, a.st_uid, a.st_gid, a.st_mtime_ns), (b.st_mode, b.st_size, b.st_uid, b.st_gid, b.st_mtime_ns), name)
        self.assertGreater(count, 2000)
        listing = subprocess.run(["ls", "-lR", self.path("trees")], check=True, capture_output=True, text=True).stdout
        self.assertIn("total", listing)

    # --- attributes ------------------------------------------------------------------

    def test_stat_shows_sizes_modes_owners_links_times(self):
        p = self.path("attrs.bin")
        with open(p, "wb") as f:
            f.write(b"x" * 123457)
        os.chmod(p, 0o640)
        os.chown(p, 1234, 5678)
        os.utime(p, ns=(1_000_000_001, 2_000_000_002))
        st = os.stat(p)
        self.assertEqual(st.st_size, 123457)
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o640)
        self.assertTrue(stat.S_ISREG(st.st_mode))
        self.assertEqual((st.st_uid, st.st_gid, st.st_nlink), (1234, 5678, 1))
        self.assertEqual((st.st_atime_ns, st.st_mtime_ns), (1_000_000_001, 2_000_000_002))
        before = os.stat(p).st_ctime_ns
        time.sleep(0.01)
        os.chmod(p, 0o600)
        self.assertGreater(os.stat(p).st_ctime_ns, before)
        # mtime and ctime move on write and truncate.
        m = os.stat(p).st_mtime_ns
        with open(p, "r+b") as f:
            f.write(b"y")
        self.assertGreater(os.stat(p).st_mtime_ns, m)
        m = os.stat(p).st_mtime_ns
        os.truncate(p, 10)
        self.assertGreater(os.stat(p).st_mtime_ns, m)
        ls = subprocess.run(["ls", "-ln", p], check=True, capture_output=True, text=True).stdout.split()
        self.assertEqual(ls[0], "-rw-------")
        self.assertEqual(ls[1:5], ["1", "1234", "5678", "10"])

    def test_truncate_up_and_down_and_holes(self):
        p = self.path("holes")
        with open(p, "wb") as f:
            f.seek(5_000_000)
            f.write(b"end")
        with open(p, "rb") as f:
            data = f.read()
        self.assertEqual(len(data), 5_000_003)
        self.assertEqual(data[:5_000_000], bytes(5_000_000))
        os.truncate(p, 4)
        os.truncate(p, 5_000_003)
        with open(p, "rb") as f:
            self.assertEqual(f.read(), bytes(5_000_003))

    def test_open_flags(self):
        p = self.path("flags")
        fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.write(fd, b"hello")
        os.close(fd)
        with self.assertRaises(FileExistsError):
            os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        fd = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b" world")
        os.close(fd)
        with open(p, "rb") as f:
            self.assertEqual(f.read(), b"hello world")
        fd = os.open(p, os.O_WRONLY | os.O_TRUNC)
        os.close(fd)
        self.assertEqual(os.stat(p).st_size, 0)

    def test_long_names(self):
        with self.assertRaises(OSError) as e:
            open(self.path("n" * 256), "w")
        self.assertEqual(e.exception.errno, errno.ENAMETOOLONG)
        open(self.path("n" * 255), "w").close()
        deep = self.path("deep")
        os.mkdir(deep)
        part = "d" * 200
        with self.assertRaises(OSError) as e:
            cur = deep
            for _ in range(6):
                cur = os.path.join(cur, part)
                os.mkdir(cur)
        self.assertEqual(e.exception.errno, errno.ENAMETOOLONG)

    # --- namespace -------------------------------------------------------------------

    def test_rename_files_and_directories(self):
        os.makedirs(self.path("r1", "sub"))
        with open(self.path("r1", "sub", "f"), "w") as f:
            f.write("one")
        ino = os.stat(self.path("r1", "sub", "f")).st_ino
        os.rename(self.path("r1"), self.path("r2"))
        self.assertFalse(os.path.exists(self.path("r1")))
        with open(self.path("r2", "sub", "f")) as f:
            self.assertEqual(f.read(), "one")
        self.assertEqual(os.stat(self.path("r2", "sub", "f")).st_ino, ino)
        # Replacing an existing file.
        with open(self.path("r2", "g"), "w") as f:
            f.write("two")
        os.rename(self.path("r2", "g"), self.path("r2", "sub", "f"))
        with open(self.path("r2", "sub", "f")) as f:
            self.assertEqual(f.read(), "two")
        # Onto a non-empty directory, a directory into itself.
        os.mkdir(self.path("r3"))
        with self.assertRaises(OSError) as e:
            os.rename(self.path("r3"), self.path("r2"))
        self.assertIn(e.exception.errno, (errno.ENOTEMPTY, errno.EEXIST))
        with self.assertRaises(OSError) as e:
            os.rename(self.path("r2"), self.path("r2", "sub", "x"))
        self.assertEqual(e.exception.errno, errno.EINVAL)
        # RENAME_NOREPLACE and RENAME_EXCHANGE (renameat2).
        with open(self.path("r3", "a"), "w") as f:
            f.write("A")
        with open(self.path("r3", "b"), "w") as f:
            f.write("B")
        with self.assertRaises(OSError) as e:
            renameat2(self.path("r3", "a"), self.path("r3", "b"), RENAME_NOREPLACE)
        self.assertEqual(e.exception.errno, errno.EEXIST)
        renameat2(self.path("r3", "a"), self.path("r3", "b"), RENAME_EXCHANGE)
        with open(self.path("r3", "a")) as f:
            self.assertEqual(f.read(), "B")
        with open(self.path("r3", "b")) as f:
            self.assertEqual(f.read(), "A")
        renameat2(self.path("r3"), self.path("r2"), RENAME_EXCHANGE)
        self.assertTrue(os.path.exists(self.path("r3", "sub", "f")))
        self.assertTrue(os.path.exists(self.path("r2", "a")))

    def test_ctime_moves_on_rename_link_and_unlink(self):
        """POSIX: rename changes the moved entry's ctime, link and unlink that of the file
        (which keeps its other names), and each changes the parents' mtime and ctime."""
        os.mkdir(self.path("ct-a"))
        os.mkdir(self.path("ct-b"))
        f = self.path("ct-a", "f")
        with open(f, "w") as out:
            out.write("x")

        def moved(path, *parents):
            before = [os.stat(p) for p in (path,) + parents]
            time.sleep(0.01)
            return before

        def check(before, path, *parents, what):
            self.assertGreater(os.stat(path).st_ctime_ns, before[0].st_ctime_ns, f"ctime of the file after {what}")
            for st, p in zip(before[1:], parents):
                now = os.stat(p)
                self.assertGreater(now.st_mtime_ns, st.st_mtime_ns, f"mtime of {p} after {what}")
                self.assertGreater(now.st_ctime_ns, st.st_ctime_ns, f"ctime of {p} after {what}")

        before = moved(f, self.path("ct-a"), self.path("ct-b"))
        g = self.path("ct-b", "g")
        os.rename(f, g)
        check(before, g, self.path("ct-a"), self.path("ct-b"), what="rename")
        before = moved(g, self.path("ct-a"))
        h = self.path("ct-a", "h")
        os.link(g, h)
        check(before, g, self.path("ct-a"), what="link")
        before = moved(g, self.path("ct-a"))
        os.unlink(h)
        check(before, g, self.path("ct-a"), what="unlink of another name")
        # A directory moved between parents.
        d = self.path("ct-a", "d")
        os.mkdir(d)
        before = moved(d, self.path("ct-a"), self.path("ct-b"))
        os.rename(d, self.path("ct-b", "d"))
        check(before, self.path("ct-b", "d"), self.path("ct-a"), self.path("ct-b"), what="rename of a directory")
        # Every attribute change, and every data change, of the file.
        changes = [
            ("chmod", lambda: os.chmod(g, 0o600)), ("chown", lambda: os.chown(g, 4321, 8765)),
            ("utime", lambda: os.utime(g, ns=(5, 6))), ("setxattr", lambda: os.setxattr(g, "user.k", b"v")),
            ("removexattr", lambda: os.removexattr(g, "user.k")), ("truncate", lambda: os.truncate(g, 100)),
        ]
        for what, change in changes:
            before = moved(g)
            change()
            check(before, g, what=what)
        before = moved(g)
        with open(g, "r+b") as out:
            out.write(b"y")
        check(before, g, what="write")

    def test_hard_links_share_attributes(self):
        a, b = self.path("hl-a"), self.path("hl-b")
        with open(a, "w") as f:
            f.write("shared")
        os.link(a, b)
        self.assertEqual(os.stat(a).st_nlink, 2)
        self.assertEqual(os.stat(a).st_ino, os.stat(b).st_ino)
        os.chmod(b, 0o600)
        with open(b, "a") as f:
            f.write("+more")
        with open(a) as f:
            self.assertEqual(f.read(), "shared+more")
        self.assertEqual(stat.S_IMODE(os.stat(a).st_mode), 0o600)
        os.unlink(a)
        self.assertEqual(os.stat(b).st_nlink, 1)
        with open(b) as f:
            self.assertEqual(f.read(), "shared+more")
        # Through S3 the link reads as the file.
        self.assertEqual(self.s3.get_object(Bucket=BUCKET, Key="hl-b")["Body"].read(), b"shared+more")

    def test_symlinks_and_special_files(self):
        os.symlink("some/target", self.path("sl"))
        self.assertEqual(os.readlink(self.path("sl")), "some/target")
        self.assertTrue(stat.S_ISLNK(os.lstat(self.path("sl")).st_mode))
        self.assertEqual(os.lstat(self.path("sl")).st_size, len("some/target"))
        os.mkfifo(self.path("fifo"))
        self.assertTrue(stat.S_ISFIFO(os.stat(self.path("fifo")).st_mode))
        os.mknod(self.path("chr"), 0o600 | stat.S_IFCHR, os.makedev(1, 3))
        st = os.stat(self.path("chr"))
        self.assertTrue(stat.S_ISCHR(st.st_mode))
        self.assertEqual((os.major(st.st_rdev), os.minor(st.st_rdev)), (1, 3))

    def test_xattrs(self):
        p = self.path("xa")
        open(p, "w").close()
        os.setxattr(p, "user.color", b"blue")
        self.assertEqual(os.getxattr(p, "user.color"), b"blue")
        with self.assertRaises(OSError) as e:
            os.setxattr(p, "user.color", b"red", os.XATTR_CREATE)
        self.assertEqual(e.exception.errno, errno.EEXIST)
        with self.assertRaises(OSError) as e:
            os.setxattr(p, "user.size", b"big", os.XATTR_REPLACE)
        self.assertEqual(e.exception.errno, errno.ENODATA)
        os.setxattr(p, "user.color", b"red", os.XATTR_REPLACE)
        os.setxattr(p, "user.size", b"big")
        self.assertEqual(sorted(os.listxattr(p)), ["user.color", "user.size"])
        os.removexattr(p, "user.color")
        self.assertEqual(os.listxattr(p), ["user.size"])
        with self.assertRaises(OSError) as e:
            os.getxattr(p, "user.color")
        self.assertEqual(e.exception.errno, errno.ENODATA)

    def test_minimal_acl_is_a_chmod_and_others_are_refused(self):
        def acl(*entries):
            return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", t, perm, i) for t, perm, i in entries)
        none = 0xFFFFFFFF
        paths = []
        for closed in (True, False):
            p = self.path(f"acl-{int(closed)}")
            paths.append(p)
            with open(p, "w") as f:
                f.write("x")
            os.chmod(p, 0o2644)
            f = None if closed else open(p, "r+")
            # owner rwx, group r-x, other ---: the mode's bits, kept set-group-ID (root).
            os.setxattr(p, "system.posix_acl_access", acl((1, 7, none), (4, 5, none), (0x20, 0, none)))
            self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o2750)
            with self.assertRaises(OSError) as e:
                os.getxattr(p, "system.posix_acl_access")
            self.assertEqual(e.exception.errno, errno.ENODATA)
            # A named user and a mask: not kept, so refused, and the mode stays.
            with self.assertRaises(OSError) as e:
                os.setxattr(p, "system.posix_acl_access", acl((1, 7, none), (2, 5, 1000), (4, 5, none), (0x10, 5, none), (0x20, 0, none)))
            self.assertEqual(e.exception.errno, errno.EOPNOTSUPP)
            self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o2750)
            if f:
                f.close()
        self.remount()
        for p in paths:
            self.assertEqual(stat.S_IMODE(os.stat(p).st_mode), 0o2750, p)

    def test_open_unlinked_file_lives_until_closed(self):
        p = self.path("ul")
        with open(p, "w+b") as f:
            f.write(b"abc" * 100000)
            f.flush()
            os.unlink(p)
            self.assertFalse(os.path.exists(p))
            f.write(b"tail")
            f.flush()
            f.seek(0)
            self.assertEqual(f.read(), b"abc" * 100000 + b"tail")
        self.assertFalse(os.path.exists(p))

    def test_read_of_freed_data_is_eio(self):
        # The file's data object freed behind the mount's back (as a wrong free would): a
        # read is EIO, logged with the object's fid, never zeros.
        data = os.urandom(3 * 1024 * 1024 + 17)
        p = self.path("freed.bin")
        with open(p, "wb") as f:
            f.write(data)
        out = subprocess.run([TESSERA, "debug", "free-data", "--dir", self.state, BUCKET, "freed.bin"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        fid = out.split()[0]
        # Each open drops the kernel's cached pages, so the read reaches the servers.
        for offset in [0, 2 * 1024 * 1024]:
            with open(p, "rb") as f:
                f.seek(offset)
                with self.assertRaises(OSError) as e:
                    f.read(4096)
                self.assertEqual(e.exception.errno, errno.EIO, offset)
        self.assertEqual(os.stat(p).st_size, len(data))
        with open(os.path.join(self.state, "mount.log")) as f:
            lines = [line for line in f if fid in line]
        self.assertTrue(any("error" in line for line in lines), lines)
        os.unlink(p)

    def test_rmdir_and_errors(self):
        os.mkdir(self.path("rd"))
        open(self.path("rd", "f"), "w").close()
        with self.assertRaises(OSError) as e:
            os.rmdir(self.path("rd"))
        self.assertEqual(e.exception.errno, errno.ENOTEMPTY)
        os.unlink(self.path("rd", "f"))
        os.rmdir(self.path("rd"))
        with self.assertRaises(FileNotFoundError):
            os.stat(self.path("rd"))

    def test_statfs_shows_cluster_capacity(self):
        st = os.statvfs(self.mnt)
        total = st.f_blocks * st.f_frsize
        # Three 3 GiB data images at 2+1 parity: 6 GiB of file data.
        self.assertGreater(total, 5 << 30)
        self.assertLess(total, 7 << 30)
        self.assertLessEqual(st.f_bavail, st.f_blocks)
        self.assertEqual(st.f_namemax, 255)

    def test_permissions_are_checked(self):
        d = self.path("perm")
        os.mkdir(d, 0o755)
        os.chmod(d, 0o755)
        r = subprocess.run(["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "touch", os.path.join(d, "x")], capture_output=True)
        self.assertNotEqual(r.returncode, 0, "an unprivileged user wrote into a 0755 root directory")
        os.chmod(d, 0o1777)
        open(os.path.join(d, "root-file"), "w").close()
        r = subprocess.run(["setpriv", "--reuid=4242", "--regid=4242", "--clear-groups", "rm", "-f", os.path.join(d, "root-file")], capture_output=True)
        self.assertNotEqual(r.returncode, 0, "the sticky bit did not protect another user's file")
        self.assertTrue(os.path.exists(os.path.join(d, "root-file")))

    # --- the mount and S3 ------------------------------------------------------------

    def test_file_written_in_mount_reads_through_s3(self):
        data = os.urandom(3 * 1024 * 1024 + 17)
        with open(self.path("to-s3.bin"), "wb") as f:
            f.write(data)
        got = self.s3.get_object(Bucket=BUCKET, Key="to-s3.bin")
        self.assertEqual(got["Body"].read(), data)
        # Not an MD5 (FILESYSTEM.md): shaped like a multipart ETag, so clients do not check it.
        self.assertRegex(got["ETag"].strip('"'), r"^[0-9a-f]{32}-1$")
        os.makedirs(self.path("s3dir", "inner"))
        with open(self.path("s3dir", "inner", "f.txt"), "w") as f:
            f.write("nested")
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=BUCKET, Prefix="s3dir/")["Contents"]]
        self.assertIn("s3dir/inner/f.txt", keys)

    def test_object_put_through_s3_reads_in_mount(self):
        data = os.urandom(5 * 1024 * 1024 + 3)
        self.s3.put_object(Bucket=BUCKET, Key="from-s3/deep/obj.bin", Body=data)
        with open(self.path("from-s3", "deep", "obj.bin"), "rb") as f:
            self.assertEqual(f.read(), data)
        self.assertTrue(os.path.isdir(self.path("from-s3")))
        # An overwrite through S3 is what the next open sees.
        data2 = os.urandom(1000)
        self.s3.put_object(Bucket=BUCKET, Key="from-s3/deep/obj.bin", Body=data2)
        with open(self.path("from-s3", "deep", "obj.bin"), "rb") as f:
            self.assertEqual(f.read(), data2)

    def test_pages_cached_in_the_mount_give_way_to_a_put_at_the_next_open(self):
        # The kernel keeps a file's pages while it is open (a stat showing a new mtime does
        # not drop them); the next open after a change through S3 drops them.
        p = self.path("cached.bin")
        old = os.urandom(300_000)
        with open(p, "wb") as f:
            f.write(old)
        with open(p, "rb") as f:
            self.assertEqual(f.read(), old)
            self.assertEqual(f.read(), b"")  # the pages are in the kernel's cache now
        new = os.urandom(300_000)  # same size
        self.s3.put_object(Bucket=BUCKET, Key="cached.bin", Body=new)
        with open(p, "rb") as f:
            self.assertEqual(f.read(), new)

    def test_small_files_in_their_entries_read_through_s3_as_they_change(self):
        # Files up to about 3.8 KiB keep their data in their entry (FileData.swift); growing past
        # that moves it to an object, truncating to nothing brings it back.
        p = self.path("small.bin")
        expect = b""
        for step in [b"a" * 10, os.urandom(1500), os.urandom(3000), os.urandom(5000), os.urandom(70000)]:
            with open(p, "ab") as f:
                f.write(step)
            expect += step
            got = self.s3.get_object(Bucket=BUCKET, Key="small.bin")["Body"].read()
            self.assertEqual(got, expect, len(expect))
            r = self.s3.get_object(Bucket=BUCKET, Key="small.bin", Range="bytes=5-9")["Body"].read()
            self.assertEqual(r, expect[5:10])
        os.truncate(p, 100)
        self.assertEqual(self.s3.get_object(Bucket=BUCKET, Key="small.bin")["Body"].read(), expect[:100])
        with open(p, "wb") as f:
            f.write(b"again")
        self.assertEqual(self.s3.get_object(Bucket=BUCKET, Key="small.bin")["Body"].read(), b"again")
        with open(p, "r+b") as f:
            f.seek(1000)
            f.write(b"z")
        self.assertEqual(open(p, "rb").read(), b"again" + bytes(995) + b"z")
        self.s3.copy_object(Bucket=BUCKET, Key="small-copy.bin", CopySource=f"{BUCKET}/small.bin")
        self.assertEqual(open(self.path("small-copy.bin"), "rb").read(), b"again" + bytes(995) + b"z")
        os.unlink(p)
        # An unlink is written behind: S3 sees it within milliseconds (SEMANTICS.md).
        deadline = time.time() + 2
        while self.s3.list_objects_v2(Bucket=BUCKET, Prefix="small.bin").get("Contents") and time.time() < deadline:
            time.sleep(0.01)
        self.assertEqual(self.s3.list_objects_v2(Bucket=BUCKET, Prefix="small.bin").get("Contents", []), [])

    def test_writes_in_mount_drop_checksums_stored_by_s3(self):
        self.s3.put_object(Bucket=BUCKET, Key="summed.txt", Body=b"from s3", ChecksumAlgorithm="CRC32")
        with open(self.path("summed.txt"), "ab") as f:
            f.write(b" and the mount")
        got = self.s3.get_object(Bucket=BUCKET, Key="summed.txt", ChecksumMode="ENABLED")
        self.assertEqual(got["Body"].read(), b"from s3 and the mount")
        self.assertNotIn("ChecksumCRC32", got)

    def test_forgotten_names_and_prefetched_reads_still_see_s3(self):
        # After the kernel drops its caches the mount answers for names it knows from its
        # retired inodes, and an open reads the first group while it checks the entry
        # (FileSystem.open): both must still show what S3 changed.
        os.mkdir(self.path("forgot"))
        big = os.urandom(100_000)
        for name, data in [("a.bin", big), ("b.txt", b"small")]:
            with open(self.path("forgot", name), "wb") as f:
                f.write(data)
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("2\n")
        new_big = os.urandom(100_000)  # same size: only the object changes
        self.s3.put_object(Bucket=BUCKET, Key="forgot/a.bin", Body=new_big)
        self.s3.delete_object(Bucket=BUCKET, Key="forgot/b.txt")
        wait_until(lambda: self.read(self.path("forgot", "a.bin")) == new_big, "the mount to read the object S3 wrote")
        wait_until(lambda: not os.path.exists(self.path("forgot", "b.txt")), "the name S3 deleted to go")
        # The kernel still holds the name: the open reads ahead from the object the mount
        # knew, and must drop that when the entry names another.
        newer = os.urandom(100_000)
        self.s3.put_object(Bucket=BUCKET, Key="forgot/a.bin", Body=newer)
        with open(self.path("forgot", "a.bin"), "rb") as f:
            self.assertEqual(f.read(), newer)
        # And without S3 in between, the data read ahead at open is the file's.
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        with open(self.path("forgot", "a.bin"), "rb") as f:
            self.assertEqual(f.read(), newer)

    def test_s3_changes_reach_names_the_mount_knows(self):
        # A directory the mount made is one whose every name it knows (NameCache.swift):
        # a name looked up there is answered from memory. The gateway's change stamp must
        # still make an object PUT into it, and a DELETE of a file the mount knows, show
        # within the name cache's 100 ms (plus the kernel's 1 s entry timeout for a name
        # the kernel holds).
        os.mkdir(self.path("known"))
        self.assertFalse(os.path.exists(self.path("known", "late.txt")))
        with open(self.path("known", "mine.txt"), "w") as f:
            f.write("mine")
        self.assertEqual(os.stat(self.path("known", "mine.txt")).st_size, 4)
        self.s3.put_object(Bucket=BUCKET, Key="known/late.txt", Body=b"from s3")
        self.s3.delete_object(Bucket=BUCKET, Key="known/mine.txt")
        wait_until(lambda: os.path.exists(self.path("known", "late.txt")), "the name S3 put to show")
        self.assertEqual(self.read(self.path("known", "late.txt")), b"from s3")
        wait_until(lambda: not os.path.exists(self.path("known", "mine.txt")), "the name S3 deleted to go")
        self.assertEqual(sorted(os.listdir(self.path("known"))), ["late.txt"])

    # --- remount and crash -----------------------------------------------------------

    def test_remount_keeps_everything_and_inode_numbers(self):
        os.makedirs(self.path("keep", "d"))
        files = {}
        for i in range(20):
            p = self.path("keep", "d", f"f{i}")
            with open(p, "wb") as f:
                f.write(os.urandom(1000 * i))
        os.symlink("d/f1", self.path("keep", "link"))
        os.link(self.path("keep", "d", "f2"), self.path("keep", "hard"))
        for dirpath, dirs, names in os.walk(self.path("keep")):
            for n in dirs + names:
                p = os.path.join(dirpath, n)
                st = os.lstat(p)
                files[p] = (st.st_ino, st.st_size, st.st_mode, st.st_nlink,
                            open(p, "rb").read() if stat.S_ISREG(st.st_mode) else None)
        self.remount()
        for p, (ino, size, mode, nlink, data) in files.items():
            st = os.lstat(p)
            self.assertEqual((st.st_ino, st.st_size, st.st_mode, st.st_nlink), (ino, size, mode, nlink), p)
            if data is not None:
                with open(p, "rb") as f:
                    self.assertEqual(f.read(), data, p)

    def test_fsynced_data_survives_sigkill_of_everything(self):
        data = os.urandom(4 * 1024 * 1024 + 5)
        p = self.path("durable.bin")
        fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        # A small file's data lives in its entry (FileData.swift): fsync makes that durable.
        small = os.urandom(700)
        ps = self.path("durable-small.bin")
        fds = os.open(ps, os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fds, small)
        os.fsync(fds)
        # fdatasync after an overwrite in place stores no entry (the entry already names the
        # data); after a write past the end it stores the new size. msync(MS_SYNC) is an
        # fdatasync of the mapped range. All three survive.
        over = bytearray(os.urandom(1 << 20))
        po = self.path("durable-over.bin")
        fdo = os.open(po, os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fdo, over)
        os.fsync(fdo)
        patch = os.urandom(10000)
        os.pwrite(fdo, patch, 4096 * 7 + 3)
        over[4096 * 7 + 3:4096 * 7 + 3 + len(patch)] = patch
        os.fdatasync(fdo)
        tail = os.urandom(5000)
        os.pwrite(fdo, tail, len(over))
        over += tail
        os.fdatasync(fdo)
        with mmap.mmap(fdo, 8192, offset=65536) as m:
            m[100:200] = b"m" * 100
            m.flush()
        over[65536 + 100:65536 + 200] = b"m" * 100
        for pid in self.pids():
            os.kill(pid, signal.SIGKILL)
        for d in (fd, fds, fdo):
            try:
                os.close(d)
            except OSError:
                pass  # the daemon is gone
        for pid in self.pids():
            deadline = time.time() + 30
            while pid_alive(pid) and time.time() < deadline:
                time.sleep(0.02)
        self.up()
        with open(p, "rb") as f:
            self.assertEqual(f.read(), data)
        with open(ps, "rb") as f:
            self.assertEqual(f.read(), small)
        with open(po, "rb") as f:
            self.assertEqual(f.read(), bytes(over))

    # --- fsx ----------------------------------------------------------------------------

    def test_zz_fsx(self):
        """`tessera fsx`: 10,000 operations with each of 8 seeds, with and without mmap; four
        files at a time (each run waits on fsyncs more than on the CPU)."""
        seeds = int(os.environ.get("TESSERA_FSX_SEEDS", "8"))
        ops = os.environ.get("TESSERA_FSX_OPS", "10000")
        runs = [(seed, mmap) for seed in range(1, seeds + 1) for mmap in (True, False)]
        while runs:
            batch, runs = runs[:4], runs[4:]
            procs = []
            for seed, mmap in batch:
                name = self.path(f"fsx-{seed}-{int(mmap)}")
                args = [TESSERA, "fsx", "-N", ops, "-S", str(seed), name] + ([] if mmap else ["--no-mmap"])
                procs.append((name, subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)))
            for name, p in procs:
                out, _ = p.communicate(timeout=900)
                self.assertEqual(p.returncode, 0, out)
                print(out.strip(), flush=True)
                os.unlink(name)

    # --- mount(8) ----------------------------------------------------------------------

    def test_mount_helper_and_fstab(self):
        helper = os.path.join(ROOT, "mount-helpers", "mount.tessera")
        installed = "/sbin/mount.tessera"
        if os.path.exists(installed) or os.geteuid() != 0:
            self.skipTest("mount.tessera is installed already, or not root")
        other = os.path.join(self.tmp, "other")
        os.mkdir(other)
        shutil.copy(helper, installed)
        env = dict(os.environ, TESSERA=os.path.abspath(TESSERA))
        config = os.path.join(self.state, "cluster.toml")
        try:
            subprocess.run(["mount", "-t", "tessera", "-o", f"config={config},ro", "second", other], check=True, env=env, timeout=60)
            self.assertTrue(is_mounted(other))
            with self.assertRaises(OSError) as e:
                open(os.path.join(other, "x"), "w")
            self.assertEqual(e.exception.errno, errno.EROFS)
            subprocess.run(["umount", other], check=True)
            fstab = os.path.join(self.tmp, "fstab")
            with open(fstab, "w") as f:
                f.write(f"second {other} tessera _netdev,config={config} 0 0\n")
            subprocess.run(["mount", "-T", fstab, other], check=True, env=env, timeout=60)
            self.assertTrue(is_mounted(other))
            with open(os.path.join(other, "x"), "w") as f:
                f.write("fstab")
            subprocess.run(["umount", other], check=True)
            self.assertFalse(is_mounted(other))
            # Nothing is left running: no process has this mount in its arguments.
            wait_until(lambda: subprocess.run(["pgrep", "-f", f"mount .*second {other}"], capture_output=True, text=True).stdout.split() == [],
                       "the mount daemon to exit after umount")
        finally:
            if is_mounted(other):
                subprocess.run(["fusermount3", "-u", "-z", other])
            os.unlink(installed)


class UpOrderTest(unittest.TestCase):
    """The README's two commands in either order: `tessera up DIR MNT` then `tessera up --s3
    ADDR DIR MNT`: the bucket the mount made is usable through S3 with the key `up` prints.
    Also a cluster whose mount made its bucket before the cluster had a key (as `up` did
    before it always made one): the gateway gives the bucket to the key."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tessera-order-")
        self.state = os.path.join(self.tmp, "state")
        self.mnt = os.path.join(self.tmp, "mnt")

    def tearDown(self):
        subprocess.run([TESSERA, "down", "--dir", self.state], capture_output=True, timeout=180)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt])
        shutil.rmtree(self.tmp, ignore_errors=True)

    def up(self, *extra):
        r = subprocess.run([TESSERA, "up", "--dir", self.state, "--data-size", "2G", *extra, self.mnt], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        return dict(line[len("export "):].split("=", 1) for line in r.stdout.splitlines() if line.startswith("export "))

    def client(self, env):
        return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
                            config=Config(retries={"max_attempts": 1}))

    def check_bucket_usable(self):
        with open(os.path.join(self.mnt, "made-by-mount.txt"), "w") as f:
            f.write("mount")
        s3 = self.client(self.up("--s3", f"127.0.0.1:{free_port()}"))
        self.assertEqual(s3.get_object(Bucket=BUCKET, Key="made-by-mount.txt")["Body"].read(), b"mount")
        s3.put_object(Bucket=BUCKET, Key="made-by-s3.txt", Body=b"s3")
        self.assertIn(BUCKET, [b["Name"] for b in s3.list_buckets()["Buckets"]])
        with open(os.path.join(self.mnt, "made-by-s3.txt")) as f:
            self.assertEqual(f.read(), "s3")

    def test_mount_first_then_s3(self):
        self.up()
        self.check_bucket_usable()

    def test_bucket_made_before_the_cluster_had_a_key(self):
        # The cluster up, then its file without [[s3.credentials]] (as `up` without --s3
        # wrote one before), and a mount makes the bucket from that file: owner "tessera".
        r = subprocess.run([TESSERA, "up", "--dir", self.state, "--data-size", "2G"], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        config = os.path.join(self.state, "cluster.toml")
        with open(config) as f:
            text = f.read()
        with open(config, "w") as f:
            f.write(text[:text.index("\n# Written by `tessera up`: the S3 access key")] + "\n")
        os.makedirs(self.mnt)
        subprocess.run([TESSERA, "mount", "--config", config, BUCKET, self.mnt], check=True, capture_output=True, timeout=60)
        wait_until(lambda: is_mounted(self.mnt), "the keyless mount", 60)
        with open(os.path.join(self.mnt, "made-keyless.txt"), "w") as f:
            f.write("keyless")
        subprocess.run(["fusermount3", "-u", self.mnt], check=True)
        wait_until(lambda: not is_mounted(self.mnt), "the unmount", 60)
        s3 = self.client(self.up("--s3", f"127.0.0.1:{free_port()}"))
        self.assertEqual(s3.get_object(Bucket=BUCKET, Key="made-keyless.txt")["Body"].read(), b"keyless")
        s3.put_object(Bucket=BUCKET, Key="made-by-s3.txt", Body=b"s3")
        with open(os.path.join(self.mnt, "made-by-s3.txt")) as f:
            self.assertEqual(f.read(), "s3")


if __name__ == "__main__":
    unittest.main()
