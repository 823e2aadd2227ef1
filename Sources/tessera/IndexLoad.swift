// `tessera debug index-load` and `tessera debug replicas`: the two halves of the index
// convergence test (Tests/State/test_convergence.py). One runs create-only PUTs,
// compare-and-puts and plain PUTs and DELs on keys shared with the other clients, logging
// each operation before it is sent and its outcome after, for a checker to hold the store
// to; the other reads both replicas of every index straight from their servers and says
// where they differ.
import ArgumentParser
import Foundation
import Glibc
import TesseraClient
import TesseraCore
import TesseraLocal
import TesseraRPC

struct IndexLoad: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index-load", abstract: "Run a logged mix of create-only PUTs, compare-and-puts, PUTs and DELs on shared keys.")

    @OptionGroup var state: StateOption
    @Option(help: "This client's number (in the log and its values).") var client: Int
    @Option(help: "How long to run, in seconds.") var seconds: Double = 60
    @Option(help: "The log: one JSON line per operation sent and per outcome.") var log: String
    @Option(help: "Indexes 0x7c:1 to 0x7c:N are used (made if missing).") var indexes: Int = 6
    @Option(help: "Seed of the operation mix (default: drawn, and printed).") var seed: UInt64?

    /// One line of the log. `e` is "s" (sent, before the request) or "e" (its outcome:
    /// "ok", "exists", "conflict" or "error"); times are CLOCK_MONOTONIC ns, comparable
    /// between processes on one machine.
    struct Event: Encodable {
        var e: String
        var c: Int
        var n: Int
        var op: String?
        var i: String?
        var k: String?
        var v: String?
        var exp: String?
        var r: String?
        var cur: String?
        var msg: String?
        var t: UInt64
    }

    func run() async throws {
        let seed = seed ?? UInt64.random(in: 1...UInt64.max)
        print("index-load client \(client): seed \(seed)")
        var rng = SeededRandom(seed: seed)
        let fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0o644)
        guard fd >= 0 else { throw ValidationError("cannot open \(log): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        func write(_ e: Event) {
            // One write(2) per line, so a killed client leaves whole lines.
            var line = Array((try? encoder.encode(e)) ?? Data())
            line.append(0x0A)
            _ = line.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
        }
        let fids = (1...max(1, indexes)).map { Fid(hi: 0x7c, lo: UInt64($0)) }
        try await withCluster(state) { cluster in
            for f in fids { _ = try await cluster.createIndex(f) }
            let end = ContinuousClock.now + .seconds(seconds)
            var n = 0
            var nextCreate = 0
            while ContinuousClock.now < end {
                n += 1
                let f = fids[Int.random(in: 0..<fids.count, using: &rng)]
                var e = Event(e: "s", c: client, n: n, i: f.description, t: monotonicNanoseconds())
                let roll = Int.random(in: 0..<10, using: &rng)
                var outcome = Event(e: "e", c: client, n: n, t: 0)
                do {
                    if roll < 3 {
                        // Every client makes c/0, c/1, … in turn: each is raced.
                        nextCreate += 1
                        (e.op, e.k, e.v) = ("create", "c/\(nextCreate)", "\(client):\(n)")
                        write(e)
                        let st = try await cluster.put(f, [Record(key: Array(e.k!.utf8), value: Array(e.v!.utf8))], mode: .createOnly, sync: true)
                        outcome.r = st[0] == .ok ? "ok" : st[0] == .exists ? "exists" : "error"
                    } else if roll < 6 {
                        // A counter: read, then add one if no one else did meanwhile.
                        let key = "n/\(Int.random(in: 0..<3, using: &rng))"
                        let current = try await cluster.get(f, [Array(key.utf8)])[0]
                        let count = current.flatMap { Int(String(decoding: $0, as: UTF8.self).split(separator: "|").first ?? "") } ?? 0
                        (e.op, e.k, e.v, e.exp) = ("cas", key, "\(count + 1)|\(client):\(n)", current.map { String(decoding: $0, as: UTF8.self) })
                        e.t = monotonicNanoseconds()
                        write(e)
                        switch try await cluster.compareAndPut(f, key: Array(key.utf8), expected: current, value: Array(e.v!.utf8), sync: true) {
                        case .done: outcome.r = "ok"
                        case .conflict(let stored):
                            outcome.r = "conflict"
                            outcome.cur = stored.map { String(decoding: $0, as: UTF8.self) }
                        case .unknown:
                            (outcome.r, outcome.msg) = ("error", "sent again after a lost answer: outcome unknown")
                        }
                    } else {
                        let key = "p/\(Int.random(in: 0..<8, using: &rng))"
                        if roll < 9 {
                            (e.op, e.k, e.v) = ("put", key, "\(client):\(n)")
                            write(e)
                            _ = try await cluster.put(f, [Record(key: Array(key.utf8), value: Array(e.v!.utf8))], sync: true)
                        } else {
                            (e.op, e.k) = ("del", key)
                            write(e)
                            _ = try await cluster.delete(f, [Array(key.utf8)], sync: true)
                        }
                        outcome.r = "ok"
                    }
                } catch {
                    if e.op == nil { continue }  // the counter's read failed: nothing was sent
                    outcome.r = "error"
                    outcome.msg = "\(error)"
                }
                outcome.t = monotonicNanoseconds()
                write(outcome)
                if outcome.r == "error" { try await Task.sleep(for: .milliseconds(100)) }
            }
        }
    }
}

func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}

struct Replicas: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Compare both replicas of every index, read straight from their servers; exit 1 if any differ.")

    @OptionGroup var state: StateOption

    func run() async throws {
        let (compared, differing) = try await withCluster(state) { try await $0.compareIndexReplicas() }
        for d in differing { print(d) }
        print("\(compared) indexes compared, \(differing.count) differ")
        if !differing.isEmpty { throw ExitCode(1) }
    }
}
