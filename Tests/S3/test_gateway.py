"""Integration tests of the S3 gateway with the real clients: aws cli and boto3 against
`tessera up --s3` on a local three-server cluster in a temporary folder.

Run: TESSERA=.build/release/tessera python3 -m unittest Tests/S3/test_gateway.py
"""
import concurrent.futures
import hashlib
import json
import os
import sys
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import boto3
import botocore
from botocore.config import Config

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import free_port, random_bytes  # noqa: E402

TESSERA = os.path.abspath(os.environ.get("TESSERA", ".build/release/tessera"))
MiB = 1 << 20


class Cluster:
    """A local cluster with its gateway, in a temporary state folder."""

    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="tessera-s3-")
        self.state = os.path.join(self.tmp, "state")
        self.port = free_port()
        try:
            out = subprocess.run(
                [TESSERA, "up", "--dir", self.state, "--data-size", "2G", "--ttl", "2s", "--grace", "2s", "--sweep-interval", "1s",
                 "--s3", f"127.0.0.1:{self.port}"],
                check=True, capture_output=True, text=True, timeout=120).stdout
        except BaseException:
            self.down()  # what `up` started before it failed
            raise
        self.env = {}
        for line in out.splitlines():
            if line.startswith("export "):
                k, v = line[len("export "):].split("=", 1)
                self.env[k] = v
        self.endpoint = self.env["AWS_ENDPOINT_URL"]

    def client(self, key=None, secret=None, **config):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=key or self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=secret or self.env["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4", **dict({"retries": {"max_attempts": 2}}, **config)))

    def aws(self, *args, check=True):
        env = dict(os.environ, **self.env)
        env.pop("AWS_PROFILE", None)
        return subprocess.run(["aws", "--endpoint-url", self.endpoint, *args], env=env, capture_output=True, text=True, check=check, timeout=600)

    def gateway_pid(self):
        with open(os.path.join(self.state, "gateway.pid")) as f:
            return int(f.read().strip())

    def start_gateway(self):
        subprocess.run([TESSERA, "up", "--dir", self.state, "--s3", f"127.0.0.1:{self.port}"], check=True, capture_output=True, timeout=120)

    def used_bytes(self):
        """Data bytes in use, summed over the servers (from `tessera status`)."""
        out = subprocess.run([TESSERA, "status", "--dir", self.state, "--bytes"], check=True, capture_output=True, text=True).stdout
        total = 0
        for line in out.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if "server" in fields:
                total += int(fields["data_used"])
        return total

    def down(self):
        subprocess.run([TESSERA, "down", "--dir", self.state], capture_output=True, timeout=120)
        shutil.rmtree(self.tmp, ignore_errors=True)


cluster = None


def setUpModule():
    global cluster
    cluster = Cluster()


def tearDownModule():
    if cluster:
        cluster.down()


class TestBuckets(unittest.TestCase):
    def test_create_list_head_delete(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="alpha-bucket")
        names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
        self.assertIn("alpha-bucket", names)
        s3.head_bucket(Bucket="alpha-bucket")
        # Again, by its owner, in us-east-1: 200, as S3 answers (Tests/S3/test_conformance.py).
        s3.create_bucket(Bucket="alpha-bucket")
        s3.put_object(Bucket="alpha-bucket", Key="k", Body=b"x")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.delete_bucket(Bucket="alpha-bucket")
        self.assertEqual(e.exception.response["Error"]["Code"], "BucketNotEmpty")
        s3.delete_object(Bucket="alpha-bucket", Key="k")
        s3.delete_bucket(Bucket="alpha-bucket")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.head_bucket(Bucket="alpha-bucket")
        self.assertEqual(e.exception.response["Error"]["Code"], "404")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.list_objects_v2(Bucket="alpha-bucket")
        self.assertEqual(e.exception.response["Error"]["Code"], "NoSuchBucket")

    def test_invalid_names(self):
        s3 = cluster.client()
        for name in ["ab", "Upper", "-dash", "a..b", "192.168.1.1"]:
            with self.assertRaises(botocore.exceptions.ClientError, msg=name) as e:
                s3.create_bucket(Bucket=name)
            self.assertEqual(e.exception.response["Error"]["Code"], "InvalidBucketName", name)

    def test_aws_cli_mb_ls_rb(self):
        cluster.aws("s3", "mb", "s3://cli-bucket")
        self.assertIn("cli-bucket", cluster.aws("s3", "ls").stdout)
        cluster.aws("s3", "rb", "s3://cli-bucket")
        self.assertNotIn("cli-bucket", cluster.aws("s3", "ls").stdout)


