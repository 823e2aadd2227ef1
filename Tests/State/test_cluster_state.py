"""Cluster state on etcd, end to end: sessions decide lifetimes, one sweeper and one HA role
holder per cluster, the cluster map follows servers that die and come back, and etcd can go
away for longer than a lease without anything being freed wrongly.

Each test runs `tessera up --s3 ADDR DIR` (etcd, three servers, the gateway, a mount) in a
temporary state folder with short timings (ttl 2 s, grace 2 s, sweep every 1 s), and stops
everything it started by pid. Run by scripts/test with TESSERA=.build/release/tessera.
"""

import hashlib
import http.client
import os
import sys
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest
import urllib.parse

import boto3
from botocore.config import Config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import free_port, read_pid, pid_alive, is_mounted, random_bytes  # noqa: E402

TESSERA = os.environ.get("TESSERA", os.path.join(os.path.dirname(__file__), "../../.build/release/tessera"))
BUCKET = "tessera"
TTL, GRACE, SWEEP = 2, 2, 1
MiB = 1 << 20


def wait_for(what, predicate, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


class LocalCluster:
    """`tessera up` in a temporary folder, with the gateway and a mount."""

    def __init__(self, memory="256M"):
        self.tmp = tempfile.mkdtemp(prefix="tessera-state-")
        self.state = os.path.join(self.tmp, "state")
        self.mnt = os.path.join(self.tmp, "mnt")
        self.port = free_port()
        self.extra = []  # (Popen, mount point or None) started by a test
        try:
            self.up(memory)
        except BaseException:
            self.close()  # what `up` started before it failed (tearDown does not run)
            raise

    def up(self, memory="256M"):
        r = subprocess.run(
            [TESSERA, "up", "--dir", self.state, "--data-size", "2G", "--ttl", f"{TTL}s", "--grace", f"{GRACE}s",
             "--sweep-interval", f"{SWEEP}s", "--s3", f"127.0.0.1:{self.port}", "-o", f"memory={memory}", self.mnt],
            capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise AssertionError(f"tessera up failed: {r.stderr}")
        env = dict(line[len("export "):].split("=", 1) for line in r.stdout.splitlines() if line.startswith("export "))
        self.env = env
        self.s3 = boto3.client(
            "s3", endpoint_url=env["AWS_ENDPOINT_URL"], aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"], region_name=env["AWS_DEFAULT_REGION"],
            config=Config(signature_version="s3v4", retries={"max_attempts": 1}))

    def pid(self, name):
        return read_pid(os.path.join(self.state, f"{name}.pid"))

    def kill(self, name, sig=signal.SIGKILL):
        pid = self.pid(name)
        os.kill(pid, sig)
        wait_for(f"{name} (pid {pid}) to exit", lambda: not pid_alive(pid), 60)
        return pid

    def status(self):
        """`tessera status --bytes` as a list of field dicts (it exits 1 with a server down)."""
        out = subprocess.run([TESSERA, "status", "--dir", self.state, "--bytes"], capture_output=True, text=True, timeout=60).stdout
        return [dict(f.split("=", 1) for f in line.split() if "=" in f) for line in out.splitlines()]

    def used_bytes(self):
        return sum(int(l["data_used"]) for l in self.status() if "server" in l and "data_used" in l)

    def sessions(self):
        return {l["session"]: l for l in self.status() if "session" in l and "kind" in l and "role" not in l}

    def roles(self):
        return {l["role"]: l for l in self.status() if "role" in l}

    def map_states(self):
        return {int(l["server"]): l.get("map") for l in self.status() if "server" in l}

    def map_version(self):
        return next((int(l["version"]) for l in self.status() if "version" in l and "etcd" in l), 0)

    def log(self, name):
        try:
            with open(os.path.join(self.state, f"{name}.log"), errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start_extra_gateway(self):
        port = free_port()
        p = subprocess.Popen([TESSERA, "gateway", "--config", os.path.join(self.state, "cluster.toml"), "--listen", f"127.0.0.1:{port}"],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(self.tmp, f"gateway-{port}.log"), "w"))
        self.extra.append((p, None))
        p.port = port
        return p

    def start_extra_mount(self):
        mnt = os.path.join(self.tmp, f"mnt{len(self.extra)}")
        os.mkdir(mnt)
        p = subprocess.Popen([TESSERA, "mount", "--config", os.path.join(self.state, "cluster.toml"), "-f", BUCKET, mnt],
                             stdout=subprocess.DEVNULL, stderr=open(mnt + ".log", "w"))
        self.extra.append((p, mnt))
        wait_for("the second mount", lambda: is_mounted(mnt), 60)
        return p

    def close(self):
        for p, mnt in self.extra:
            if mnt and is_mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", mnt])
            if p.poll() is None:
                p.kill()
            p.wait()
        subprocess.run([TESSERA, "down", "--dir", self.state], capture_output=True, timeout=180)
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", self.mnt])
        for name in ["mount", "gateway", "etcd"] + [f"server-{i}" for i in range(3)]:
            pid = self.pid(name)
            if pid and pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.tmp, ignore_errors=True)


def hold_unlinked(path, data):
    """A file written, fsynced and unlinked while open; returns its descriptor."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
        os.unlink(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class SlowPut:
    """A presigned PUT whose body goes out a piece at a time."""

    def __init__(self, s3, key, body):
        url = urllib.parse.urlsplit(s3.generate_presigned_url("put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=600))
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
        self.conn.putrequest("PUT", url.path + "?" + url.query)
        self.conn.putheader("Content-Length", str(len(body)))
        self.conn.endheaders()
        self.body = body
        self.sent = 0

    def send(self, n):
        self.conn.send(self.body[self.sent:self.sent + n])
        self.sent += n

    def finish(self):
        self.send(len(self.body) - self.sent)
        r = self.conn.getresponse()
        self.reply = r.read()
        return r.status


class ClusterStateTest(unittest.TestCase):
    def setUp(self):
        self.c = LocalCluster(memory="16M")

    def tearDown(self):
        self.c.close()

    def test_open_unlinked_file_outlives_a_gateway_restart_and_goes_with_its_mount(self):
        c = self.c
        before = c.used_bytes()
        data = random_bytes(48 * MiB, 1)
        fd = hold_unlinked(os.path.join(c.mnt, "held"), data)
        try:
            # The gateway restarts; its sweeper (or the mount's) runs several times.
            c.kill("gateway", signal.SIGTERM)
            c.up()
            time.sleep(TTL + 3 * SWEEP)
            drop_caches()
            got = b"".join(os.pread(fd, 4 * MiB, off) for off in range(0, len(data), 4 * MiB))
            self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(data).hexdigest(), "the open unlinked file lost its data")
            # Its owner dies: within a TTL and a sweep the data is freed.
            c.kill("mount")
        finally:
            try:
                os.close(fd)
            except OSError:
                pass
            subprocess.run(["fusermount3", "-u", "-z", c.mnt])
        t = time.time()
        wait_for("the dead mount's data to be freed", lambda: c.used_bytes() == before, TTL + 2 * SWEEP + 5)
        print(f"freed {time.time() - t:.1f} s after the mount was killed (ttl {TTL} s, sweep every {SWEEP} s)")

    def test_a_streaming_put_is_not_swept_and_a_killed_gateway_leaves_nothing(self):
        c = self.c
        body = random_bytes(24 * MiB, 2)
        put = SlowPut(c.s3, "slow", body)
        for _ in range(24):  # longer than a TTL and several sweeps
            put.send(MiB)
            time.sleep(0.3)
        self.assertEqual(put.finish(), 200, put.reply)
        got = c.s3.get_object(Bucket=BUCKET, Key="slow")["Body"].read()
        self.assertEqual(hashlib.sha256(got).hexdigest(), hashlib.sha256(body).hexdigest())
        before = c.used_bytes()
        cut = SlowPut(c.s3, "cut", random_bytes(24 * MiB, 3))
        for _ in range(12):
            cut.send(MiB)
        time.sleep(0.5)
        self.assertGreater(c.used_bytes(), before, "the cut PUT wrote nothing yet")
        c.kill("gateway")
        # The mount's session takes the sweeper role if the gateway held it.
        t = time.time()
        wait_for("the killed PUT's data to be freed", lambda: c.used_bytes() == before, TTL + 2 * SWEEP + 5)
        print(f"freed {time.time() - t:.1f} s after the gateway was killed (ttl {TTL} s, sweep every {SWEEP} s)")
        c.up()
        with self.assertRaises(Exception):
            c.s3.head_object(Bucket=BUCKET, Key="cut")

    def test_etcd_down_longer_than_a_ttl_frees_nothing_and_every_process_renews(self):
        c = self.c
        old = c.sessions()
        self.assertEqual(sorted(l["kind"] for l in old.values()), ["gateway", "mount", "server", "server", "server"])
        data = random_bytes(8 * MiB, 4)
        fd = hold_unlinked(os.path.join(c.mnt, "held"), data)
        try:
            c.kill("etcd")
            time.sleep(2 * TTL)
            # Reads and writes go on meanwhile, in the mount and through the gateway.
            with open(os.path.join(c.mnt, "during"), "wb") as f:
                f.write(b"written while etcd was down")
            with open(os.path.join(c.mnt, "during"), "rb") as f:
                self.assertEqual(f.read(), b"written while etcd was down")
            c.s3.put_object(Bucket=BUCKET, Key="during-s3", Body=b"x" * 100_000)
            self.assertEqual(c.s3.get_object(Bucket=BUCKET, Key="during-s3")["Body"].read(), b"x" * 100_000)
            self.assertEqual(os.pread(fd, 16, 0), data[:16])
            c.up()  # starts etcd again
            renewed = wait_for("every process to take a new session",
                               lambda: (lambda s: s if len(s) == 5 and not set(s) & set(old) else None)(c.sessions()), 30)
            self.assertEqual(sorted(l["kind"] for l in renewed.values()), ["gateway", "mount", "server", "server", "server"])
            time.sleep(TTL + 3 * SWEEP)
            drop_caches()
            got = b"".join(os.pread(fd, MiB, off) for off in range(0, len(data), MiB))
            self.assertEqual(got, data, "the open unlinked file lost data across the etcd outage")
        finally:
            os.close(fd)
        self.assertEqual(c.s3.get_object(Bucket=BUCKET, Key="during-s3")["Body"].read(), b"x" * 100_000)

    def test_a_killed_server_is_failed_in_the_map_then_online_again(self):
        c = self.c
        v0 = wait_for("the first map", c.map_version, 10)
        self.assertEqual(set(c.map_states().values()), {"online"})
        c.kill("server-1")
        wait_for("server 1 failed in the map", lambda: c.map_states().get(1) == "failed", GRACE + TTL + 5)
        v1 = c.map_version()
        self.assertGreater(v1, v0)
        line = f"cluster map version {v1}"
        for name in ["server-0", "server-2", "gateway", "mount"]:
            wait_for(f"{name} to see map version {v1}", lambda: line in c.log(name), 10)
        # Writes go on without it (degraded: its units skipped), and read back; the data
        # repair that follows is test_data_repair.py's.
        body = random_bytes(3 * MiB, 11)
        with open(os.path.join(c.mnt, "while-failed"), "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        c.s3.put_object(Bucket=BUCKET, Key="while-failed-s3", Body=body)
        r = subprocess.run([TESSERA, "object", "put", "--dir", c.state, "while-failed", "-"], input=body, capture_output=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(c.s3.get_object(Bucket=BUCKET, Key="while-failed-s3")["Body"].read(), body)
        with open(os.path.join(c.mnt, "while-failed"), "rb") as f:
            self.assertEqual(f.read(), body)
        c.up()
        wait_for("server 1 online again", lambda: c.map_states().get(1) == "online", GRACE + TTL + 10)
        self.assertGreater(c.map_version(), v1)

    def test_a_put_replacing_a_key_as_a_server_dies_reads_back_at_once(self):
        """Each server in turn is SIGKILLed and a key is overwritten at once, through S3 and
        the mount: the write waits until the map fails that server, and then every read
        sees it. One of the three is the head of the object list's chain, whose first try
        meets a dead server: it used to count as a lost answer, and the switch that then
        found the old entry was acknowledged unmade (the old value read back). The new
        values are small, kept in their entries: no data write waits out the dead server
        first, so the switch is what meets it."""
        c = self.c
        for n in range(3):
            old, new = random_bytes(5000, 2 * n), random_bytes(100, 2 * n + 1)
            c.s3.put_object(Bucket=BUCKET, Key=f"replaced-{n}", Body=old)
            path = os.path.join(c.mnt, f"replaced-file-{n}")
            with open(path, "wb") as f:
                f.write(old)
            c.kill(f"server-{n}")
            c.s3.put_object(Bucket=BUCKET, Key=f"replaced-{n}", Body=new)
            self.assertEqual(c.s3.get_object(Bucket=BUCKET, Key=f"replaced-{n}")["Body"].read(), new, f"server {n} killed: S3")
            with open(path, "wb") as f:
                f.write(new)
                f.flush()
                os.fsync(f.fileno())
            self.assertEqual(c.s3.get_object(Bucket=BUCKET, Key=f"replaced-file-{n}")["Body"].read(), new, f"server {n} killed: mount")
            c.up()
            self.repair_wait()

    def index(self, *args, check=True):
        r = subprocess.run([TESSERA, "index", *args[:1], "--dir", self.c.state, *args[1:]], capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise AssertionError(f"tessera index {' '.join(args)}: exit {r.returncode}: {r.stderr}")
        return r.stdout

    def test_indexes_go_on_with_a_server_down_and_are_repaired_when_it_returns(self):
        """docs/REPLICATION.md: with one server SIGKILLed, changes to the indexes it holds go
        on at the other replica once the map fails it; when it returns it is repaired before
        it serves; then another server is killed and every record of both periods reads back
        (from replicas that were repaired, not from the one that always had them)."""
        c = self.c
        fids = [f"7a:{i:x}" for i in range(12)]  # spread over the three pairs of servers
        expected = {f: {} for f in fids}

        def put(period):
            self.put_records(expected, period)

        def check():
            self.check_records(expected)

        put("before")
        c.kill("server-1")
        put("while-1-down")  # waits for the map to fail server 1, then goes on
        self.assertEqual(c.map_states().get(1), "failed")
        for f in fids:
            self.index("del", f, "before-0")
            del expected[f]["before-0"]
        check()
        c.up()
        self.repair_wait()
        self.assertEqual(c.map_states().get(1), "online")
        self.assertIn("repair: server 1 is online", "".join(c.log(n) for n in ["server-0", "server-2", "gateway", "mount"]))
        done = self.repairs()[1]
        self.assertEqual(done["state"], "done")
        self.assertGreaterEqual(int(done["indexes"]), 8, "server 1 holds 2 of every 3 pairs' indexes")
        self.assertGreater(int(done["copied"]), 0, "what server 1 missed was copied")
        # Walked again with every server online: the replicas are equal, nothing is copied.
        r = subprocess.run([TESSERA, "repair", "--dir", c.state, "--id", "1", "--wait", "--timeout", "120"], capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, r.stderr)
        again = self.repairs()[1]
        self.assertEqual((again["state"], again["copied"]), ("done", "0"), "replicas differ after repair")
        self.assertGreaterEqual(int(again["records"]), int(done["records"]))
        c.kill("server-2")
        put("while-2-down")
        check()
        r = subprocess.run([TESSERA, "index", "get", "--dir", c.state, fids[0], "before-0"], capture_output=True, text=True, timeout=120)
        self.assertNotEqual(r.returncode, 0, "a deleted key came back")
        c.up()
        self.repair_wait()
        self.assertEqual(c.map_states().get(2), "online")
        check()

    def test_with_a_server_killed_names_change_everywhere_and_survive_the_next_kill(self):
        """With one server SIGKILLed, `tessera index` put/get/del/next, S3 PUT (of names:
        empty objects; objects with data are test_data_repair.py's), GET and DELETE, and the mount's create, rename and unlink all succeed;
        after a restart and `tessera repair --wait`, another server is killed and all of it
        reads back."""
        c = self.c
        c.s3.create_bucket(Bucket="names")
        expected = {f"7d:{i:x}": {} for i in range(6)}
        self.put_records(expected, "before", n=5)
        for i in range(10):
            c.s3.put_object(Bucket="names", Key=f"before-{i}", Body=b"")
            with open(os.path.join(c.mnt, f"before-{i}"), "w"):
                pass
        c.kill("server-1")
        self.put_records(expected, "while-1-down", n=5)
        for f in expected:
            self.index("del", f, "before-0")
            del expected[f]["before-0"]
            got = self.index("next", f).splitlines()
            self.assertEqual([line.split("\t")[0] for line in got], sorted(expected[f]), f"index {f}")
        self.check_records(expected)
        objects = {f"before-{i}" for i in range(1, 10)} | {f"while-{i}" for i in range(10)}
        for i in range(10):
            c.s3.put_object(Bucket="names", Key=f"while-{i}", Body=b"")
            self.assertEqual(c.s3.get_object(Bucket="names", Key=f"before-{i}")["Body"].read(), b"")
        c.s3.delete_object(Bucket="names", Key="before-0")
        files = {f"before-{i}" for i in range(1, 10)} | {f"renamed-{i}" for i in range(10)}
        for i in range(10):
            with open(os.path.join(c.mnt, f"while-{i}"), "w"):
                pass
            os.rename(os.path.join(c.mnt, f"while-{i}"), os.path.join(c.mnt, f"renamed-{i}"))
        os.unlink(os.path.join(c.mnt, "before-0"))
        c.up()
        self.repair_wait()
        c.kill("server-2")
        self.check_records(expected)
        listed = {o["Key"] for o in c.s3.list_objects_v2(Bucket="names").get("Contents", [])}
        self.assertEqual(listed, objects)
        self.assertEqual(set(os.listdir(c.mnt)), files)

    def test_a_replaced_server_is_repaired_and_then_holds_every_record(self):
        """`tessera replace`: a server whose images are lost is put back blank, repaired from
        its peers, and then each of the others is failed in turn: every record reads back,
        the indexes they shared with the replaced server served by it alone."""
        c = self.c
        expected = {f"7b:{i:x}": {} for i in range(12)}
        self.put_records(expected, "before")
        c.kill("server-2")
        self.put_records(expected, "while-2-down")
        for name in os.listdir(os.path.join(c.state, "server-2")):
            os.unlink(os.path.join(c.state, "server-2", name))
        r = subprocess.run([TESSERA, "replace", "--dir", c.state, "--id", "2"], capture_output=True, text=True, timeout=120)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.repair_wait()
        self.assertEqual(c.map_states().get(2), "online")
        done = self.repairs()[2]
        self.assertGreaterEqual(int(done["copied"]), 8 * 40 * 2 // 3, "the blank server got its replicas' records")
        for other in ["server-0", "server-1"]:
            c.kill(other)
            self.check_records(expected)  # waits for the map to fail it, then reads
            self.put_records(expected, f"while-{other}-down")
            c.up()
            self.repair_wait()
        self.check_records(expected)

    def put_records(self, expected, period, n=20):
        """Puts `n` records named by `period` into each index of `expected` (fid: {key: value})."""
        for f in expected:
            pairs = {f"{period}-{k}": f"{f}/{period}/{k}" for k in range(n)}
            self.index("put", f, *[x for kv in pairs.items() for x in kv])
            expected[f].update(pairs)

    def check_records(self, expected):
        for f in expected:
            keys = sorted(expected[f])
            got = self.index("get", f, *keys).splitlines()
            self.assertEqual(got, [expected[f][k] for k in keys], f"index {f}")

    def repair_wait(self):
        r = subprocess.run([TESSERA, "repair", "--dir", self.c.state, "--wait", "--timeout", "120"], capture_output=True, text=True, timeout=180)
        self.assertEqual(r.returncode, 0, f"tessera repair --wait: {r.stdout} {r.stderr}")

    def repairs(self):
        """The repairs `tessera status --bytes` shows, by server id."""
        return {int(l["repair"]): l for l in self.c.status() if "repair" in l}

    def test_one_sweeper_and_one_ha_holder_among_many_and_a_takeover(self):
        c = self.c
        c.start_extra_gateway()
        c.start_extra_mount()
        wait_for("seven sessions", lambda: len(c.sessions()) == 7, 10)
        self.assertEqual(set(c.roles()), {"ha", "sweeper"})
        for name in ["sweeper", "ha"]:
            holder = int(c.roles()[name]["pid"])
            os.kill(holder, signal.SIGKILL)
            t = time.time()
            wait_for(f"the {name} holder (pid {holder}) to exit", lambda: not pid_alive(holder), 30)
            # Its lease ends within a TTL of its last keep-alive; the others watch the role.
            # One read of the roles per check: the key may go between two reads.
            wait_for(f"another process to hold {name}",
                     lambda: int(c.roles().get(name, {}).get("pid", holder)) != holder, TTL + 2)
            print(f"{name} taken over {time.time() - t:.1f} s after its holder was killed (ttl {TTL} s)")


class RacesTest(unittest.TestCase):
    """Create-only decisions are taken once, at the head of the index's chain
    (docs/REPLICATION.md), whichever process asks: two gateways creating one bucket, or two
    mounts creating one name with O_EXCL, get one winner."""

    def setUp(self):
        self.c = LocalCluster(memory="16M")

    def tearDown(self):
        self.c.close()

    @staticmethod
    def race(*calls):
        """Runs the calls at once; returns what each returned, or the exception it raised."""
        results = [None] * len(calls)
        start = threading.Barrier(len(calls))

        def run(i):
            start.wait()
            try:
                results[i] = calls[i]()
            except Exception as e:  # noqa: BLE001 - the result under test
                results[i] = e
        threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        return results

    def test_two_gateways_creating_one_bucket_one_wins(self):
        c = self.c
        config = os.path.join(c.state, "cluster.toml")
        with open(config, "a") as f:
            f.write('\n[[s3.credentials]]\naccess_key = "RACERTWO"\nsecret_key = "racer-two-secret"\n')
        clients = []
        for key, secret in [(c.env["AWS_ACCESS_KEY_ID"], c.env["AWS_SECRET_ACCESS_KEY"]), ("RACERTWO", "racer-two-secret")]:
            port = c.start_extra_gateway().port
            wait_for(f"the gateway on port {port}", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30)
            clients.append(boto3.client(
                "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=key, aws_secret_access_key=secret,
                region_name=c.env["AWS_DEFAULT_REGION"], config=Config(signature_version="s3v4", retries={"max_attempts": 1})))
        for n in range(20):
            name = f"race-{n}"
            results = self.race(*[lambda s3=s3: s3.create_bucket(Bucket=name) for s3 in clients])
            won = [r for r in results if isinstance(r, dict)]
            lost = [r for r in results if not isinstance(r, dict)]
            self.assertEqual(len(won), 1, f"bucket {name}: {results}")
            self.assertEqual(lost[0].response["Error"]["Code"], "BucketAlreadyExists", f"bucket {name}: {lost[0]}")
            owner = 0 if results[0] is won[0] else 1
            clients[owner].put_object(Bucket=name, Key="k", Body=b"v")  # the winner owns it
            with self.assertRaises(Exception):
                clients[1 - owner].put_object(Bucket=name, Key="k", Body=b"w")

    def test_two_gateways_overwriting_one_key_free_every_replaced_object(self):
        """The object list's entry is switched by a compare-and-put on the entry each
        gateway read: racing PUTs of one key each free the object they replaced, so once the
        key is deleted the data used is back where it started (a plain put let both free the
        same object and leak the other's)."""
        c = self.c
        port = c.start_extra_gateway().port
        wait_for(f"the gateway on port {port}", lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0, 30)
        other = boto3.client(
            "s3", endpoint_url=f"http://127.0.0.1:{port}", aws_access_key_id=c.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=c.env["AWS_SECRET_ACCESS_KEY"], region_name=c.env["AWS_DEFAULT_REGION"],
            config=Config(signature_version="s3v4", retries={"max_attempts": 1}))
        c.s3.create_bucket(Bucket="overwrites")
        before = c.used_bytes()
        bodies = {}
        for n in range(12):
            def put(s3, tag):
                body = random_bytes(MiB, n * 2 + tag)
                s3.put_object(Bucket="overwrites", Key="k", Body=body)
                bodies[tag] = body
            results = self.race(lambda: put(c.s3, 0), lambda: put(other, 1))
            self.assertEqual(results, [None, None])
            self.assertIn(c.s3.get_object(Bucket="overwrites", Key="k")["Body"].read(), bodies.values())
        c.s3.delete_object(Bucket="overwrites", Key="k")
        wait_for("every replaced object freed", lambda: c.used_bytes() <= before, 30)

    def test_two_mounts_creating_one_name_with_o_excl_one_wins(self):
        c = self.c
        c.start_extra_mount()
        other = c.extra[-1][1]

        def create(mnt, name):
            fd = os.open(os.path.join(mnt, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            os.write(fd, mnt.encode())
            os.close(fd)
            return mnt
        for n in range(20):
            name = f"excl-{n}"
            results = self.race(lambda: create(c.mnt, name), lambda: create(other, name))
            won = [r for r in results if isinstance(r, str)]
            lost = [r for r in results if not isinstance(r, str)]
            self.assertEqual(len(won), 1, f"{name}: {results}")
            self.assertIsInstance(lost[0], FileExistsError, f"{name}: {lost[0]}")
            for mnt in [c.mnt, other]:
                wait_for(f"{name} in {mnt} to read the winner's bytes", lambda: open(os.path.join(mnt, name), "rb").read() == won[0].encode(), 10)


class EtcdMissingTest(unittest.TestCase):
    """A cluster file whose etcd is missing or is not etcd: a clear error naming the
    endpoint, within seconds, from every process that needs a session."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tessera-noetcd-")
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)  # accepts and never answers: not an etcd

    def tearDown(self):
        self.listener.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def config(self, endpoint):
        path = os.path.join(self.tmp, "cluster.toml")
        servers = "".join(f'[[server]]\nid = {i}\naddress = "127.0.0.1:{free_port()}"\nmeta = "m{i}"\ndata = "d{i}"\n' for i in range(3))
        with open(path, "w") as f:
            f.write(f'secret = "0123456789abcdef0123"\n[state]\nendpoints = ["{endpoint}"]\nttl = 2\n'
                    f'[[s3.credentials]]\naccess_key = "K"\nsecret_key = "secret-key"\n{servers}')
        return path

    def assert_clear_failure(self, endpoint, args):
        t = time.time()
        r = subprocess.run([TESSERA] + args, capture_output=True, text=True, timeout=60)
        self.assertEqual(r.returncode, 1, r.stderr)
        self.assertLess(time.time() - t, 15, "no hang")
        self.assertIn(endpoint, r.stderr)

    def test_nothing_listening(self):
        endpoint = f"127.0.0.1:{free_port()}"
        config = self.config(endpoint)
        self.assert_clear_failure(endpoint, ["gateway", "--config", config, "--listen", f"127.0.0.1:{free_port()}"])
        os.mkdir(os.path.join(self.tmp, "mnt"))
        self.assert_clear_failure(endpoint, ["mount", "--config", config, "-f", BUCKET, os.path.join(self.tmp, "mnt")])

    def test_something_else_listening(self):
        endpoint = f"127.0.0.1:{self.listener.getsockname()[1]}"
        self.assert_clear_failure(endpoint, ["gateway", "--config", self.config(endpoint), "--listen", f"127.0.0.1:{free_port()}"])


if __name__ == "__main__":
    unittest.main()
