// Crash test: a child process writes transactions and reports each one it saw LOGGED; it is
// SIGKILLed at random moments; every reported transaction must survive, none may be half
// visible, and audit() must pass.
import Foundation
import TesseraCore
import TesseraEngine
import TesseraLocal
import Testing

/// The `tessera` binary built next to the test bundle.
func tesseraBinary() -> String {
    if let path = ProcessInfo.processInfo.environment["TESSERA_BIN"] { return path }
    let dir = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
    return dir.appendingPathComponent("tessera").path
}

/// Collects a child's standard output lines on a background thread.
/// Collects what a child writes to its stdout pipe, on a thread of its own that reads it
/// to its end (no dispatch source: see ChildProcess.swift).
final class LineCollector: @unchecked Sendable {
    // SAFETY: `buffer` is touched only under `lock`.
    private let lock = NSLock()
    private var buffer = Data()
    private let done = NSCondition()
    private var finished = false

    init(_ fd: Int32) {
        Thread.detachNewThread { [self] in
            var chunk = [UInt8](repeating: 0, count: 4096)
            while true {
                let n = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if n < 0 && errno == EINTR { continue }
                if n <= 0 { break }
                lock.lock()
                buffer.append(contentsOf: chunk[0..<n])
                lock.unlock()
            }
            close(fd)
            done.lock()
            finished = true
            done.broadcast()
            done.unlock()
        }
    }

    /// Waits until the pipe has ended (every writer gone).
    func waitForEnd() {
        done.lock()
        while !finished { done.wait() }
        done.unlock()
    }

    var lines: [String] {
        lock.lock()
        defer { lock.unlock() }
        return String(decoding: buffer, as: UTF8.self).split(separator: "\n").map(String.init)
    }
}

@Suite struct CrashTests {
    @Test func sigkillAtRandomMomentsLosesNothingLogged() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 128 << 20, pageSize: 4096, logSize: 4 << 20)
        var rng = SeededRandom.forRun("CrashTests.sigkillAtRandomMomentsLosesNothingLogged")
        var reported = Set<Int>()
        let kills = 50
        for round in 0..<kills {
            let child = try ChildProcess(
                tesseraBinary(), ["debug", "crash-writer", path, "--start", String(round * 1_000_000), "--threads", "4"], stdout: .pipe, stderr: .null)
            let collector = LineCollector(child.output!)
            // Kill at a random moment after the first report, so recovery and work overlap.
            let deadline = Date().addingTimeInterval(20)
            while collector.lines.isEmpty && child.isRunning && Date() < deadline { usleep(2000) }
            usleep(UInt32.random(in: 0...150_000, using: &rng))
            child.signal(SIGKILL)
            let ended = child.wait()
            #expect(ended == .signal(SIGKILL), "round \(round): crash-writer exited by itself (\(ended))")
            collector.waitForEnd()
            for line in collector.lines where line.hasPrefix("L ") { reported.insert(Int(line.dropFirst(2))!) }
            let engine = try Engine.open(path: path, options: options(cacheBytes: 4 << 20))
            defer { try? engine.close() }
            let problem = try Self.verify(engine, reported: reported)
            #expect(problem == nil, "round \(round): \(problem ?? "")")
            if problem != nil { return }
        }
        #expect(reported.count > kills)
    }

    /// Every reported transaction is present in full; no transaction is half visible.
    static func verify(_ engine: Engine, reported: Set<Int>) throws -> String? {
        let pairs = Fid(hi: 1, lo: 1)
        let singles = Fid(hi: 1, lo: 2)
        for n in reported {
            let v = value(n)
            guard try engine.get(pairs, bytes("tx/\(n)/a")) == v, try engine.get(pairs, bytes("tx/\(n)/b")) == v,
                try engine.get(singles, bytes("\(n)")) == v
            else { return "transaction \(n) was reported LOGGED but is missing or wrong" }
        }
        var visible = Set<Int>()
        for (k, v) in try engine.scan(singles, from: nil, limit: Int.max) {
            let n = Int(String(decoding: k, as: UTF8.self))!
            guard v == value(n) else { return "transaction \(n): wrong value" }
            visible.insert(n)
        }
        var halves = [Int: Int]()
        for (k, _) in try engine.scan(pairs, from: nil, limit: Int.max) {
            let parts = String(decoding: k, as: UTF8.self).split(separator: "/")
            halves[Int(parts[1])!, default: 0] += 1
        }
        for (n, count) in halves where count != 2 || !visible.contains(n) { return "transaction \(n) is half visible" }
        if visible.count != halves.count { return "\(visible.count) transactions in one catalogue, \(halves.count) in the other" }
        let report = try engine.audit()
        return report.isClean ? nil : "audit: \(report.problems.prefix(5))"
    }

    static func value(_ n: Int) -> [UInt8] { Array("value-\(n)-".utf8) + [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: n % 97) }
}
