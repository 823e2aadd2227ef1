// IOS: a cob exists from its CREATE or first WRITE until a FREE of its whole range; a READ
// of one that does not exist fails notFound, never zeros, while holes inside one that
// exists read as zeros. The records survive a reopen and a crash, and an image made before
// the cobs catalogue gets one at open.
import Foundation
import Testing
import TesseraCore
import TesseraEngine
@testable import TesseraServices

@Suite struct CobExistenceTests {
    let cob = Fid(hi: 0xC0B, lo: 7)

    func expectNotFound(_ n: IONode, _ cob: Fid, at offset: UInt64 = 0, length: UInt32 = 8192, _ what: Comment) async {
        let r = await n.node.handle(.read(cob: cob, offset: offset, length: length))
        if case .failure(let s, let m) = r {
            #expect(s == .notFound && m.contains("\(cob)") && m.contains("freed or never written"), what)
        } else {
            Issue.record("\(what): \(r)")
        }
        // The server's own path: a READ read straight into its reply frame.
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: Int(length), alignment: 4096)
        defer { buffer.deallocate() }
        let failure = await n.node.read(.read(cob: cob, offset: offset, length: length), into: buffer)
        if case .failure(let s, _)? = failure { #expect(s == .notFound, what) } else { Issue.record("\(what): read into a frame gave \(String(describing: failure))") }
    }

    @Test func aCobNeverWrittenIsNotFound() async throws {
        let n = try IONode()
        await expectNotFound(n, cob, "never written")
        await expectNotFound(n, cob, at: 1 << 40, length: 1, "never written, far out")
    }

