// Requests, responses and frame headers round-trip; malformed bytes are refused, never trap.
import Testing
import TesseraCore

@Suite struct MessageTests {
    static let fid = Fid(hi: 1, lo: 2)
    static let requests: [Request] = [
        .createIndexes([fid, Fid(hi: 3, lo: 4)]), .dropIndexes([]), .listIndexes(after: fid, limit: 10),
        .listIndexes(after: nil, limit: 0), .get(index: fid, keys: [[1, 2], [], [3]]),
        .put(index: fid, records: [Record(key: [1], value: [2, 3]), Record(key: [], value: [])], mode: .createOnly, syncWait: true),
        .delete(index: fid, keys: [[9]], syncWait: false), .next(index: fid, starts: [nil, [5, 6]], limit: 100, excludeStart: true),
        .write(cob: fid, offset: 1 << 40, data: [UInt8](repeating: 7, count: 1000), syncWait: true),
        .read(cob: fid, offset: 4096, length: 65536), .free(cob: fid, offset: 0, length: .max, syncWait: false),
        .create(cobs: [fid, Fid(hi: 5, lo: 6)], syncWait: true), .create(cobs: [], syncWait: false),
        .sync(transactions: [1, 2, 3]),
        .cas(index: fid, key: [1], expected: nil, value: [2], also: [], syncWait: true),
        .cas(index: fid, key: [], expected: [3], value: nil, also: [Record(key: [4], value: [5])], syncWait: false),
        .routed(mapVersion: 7, request: .get(index: fid, keys: [[1]])),
        .replicate(source: 2, epoch: 3, seq: 4, mapVersion: 5, entries: [
            .change(index: fid, deletes: [[1]], puts: [Record(key: [2], value: [3])]), .createIndex(fid), .dropIndex(fid),
            .compare(index: fid, from: [], to: [9], count: 3, digest: [UInt8](repeating: 1, count: 32)),
            .replace(index: fid, from: [1], to: nil, records: [Record(key: [1], value: [])]),
        ]),
        .repair(target: 2, mapVersion: 9, after: nil, limit: 64), .repair(target: 0, mapVersion: 1, after: fid, limit: 1),
    ]
    static let responses: [Response] = [
        .statuses([.ok, .exists, .notFound], transaction: 42), .values([[1], nil, []]),
        .records([[Record(key: [1], value: [2])], []]), .fids([fid]), .data([1, 2, 3]), .done,
        .failure(.checksum, "unit 3 of cob 1:2 failed its checksum"),
        .cas(.conflict, current: [4], transaction: 9), .cas(.ok, current: nil, transaction: 0),
        .repaired(RepairStep(indexes: 3, records: 3000, copied: 1000, next: fid)), .repaired(RepairStep()),
    ]

    @Test func requestsRoundTrip() throws {
        for r in Self.requests {
            var w = WireWriter()
            r.encode(into: &w)
            #expect(try Request.decode(w.bytes) == r)
        }
    }

    @Test func responsesRoundTrip() throws {
        for r in Self.responses {
            var w = WireWriter()
            r.encode(into: &w)
            #expect(try Response.decode(w.bytes) == r)
        }
    }

    @Test func everyTruncationAndExtensionIsRefused() {
        for r in Self.requests {
            var w = WireWriter()
            r.encode(into: &w)
            for cut in 0..<w.bytes.count { #expect(throws: TesseraError.self) { try Request.decode(Array(w.bytes[..<cut])) } }
            #expect(throws: TesseraError.self) { try Request.decode(w.bytes + [0]) }
        }
    }

    @Test func randomBytesNeverTrap() {
        var rng = SeededRandom.forRun("MessageTests.randomBytesNeverTrap")
        for _ in 0..<50_000 {
            var bytes = (0..<Int.random(in: 0...64, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
            if bytes.count >= 2 && Bool.random(using: &rng) {
                let op = Request.Opcode.allCases.randomElement(using: &rng)!.rawValue
                bytes[0] = UInt8(op & 0xFF)
                bytes[1] = UInt8(op >> 8)
            }
            _ = try? Request.decode(bytes)
            _ = try? Response.decode(bytes)
        }
    }

    @Test func forgedCountsDoNotAllocate() {
        // A get claiming four billion keys in a 30-byte body is refused before allocating.
        var w = WireWriter()
        w.u16(Request.Opcode.get.rawValue)
        w.fid(Self.fid)
        w.u32(.max)
        #expect(throws: TesseraError.self) { try Request.decode(w.bytes) }
        // So is a CREATE claiming more cobs than its bytes hold.
        var c = WireWriter()
        c.u16(Request.Opcode.create.rawValue)
        c.u32(1_000_000)
        c.fid(Self.fid)
        c.bool(false)
        #expect(throws: TesseraError.self) { try Request.decode(c.bytes) }
    }

    @Test func frameHeaderRoundTripAndDamage() throws {
        let f = Frame(kind: .request, requestID: 77, deadlineMillis: 500, body: [1, 2, 3])
        let h = f.encodeHeader()
        let parsed = try h.withUnsafeBytes { try Frame.parseHeader($0) }
        #expect(parsed == Frame.Header(kind: .request, requestID: 77, deadlineMillis: 500, bodyLength: 3))
        for i in 0..<Frame.headerSize {
            var bad = h
            bad[i] ^= 0x10
            #expect(throws: TesseraError.self) { _ = try bad.withUnsafeBytes { try Frame.parseHeader($0) } }
        }
        var big = Frame(kind: .request, body: []).encodeHeader()
        big.storeLE(UInt32(Frame.maxBody + 1), at: 20)
        big.storeLE(CRC32C.checksum(Array(big[0..<24])), at: 24)
        #expect { _ = try big.withUnsafeBytes { try Frame.parseHeader($0) } } throws: { ($0 as? TesseraError)?.code == .tooLarge }
    }
}
