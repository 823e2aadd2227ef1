"""S3 as the tools expect it, through boto3, aws cli and signed raw requests, on a local
cluster: versions listing (a bucket emptied through it), subresources (the right answer or
501), GetObjectAttributes, canned ACLs and their enforcement, conditional writes (also
racing through two gateways), partNumber reads, multipart checksum types, presigned URL
expiry, bucket listing pages, and virtual-hosted-style addressing.

Run: TESSERA=.build/release/tessera python3 -m unittest Tests/S3/test_conformance.py
"""
import base64
import concurrent.futures
import hashlib
import http.client
import os
import socket
import subprocess
import sys
import time
import unittest
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
import zlib

import boto3
import botocore
from botocore import UNSIGNED
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from support import free_port, random_bytes, wait_until  # noqa: E402
from test_gateway import TESSERA, Cluster  # noqa: E402

MiB = 1 << 20
DOMAIN = "s3.test"
cluster = None
gateway2 = None


def setUpModule():
    """The cluster, and a second gateway on it whose configuration adds `domain`."""
    global cluster, gateway2
    cluster = Cluster()
    try:
        gateway2 = SecondGateway(cluster)
    except BaseException:
        cluster.down()
        raise


def tearDownModule():
    if gateway2:
        gateway2.stop()
    if cluster:
        cluster.down()


class SecondGateway:
    def __init__(self, c):
        config = os.path.join(c.tmp, "cluster-vhost.toml")
        with open(os.path.join(c.state, "cluster.toml")) as f:
            text = f.read()
        assert "\n[s3]" not in text, "the cluster file has an [s3] table already"
        text += f'\n[s3]\ndomain = "{DOMAIN}"\n'
        with open(config, "w") as f:
            f.write(text)
        self.port = free_port()
        self.log = open(os.path.join(c.tmp, "gateway2.log"), "w")
        self.process = subprocess.Popen([TESSERA, "gateway", "--config", config, "--listen", f"127.0.0.1:{self.port}"],
                                        stdout=subprocess.DEVNULL, stderr=self.log)
        def answering():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0
        wait_until(answering, "the second gateway", 60)
        self.endpoint = f"http://127.0.0.1:{self.port}"

    def client(self):
        return cluster.client_at(self.endpoint)

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self.log.close()


def client_at(self, endpoint, **config):
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
        config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config))


Cluster.client_at = client_at


def anonymous():
    """A client that signs nothing."""
    return boto3.client("s3", endpoint_url=cluster.endpoint, region_name="us-east-1", config=Config(signature_version=UNSIGNED, retries={"max_attempts": 1}))


def raw(method, path, query="", headers=None, body=b"", port=None, host=None):
    """A request signed by botocore (SigV4, the cluster's key), sent as is: (status, body)."""
    port = port or int(cluster.endpoint.rsplit(":", 1)[1])
    url = f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")
    request = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    if host:
        request.headers["Host"] = host
    request.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    S3SigV4Auth(Credentials(cluster.env["AWS_ACCESS_KEY_ID"], cluster.env["AWS_SECRET_ACCESS_KEY"]), "s3", "us-east-1").add_auth(request)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        target = path + (f"?{query}" if query else "")
        conn.request(method, target, body=body, headers=dict(request.headers.items()))
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def error_code(body):
    try:
        return ET.fromstring(body).findtext("Code")
    except ET.ParseError:
        return None


