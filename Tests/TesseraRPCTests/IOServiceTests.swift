// IOS: writes and reads at any offset against a model, holes, redirect-on-write and reuse of
// freed blocks, checksum errors, ENOSPC with nothing corrupted, durability across a crash.
import Foundation
import Testing
import TesseraCore
import TesseraEngine
import TesseraServices

final class IONode {
    let dir: String
    var node: ServerNode
    let options: EngineOptions
    var meta: String { dir + "/meta.img" }
    var data: String { dir + "/data.img" }

    /// `placing: false` keeps logged groups unplaced (for an hour), so a crash replays them.
    init(dataSize: UInt64 = 64 << 20, logSize: UInt64 = 8 << 20, placing: Bool = true) throws {
        var template = Array((NSTemporaryDirectory() + "/tessera-ios-XXXXXX").utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        _ = try Engine.format(path: dir + "/meta.img", size: 64 << 20, pageSize: 16384, logSize: logSize)
        try DataImage.format(path: dir + "/data.img", size: dataSize)
        var o = EngineOptions()
        o.logger.logLevel = .warning
        if !placing { o.commit.placeTimeoutNanos = 3_600 * 1_000_000_000 }
        options = o
        node = try IONode.open(dir, o)
    }

    static func open(_ dir: String, _ o: EngineOptions) throws -> ServerNode {
        try ServerNode.open(metaPath: dir + "/meta.img", dataPath: dir + "/data.img", options: o)
    }

    /// Overwrites bytes of the data image (what a crash before a flush could leave).
    func scribble(blocks: Range<Int>, with byte: UInt8) throws {
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: data))
        try h.seek(toOffset: UInt64(4096 + blocks.lowerBound * 4096))
        h.write(Data(repeating: byte, count: blocks.count * 4096))
        try h.close()
    }

    func reopen(crash: Bool) throws {
        if crash {
            node.catalogues.engine.abandonForTesting()
            node.io?.data.close()
        } else {
            try node.close()
        }
        node = try IONode.open(dir, options)
    }

    deinit {
        try? node.close()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

@Suite struct IOServiceTests {
    let cob = Fid(hi: 0xC0B, lo: 1)

    @Test func randomWritesMatchAModel() async throws {
        let n = try IONode()
        var model = [UInt8](repeating: 0, count: 3 << 20)
        var rng = SeededRandom(seed: 3)
        for step in 0..<300 {
            let offset = Int.random(in: 0..<(model.count - 1), using: &rng)
            let length = min(Int.random(in: 1...(step % 10 == 0 ? 600_000 : 9000), using: &rng), model.count - offset)
            if step % 7 == 3 {
                #expect(await n.node.handle(.free(cob: cob, offset: UInt64(offset), length: UInt64(length), syncWait: false)).isOK)
                model.replaceSubrange(offset..<(offset + length), with: repeatElement(0, count: length))
            } else {
                let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
                #expect(await n.node.handle(.write(cob: cob, offset: UInt64(offset), data: bytes, syncWait: step % 13 == 0)).isOK)
                model.replaceSubrange(offset..<(offset + length), with: bytes)
            }
            let at = Int.random(in: 0..<model.count, using: &rng)
            let len = min(Int.random(in: 1...200_000, using: &rng), model.count - at)
            #expect(await n.node.handle(.read(cob: cob, offset: UInt64(at), length: UInt32(len))) == .data(Array(model[at..<(at + len)])), "step \(step)")
        }
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: UInt32(model.count))) == .data(model))
        // Reading past everything written is a hole.
        #expect(await n.node.handle(.read(cob: cob, offset: 1 << 40, length: 10)) == .data([UInt8](repeating: 0, count: 10)))
        try n.reopen(crash: false)
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: UInt32(model.count))) == .data(model))
        #expect(try n.node.catalogues.engine.audit().isClean)
    }

    /// Reads into a caller's buffer (the RPC server's reply frame): large aligned ones go
    /// O_DIRECT, the rest through the page cache; all must see writes not yet flushed, and
    /// overwrites of blocks read before.
    @Test func largeReadsIntoBuffersMatchAModelWhateverTheirAlignment() async throws {
        let n = try IONode()
        var model = [UInt8](repeating: 0, count: 3 << 20)
        var rng = SeededRandom(seed: 11)
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: (2 << 20) + 4096, alignment: 4096)
        defer { buffer.deallocate() }
        for step in 0..<60 {
            let offset = step % 3 == 0 ? Int.random(in: 0..<32, using: &rng) * 65536 : Int.random(in: 0..<(2 << 20), using: &rng)
            let length = Int.random(in: 1...(1 << 20), using: &rng)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) }
            #expect(await n.node.handle(.write(cob: cob, offset: UInt64(offset), data: bytes, syncWait: false)).isOK)
            model.replaceSubrange(offset..<(offset + length), with: bytes)
            // Aligned and whole blocks (O_DIRECT), then misaligned in memory, then a range
            // that cuts blocks at both ends.
            for (at, count, shift) in [(offset / 4096 * 4096, 1 << 20, 0), (offset / 4096 * 4096, 1 << 20, 1), (offset | 100, 600_000, 0)] {
                let into = UnsafeMutableRawBufferPointer(rebasing: buffer[shift..<(shift + count)])
                let failure = await n.node.read(.read(cob: cob, offset: UInt64(at), length: UInt32(count)), into: into)
                #expect(failure == nil, "step \(step)")
                #expect(Array(into) == Array(model[at..<(at + count)]), "step \(step): \(count) bytes at \(at), shift \(shift)")
            }
        }
    }

    @Test func overwritesReuseFreedBlocks() async throws {
        // 8 MiB of data image; writing one 1 MiB unit 100 times only works if the blocks each
        // overwrite frees return to the free list (after their group is LOGGED).
        let n = try IONode(dataSize: 8 << 20)
        for i in 0..<100 {
            let unit = [UInt8](repeating: UInt8(i), count: 1 << 20)
            #expect(await n.node.handle(.write(cob: cob, offset: 0, data: unit, syncWait: true)).isOK, "write \(i)")
        }
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 1 << 20)) == .data([UInt8](repeating: 99, count: 1 << 20)))
    }

    @Test func fullDataImageIsENOSPCAndCorruptsNothing() async throws {
        let n = try IONode(dataSize: 4 << 20)
        let keep = [UInt8](repeating: 7, count: 1 << 20)
        #expect(await n.node.handle(.write(cob: cob, offset: 0, data: keep, syncWait: true)).isOK)
        let r = await n.node.handle(.write(cob: Fid(hi: 9, lo: 9), offset: 0, data: [UInt8](repeating: 1, count: 4 << 20), syncWait: true))
        if case .failure(let s, let m) = r { #expect(s == .noSpace && m.contains("full")) } else { Issue.record("\(r)") }
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 1 << 20)) == .data(keep))
        #expect(await n.node.handle(.write(cob: Fid(hi: 9, lo: 9), offset: 0, data: [UInt8](repeating: 1, count: 1 << 20), syncWait: true)).isOK)
        #expect(try n.node.catalogues.engine.audit().isClean)
    }

    @Test func flippedBytesUnderAUnitAreAChecksumError() async throws {
        let n = try IONode()
        let unit = (0..<(256 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        #expect(await n.node.handle(.write(cob: cob, offset: 0, data: unit, syncWait: true)).isOK)
        try n.reopen(crash: false)
        // The first write went to the first blocks; flip a byte in the middle of them.
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: n.data))
        try h.seek(toOffset: 4096 + 100_000)
        let old = h.readData(ofLength: 1)
        try h.seek(toOffset: 4096 + 100_000)
        h.write(Data([old[0] ^ 0xFF]))
        try h.close()
        let r = await n.node.handle(.read(cob: cob, offset: 0, length: UInt32(unit.count)))
        if case .failure(let s, let m) = r { #expect(s == .checksum && m.contains("CRC32C")) } else { Issue.record("corrupt data was returned") }
        // Blocks that were not touched still read.
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 4096)) == .data(Array(unit[0..<4096])))
    }

    @Test func syncedWritesSurviveACrash() async throws {
        let n = try IONode()
        var expected: [Int: [UInt8]] = [:]
        for i in 0..<20 {
            let unit = [UInt8](repeating: UInt8(i + 1), count: 64 << 10)
            let r = await n.node.handle(.write(cob: cob, offset: UInt64(i) * (64 << 10), data: unit, syncWait: false))
            guard case .statuses(_, let tx) = r else { Issue.record("\(r)"); return }
            #expect(await n.node.handle(.sync(transactions: [tx])) == .done)
            expected[i] = unit
        }
        try n.reopen(crash: true)
        for (i, unit) in expected {
            #expect(await n.node.handle(.read(cob: cob, offset: UInt64(i) * (64 << 10), length: 64 << 10)) == .data(unit))
        }
        #expect(try n.node.catalogues.engine.audit().isClean)
    }

    @Test func journaledWritesComeBackFromTheLogWhenTheDataImageLostThem() async throws {
        let n = try IONode(placing: false)
        let small = (0..<(40 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        #expect(await n.node.handle(.write(cob: cob, offset: 4096, data: small, syncWait: true)).isOK)
        // The data image was never flushed for it, and a crash lost what its page cache held.
        try n.reopen(crash: true)
        try n.node.close()
        try n.scribble(blocks: 0..<64, with: 0xEE)
        n.node = try IONode.open(n.dir, n.options)
        #expect(n.node.catalogues.engine.recoveredGroups == 0)  // replayed by the first reopen
        let r = await n.node.handle(.read(cob: cob, offset: 4096, length: UInt32(small.count)))
        if case .failure(let s, _) = r { #expect(s == .checksum) } else { Issue.record("scribbled blocks read back as data") }

        // Again, scribbling before the replay this time.
        let m = try IONode(placing: false)
        #expect(await m.node.handle(.write(cob: cob, offset: 4096, data: small, syncWait: true)).isOK)
        m.node.catalogues.engine.abandonForTesting()
        m.node.io?.data.close()
        try m.scribble(blocks: 0..<64, with: 0xEE)
        m.node = try IONode.open(m.dir, m.options)
        #expect(m.node.catalogues.engine.recoveredGroups > 0)
        #expect(await m.node.handle(.read(cob: cob, offset: 4096, length: UInt32(small.count))) == .data(small))
        #expect(try m.node.catalogues.engine.audit().isClean)
    }

    @Test func aLogTooSmallToJournalInStillTakesWrites() async throws {
        // A 256 KiB log: one transaction may log 64 KiB, less than the journal limit.
        let n = try IONode(logSize: 256 << 10)
        for (i, size) in [4096, 60 << 10, 128 << 10].enumerated() {
            let bytes = [UInt8](repeating: UInt8(i + 1), count: size)
            #expect(await n.node.handle(.write(cob: cob, offset: UInt64(i) << 20, data: bytes, syncWait: true)).isOK, "write of \(size)")
            #expect(await n.node.handle(.read(cob: cob, offset: UInt64(i) << 20, length: UInt32(size))) == .data(bytes))
        }
        try n.reopen(crash: true)
        #expect(await n.node.handle(.read(cob: cob, offset: 2 << 20, length: 128 << 10)) == .data([UInt8](repeating: 3, count: 128 << 10)))
    }

    @Test func blocksFreedAfterAJournaledWriteAreNotReusedUntilItCanNoLongerBeReplayed() async throws {
        // A small write is journaled; an overwrite frees its blocks; a large write (not
        // journaled) follows. If the large write got the freed blocks while the journaled
        // group could still be replayed, recovery would write the old bytes over its data.
        let n = try IONode(placing: false)
        let other = Fid(hi: 0xC0B, lo: 2)
        #expect(await n.node.handle(.write(cob: cob, offset: 0, data: [UInt8](repeating: 1, count: 8192), syncWait: true)).isOK)
        #expect(await n.node.handle(.write(cob: cob, offset: 0, data: [UInt8](repeating: 2, count: 8192), syncWait: true)).isOK)
        let large = (0..<(512 << 10)).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        #expect(await n.node.handle(.write(cob: other, offset: 0, data: large, syncWait: true)).isOK)
        try n.reopen(crash: true)
        #expect(n.node.catalogues.engine.recoveredGroups > 0)
        #expect(await n.node.handle(.read(cob: other, offset: 0, length: UInt32(large.count))) == .data(large))
        #expect(await n.node.handle(.read(cob: cob, offset: 0, length: 8192)) == .data([UInt8](repeating: 2, count: 8192)))
        #expect(try n.node.catalogues.engine.audit().isClean)
    }
}

extension Response {
    var isOK: Bool { if case .statuses(let s, _) = self { return s.allSatisfy { $0 == .ok } } else { return false } }
}

@Suite struct ReservedIndexTests {
    @Test func casRefusesTheServersOwnCatalogues() async throws {
        let n = try IONode()
        let reserved = Fid(hi: .max, lo: 2)
        if case .failure(let s, _) = await n.node.handle(.get(index: reserved, keys: [[1]])) { #expect(s == .invalidArgument) } else { Issue.record("reserved index readable") }
        if case .failure(let s, _) = await n.node.handle(.dropIndexes([reserved])) { #expect(s == .invalidArgument) } else { Issue.record("reserved index droppable") }
        #expect(await n.node.handle(.listIndexes(after: nil, limit: 100)) == .fids([]))
    }
}

@Suite struct LargeFreeTests {
    @Test func freeingMoreExtentsThanOneTransactionTakes() async throws {
        let n = try IONode()
        let cob = Fid(hi: 0xF3EE, lo: 1)
        // 1,200 separate one-block writes: 1,200 extents, more than two batches of unmapping.
        for i in 0..<1200 {
            #expect(await n.node.handle(.write(cob: cob, offset: UInt64(i) * 8192, data: [UInt8](repeating: 1, count: 4096), syncWait: false)).isOK)
        }
        #expect(await n.node.handle(.free(cob: cob, offset: 0, length: .max, syncWait: true)).isOK)
        // The whole range: the cob is gone (CobExistenceTests), not a cob of zeros.
        if case .failure(let s, _) = await n.node.handle(.read(cob: cob, offset: 0, length: 1200 * 8192)) { #expect(s == .notFound) } else { Issue.record("a deleted cob was read") }
        try n.reopen(crash: false)
        let report = try n.node.catalogues.engine.audit()
        #expect(report.isClean)
        // Every block is free again: one free extent spans the whole image.
        #expect(try n.node.catalogues.engine.scan(Fid(hi: .max, lo: 1), from: nil, limit: 10).count == 1)
    }
}

@Suite struct IORangeTests {
    @Test func offsetsNearTheTopAreRefusedNotTrapped() async throws {
        let n = try IONode()
        let cob = Fid(hi: 1, lo: 1)
        for r: Request in [
            .write(cob: cob, offset: .max - 10, data: [1, 2, 3], syncWait: false),
            .read(cob: cob, offset: .max - 1, length: 100),
            .free(cob: cob, offset: .max - 5, length: .max, syncWait: false),
        ] {
            if case .failure(let s, _) = await n.node.handle(r) { #expect(s == .invalidArgument) } else { Issue.record("\(r.opcode) accepted") }
        }
        #expect(await n.node.handle(.free(cob: cob, offset: 4096, length: .max, syncWait: false)).isOK)
    }
}
