// `tessera bench engine`: the metadata engine against SQLite on the same disk.
//
// Rows (each ops/s, ratio = Tessera / SQLite):
//   put:      N random puts (16-byte keys, 100-byte values), one transaction each;
//             Tessera replies at close, SQLite runs WAL with synchronous=NORMAL
//   get:      N random point gets of existing keys
//   scan:     one full ordered scan (records/s)
//   sync put: puts that wait until durable with 1, 8 and 64 writer threads; Tessera waits for
//             LOGGED, SQLite runs WAL with synchronous=FULL and one connection per thread
import Foundation
import TesseraCore
import TesseraEngine

public struct EngineBenchmark {
    public struct Row {
        public var name: String
        public var tessera: Double
        public var sqlite: Double
        public var ratio: Double { tessera / sqlite }
    }

    public var directory: String
    public var records = 1_000_000
    public var syncOperations = [1: 2_000, 8: 8_000, 64: 32_000]
    public var cacheBytes = 512 << 20
    public var pageSize = 16384
    public var progress: (String) -> Void = { _ in }

    public init(directory: String) { self.directory = directory }

    public func run() throws -> [Row] {
        var rng = SystemRandomNumberGenerator()
        let keys = (0..<records).map { _ in (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) } }
        let value = [UInt8](repeating: 0x5A, count: 100)
        let image = directory + "/bench-meta.img"
        let database = directory + "/bench.sqlite"
        defer {
            for f in [image, database, database + "-wal", database + "-shm"] { unlink(f) }
        }
        _ = try Engine.format(path: image, size: UInt64(max(1 << 30, records * 600)), pageSize: pageSize)
        var options = EngineOptions()
        options.cacheBytes = cacheBytes
        options.logger.logLevel = .warning
        let engine = try Engine.open(path: image, options: options)
        defer { try? engine.close() }
        let fid = Fid(hi: 0xBE, lo: 1)
        try engine.write { try $0.createCatalogue(fid) }
        let sqlite = try SQLiteTable(path: database, synchronous: "NORMAL", cacheBytes: cacheBytes)
        var rows: [Row] = []

        progress("put: \(records) records each")
        let tPut = try rate(records) { for k in keys { try engine.write { try $0.put(fid, k, value) } } }
        let sPut = try rate(records) { for k in keys { try sqlite.put(k, value) } }
        rows.append(Row(name: "put \(records), reply at close / WAL NORMAL", tessera: tPut, sqlite: sPut))

        let order = keys.shuffled()
        progress("get")
        let tGet = try rate(records) { for k in order { guard try engine.get(fid, k) != nil else { throw TesseraError(.notFound, "lost key") } } }
        let sGet = try rate(records) { for k in order { guard try sqlite.get(k) >= 0 else { throw TesseraError(.notFound, "sqlite lost key") } } }
        rows.append(Row(name: "get \(records) random", tessera: tGet, sqlite: sGet))

        progress("scan")
        let tScan = try rate(records) {
            // In pieces of 10,000 records, so writers are never locked out for long.
            var from: [UInt8]? = nil
            var seen = 0
            var touched = 0
            while true {
                var piece = 0
                try engine.forEach(fid, from: from, inclusive: from == nil) { k, v in
                    touched &+= Int(k[0]) &+ Int(v[0])
                    piece += 1
                    if piece == 10_000 { from = Array(k) }
                    return piece < 10_000
                }
                seen += piece
                if piece < 10_000 { break }
            }
            guard seen == records else { throw TesseraError(.internalError, "scan saw \(seen) of \(records)") }
        }
        let sScan = try rate(records) {
            let n = try sqlite.scanAll()
            guard n == records else { throw TesseraError(.internalError, "sqlite scan saw \(n) of \(records)") }
        }
        rows.append(Row(name: "full ordered scan", tessera: tScan, sqlite: sScan))

        for (threads, total) in syncOperations.sorted(by: { $0.key < $1.key }) {
            progress("sync put, \(threads) writers")
            let per = total / threads
            let tSync = try rate(per * threads) {
                try parallel(threads) { _ in
                    var rng = SystemRandomNumberGenerator()
                    for _ in 0..<per {
                        let k = (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
                        try engine.waitLogged(engine.write { try $0.put(fid, k, value) }.tx)
                    }
                }
            }
            let connections = try (0..<threads).map { _ in try SQLiteTable(path: database, synchronous: "FULL", cacheBytes: cacheBytes / threads) }
            let sSync = try rate(per * threads) {
                try parallel(threads) { i in
                    var rng = SystemRandomNumberGenerator()
                    for _ in 0..<per { try connections[i].put((0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }, value) }
                }
            }
            rows.append(Row(name: "sync put, \(threads) writer\(threads == 1 ? "" : "s"), LOGGED / WAL FULL", tessera: tSync, sqlite: sSync))
        }
        return rows
    }

    /// Operations per second of `body`, which performs `operations` operations.
    private func rate(_ operations: Int, _ body: () throws -> Void) throws -> Double {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return Double(operations) / seconds
    }

    /// Runs `body(i)` on `n` threads and waits for all; the first error is rethrown.
    private func parallel(_ n: Int, _ body: @escaping @Sendable (Int) throws -> Void) throws {
        let group = DispatchGroup()
        let failure = FirstError()
        for i in 0..<n {
            group.enter()
            Thread.detachNewThread {
                do { try body(i) } catch { failure.set(error) }
                group.leave()
            }
        }
        group.wait()
        if let e = failure.error { throw e }
    }
}

private final class FirstError: @unchecked Sendable {
    // SAFETY: `stored` is touched only under `lock`.
    private let lock = NSLock()
    private var stored: Error?
    func set(_ e: Error) { lock.withLock { if stored == nil { stored = e } } }
    var error: Error? { lock.withLock { stored } }
}
