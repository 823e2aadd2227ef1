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
        var o = options()
        o.commit.placeTimeoutNanos = 3_600 * 1_000_000_000
        let engine = try Engine.open(path: path, options: o)
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
