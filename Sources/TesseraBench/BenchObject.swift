// `tessera bench object`: a local 2+1 cluster (three server processes from `tessera up`)
// writing and reading one object of --mib MiB at each unit size, against dd writing the
// bytes a 2+1 layout puts on disk (1.5× the object, conv=fdatasync) and reading the object's
// size back cold, on the same disk.
import ArgumentParser
import Foundation
import TesseraClient
import TesseraCore
import TesseraLocal
import TesseraState

struct BenchObject: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "object",
        abstract: "Object writes and reads through the client (2+1, unit sizes 64K to 4M) vs dd on the same disk.")

    @Option(help: "Folder for the clusters and dd's file (default: the system temporary folder).")
    var dir: String?
    @Option(help: "MiB in the object.") var mib: Int = 1024
    @Option(help: "Unit sizes to try.") var unitSizes: [String] = ["64K", "256K", "1M", "4M"]

    func run() async throws {
        guard mib >= 1 else { throw ValidationError("--mib must be at least 1") }
        let root = (dir ?? NSTemporaryDirectory()) + "/tessera-bench-object-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let bytes = Double(mib) * 1_048_576
        let (ddWrite, ddRead) = try dd(root)
        note(String(format: "dd: %.0f MB/s of object bytes written (%.1f GiB with conv=fdatasync), %.0f MB/s read cold", bytes / ddWrite / 1e6, bytes * 1.5 / 1_073_741_824, bytes / ddRead / 1e6))
        print("object of \(mib) MiB, layout 2+1 over 3 servers; MB/s of object bytes; dd writes 1.5x the bytes (what 2+1 puts on disk)")
        print("unit size      write MB/s   dd MB/s  ratio     read MB/s   dd MB/s  ratio")
        for size in unitSizes {
            guard ByteSize.parse(size) != nil else { throw ValidationError("'\(size)' is not a size") }
            let (w, r) = try await measure(root, unitSize: size)
            print(size.padding(toLength: 12, withPad: " ", startingAt: 0) + String(format: " %11.0f %9.0f %6.2f  %11.0f %9.0f %6.2f", size, bytes / w / 1e6, bytes / ddWrite / 1e6, ddWrite / w, bytes / r / 1e6, bytes / ddRead / 1e6, ddRead / r))
        }
    }

    private func note(_ s: String) { FileHandle.standardError.write(Data("bench object: \(s)\n".utf8)) }

    /// Seconds to write and to read the object through a fresh cluster with `unitSize` units.
    private func measure(_ root: String, unitSize: String) async throws -> (Double, Double) {
        let state = root + "/cluster-\(unitSize)"
        let dataSize = "\(mib + 512)M"
        try runChild(tesseraExecutable, ["up", "--dir", state, "--unit-size", unitSize, "--meta-size", "512M", "--data-size", dataSize])
        defer {
            try? runChild(tesseraExecutable, ["down", "--dir", state])
            try? FileManager.default.removeItem(atPath: state)
        }
        let config = try LocalState(path: state).config()
        let cluster = try Cluster(config: config)
        ClusterState.follow(cluster, config.state)
        let object = Fid(hi: 0xBE, lo: 1)
        try await cluster.create(object)
        // Calls of 16 parity groups (at least 4 MiB), 4 calls in flight.
        let chunk = max(4 << 20, 16 * cluster.layout.groupSize)
        let total = mib << 20
        let pattern = (0..<chunk).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ 7) }
        note("unit \(unitSize): writing \(mib) MiB")
        let start = ContinuousClock.now
        try await inParallel(4, count: (total + chunk - 1) / chunk) { i in
            let n = min(chunk, total - i * chunk)
            try await cluster.write(object, at: UInt64(i * chunk), Array(pattern[0..<n]))
        }
        try await cluster.sync()
        let write = seconds(ContinuousClock.now - start)
        dropCaches()
        note("unit \(unitSize): reading")
        let readStart = ContinuousClock.now
        try await inParallel(4, count: (total + chunk - 1) / chunk) { i in
            let n = min(chunk, total - i * chunk)
            // Into a buffer of the caller's, as a FUSE or HTTP reply buffer would be.
            let got = UnsafeMutableRawBufferPointer.allocate(byteCount: n, alignment: 16)
            defer { got.deallocate() }
            try await cluster.read(object, at: UInt64(i * chunk), into: got)
            let same = pattern.withUnsafeBytes { memcmp(got.baseAddress!, $0.baseAddress!, n) == 0 }
            guard same else { throw TesseraError(.corrupt, "read back different bytes at \(i * chunk)") }
        }
        let read = seconds(ContinuousClock.now - readStart)
        await cluster.close()
        return (write, read)
    }

    /// Seconds for dd to write 1.5× the object with conv=fdatasync, and to read the object's
    /// size back cold.
    private func dd(_ root: String) throws -> (Double, Double) {
        let file = root + "/dd.bin"
        defer { unlink(file) }
        note("dd: writing \(mib * 3 / 2) MiB")
        var start = ContinuousClock.now
        _ = try capture("/bin/dd", ["if=/dev/zero", "of=" + file, "bs=1M", "count=\(mib * 3 / 2)", "conv=fdatasync"], stderr: true)
        let w = seconds(ContinuousClock.now - start)
        dropCaches()
        start = ContinuousClock.now
        _ = try capture("/bin/dd", ["if=" + file, "of=/dev/null", "bs=1M", "count=\(mib)"], stderr: true)
        return (w, seconds(ContinuousClock.now - start))
    }
}

/// Runs `body(i)` for i in 0..<count, `width` at a time.
func inParallel(_ width: Int, count: Int, _ body: @escaping @Sendable (Int) async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        var next = 0
        while next < min(width, count) {
            let i = next
            group.addTask { try await body(i) }
            next += 1
        }
        while try await group.next() != nil {
            if next < count {
                let i = next
                group.addTask { try await body(i) }
                next += 1
            }
        }
    }
}
