// `tessera bench`: benchmarks, each against the baseline its issue names.
import ArgumentParser
import TesseraCore

/// `tessera bench`: each benchmark is a subcommand.
public struct Bench: ParsableCommand {
    public init() {}
    public static let configuration = CommandConfiguration(
        abstract: "Run a benchmark against its baseline and print the ratios.",
        subcommands: [BenchEngine.self, BenchServer.self, BenchObject.self, BenchS3.self, BenchFS.self, BenchRepair.self])
}

import Foundation
import TesseraLocal

// Helpers shared by the benchmarks.

/// Flushes dirty pages and drops the page cache (as root), so the next read is cold.
func dropCaches() {
    sync()
    if let h = FileHandle(forWritingAtPath: "/proc/sys/vm/drop_caches") {
        h.write(Data("3\n".utf8))
        try? h.close()
    }
}

/// The path of a program in the usual system folders, or nil.
func which(_ name: String) -> String? {
    for d in ["/usr/bin", "/usr/local/bin", "/usr/sbin", "/bin"] where FileManager.default.isExecutableFile(atPath: d + "/" + name) { return d + "/" + name }
    return nil
}

/// Runs a program to its end and returns its stdout (or stderr); `quiet` discards the other stream.
func capture(_ path: String, _ args: [String], stderr: Bool = false, quiet: Bool = false) throws -> String {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: path)
    p.arguments = args
    let pipe = Pipe()
    if stderr { p.standardError = pipe } else { p.standardOutput = pipe }
    if quiet { if stderr { p.standardOutput = FileHandle.nullDevice } else { p.standardError = FileHandle.nullDevice } }
    try p.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    return String(decoding: data, as: UTF8.self)
}

/// Median of the numbers that are not NaN (NaN if none).
func median(_ xs: [Double]) -> Double {
    let s = xs.filter { !$0.isNaN }.sorted()
    guard !s.isEmpty else { return .nan }
    return s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2
}

/// Operations per second of `body`, which performs `operations` operations.
func rate(_ operations: Int, _ body: () async throws -> Void) async throws -> Double {
    let start = ContinuousClock.now
    try await body()
    return Double(operations) / seconds(ContinuousClock.now - start)
}

func seconds(_ d: Duration) -> Double { Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18 }

/// Seconds `body` takes.
func elapsed(_ body: () throws -> Void) rethrows -> Double {
    let start = ContinuousClock.now
    try body()
    return seconds(ContinuousClock.now - start)
}

/// MB/s of `body`, which moves `bytes`.
func timed(_ bytes: UInt64, _ body: () throws -> Void) rethrows -> Double {
    Double(bytes) / (try elapsed(body)) / 1e6
}

/// `s` padded with spaces to `n` characters: on the left (right-aligned), or with `left`
/// on the right.
func pad(_ s: String, _ n: Int, left: Bool = false) -> String {
    s.count >= n ? s : (left ? s + String(repeating: " ", count: n - s.count) : String(repeating: " ", count: n - s.count) + s)
}
