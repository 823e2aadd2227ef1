"""The exported library as another project would use it: a package outside the repository
that depends on Tessera by version (`from: "1.0.0"`, as a package on a server would),
builds against the `TesseraEngine` product, and runs: it formats an image, writes records
in a transaction, reopens the image and reads them back.

SwiftPM refuses a dependency reached by version whose targets carry unsafe flags, so this
fails if Package.swift applies them by default (they are only under TESSERA_OPTIMIZE=1).

Run: python3 -m unittest -v Tests/Package/test_consumer.py
"""
import os
import shutil
import subprocess
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWIFT = shutil.which("swift") or "/opt/swift/usr/bin/swift"

MANIFEST = """// swift-tools-version: 6.0
import PackageDescription

let package = Package(
    name: "Consumer",
    dependencies: [.package(url: "file://%s", from: "1.0.0")],
    targets: [
        .executableTarget(name: "Consumer", dependencies: [.product(name: "TesseraEngine", package: "tessera")]),
    ]
)
"""

MAIN = """import Foundation
import TesseraCore
import TesseraEngine

let path = CommandLine.arguments[1]
_ = try Engine.format(path: path, size: 32 << 20, pageSize: 4096)
let catalogue = Fid(hi: 7, lo: 1)
var engine = try Engine.open(path: path)
_ = try engine.write { t in
    _ = try t.createCatalogue(catalogue)
    for i in 0..<100 { _ = try t.put(catalogue, Array("key-\\(i)".utf8), Array("value-\\(i)".utf8)) }
}
try engine.close()
engine = try Engine.open(path: path)
for i in 0..<100 {
    guard try engine.get(catalogue, Array("key-\\(i)".utf8)) == Array("value-\\(i)".utf8) else {
        print("record \\(i) lost")
        exit(1)
    }
}
try engine.close()
print("100 records read back")
"""


class TestConsumerPackage(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tessera-consumer-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_ok(self, args, cwd, timeout=900):
        r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        self.assertEqual(r.returncode, 0, f"{' '.join(args)} failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        return r.stdout

    def test_a_package_depending_on_the_library_by_version_builds_and_runs(self):
        # The working tree as a release: a git repository tagged 1.0.0, without build output.
        release = os.path.join(self.tmp, "tessera")
        shutil.copytree(ROOT, release, ignore=shutil.ignore_patterns(".build", ".build-*", ".build_*", ".git", "Package.resolved"))
        self.run_ok(["git", "init", "-q"], release)
        self.run_ok(["git", "add", "-A"], release)
        self.run_ok(["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "commit", "-q", "-m", "release"], release)
        self.run_ok(["git", "tag", "1.0.0"], release)
        consumer = os.path.join(self.tmp, "consumer")
        os.makedirs(os.path.join(consumer, "Sources", "Consumer"))
        with open(os.path.join(consumer, "Package.swift"), "w") as f:
            f.write(MANIFEST % release)
        with open(os.path.join(consumer, "Sources", "Consumer", "main.swift"), "w") as f:
            f.write(MAIN)
        env_free = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        # SwiftPM leaves lock files in the temporary folder: this test's own, removed with it.
        env_free["TMPDIR"] = os.path.join(self.tmp, "tmp")
        os.makedirs(env_free["TMPDIR"])
        r = subprocess.run([SWIFT, "build"], cwd=consumer, capture_output=True, text=True, timeout=900, env=env_free)
        self.assertEqual(r.returncode, 0, f"swift build of the consumer failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}")
        out = self.run_ok([os.path.join(consumer, ".build", "debug", "Consumer"), os.path.join(self.tmp, "meta.img")], consumer)
        self.assertIn("100 records read back", out)


if __name__ == "__main__":
    unittest.main()