    @Test func aDeletedCobIsNotFoundAndItsHolesWereZeros() async throws {
        let n = try IONode()
        let bytes = [UInt8](repeating: 9, count: 10_000)
        #expect(await n.node.handle(.write(cob: cob, offset: 1 << 20, data: bytes, syncWait: false)).isOK)
        // A hole inside a cob that exists: zeros.
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 4096)) == .data([UInt8](repeating: 0, count: 4096)))
        #expect(await n.node.handle(.read(cob: cob, offset: (1 << 20) - 100, length: 200)) == .data([UInt8](repeating: 0, count: 100) + [UInt8](repeating: 9, count: 100)))
        // What Cluster.delete sends: the whole range.
        #expect(await n.node.handle(.free(cob: cob, offset: 0, length: 1 << 60, syncWait: false)).isOK)
        await expectNotFound(n, cob, at: 1 << 20, length: 10_000, "deleted")
        await expectNotFound(n, cob, "deleted, in what was a hole")
        // Deleting again, or a length past the end, is no error.
        #expect(await n.node.handle(.free(cob: cob, offset: 0, length: .max, syncWait: true)).isOK)
        // A write brings it back, with only what it wrote.
        #expect(await n.node.handle(.write(cob: cob, offset: 0, data: [1, 2, 3], syncWait: false)).isOK)
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 4)) == .data([1, 2, 3, 0]))
        #expect(await n.node.handle(.read(cob: cob, offset: 1 << 20, length: 4)) == .data([0, 0, 0, 0]))
        #expect(try n.node.catalogues.engine.audit().isClean)
    }

    @Test func aFreeOfLessThanTheWholeRangeKeepsTheCob() async throws {
        let n = try IONode()
        #expect(await n.node.handle(.write(cob: cob, offset: 0, data: [UInt8](repeating: 5, count: 3 << 20), syncWait: false)).isOK)
        // Truncation (from an offset to the end), a punched hole, and everything but byte 0.
        #expect(await n.node.handle(.free(cob: cob, offset: 2 << 20, length: .max, syncWait: false)).isOK)
        #expect(await n.node.handle(.free(cob: cob, offset: 4096, length: 8192, syncWait: false)).isOK)
        #expect(await n.node.handle(.free(cob: cob, offset: 1, length: 1 << 60, syncWait: false)).isOK)
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 3)) == .data([5, 0, 0]))
        #expect(await n.node.handle(.read(cob: cob, offset: 2 << 20, length: 100)) == .data([UInt8](repeating: 0, count: 100)))
        // Freeing [0, n) for n short of 2^60 keeps it too.
        #expect(await n.node.handle(.free(cob: cob, offset: 0, length: (1 << 60) - 4096, syncWait: false)).isOK)
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 3)) == .data([0, 0, 0]))
    }

    @Test func aCreatedCobReadsZerosAndCreateIsIdempotent() async throws {
        let n = try IONode()
        let other = Fid(hi: 0xC0B, lo: 8)
        #expect(await n.node.handle(.write(cob: other, offset: 0, data: [4], syncWait: false)).isOK)
        guard case .statuses(let st, let tx) = await n.node.handle(.create(cobs: [cob, other], syncWait: false)) else { Issue.record("no statuses"); return }
        #expect(st == [.ok, .exists] && tx > 0)
        #expect(await n.node.handle(.read(cob: cob, offset: 1 << 30, length: 5000)) == .data([UInt8](repeating: 0, count: 5000)))
        // CREATE of a cob that holds data leaves its data alone.
        #expect(await n.node.handle(.create(cobs: [cob, other], syncWait: true)) == .statuses([.exists, .exists], transaction: tx))
        #expect(await n.node.handle(.read(cob: other, offset: 0, length: 2)) == .data([4, 0]))
        // Answered on the event loop when it needs no wait, like a small write.
        #expect(n.node.handleImmediately(.create(cobs: [Fid(hi: 0xC0B, lo: 9)], syncWait: false)) != nil)
        #expect(n.node.handleImmediately(.create(cobs: [Fid(hi: 0xC0B, lo: 9)], syncWait: true)) == nil)
        #expect(await n.node.handle(.create(cobs: [], syncWait: false)).isOK)
        let tooMany = (0...IOService.maxCreate).map { Fid(hi: 1, lo: UInt64($0)) }
        if case .failure(let s, _) = await n.node.handle(.create(cobs: tooMany, syncWait: false)) { #expect(s == .tooLarge) } else { Issue.record("\(tooMany.count) cobs in one CREATE") }
    }

    @Test func recordsSurviveAReopenAndACrash() async throws {
        let n = try IONode()
        let made = Fid(hi: 0xC0B, lo: 10)
        let written = Fid(hi: 0xC0B, lo: 11)
        let deleted = Fid(hi: 0xC0B, lo: 12)
        #expect(await n.node.handle(.create(cobs: [made], syncWait: true)).isOK)
        #expect(await n.node.handle(.write(cob: written, offset: 8192, data: [7], syncWait: true)).isOK)
        #expect(await n.node.handle(.write(cob: deleted, offset: 0, data: [7], syncWait: true)).isOK)
        #expect(await n.node.handle(.free(cob: deleted, offset: 0, length: 1 << 60, syncWait: true)).isOK)
        for crash in [false, true] {
            try n.reopen(crash: crash)
            #expect(await n.node.handle(.read(cob: made, offset: 0, length: 10)) == .data([UInt8](repeating: 0, count: 10)))
            #expect(await n.node.handle(.read(cob: written, offset: 0, length: 1)) == .data([0]))
            await expectNotFound(n, deleted, crash ? "deleted, after a crash" : "deleted, after a reopen")
        }
    }

    /// Drops the cobs catalogue, leaving the image as a build before it left it.
    static func dropCobsCatalogue(_ n: IONode) throws {
        try n.node.catalogues.engine.write { t in try t.dropCatalogue(IOService.cobsFid) }
    }

    @Test func anImageWithoutTheCatalogueGetsOneAtOpen() async throws {
        let n = try IONode()
        let cobs = (0..<2500).map { Fid(hi: UInt64($0 % 7), lo: UInt64($0)) }
        // More cobs than one transaction of the pass takes, several extents each for some.
        for (i, c) in cobs.enumerated() {
            #expect(await n.node.handle(.write(cob: c, offset: UInt64(i % 3) << 20, data: [UInt8(i & 0xFF | 1)], syncWait: false)).isOK)
            if i % 100 == 0 { #expect(await n.node.handle(.write(cob: c, offset: 5 << 20, data: [1], syncWait: false)).isOK) }
        }
        let never = Fid(hi: 0, lo: 999_999)
        try Self.dropCobsCatalogue(n)
        // Without the catalogue every read that looks a cob up fails (one over a hole does):
        // the test sees the image as an old build left it.
        #expect(await !n.node.handle(.read(cob: cobs[0], offset: 0, length: 8192)).isData)
        try n.reopen(crash: false)
        for (i, c) in cobs.enumerated() {
            let r = await n.node.handle(.read(cob: c, offset: UInt64(i % 3) << 20, length: 1))
            #expect(r == .data([UInt8(i & 0xFF | 1)]), "cob \(i)")
        }
        await expectNotFound(n, never, "never written, after the migration")
        #expect(try n.node.catalogues.engine.get(IOService.cobsFid, IOService.migratingKey) == nil)
        #expect(try n.node.catalogues.engine.audit().isClean)

        // A pass a crash cut short (the catalogue and its marker made, no records yet) is run
        // again at the next open.
        try Self.dropCobsCatalogue(n)
        try n.node.catalogues.engine.write { t in
            try t.createCatalogue(IOService.cobsFid)
            try t.put(IOService.cobsFid, IOService.migratingKey, [])
        }
        try n.reopen(crash: true)
        #expect(await n.node.handle(.read(cob: cobs[2499], offset: UInt64(2499 % 3) << 20, length: 1)) == .data([UInt8(2499 & 0xFF | 1)]))
        #expect(try n.node.catalogues.engine.get(IOService.cobsFid, IOService.migratingKey) == nil)
        // A catalogue without the marker is left as it is: no pass at every open.
        #expect(await n.node.handle(.free(cob: cobs[1], offset: 0, length: 1 << 60, syncWait: false)).isOK)
        try n.reopen(crash: false)
        await expectNotFound(n, cobs[1], "deleted after the migration")
    }

    @Test func aCobRecordOfAnotherVersionIsAnErrorNotACrash() async throws {
        let n = try IONode()
        try n.node.catalogues.engine.write { t in try t.put(IOService.cobsFid, cob.bytes, [2]) }
        if case .failure(let s, _) = await n.node.handle(.read(cob: cob, offset: 0, length: 10)) { #expect(s == .unsupportedVersion) } else { Issue.record("read a version 2 record") }
        try n.node.catalogues.engine.write { t in try t.put(IOService.cobsFid, cob.bytes, []) }
        if case .failure(let s, _) = await n.node.handle(.create(cobs: [cob], syncWait: false)) { #expect(s == .corrupt) } else { Issue.record("read an empty record") }
    }
}

extension Response {
    var isData: Bool { if case .data = self { return true } else { return false } }
}