def code_of(e):
    return e.exception.response["Error"]["Code"]


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), bit by bit over a table."""
    table = crc32c.table
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


crc32c.table = []
for _i in range(256):
    _c = _i
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    crc32c.table.append(_c)


def b64(data):
    return base64.b64encode(data).decode()


class TestVersions(unittest.TestCase):
    def test_bucket_emptied_through_versions_then_deleted(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="versions-empty")
        keys = [f"dir/k{i:02}" for i in range(7)] + ["top"]
        for k in keys:
            s3.put_object(Bucket="versions-empty", Key=k, Body=k.encode())
        # Paged, two at a time: every key once, as version "null", the latest.
        seen = []
        for page in s3.get_paginator("list_object_versions").paginate(Bucket="versions-empty", PaginationConfig={"PageSize": 2}):
            for v in page.get("Versions", []):
                self.assertEqual(v["VersionId"], "null")
                self.assertTrue(v["IsLatest"])
                self.assertEqual(v["Size"], len(v["Key"]))
                seen.append(v["Key"])
            self.assertEqual(page.get("DeleteMarkers", []), [])
        self.assertEqual(seen, sorted(keys))
        listed = s3.list_object_versions(Bucket="versions-empty", Delimiter="/")
        self.assertEqual([p["Prefix"] for p in listed["CommonPrefixes"]], ["dir/"])
        self.assertEqual([v["Key"] for v in listed["Versions"]], ["top"])
        objects = [{"Key": v["Key"], "VersionId": v["VersionId"]} for v in s3.list_object_versions(Bucket="versions-empty")["Versions"]]
        out = s3.delete_objects(Bucket="versions-empty", Delete={"Objects": objects})
        self.assertEqual(out.get("Errors", []), [])
        self.assertEqual(sorted(d["Key"] for d in out["Deleted"]), sorted(keys))
        self.assertTrue(all(d["VersionId"] == "null" for d in out["Deleted"]))
        s3.delete_bucket(Bucket="versions-empty")
        self.assertNotIn("versions-empty", [b["Name"] for b in s3.list_buckets()["Buckets"]])

    def test_version_ids_other_than_null(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="versions-ids")
        s3.put_object(Bucket="versions-ids", Key="k", Body=b"data")
        self.assertEqual(s3.get_object(Bucket="versions-ids", Key="k", VersionId="null")["Body"].read(), b"data")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="versions-ids", Key="k", VersionId="3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY")
        self.assertEqual(code_of(e), "InvalidArgument")
        out = s3.delete_objects(Bucket="versions-ids", Delete={"Objects": [{"Key": "k", "VersionId": "other"}]})
        self.assertEqual([x["Code"] for x in out["Errors"]], ["InvalidArgument"])
        self.assertEqual(s3.get_object(Bucket="versions-ids", Key="k")["Body"].read(), b"data")

    def test_aws_cli_list_object_versions(self):
        cluster.client().create_bucket(Bucket="versions-cli")
        cluster.client().put_object(Bucket="versions-cli", Key="a", Body=b"1")
        out = cluster.aws("s3api", "list-object-versions", "--bucket", "versions-cli").stdout
        self.assertIn('"VersionId": "null"', out)
        self.assertIn('"Key": "a"', out)


class TestSubresources(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.s3 = cluster.client()
        cls.s3.create_bucket(Bucket="subres")
        cls.s3.put_object(Bucket="subres", Key="obj", Body=b"x")

    def check(self, method, path, query, want, headers=None, body=b""):
        status, text, _ = raw(method, path, query, headers=headers, body=body)
        if want == 501:
            self.assertEqual((status, error_code(text)), (501, "NotImplemented"), f"{method} {path}?{query}: {text[:300]}")
        else:
            self.assertEqual(status, want, f"{method} {path}?{query}: {text[:300]}")

    def test_bucket_matrix(self):
        for q in ["", "list-type=2", "location", "versioning", "versions", "uploads", "acl", "versions&prefix=a"]:
            self.check("GET", "/subres", q, 200)
        for q in ["policy", "tagging", "cors", "lifecycle", "website", "encryption", "object-lock", "notification", "logging", "replication",
                  "ownershipControls", "publicAccessBlock", "accelerate", "requestPayment", "analytics", "metrics", "inventory",
                  "intelligent-tiering", "policyStatus", "acl&versioning"]:
            self.check("GET", "/subres", q, 501)
        for q in ["policy", "tagging", "cors", "lifecycle", "versioning", "website", "encryption", "object-lock"]:
            self.check("PUT", "/subres", q, 501, body=b"<x/>")
            self.check("DELETE", "/subres", q, 501)
        self.check("POST", "/subres", "restore", 501)
        self.check("GET", "/", "acl", 501)
        self.check("PATCH", "/subres", "", 405)
        self.assertEqual(self.s3.head_bucket(Bucket="subres")["ResponseMetadata"]["HTTPStatusCode"], 200)

    def test_object_matrix(self):
        self.check("GET", "/subres/obj", "", 200)
        self.check("GET", "/subres/obj", "acl", 200)
        self.check("GET", "/subres/obj", "attributes", 200, headers={"x-amz-object-attributes": "ETag"})
        self.check("GET", "/subres/obj", "attributes", 400)
        for q in ["tagging", "retention", "legal-hold", "torrent", "acl&tagging"]:
            self.check("GET", "/subres/obj", q, 501)
        for q in ["tagging", "retention", "legal-hold"]:
            self.check("PUT", "/subres/obj", q, 501, body=b"<x/>")
        self.check("DELETE", "/subres/obj", "tagging", 501)
        for q in ["restore", "select&select-type=2", "renameObject"]:
            self.check("POST", "/subres/obj", q, 501, body=b"<x/>")
        # Nothing above changed the object.
        self.assertEqual(self.s3.get_object(Bucket="subres", Key="obj")["Body"].read(), b"x")


class TestAttributes(unittest.TestCase):
    def test_single_and_multipart(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="attrs")
        body = random_bytes(3000, 1)
        s3.put_object(Bucket="attrs", Key="one", Body=body, ChecksumAlgorithm="CRC32")
        a = s3.get_object_attributes(Bucket="attrs", Key="one", ObjectAttributes=["ETag", "Checksum", "ObjectSize", "StorageClass", "ObjectParts"])
        self.assertEqual(a["ETag"], hashlib.md5(body).hexdigest())
        self.assertEqual(a["ObjectSize"], 3000)
        self.assertEqual(a["StorageClass"], "STANDARD")
        self.assertEqual(a["Checksum"]["ChecksumCRC32"], b64(zlib.crc32(body).to_bytes(4, "big")))
        self.assertEqual(a["Checksum"]["ChecksumType"], "FULL_OBJECT")
        self.assertNotIn("ObjectParts", a)

        parts = [random_bytes(5 * MiB, 2), random_bytes(5 * MiB, 3), random_bytes(1000, 4)]
        up = s3.create_multipart_upload(Bucket="attrs", Key="multi", ChecksumAlgorithm="SHA256")
        done = []
        for i, p in enumerate(parts, 1):
            r = s3.upload_part(Bucket="attrs", Key="multi", UploadId=up["UploadId"], PartNumber=i, Body=p, ChecksumAlgorithm="SHA256")
            done.append({"PartNumber": i, "ETag": r["ETag"], "ChecksumSHA256": r["ChecksumSHA256"]})
        s3.complete_multipart_upload(Bucket="attrs", Key="multi", UploadId=up["UploadId"], MultipartUpload={"Parts": done})
        a = s3.get_object_attributes(Bucket="attrs", Key="multi", ObjectAttributes=["ObjectParts", "ObjectSize", "Checksum"], MaxParts=2)
        self.assertEqual(a["ObjectSize"], sum(map(len, parts)))
        op = a["ObjectParts"]
        self.assertEqual((op["TotalPartsCount"], op["IsTruncated"], op["NextPartNumberMarker"]), (3, True, 2))
        self.assertEqual([(p["PartNumber"], p["Size"]) for p in op["Parts"]], [(1, 5 * MiB), (2, 5 * MiB)])
        self.assertEqual(op["Parts"][0]["ChecksumSHA256"], b64(hashlib.sha256(parts[0]).digest()))
        rest = s3.get_object_attributes(Bucket="attrs", Key="multi", ObjectAttributes=["ObjectParts"], PartNumberMarker=2)["ObjectParts"]
        self.assertEqual([p["PartNumber"] for p in rest["Parts"]], [3])
        self.assertEqual(a["Checksum"]["ChecksumType"], "COMPOSITE")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.get_object_attributes(Bucket="attrs", Key="absent", ObjectAttributes=["ETag"])
        self.assertEqual(code_of(e), "NoSuchKey")
        # Markers and limits out of range are refused, never trusted.
        for headers in [{"x-amz-part-number-marker": "4294967296"}, {"x-amz-part-number-marker": "-1"}, {"x-amz-max-parts": "-2"}]:
            status, body, _ = raw("GET", "/attrs/multi", "attributes", headers=dict(headers, **{"x-amz-object-attributes": "ObjectParts"}))
            self.assertEqual((status, error_code(body)), (400, "InvalidArgument"), headers)
        live = s3.create_multipart_upload(Bucket="attrs", Key="live")["UploadId"]
        for query in ["part-number-marker=4294967296", "part-number-marker=-3", "max-parts=-2", "max-parts=x"]:
            status, body, _ = raw("GET", "/attrs/live", f"uploadId={live}&{query}")
            self.assertEqual((status, error_code(body)), (400, "InvalidArgument"), query)
        s3.abort_multipart_upload(Bucket="attrs", Key="live", UploadId=live)


class TestACL(unittest.TestCase):
    def test_bucket_acl(self):
        s3, anon = cluster.client(), anonymous()
        s3.create_bucket(Bucket="acl-bucket")
        s3.put_object(Bucket="acl-bucket", Key="k", Body=b"v")
        grants = s3.get_bucket_acl(Bucket="acl-bucket")["Grants"]
        self.assertEqual([(g["Grantee"]["Type"], g["Permission"]) for g in grants], [("CanonicalUser", "FULL_CONTROL")])
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.list_objects_v2(Bucket="acl-bucket")
        self.assertEqual(code_of(e), "AccessDenied")
        s3.put_bucket_acl(Bucket="acl-bucket", ACL="public-read")
        grants = s3.get_bucket_acl(Bucket="acl-bucket")["Grants"]
        self.assertIn(("Group", "http://acs.amazonaws.com/groups/global/AllUsers", "READ"),
                      [(g["Grantee"]["Type"], g["Grantee"].get("URI"), g["Permission"]) for g in grants])
        self.assertEqual([o["Key"] for o in anon.list_objects_v2(Bucket="acl-bucket")["Contents"]], ["k"])
        # A bucket's READ is listing, as in S3: its private objects stay private.
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.get_object(Bucket="acl-bucket", Key="k")
        self.assertEqual(code_of(e), "AccessDenied")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.get_object(Bucket="acl-bucket", Key="absent")
        self.assertEqual(code_of(e), "NoSuchKey")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.put_object(Bucket="acl-bucket", Key="k2", Body=b"no")
        self.assertEqual(code_of(e), "AccessDenied")
        # Back to private with a policy body: the owner's grant alone.
        owner = s3.get_bucket_acl(Bucket="acl-bucket")["Owner"]
        s3.put_bucket_acl(Bucket="acl-bucket", AccessControlPolicy={
            "Owner": owner, "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": owner["ID"]}, "Permission": "FULL_CONTROL"}]})
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.list_objects_v2(Bucket="acl-bucket")
        self.assertEqual(code_of(e), "AccessDenied")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.put_bucket_acl(Bucket="acl-bucket", AccessControlPolicy={
                "Owner": owner, "Grants": [{"Grantee": {"Type": "CanonicalUser", "ID": "someone-else"}, "Permission": "READ"}]})
        self.assertEqual(code_of(e), "NotImplemented")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.put_bucket_acl(Bucket="acl-bucket", ACL="authenticated-read")
        self.assertEqual(code_of(e), "NotImplemented")
        s3.create_bucket(Bucket="acl-public", ACL="public-read")
        self.assertEqual(anon.list_objects_v2(Bucket="acl-public")["KeyCount"], 0)

    def test_object_acl(self):
        s3, anon = cluster.client(), anonymous()
        s3.create_bucket(Bucket="acl-objects")
        s3.put_object(Bucket="acl-objects", Key="open", Body=b"o", ACL="public-read")
        s3.put_object(Bucket="acl-objects", Key="closed", Body=b"c")
        self.assertEqual(anon.get_object(Bucket="acl-objects", Key="open")["Body"].read(), b"o")
        for key in ["closed", "absent"]:
            with self.assertRaises(botocore.exceptions.ClientError, msg=key) as e:
                anon.get_object(Bucket="acl-objects", Key=key)
            self.assertEqual(code_of(e), "AccessDenied", key)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.list_objects_v2(Bucket="acl-objects")
        self.assertEqual(code_of(e), "AccessDenied")
        grants = s3.get_object_acl(Bucket="acl-objects", Key="open")["Grants"]
        self.assertEqual(sorted(g["Permission"] for g in grants), ["FULL_CONTROL", "READ"])
        s3.put_object_acl(Bucket="acl-objects", Key="open", ACL="private")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            anon.get_object(Bucket="acl-objects", Key="open")
        self.assertEqual(code_of(e), "AccessDenied")
        self.assertEqual(len(s3.get_object_acl(Bucket="acl-objects", Key="open")["Grants"]), 1)
        s3.put_object_acl(Bucket="acl-objects", Key="closed", ACL="public-read")
        self.assertEqual(anon.get_object(Bucket="acl-objects", Key="closed")["Body"].read(), b"c")
        # A copy takes the ACL its request names, not its source's.
        s3.copy_object(Bucket="acl-objects", Key="copy", CopySource="acl-objects/closed")
        with self.assertRaises(botocore.exceptions.ClientError):
            anon.get_object(Bucket="acl-objects", Key="copy")
        s3.copy_object(Bucket="acl-objects", Key="copy2", CopySource="acl-objects/closed", ACL="public-read")
        self.assertEqual(anon.get_object(Bucket="acl-objects", Key="copy2")["Body"].read(), b"c")
        # Presigned by the owner: the owner's access.
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "acl-objects", "Key": "copy"}, ExpiresIn=300)
        self.assertEqual(urllib.request.urlopen(url).read(), b"c")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.put_object_acl(Bucket="acl-objects", Key="absent", ACL="private")
        self.assertEqual(code_of(e), "NoSuchKey")


class TestBucketsMore(unittest.TestCase):
    def test_create_owned_bucket_again_is_200(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="again-bucket")
        s3.put_object(Bucket="again-bucket", Key="kept", Body=b"k")
        self.assertEqual(s3.create_bucket(Bucket="again-bucket")["ResponseMetadata"]["HTTPStatusCode"], 200)
        self.assertEqual(s3.get_object(Bucket="again-bucket", Key="kept")["Body"].read(), b"k")

    def test_list_buckets_pages(self):
        s3 = cluster.client()
        names = [f"page-{i}-bucket" for i in range(5)]
        for n in names:
            s3.create_bucket(Bucket=n)
        got, token, pages = [], None, 0
        while True:
            kw = {"ContinuationToken": token} if token else {}
            out = s3.list_buckets(MaxBuckets=2, Prefix="page-", **kw)
            pages += 1
            self.assertEqual(out["Prefix"], "page-")
            got += [b["Name"] for b in out["Buckets"]]
            token = out.get("ContinuationToken")
            if not token:
                break
        self.assertEqual((got, pages), (names, 3))
        status, body, _ = raw("GET", "/", "max-buckets=0")
        self.assertEqual((status, error_code(body)), (400, "InvalidArgument"))

    def test_delete_bucket_with_uploads_in_progress(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="uploads-left")
        before = cluster.used_bytes()
        for key in ["a", "b"]:
            up = s3.create_multipart_upload(Bucket="uploads-left", Key=key)
            s3.upload_part(Bucket="uploads-left", Key=key, UploadId=up["UploadId"], PartNumber=1, Body=random_bytes(5 * MiB, 5))
        self.assertEqual(len(s3.list_multipart_uploads(Bucket="uploads-left")["Uploads"]), 2)
        self.assertGreater(cluster.used_bytes(), before)
        s3.delete_bucket(Bucket="uploads-left")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.head_bucket(Bucket="uploads-left")
        self.assertEqual(code_of(e), "404")
        # The parts were freed with the bucket.
        self.assertLessEqual(cluster.used_bytes(), before)


class TestSmallObjects(unittest.TestCase):
    def test_small_objects_live_in_their_entries(self):
        """Bodies up to 4 KiB are kept in the object's entry: no data is written for them,
        they read back (also ranges and copies), and overwriting or deleting them changes no
        data; a larger one takes data."""
        s3 = cluster.client()
        s3.create_bucket(Bucket="small-objects")
        before = cluster.used_bytes()
        bodies = {f"s{i}": random_bytes(n, 100 + i) for i, n in enumerate([0, 1, 100, 4095, 4096])}
        for k, b in bodies.items():
            s3.put_object(Bucket="small-objects", Key=k, Body=b, ChecksumAlgorithm="CRC32")
        self.assertEqual(cluster.used_bytes(), before, "small bodies wrote data")
        for k, b in bodies.items():
            self.assertEqual(s3.get_object(Bucket="small-objects", Key=k)["Body"].read(), b, k)
        self.assertEqual(s3.get_object(Bucket="small-objects", Key="s4", Range="bytes=10-19")["Body"].read(), bodies["s4"][10:20])
        s3.put_object(Bucket="small-objects", Key="s2", Body=b"again")
        s3.delete_object(Bucket="small-objects", Key="s1")
        self.assertEqual(s3.get_object(Bucket="small-objects", Key="s2")["Body"].read(), b"again")
        self.assertEqual(cluster.used_bytes(), before, "overwrites and deletes of small objects changed data")
        s3.put_object(Bucket="small-objects", Key="big", Body=random_bytes(4097, 99))
        self.assertGreater(cluster.used_bytes(), before, "a body over 4 KiB wrote no data")
        s3.copy_object(Bucket="small-objects", Key="copy", CopySource="small-objects/s3")
        self.assertEqual(s3.get_object(Bucket="small-objects", Key="copy")["Body"].read(), bodies["s3"])


class TestConditionalWrites(unittest.TestCase):
    def test_put_if_none_match_and_if_match(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="cond-writes")
        first = s3.put_object(Bucket="cond-writes", Key="lock", Body=b"one", IfNoneMatch="*")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="cond-writes", Key="lock", Body=b"two", IfNoneMatch="*")
        self.assertEqual((code_of(e), e.exception.response["ResponseMetadata"]["HTTPStatusCode"]), ("PreconditionFailed", 412))
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="cond-writes", Key="lock", Body=b"two", IfMatch='"0123456789abcdef0123456789abcdef"')
        self.assertEqual(code_of(e), "PreconditionFailed")
        self.assertEqual(s3.get_object(Bucket="cond-writes", Key="lock")["Body"].read(), b"one")
        s3.put_object(Bucket="cond-writes", Key="lock", Body=b"three", IfMatch=first["ETag"])
        self.assertEqual(s3.get_object(Bucket="cond-writes", Key="lock")["Body"].read(), b"three")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.put_object(Bucket="cond-writes", Key="absent", Body=b"x", IfMatch=first["ETag"])
        self.assertEqual(code_of(e), "NoSuchKey")

    def test_copy_if_none_match(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="cond-copy")
        s3.put_object(Bucket="cond-copy", Key="src", Body=b"s")
        s3.put_object(Bucket="cond-copy", Key="dst", Body=b"d")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.copy_object(Bucket="cond-copy", Key="dst", CopySource="cond-copy/src", IfNoneMatch="*")
        self.assertEqual(code_of(e), "PreconditionFailed")
        self.assertEqual(s3.get_object(Bucket="cond-copy", Key="dst")["Body"].read(), b"d")
        s3.copy_object(Bucket="cond-copy", Key="new", CopySource="cond-copy/src", IfNoneMatch="*")
        self.assertEqual(s3.get_object(Bucket="cond-copy", Key="new")["Body"].read(), b"s")

    def test_complete_multipart_if_none_match(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="cond-multipart")
        ups = []
        for _ in range(2):
            up = s3.create_multipart_upload(Bucket="cond-multipart", Key="k")["UploadId"]
            etag = s3.upload_part(Bucket="cond-multipart", Key="k", UploadId=up, PartNumber=1, Body=b"part")["ETag"]
            ups.append((up, etag))
        s3.complete_multipart_upload(Bucket="cond-multipart", Key="k", UploadId=ups[0][0], IfNoneMatch="*",
                                     MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": ups[0][1]}]})
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.complete_multipart_upload(Bucket="cond-multipart", Key="k", UploadId=ups[1][0], IfNoneMatch="*",
                                         MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": ups[1][1]}]})
        self.assertEqual(code_of(e), "PreconditionFailed")
        # The refused upload is still there, and can be aborted.
        self.assertEqual([u["UploadId"] for u in s3.list_multipart_uploads(Bucket="cond-multipart")["Uploads"]], [ups[1][0]])
        s3.abort_multipart_upload(Bucket="cond-multipart", Key="k", UploadId=ups[1][0])

    def test_two_gateways_racing_if_none_match(self):
        """Two clients, each through its own gateway, PUT one key with If-None-Match: *:
        exactly one 200 and one 412, for every key of many."""
        s3 = [cluster.client(), gateway2.client()]
        s3[0].create_bucket(Bucket="cond-race")

        def put(i, key):
            try:
                s3[i].put_object(Bucket="cond-race", Key=key, Body=f"{i}".encode(), IfNoneMatch="*")
                return 200
            except botocore.exceptions.ClientError as e:
                return e.response["ResponseMetadata"]["HTTPStatusCode"]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            for n in range(30):
                key = f"race-{n}"
                results = list(pool.map(lambda i: put(i, key), [0, 1]))
                self.assertEqual(sorted(results), [200, 412], key)
                winner = results.index(200)
                self.assertEqual(s3[0].get_object(Bucket="cond-race", Key=key)["Body"].read(), f"{winner}".encode(), key)


class TestPartNumber(unittest.TestCase):
    def test_get_and_head_parts(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="part-reads")
        parts = [random_bytes(5 * MiB, 6), random_bytes(1234, 7)]
        up = s3.create_multipart_upload(Bucket="part-reads", Key="m")["UploadId"]
        tags = [s3.upload_part(Bucket="part-reads", Key="m", UploadId=up, PartNumber=i, Body=p)["ETag"] for i, p in enumerate(parts, 1)]
        s3.complete_multipart_upload(Bucket="part-reads", Key="m", UploadId=up,
                                     MultipartUpload={"Parts": [{"PartNumber": i, "ETag": t} for i, t in enumerate(tags, 1)]})
        self.assertNotIn("PartsCount", s3.head_object(Bucket="part-reads", Key="m"))
        for n, p in enumerate(parts, 1):
            r = s3.get_object(Bucket="part-reads", Key="m", PartNumber=n)
            self.assertEqual(r["Body"].read(), p)
            self.assertEqual((r["PartsCount"], r["ResponseMetadata"]["HTTPStatusCode"]), (2, 206))
            h = s3.head_object(Bucket="part-reads", Key="m", PartNumber=n)
            self.assertEqual((h["ContentLength"], h["PartsCount"]), (len(p), 2))
        start = len(parts[0])
        self.assertEqual(s3.get_object(Bucket="part-reads", Key="m", PartNumber=2)["ContentRange"],
                         f"bytes {start}-{start + len(parts[1]) - 1}/{start + len(parts[1])}")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="part-reads", Key="m", PartNumber=3)
        self.assertEqual(code_of(e), "InvalidPartNumber")
        s3.put_object(Bucket="part-reads", Key="plain", Body=b"whole")
        r = s3.get_object(Bucket="part-reads", Key="plain", PartNumber=1)
        self.assertEqual(r["Body"].read(), b"whole")
        self.assertNotIn("PartsCount", r)
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="part-reads", Key="plain", PartNumber=2)
        self.assertEqual(code_of(e), "InvalidPartNumber")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.get_object(Bucket="part-reads", Key="plain", PartNumber=1, Range="bytes=0-1")
        self.assertEqual(code_of(e), "InvalidRequest")


class TestMultipartChecksums(unittest.TestCase):
    def upload(self, s3, key, parts, algorithm, type_=None, send=None):
        kw = {"ChecksumType": type_} if type_ else {}
        created = s3.create_multipart_upload(Bucket="checksums", Key=key, ChecksumAlgorithm=algorithm, **kw)
        up = created["UploadId"]
        field = "Checksum" + algorithm
        done = []
        for i, p in enumerate(parts, 1):
            # botocore computes CRC-32C only with awscrt: given here, from the test's own code.
            kw = {field: b64(crc32c(p).to_bytes(4, "big"))} if algorithm == "CRC32C" else {"ChecksumAlgorithm": algorithm}
            r = s3.upload_part(Bucket="checksums", Key=key, UploadId=up, PartNumber=i, Body=p, **kw)
            done.append({"PartNumber": i, "ETag": r["ETag"], field: r[field]})
        listed = s3.list_parts(Bucket="checksums", Key=key, UploadId=up)
        self.assertEqual([p[field] for p in listed["Parts"]], [d[field] for d in done])
        self.assertEqual(listed["ChecksumAlgorithm"], algorithm)
        extra = {field: send} if send else {}
        out = s3.complete_multipart_upload(Bucket="checksums", Key=key, UploadId=up, MultipartUpload={"Parts": done}, **extra)
        return created, out

    @classmethod
    def setUpClass(cls):
        cluster.client().create_bucket(Bucket="checksums")

    def test_full_object_crc32_and_crc32c(self):
        s3 = cluster.client()
        parts = [random_bytes(5 * MiB, 8), random_bytes(5 * MiB + 17, 9), random_bytes(333, 10)]
        whole = b"".join(parts)
        crc = 0
        for p in parts:
            crc = crc32c(p, crc)
        for algorithm, want in [("CRC32", zlib.crc32(whole)), ("CRC32C", crc)]:
            value = b64(want.to_bytes(4, "big"))
            created, out = self.upload(s3, "full-" + algorithm, parts, algorithm, "FULL_OBJECT", send=value)
            self.assertEqual(created["ChecksumType"], "FULL_OBJECT")
            self.assertEqual((out["Checksum" + algorithm], out["ChecksumType"]), (value, "FULL_OBJECT"))
            h = s3.head_object(Bucket="checksums", Key="full-" + algorithm, ChecksumMode="ENABLED")
            self.assertEqual((h["Checksum" + algorithm], h["ChecksumType"]), (value, "FULL_OBJECT"))
            got = s3.get_object(Bucket="checksums", Key="full-" + algorithm, ChecksumMode="ENABLED")
            self.assertEqual(got["Body"].read(), whole)

    def test_composite_sha256(self):
        s3 = cluster.client()
        parts = [random_bytes(5 * MiB, 11), random_bytes(100, 12)]
        created, out = self.upload(s3, "composite", parts, "SHA256")
        self.assertEqual(created["ChecksumType"], "COMPOSITE")
        want = b64(hashlib.sha256(b"".join(hashlib.sha256(p).digest() for p in parts)).digest()) + "-2"
        self.assertEqual((out["ChecksumSHA256"], out["ChecksumType"]), (want, "COMPOSITE"))

    def test_refusals(self):
        s3 = cluster.client()
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.create_multipart_upload(Bucket="checksums", Key="x", ChecksumAlgorithm="SHA256", ChecksumType="FULL_OBJECT")
        self.assertEqual(code_of(e), "InvalidRequest")
        parts = [random_bytes(5 * MiB, 13), random_bytes(10, 14)]
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            self.upload(s3, "wrong-whole", parts, "CRC32", "FULL_OBJECT", send=b64((zlib.crc32(b"other")).to_bytes(4, "big")))
        self.assertEqual(code_of(e), "BadDigest")
        up = s3.create_multipart_upload(Bucket="checksums", Key="wrong-part", ChecksumAlgorithm="CRC32")["UploadId"]
        r = s3.upload_part(Bucket="checksums", Key="wrong-part", UploadId=up, PartNumber=1, Body=b"abc", ChecksumAlgorithm="CRC32")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.complete_multipart_upload(Bucket="checksums", Key="wrong-part", UploadId=up, MultipartUpload={
                "Parts": [{"PartNumber": 1, "ETag": r["ETag"], "ChecksumCRC32": b64(zlib.crc32(b"abd").to_bytes(4, "big"))}]})
        self.assertEqual(code_of(e), "InvalidPart")
        with self.assertRaises(botocore.exceptions.ClientError) as e:
            s3.upload_part(Bucket="checksums", Key="wrong-part", UploadId=up, PartNumber=2, Body=b"abc", ChecksumAlgorithm="SHA1")
        self.assertEqual(code_of(e), "InvalidRequest")
        s3.abort_multipart_upload(Bucket="checksums", Key="wrong-part", UploadId=up)


class TestPresignedExpiry(unittest.TestCase):
    def test_refused_with_access_denied(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="presign-expiry")
        s3.put_object(Bucket="presign-expiry", Key="k", Body=b"v")

        def fetch(expires):
            url = s3.generate_presigned_url("get_object", Params={"Bucket": "presign-expiry", "Key": "k"}, ExpiresIn=expires)
            try:
                return 200, urllib.request.urlopen(url).read()
            except urllib.error.HTTPError as e:
                return e.code, error_code(e.read())
        self.assertEqual(fetch(60), (200, b"v"))
        for expires in [0, -5, 604801]:
            self.assertEqual(fetch(expires), (403, "AccessDenied"), expires)
        url = s3.generate_presigned_url("get_object", Params={"Bucket": "presign-expiry", "Key": "k"}, ExpiresIn=1)
        time.sleep(2.2)
        with self.assertRaises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(url)
        self.assertEqual((e.exception.code, error_code(e.exception.read())), (403, "AccessDenied"))


class TestVirtualHosted(unittest.TestCase):
    def test_bucket_in_host(self):
        s3 = cluster.client()
        s3.create_bucket(Bucket="vhost-bucket")
        host = f"vhost-bucket.{DOMAIN}:{gateway2.port}"
        status, _, _ = raw("PUT", "/dir/key.txt", body=b"virtual", port=gateway2.port, host=host)
        self.assertEqual(status, 200)
        self.assertEqual(s3.get_object(Bucket="vhost-bucket", Key="dir/key.txt")["Body"].read(), b"virtual")
        status, body, _ = raw("GET", "/dir/key.txt", port=gateway2.port, host=host)
        self.assertEqual((status, body), (200, b"virtual"))
        status, body, _ = raw("GET", "/", "list-type=2", port=gateway2.port, host=host)
        self.assertEqual(status, 200)
        self.assertEqual([k.text for k in ET.fromstring(body).iter("{http://s3.amazonaws.com/doc/2006-03-01/}Key")], ["dir/key.txt"])
        # Path style still works on the same gateway, and on a host outside the domain.
        status, body, _ = raw("GET", "/vhost-bucket/dir/key.txt", port=gateway2.port, host=f"127.0.0.1:{gateway2.port}")
        self.assertEqual((status, body), (200, b"virtual"))
        # The first gateway has no domain: the host does not name a bucket there.
        status, body, _ = raw("GET", "/dir/key.txt", host=host)
        self.assertEqual((status, error_code(body)), (404, "NoSuchBucket"))


if __name__ == "__main__":
    unittest.main()
