// The commit pipeline through the public API: a full log makes writers wait, oversized
// transactions are refused and undone, LOGGED waits (blocking and async), sealNow.
import Foundation
import Testing
import TesseraCore
import TesseraEngine

@Suite struct CommitTests {
    let fid = Fid(hi: 3, lo: 3)

    @Test func fullLogMakesWritersWaitNotFail() throws {
        let dir = TemporaryDirectory()
        // A 64 KiB log holds only a handful of records; placement must keep freeing it.
        let path = try makeImage(dir, size: 16 << 20, pageSize: 4096, logSize: 64 << 10)
        let engine = try Engine.open(path: path, options: unplacedOptions())
        try engine.write { try $0.createCatalogue(fid) }
        for i in 0..<3000 {
            try engine.write { try $0.put(fid, bytes("k\(i)"), [UInt8](repeating: UInt8(i % 251), count: 100)) }
        }
        try engine.close()
        let again = try Engine.open(path: path, options: options())
        defer { try? again.close() }
        #expect(try again.scan(fid, from: nil, limit: 10_000).count == 3000)
        #expect(try again.audit().isClean)
    }

    @Test func journaledBytesComeBackAtRecoveryInOrderThenTheLogIsEmpty() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 16 << 20, pageSize: 4096, logSize: 1 << 20)
        let engine = try Engine.open(path: path, options: unplacedOptions())
        try engine.write { try $0.createCatalogue(fid) }
        var last = TxId(group: 0)
        for i in 0..<5 {
            last = try engine.write { t in
                try [UInt8](repeating: UInt8(i + 1), count: 4096).withUnsafeBytes { try t.journal($0, at: UInt64(i % 2) * 4096) }
                try t.put(fid, bytes("k\(i)"), [UInt8(i)])
            }.tx
        }
        try engine.waitLogged(last)
        engine.abandonForTesting()

        // Nothing to take the journaled bytes: the image does not open, and loses nothing.
        #expect { try Engine.open(path: path, options: options()) } throws: {
            ($0 as? TesseraError)?.message.contains("data-image bytes") == true
        }
        final class Seen: @unchecked Sendable {
            let lock = NSLock()
            var writes: [(UInt64, UInt8, Int)] = []
            var flushes = 0
        }
        let seen = Seen()
        var r = options()
        r.replayData = { offset, b in seen.lock.withLock { seen.writes.append((offset, b[0], b.count)) } }
        r.commit.beforeRelease = { seen.lock.withLock { seen.flushes += 1 } }
        let recovered = try Engine.open(path: path, options: r)
        #expect(seen.writes.map(\.0) == [0, 4096, 0, 4096, 0])
        #expect(seen.writes.map(\.1) == [1, 2, 3, 4, 5] && seen.writes.allSatisfy { $0.2 == 4096 })
        #expect(seen.flushes == 1)
        #expect(try recovered.scan(fid, from: nil, limit: 10).count == 5)
        try recovered.close()
        // Recovery emptied the log: no taker is needed any more.
        let again = try Engine.open(path: path, options: options())
        defer { try? again.close() }
        #expect(try again.scan(fid, from: nil, limit: 10).count == 5)
    }

    @Test func placementFlushesTheJournaledImageBeforeReleasingTheLog() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 16 << 20, pageSize: 4096, logSize: 1 << 20)
        final class Count: @unchecked Sendable {
            let lock = NSLock()
            var n = 0
        }
        let flushes = Count()
        var o = options()
        o.commit.beforeRelease = { flushes.lock.withLock { flushes.n += 1 } }
        let engine = try Engine.open(path: path, options: o)
        try engine.write { try $0.createCatalogue(fid) }
        let tx = try engine.write { t in
            try [UInt8](repeating: 9, count: 4096).withUnsafeBytes { try t.journal($0, at: 0) }
            try t.put(fid, bytes("k"), [1])
        }.tx
        #expect(flushes.lock.withLock { flushes.n } == 0 || engine.placedThrough >= tx)
        try engine.waitPlaced(tx)
        #expect(flushes.lock.withLock { flushes.n } >= 1)
        try engine.close()
        // Placed: nothing is replayed, so no taker is needed.
        let again = try Engine.open(path: path, options: options())
        #expect(again.recoveredGroups == 0)
        try again.close()
    }

    @Test func transactionLargerThanTheLogAllowsIsRefusedAndUndone() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 16 << 20, pageSize: 4096, logSize: 64 << 10)
        let engine = try Engine.open(path: path, options: options())
        defer { try? engine.close() }
        try engine.write { try $0.createCatalogue(fid) }
        #expect {
            try engine.write { t in
                for i in 0..<100 { try t.put(fid, bytes("big\(i)"), [UInt8](repeating: 1, count: 800)) }
            }
        } throws: { ($0 as? TesseraError)?.code == .tooLarge }
        #expect(try engine.scan(fid, from: nil, limit: 10).isEmpty)
        #expect(try engine.audit().isClean)
    }

    @Test func waitLoggedBlockingAndAsync() async throws {
        let dir = TemporaryDirectory()
        let engine = try Engine.open(path: try makeImage(dir), options: options())
        try engine.write { try $0.createCatalogue(fid) }
        let before = engine.statistics.groupsLogged
        let tx = try engine.write { try $0.put(fid, bytes("a"), bytes("b")) }.tx
        try await engine.waitLogged(tx)
        #expect(engine.statistics.groupsLogged > before)
        let tx2 = try engine.write { try $0.put(fid, bytes("c"), bytes("d")) }.tx
        #expect(tx2 > tx)
        try Self.waitBlocking(engine, tx2)
        try engine.close()
    }

    static func waitBlocking(_ engine: Engine, _ tx: TxId) throws { try engine.waitLogged(tx) }

    @Test func sealNowLogsWithoutWaiting() throws {
        let dir = TemporaryDirectory()
        var o = options()
        o.commit.groupTimeoutNanos = 3_600 * 1_000_000_000
        let engine = try Engine.open(path: try makeImage(dir), options: o)
        defer { try? engine.close() }
        try engine.write { try $0.createCatalogue(fid) }
        let before = engine.statistics.groupsLogged
        engine.sealNow()
        let deadline = Date().addingTimeInterval(10)
        while engine.statistics.groupsLogged == before && Date() < deadline { usleep(1000) }
        #expect(engine.statistics.groupsLogged > before)
    }

    @Test func secondOpenOfAnImageInUseIsRefused() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir)
        let engine = try Engine.open(path: path, options: options())
        defer { try? engine.close() }
        #expect { try Engine.open(path: path) } throws: { ($0 as? TesseraError)?.code == .busy }
    }
}