class TestObjects(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = cluster.client()
        cls.s3.create_bucket(Bucket="objects")

    def test_sizes_round_trip(self):
        for n in [0, 1, 4095, 4096, 1 * MiB - 1, 1 * MiB, 2 * MiB + 1, 9 * MiB + 7]:
            data = random_bytes(n, n)
            r = self.s3.put_object(Bucket="objects", Key=f"size/{n}", Body=data)
            self.assertEqual(r["ETag"], '"%s"' % hashlib.md5(data).hexdigest())
            got = self.s3.get_object(Bucket="objects", Key=f"size/{n}")
            self.assertEqual(got["ContentLength"], n)
            self.assertEqual(got["Body"].read(), data, n)

    def test_objects_of_zeros_round_trip(self):
        # A group of zeros stores no block: the object must still exist (it once read as
        # "not found" between the inline limit and one parity group).
        for n in [4097, 10000, 1 * MiB, 2 * MiB, 3 * MiB + 5]:
            self.s3.put_object(Bucket="objects", Key=f"zeros/{n}", Body=bytes(n))
            self.assertEqual(self.s3.get_object(Bucket="objects", Key=f"zeros/{n}")["Body"].read(), bytes(n), n)

    def test_200_mib_through_aws_cli(self):
        d = tempfile.mkdtemp(prefix="tessera-s3-big-")
        try:
            src = os.path.join(d, "big")
            with open(src, "wb") as f:
                for i in range(200):
                    f.write(random_bytes(MiB, 1000 + i))
            cluster.aws("s3", "cp", "--no-progress", src, "s3://objects/big")
            back = os.path.join(d, "back")
            cluster.aws("s3", "cp", "--no-progress", "s3://objects/big", back)
            self.assertEqual(subprocess.run(["cmp", src, back]).returncode, 0)
            head = self.s3.head_object(Bucket="objects", Key="big")
            self.assertEqual(head["ContentLength"], 200 * MiB)
            parts = self.s3.head_object(Bucket="objects", Key="big", PartNumber=1)["PartsCount"]
            self.assertTrue(head["ETag"].endswith('-%d"' % parts))
        finally:
            shutil.rmtree(d)

    def test_keep_alive_and_connection_close(self):
        """GETs keep the connection open; a client asking for Connection: close still gets
        every byte of a large body before the close."""
        data = random_bytes(24 * MiB, 77)
        self.s3.put_object(Bucket="objects", Key="close", Body=data)
        got = self.s3.get_object(Bucket="objects", Key="close")
        self.assertNotIn("connection", {k.lower(): v for k, v in got["ResponseMetadata"]["HTTPHeaders"].items()})
        self.assertEqual(got["Body"].read(), data)
        closing = cluster.client()
        closing.meta.events.register("before-send.s3.GetObject", lambda request, **kw: request.headers.__setitem__("Connection", "close"))
        for _ in range(5):
            got = closing.get_object(Bucket="objects", Key="close")
            self.assertEqual(got["ResponseMetadata"]["HTTPHeaders"].get("connection"), "close")
            self.assertEqual(got["Body"].read(), data)

    def test_metadata_and_headers(self):
        self.s3.put_object(
            Bucket="objects", Key="meta", Body=b"hello", ContentType="text/plain", CacheControl="max-age=60",
            ContentDisposition="attachment", Metadata={"colour": "blue", "n": "1"})
        h = self.s3.head_object(Bucket="objects", Key="meta")
        self.assertEqual(h["ContentType"], "text/plain")
        self.assertEqual(h["CacheControl"], "max-age=60")
        self.assertEqual(h["ContentDisposition"], "attachment")
        self.assertEqual(h["Metadata"], {"colour": "blue", "n": "1"})

    def test_ranges(self):
        data = random_bytes(3 * MiB + 5, 7)
        self.s3.put_object(Bucket="objects", Key="ranged", Body=data)
        for spec, want in [("bytes=0-0", data[:1]), ("bytes=10-", data[10:]), ("bytes=-7", data[-7:]),
                           ("bytes=1048570-2097160", data[1048570:2097161]), ("bytes=5-99999999", data[5:])]:
            r = self.s3.get_object(Bucket="objects", Key="ranged", Range=spec)
            self.assertEqual(r["Body"].read(), want, spec)
            self.assertEqual(r["ResponseMetadata"]["HTTPStatusCode"], 206)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.get_object(Bucket="objects", Key="ranged", Range="bytes=%d-" % len(data))
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidRange")

    def test_conditionals(self):
        r = self.s3.put_object(Bucket="objects", Key="cond", Body=b"abc")
        etag = r["ETag"]
        self.assertEqual(self.s3.get_object(Bucket="objects", Key="cond", IfMatch=etag)["Body"].read(), b"abc")
        for kwargs, status in [({"IfMatch": '"nope"'}, "412"), ({"IfNoneMatch": etag}, "304"),
                               ({"IfModifiedSince": "2100-01-01T00:00:00Z"}, "304"),
                               ({"IfUnmodifiedSince": "2000-01-01T00:00:00Z"}, "412")]:
            with self.assertRaises(botocore.exceptions.ClientError, msg=kwargs) as e:
                self.s3.get_object(Bucket="objects", Key="cond", **kwargs)
            self.assertEqual(e.exception.response["Error"]["Code"], {"412": "PreconditionFailed", "304": "304"}[status], kwargs)
        self.assertEqual(self.s3.get_object(Bucket="objects", Key="cond", IfModifiedSince="2000-01-01T00:00:00Z")["Body"].read(), b"abc")

    def test_missing_key(self):
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.get_object(Bucket="objects", Key="no/such/key")
        self.assertEqual(e.exception.response["Error"]["Code"], "NoSuchKey")

    def test_freed_data_is_a_server_error_not_zeros(self):
        # The object's data freed behind the gateway's back (as a wrong free would): its entry
        # is there, its data is not, and a GET says so with a 500, never with zeros.
        data = random_bytes(3 * MiB + 5, 21)
        self.s3.put_object(Bucket="objects", Key="freed", Body=data)
        out = subprocess.run([TESSERA, "debug", "free-data", "--dir", cluster.state, "objects", "freed"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
        fid = out.split()[0]
        for kwargs in [{}, {"Range": "bytes=100-200"}, {"Range": f"bytes={2 * MiB}-"}]:
            with self.assertRaises(botocore.exceptions.ClientError, msg=kwargs) as e:
                self.s3.get_object(Bucket="objects", Key="freed", **kwargs)
            self.assertEqual(e.exception.response["ResponseMetadata"]["HTTPStatusCode"], 500, kwargs)
            self.assertEqual(e.exception.response["Error"]["Code"], "InternalError", kwargs)
        # HEAD answers from the entry; a copy reads the data, and fails as a GET does.
        self.assertEqual(self.s3.head_object(Bucket="objects", Key="freed")["ContentLength"], len(data))
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.copy_object(Bucket="objects", Key="freed-copy", CopySource="objects/freed")
        self.assertEqual(e.exception.response["Error"]["Code"], "InternalError")
        with open(os.path.join(cluster.state, "gateway.log")) as f:
            self.assertIn(fid, f.read())
        # A key that is not there is still NoSuchKey.
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.get_object(Bucket="objects", Key="freed-copy")
        self.assertEqual(e.exception.response["Error"]["Code"], "NoSuchKey")
        self.s3.delete_object(Bucket="objects", Key="freed")

    def test_overwrite_and_delete(self):
        self.s3.put_object(Bucket="objects", Key="ow", Body=b"one")
        self.s3.put_object(Bucket="objects", Key="ow", Body=b"second")
        self.assertEqual(self.s3.get_object(Bucket="objects", Key="ow")["Body"].read(), b"second")
        self.s3.delete_object(Bucket="objects", Key="ow")
        self.s3.delete_object(Bucket="objects", Key="ow")  # deleting nothing succeeds
        with self.assertRaises(botocore.exceptions.ClientError):
            self.s3.head_object(Bucket="objects", Key="ow")

    def test_delete_objects(self):
        for i in range(5):
            self.s3.put_object(Bucket="objects", Key=f"many/{i}", Body=b"x")
        r = self.s3.delete_objects(Bucket="objects", Delete={"Objects": [{"Key": f"many/{i}"} for i in range(5)] + [{"Key": "many/absent"}]})
        self.assertEqual(sorted(d["Key"] for d in r["Deleted"]), sorted([f"many/{i}" for i in range(5)] + ["many/absent"]))
        self.assertEqual(self.s3.list_objects_v2(Bucket="objects", Prefix="many/")["KeyCount"], 0)

    def test_copy(self):
        data = random_bytes(3 * MiB, 11)
        self.s3.put_object(Bucket="objects", Key="src", Body=data, Metadata={"m": "1"}, ContentType="image/png")
        self.s3.copy_object(Bucket="objects", Key="dst", CopySource={"Bucket": "objects", "Key": "src"})
        g = self.s3.get_object(Bucket="objects", Key="dst")
        self.assertEqual(g["Body"].read(), data)
        self.assertEqual(g["Metadata"], {"m": "1"})
        self.assertEqual(g["ContentType"], "image/png")
        self.s3.copy_object(Bucket="objects", Key="dst", CopySource="objects/src", MetadataDirective="REPLACE", Metadata={"m": "2"}, ContentType="text/x")
        h = self.s3.head_object(Bucket="objects", Key="dst")
        self.assertEqual((h["Metadata"], h["ContentType"]), ({"m": "2"}, "text/x"))
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.copy_object(Bucket="objects", Key="src", CopySource="objects/src")
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidRequest")

    def test_checksums(self):
        # (CRC32C and CRC64NVME need botocore's optional CRT package; the server's CRCs are
        # checked against known values in the Swift tests.)
        for algorithm in ["CRC32", "SHA1", "SHA256"]:
            r = self.s3.put_object(Bucket="objects", Key="ck/" + algorithm, Body=b"checksum me" * 1000, ChecksumAlgorithm=algorithm)
            self.assertIn("Checksum" + algorithm, r, algorithm)
            g = self.s3.get_object(Bucket="objects", Key="ck/" + algorithm, ChecksumMode="ENABLED")
            self.assertEqual(g["Checksum" + algorithm], r["Checksum" + algorithm])
            self.assertEqual(g["Body"].read(), b"checksum me" * 1000)
        # A wrong checksum is refused with BadDigest and stores nothing.
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.put_object(Bucket="objects", Key="ck/bad", Body=b"data", ChecksumCRC32="AAAAAA==")
        self.assertEqual(e.exception.response["Error"]["Code"], "BadDigest")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.s3.put_object(Bucket="objects", Key="ck/bad", Body=b"data", ContentMD5="1B2M2Y8AsgTpgAmY7PhCfg==")
        self.assertEqual(e.exception.response["Error"]["Code"], "BadDigest")
        with self.assertRaises(botocore.exceptions.ClientError):
            self.s3.head_object(Bucket="objects", Key="ck/bad")

    def test_unsigned_streaming_with_trailer(self):
        # Unsigned aws-chunked bodies with a trailing checksum (what clients send over TLS).
        s3 = cluster.client(s3={"payload_signing_enabled": False}, request_checksum_calculation="when_supported")
        data = random_bytes(2 * MiB + 3, 5)
        r = s3.put_object(Bucket="objects", Key="trailer", Body=data, ChecksumAlgorithm="CRC32")
        self.assertIn("ChecksumCRC32", r)
        self.assertEqual(self.s3.get_object(Bucket="objects", Key="trailer")["Body"].read(), data)

    def test_presigned_get_with_curl(self):
        self.s3.put_object(Bucket="objects", Key="pre sign/ä", Body=b"presigned body")
        url = self.s3.generate_presigned_url("get_object", Params={"Bucket": "objects", "Key": "pre sign/ä"}, ExpiresIn=60)
        out = subprocess.run(["curl", "-sf", url], capture_output=True)
        self.assertEqual(out.returncode, 0)
        self.assertEqual(out.stdout, b"presigned body")
        tampered = url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")
        self.assertNotEqual(subprocess.run(["curl", "-sf", tampered], capture_output=True).returncode, 0)

    def test_wrong_keys_refused(self):
        bad_secret = cluster.client(secret="not-the-secret-at-all")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            bad_secret.list_objects_v2(Bucket="objects")
        self.assertEqual(e.exception.response["Error"]["Code"], "SignatureDoesNotMatch")
        bad_key = cluster.client(key="AKIAUNKNOWNKEY000000")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            bad_key.put_object(Bucket="objects", Key="x", Body=b"x")
        self.assertEqual(e.exception.response["Error"]["Code"], "InvalidAccessKeyId")
        # Anonymous requests are refused on a private bucket.
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(cluster.endpoint + "/objects/meta")
        self.assertEqual(e.exception.code, 403)

    def test_malformed_requests(self):
        s3 = self.s3
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.delete_objects(Bucket="objects", Delete={"Objects": []})
        self.assertEqual(e.exception.response["Error"]["Code"], "MalformedXML")
        # Raw garbage and oversized headers: an error reply, and the gateway keeps serving.
        for payload in [b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200000 + b"\r\n\r\n",
                        b"PUT /objects/k HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nab"]:
            with socket.create_connection(("127.0.0.1", cluster.port), timeout=10) as c:
                try:
                    c.sendall(payload)
                    c.shutdown(socket.SHUT_WR)
                    c.recv(65536)
                except OSError:
                    pass
        self.assertIn("Buckets", s3.list_buckets())


class TestConnectionLimits(unittest.TestCase):
    """A second gateway on the same cluster, with small connection limits ([s3] in a copy of
    the cluster file): what a peer that proves nothing can hold is bounded, and signed
    clients keep being answered."""

    LIMITS = {"max_connections": 80, "max_new_connections": 8, "head_timeout": 1, "idle_timeout": 2}

    @classmethod
    def setUpClass(cls):
        config = os.path.join(cluster.tmp, "limits.toml")
        with open(os.path.join(cluster.state, "cluster.toml")) as f:
            text = f.read()
        # The [s3] table may be implicit (only [[s3.credentials]]): define it after them.
        text += "\n[s3]\n" + "".join(f'{k} = {v}\n' for k, v in cls.LIMITS.items())
        with open(config, "w") as f:
            f.write(text)
        cls.log = open(os.path.join(cluster.tmp, "limits-gateway.log"), "w")
        # Port 0: the gateway binds a free port and prints it.
        cls.process = subprocess.Popen([TESSERA, "gateway", "--config", config, "--listen", "127.0.0.1:0"],
                                       stdout=subprocess.PIPE, stderr=cls.log, text=True)
        line = cls.process.stdout.readline()
        if "listening on http://127.0.0.1:" not in line:
            cls.process.kill()
            cls.process.wait()
            raise RuntimeError(f"the gateway did not start: {line!r}")
        cls.port = int(line.rsplit(":", 1)[1])
        cls.endpoint = f"http://127.0.0.1:{cls.port}"

    @classmethod
    def tearDownClass(cls):
        cls.process.terminate()
        try:
            cls.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            cls.process.kill()
            cls.process.wait()
        cls.process.stdout.close()
        cls.log.close()

    def client(self):
        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name="us-east-1",
            aws_access_key_id=cluster.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=cluster.env["AWS_SECRET_ACCESS_KEY"],
            config=Config(signature_version="s3v4", retries={"max_attempts": 1}, max_pool_connections=1))

    def connect(self):
        return socket.create_connection(("127.0.0.1", self.port), timeout=10)

    def closed_within(self, c, seconds):
        """True if the gateway closes `c` within `seconds` (reading and dropping what it sends)."""
        c.settimeout(seconds)
        try:
            while c.recv(65536):
                pass
            return True
        except socket.timeout:
            return False
        except OSError:
            return True

    def rss_kib(self):
        with open(f"/proc/{self.process.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def test_new_connections_are_bounded_and_dropped_after_the_head_timeout(self):
        s3 = self.client()
        s3.create_bucket(Bucket="limits")
        s3.put_object(Bucket="limits", Key="k", Body=b"kept")
        # Connections that send nothing, or half a head, hold the new-connection budget...
        silent = [self.connect() for _ in range(6)]
        partial = [self.connect() for _ in range(2)]
        for c in partial:
            c.sendall(b"GET /limits/k HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        time.sleep(0.2)
        # ...so one more is closed as it is accepted,
        extra = self.connect()
        self.assertTrue(self.closed_within(extra, 0.5), "a connection past max_new_connections was kept")
        extra.close()
        # while the signed client's kept-alive connection is still answered.
        self.assertEqual(s3.get_object(Bucket="limits", Key="k")["Body"].read(), b"kept")
        # Each is dropped once the head timeout (1 s) has passed.
        start = time.monotonic()
        for c in silent + partial:
            self.assertTrue(self.closed_within(c, 5), "a connection without a complete head was kept past the head timeout")
            c.close()
        self.assertLess(time.monotonic() - start, 5)
        # Then new connections are served again.
        self.assertEqual(self.client().get_object(Bucket="limits", Key="k")["Body"].read(), b"kept")

    def test_idle_kept_alive_connection_is_closed(self):
        c = self.connect()
        c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # anonymous: 403, connection kept
        c.settimeout(5)
        reply = c.recv(65536)
        self.assertTrue(reply.startswith(b"HTTP/1.1 403"), reply[:40])
        self.assertNotIn(b"connection: close", reply.lower())
        start = time.monotonic()
        self.assertTrue(self.closed_within(c, 10), "an idle kept-alive connection was never closed")
        waited = time.monotonic() - start
        self.assertGreater(waited, 1.5)  # idle_timeout is 2 s
        c.close()

    def test_refused_bodies_are_not_buffered(self):
        """60 connections each declare a 16 MiB unsigned PUT and send 15 MiB of it: every one
        is refused at its head, its body is not read, and the gateway's memory stays within
        what back-pressure bounds."""
        s3 = self.client()
        s3.create_bucket(Bucket="limits-bodies")
        before = self.rss_kib()
        chunk = b"\0" * MiB

        def attack(i):
            """(whether the gateway cut the body off, its reply)"""
            with self.connect() as c:
                c.sendall(b"PUT /limits-bodies/k%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (i, 16 * MiB))
                cut = False
                try:
                    for _ in range(15):
                        c.sendall(chunk)
                except OSError:
                    cut = True  # closed by the gateway, which never read the body
                try:
                    c.settimeout(10)
                    return cut, c.recv(64)
                except OSError:
                    return cut, b""

        with concurrent.futures.ThreadPoolExecutor(60) as pool:
            results = list(pool.map(attack, range(60)))
        after = self.rss_kib()
        # 15 MiB is more than the socket buffers hold: a gateway that read the bodies would
        # have taken all of each.
        self.assertEqual(sum(cut for cut, _ in results), 60, "the gateway read refused bodies")
        replies = [r for _, r in results]
        self.assertTrue(all(r == b"" or r.startswith(b"HTTP/1.1 403") for r in replies), replies[:3])
        # What a connection may hold is what back-pressure lets in before the refusal: up to
        # 8 body parts of at most 64 KiB (HTTPServer.swift), 30 MiB for 60 at worst. Buffering
        # the bodies would be 900 MiB.
        self.assertLess(after - before, 40 * 1024, f"resident memory grew from {before} KiB to {after} KiB")
        self.assertEqual(s3.list_objects_v2(Bucket="limits-bodies").get("KeyCount"), 0)
        # A signed client is answered afterwards.
        s3.put_object(Bucket="limits-bodies", Key="after", Body=b"x")
        self.assertEqual(s3.get_object(Bucket="limits-bodies", Key="after")["Body"].read(), b"x")


class TestListing(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = cluster.client(max_pool_connections=16)
        cls.s3.create_bucket(Bucket="listing")
        cls.keys = sorted([f"d{i % 10}/sub{i % 7}/key{i:05d}" for i in range(10_000)])
        with concurrent.futures.ThreadPoolExecutor(16) as ex:
            list(ex.map(lambda k: cls.s3.put_object(Bucket="listing", Key=k, Body=k.encode()), cls.keys))

    def test_v2_pages_without_delimiter(self):
        got = []
        pages = 0
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket="listing"):
            got += [o["Key"] for o in page.get("Contents", [])]
            pages += 1
        self.assertEqual(got, self.keys)
        self.assertEqual(pages, 10)

    def test_v2_with_delimiter(self):
        r = self.s3.list_objects_v2(Bucket="listing", Delimiter="/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], [f"d{i}/" for i in range(10)])
        self.assertEqual(r.get("Contents", []), [])
        r = self.s3.list_objects_v2(Bucket="listing", Delimiter="/", Prefix="d3/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], [f"d3/sub{j}/" for j in range(7)])
        got = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket="listing", Prefix="d3/sub2/", Delimiter="/", PaginationConfig={"PageSize": 37}):
            got += [o["Key"] for o in page.get("Contents", [])]
        self.assertEqual(got, [k for k in self.keys if k.startswith("d3/sub2/")])
        # Common prefixes across pages of 3.
        prefixes = []
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket="listing", Delimiter="/", PaginationConfig={"PageSize": 3}):
            prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
        self.assertEqual(prefixes, [f"d{i}/" for i in range(10)])

    def test_start_after_and_max_keys(self):
        r = self.s3.list_objects_v2(Bucket="listing", StartAfter=self.keys[4999], MaxKeys=5)
        self.assertEqual([o["Key"] for o in r["Contents"]], self.keys[5000:5005])
        self.assertTrue(r["IsTruncated"])

    def test_v1_markers(self):
        got = []
        for page in self.s3.get_paginator("list_objects").paginate(Bucket="listing", Prefix="d1/"):
            got += [o["Key"] for o in page.get("Contents", [])]
        self.assertEqual(got, [k for k in self.keys if k.startswith("d1/")])

    def test_aws_cli_ls(self):
        out = cluster.aws("s3", "ls", "s3://listing/d5/").stdout
        self.assertEqual(out.count("PRE"), 7)
        self.assertEqual(len(cluster.aws("s3", "ls", "--recursive", "s3://listing/d5/sub1/").stdout.splitlines()),
                         len([k for k in self.keys if k.startswith("d5/sub1/")]))


class TestMultipart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = cluster.client()
        cls.s3.create_bucket(Bucket="multi")

    def test_upload_list_complete(self):
        s3 = self.s3
        parts = [random_bytes(5 * MiB, 50 + i) for i in range(3)] + [random_bytes(1234, 99)]
        up = s3.create_multipart_upload(Bucket="multi", Key="mp", ContentType="video/x", Metadata={"a": "b"})
        uid = up["UploadId"]
        self.assertIn(uid, [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="multi")["Uploads"]])
        etags = []
        for i, p in enumerate(parts):
            etags.append(s3.upload_part(Bucket="multi", Key="mp", UploadId=uid, PartNumber=i + 1, Body=p)["ETag"])
        # Re-uploading a part replaces it.
        parts[1] = random_bytes(5 * MiB, 77)
        etags[1] = s3.upload_part(Bucket="multi", Key="mp", UploadId=uid, PartNumber=2, Body=parts[1])["ETag"]
        listed = s3.list_parts(Bucket="multi", Key="mp", UploadId=uid)["Parts"]
        self.assertEqual([(p["PartNumber"], p["ETag"], p["Size"]) for p in listed], [(i + 1, etags[i], len(parts[i])) for i in range(4)])
        r = s3.complete_multipart_upload(Bucket="multi", Key="mp", UploadId=uid,
                                         MultipartUpload={"Parts": [{"PartNumber": i + 1, "ETag": e} for i, e in enumerate(etags)]})
        want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-4"
        self.assertEqual(r["ETag"], '"%s"' % want)
        g = s3.get_object(Bucket="multi", Key="mp")
        self.assertEqual(g["Body"].read(), b"".join(parts))
        self.assertEqual((g["ContentType"], g["Metadata"]), ("video/x", {"a": "b"}))
        whole = b"".join(parts)
        r = s3.get_object(Bucket="multi", Key="mp", Range="bytes=%d-%d" % (5 * MiB - 10, 10 * MiB + 10))
        self.assertEqual(r["Body"].read(), whole[5 * MiB - 10:10 * MiB + 11])
        self.assertNotIn(uid, [u["UploadId"] for u in s3.list_multipart_uploads(Bucket="multi").get("Uploads", [])])

    def test_errors(self):
        s3 = self.s3
        uid = s3.create_multipart_upload(Bucket="multi", Key="bad")["UploadId"]
        e1 = s3.upload_part(Bucket="multi", Key="bad", UploadId=uid, PartNumber=1, Body=b"small")["ETag"]
        e2 = s3.upload_part(Bucket="multi", Key="bad", UploadId=uid, PartNumber=2, Body=b"small")["ETag"]
        for parts, code in [([{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}], "EntityTooSmall"),
                            ([{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}], "InvalidPart"),
                            ([{"PartNumber": 2, "ETag": e2}, {"PartNumber": 1, "ETag": e1}], "InvalidPartOrder")]:
            with self.assertRaises(botocore.exceptions.ClientError) as e:
                s3.complete_multipart_upload(Bucket="multi", Key="bad", UploadId=uid, MultipartUpload={"Parts": parts})
            self.assertEqual(e.exception.response["Error"]["Code"], code)
        s3.abort_multipart_upload(Bucket="multi", Key="bad", UploadId=uid)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.list_parts(Bucket="multi", Key="bad", UploadId=uid)
        self.assertEqual(e.exception.response["Error"]["Code"], "NoSuchUpload")

    def test_upload_part_copy(self):
        s3 = self.s3
        src = random_bytes(12 * MiB, 123)
        s3.put_object(Bucket="multi", Key="copysrc", Body=src)
        uid = s3.create_multipart_upload(Bucket="multi", Key="copied")["UploadId"]
        p1 = s3.upload_part_copy(Bucket="multi", Key="copied", UploadId=uid, PartNumber=1, CopySource="multi/copysrc",
                                 CopySourceRange="bytes=0-%d" % (6 * MiB - 1))["CopyPartResult"]["ETag"]
        p2 = s3.upload_part_copy(Bucket="multi", Key="copied", UploadId=uid, PartNumber=2, CopySource="multi/copysrc",
                                 CopySourceRange="bytes=%d-%d" % (6 * MiB, 12 * MiB - 1))["CopyPartResult"]["ETag"]
        s3.complete_multipart_upload(Bucket="multi", Key="copied", UploadId=uid,
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": p1}, {"PartNumber": 2, "ETag": p2}]})
        self.assertEqual(s3.get_object(Bucket="multi", Key="copied")["Body"].read(), src)

    def test_aws_cli_sync_multipart(self):
        d = tempfile.mkdtemp(prefix="tessera-s3-sync-")
        try:
            os.makedirs(os.path.join(d, "src", "a", "b"))
            files = {"a/one": random_bytes(17 * MiB, 1), "a/b/two": b"two", "three": b""}
            for name, data in files.items():
                with open(os.path.join(d, "src", name), "wb") as f:
                    f.write(data)
            cluster.aws("s3", "sync", "--no-progress", os.path.join(d, "src"), "s3://multi/synced")
            cluster.aws("s3", "sync", "--no-progress", "s3://multi/synced", os.path.join(d, "back"))
            self.assertEqual(subprocess.run(["diff", "-r", os.path.join(d, "src"), os.path.join(d, "back")]).returncode, 0)
            cluster.aws("s3", "rm", "--recursive", "s3://multi/synced")
            self.assertEqual(self.s3.list_objects_v2(Bucket="multi", Prefix="synced/")["KeyCount"], 0)
        finally:
            shutil.rmtree(d)


class TestS3apiCli(unittest.TestCase):
    """The same operations through `aws s3api`, as a shell user runs them."""

    def api(self, *args):
        out = cluster.aws("s3api", *args).stdout
        return json.loads(out) if out.strip() else {}

    def test_s3api_round(self):
        d = tempfile.mkdtemp(prefix="tessera-s3api-")
        try:
            body = os.path.join(d, "body")
            with open(body, "wb") as f:
                f.write(random_bytes(6 * MiB, 3))
            self.api("create-bucket", "--bucket", "cli-api")
            self.api("head-bucket", "--bucket", "cli-api")
            put = self.api("put-object", "--bucket", "cli-api", "--key", "a/b.bin", "--body", body, "--content-type", "application/x-test",
                           "--metadata", "k=v")
            head = self.api("head-object", "--bucket", "cli-api", "--key", "a/b.bin")
            self.assertEqual((head["ETag"], head["ContentLength"], head["ContentType"], head["Metadata"]),
                             (put["ETag"], 6 * MiB, "application/x-test", {"k": "v"}))
            self.api("get-object", "--bucket", "cli-api", "--key", "a/b.bin", "--range", "bytes=100-199", os.path.join(d, "part"))
            with open(os.path.join(d, "part"), "rb") as f, open(body, "rb") as g:
                self.assertEqual(f.read(), g.read()[100:200])
            self.api("copy-object", "--bucket", "cli-api", "--key", "a/c.bin", "--copy-source", "cli-api/a/b.bin")
            listed = self.api("list-objects-v2", "--bucket", "cli-api", "--prefix", "a/")
            self.assertEqual([o["Key"] for o in listed["Contents"]], ["a/b.bin", "a/c.bin"])
            self.assertEqual(self.api("list-objects", "--bucket", "cli-api", "--delimiter", "/")["CommonPrefixes"], [{"Prefix": "a/"}])
            uid = self.api("create-multipart-upload", "--bucket", "cli-api", "--key", "mp")["UploadId"]
            self.assertEqual(self.api("list-multipart-uploads", "--bucket", "cli-api")["Uploads"][0]["UploadId"], uid)
            etag = self.api("upload-part", "--bucket", "cli-api", "--key", "mp", "--upload-id", uid, "--part-number", "1", "--body", body)["ETag"]
            self.assertEqual(self.api("list-parts", "--bucket", "cli-api", "--key", "mp", "--upload-id", uid)["Parts"][0]["ETag"], etag)
            self.api("complete-multipart-upload", "--bucket", "cli-api", "--key", "mp", "--upload-id", uid,
                     "--multipart-upload", json.dumps({"Parts": [{"PartNumber": 1, "ETag": etag}]}))
            uid2 = self.api("create-multipart-upload", "--bucket", "cli-api", "--key", "gone")["UploadId"]
            self.api("abort-multipart-upload", "--bucket", "cli-api", "--key", "gone", "--upload-id", uid2)
            self.assertNotIn("Uploads", self.api("list-multipart-uploads", "--bucket", "cli-api"))
            deleted = self.api("delete-objects", "--bucket", "cli-api", "--delete",
                               json.dumps({"Objects": [{"Key": "a/b.bin"}, {"Key": "a/c.bin"}]}))
            self.assertEqual(len(deleted["Deleted"]), 2)
            self.api("delete-object", "--bucket", "cli-api", "--key", "mp")
            self.api("delete-bucket", "--bucket", "cli-api")
        finally:
            shutil.rmtree(d)


class TestCrash(unittest.TestCase):
    """SIGKILL the gateway during overwrites: each key reads old or new in full, and once the
    restarted gateway's sweeper has run, deleting everything gives all the space back."""

    def test_kill_during_overwrites(self):
        s3 = cluster.client(max_pool_connections=8, retries={"max_attempts": 1})
        s3.create_bucket(Bucket="crash")
        versions = {k: [random_bytes(3 * MiB + k, 1000 + k), random_bytes(2 * MiB + 17 * k, 2000 + k)] for k in range(8)}
        for k, (old, _) in versions.items():
            s3.put_object(Bucket="crash", Key=f"k{k}", Body=old)
        baseline = None

        def overwrite(k):
            try:
                s3.put_object(Bucket="crash", Key=f"k{k}", Body=versions[k][1])
            except Exception:
                pass

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            futures = [ex.submit(overwrite, k) for k in versions]
            time.sleep(0.15)
            os.kill(cluster.gateway_pid(), signal.SIGKILL)
            concurrent.futures.wait(futures)
        time.sleep(0.2)
        cluster.start_gateway()
        s3 = cluster.client()
        for k, (old, new) in versions.items():
            got = s3.get_object(Bucket="crash", Key=f"k{k}")["Body"].read()
            self.assertIn(got, (old, new), f"k{k} is neither its old nor its new content")
        # Free everything; once the restarted gateway's sweeper has run, nothing of this
        # test's objects is left on the servers.
        for k in versions:
            s3.delete_object(Bucket="crash", Key=f"k{k}")
        s3.delete_bucket(Bucket="crash")
        deadline = time.time() + 30
        while cluster.used_bytes() != TestCrash.before and time.time() < deadline:
            time.sleep(0.2)
        self.assertEqual(cluster.used_bytes(), TestCrash.before)

    @classmethod
    def setUpClass(cls):
        TestCrash.before = cluster.used_bytes()


if __name__ == "__main__":
    unittest.main()
