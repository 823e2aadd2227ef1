// The log record codec: sealing, validation, and that every damaged byte is caught.
import Testing
@testable import TesseraEngine

@Suite struct LogRecordTests {
    static func record(seq: UInt64 = 9) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: LogRecord.headerSize)
        for (offset, fill, count) in [(UInt64(4096), UInt8(1), 64), (UInt64(100), UInt8(2), 300)] {
            buffer.appendLE(offset)
            buffer.appendLE(UInt32(count))
            buffer += [UInt8](repeating: fill, count: count)
        }
        LogRecord.seal(&buffer, seq: seq, regionCount: 2, dataRegions: false)
        return buffer
    }

    /// A version 2 record: one data region (at data-image offset 8192), then one segment region.
    static func journalRecord(seq: UInt64 = 9, version2: Bool = true) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: LogRecord.headerSize)
        buffer.appendLE(UInt64(8192) | LogRecord.dataRegion)
        buffer.appendLE(UInt32(4096))
        buffer += [UInt8](repeating: 3, count: 4096)
        buffer.appendLE(UInt64(100))
        buffer.appendLE(UInt32(10))
        buffer += [UInt8](repeating: 4, count: 10)
        LogRecord.seal(&buffer, seq: seq, regionCount: 2, dataRegions: version2)
        return buffer
    }

    @Test func sealedRecordDecodes() throws {
        let r = Self.record()
        #expect(r.count == 4096)
        try r.withUnsafeBytes { b in
            let h = try #require(LogRecord.header(b, expecting: 9, logSize: 1 << 20))
            #expect(h.regionCount == 2 && h.recordLength == 4096)
            #expect(LogRecord.commitIsValid(b, h))
            var seen: [(UInt64, Int)] = []
            try LogRecord.forEachRegion(b, h, segmentSize: 1 << 20, data: nil) { seen.append(($0, $1.count)) }
            #expect(seen.map { $0.0 } == [4096, 100] && seen.map { $0.1 } == [64, 300])
            #expect(LogRecord.header(b, expecting: 10, logSize: 1 << 20) == nil)
        }
    }

    @Test func everyMeaningfulByteIsCovered() {
        let r = Self.record()
        let meaningful = LogRecord.headerSize + (2 * 12 + 64 + 300) + LogRecord.commitSize
        for i in 0..<meaningful {
            var damaged = r
            damaged[i] ^= 0x40
            let valid = damaged.withUnsafeBytes { b -> Bool in
                guard let h = LogRecord.header(b, expecting: 9, logSize: 1 << 20) else { return false }
                return LogRecord.commitIsValid(b, h)
            }
            #expect(!valid, "flipping byte \(i) went unnoticed")
        }
    }

    @Test func regionOutsideTheSegmentIsCorruption() throws {
        let r = Self.record()
        try r.withUnsafeBytes { b in
            let h = try #require(LogRecord.header(b, expecting: 9, logSize: 1 << 20))
            #expect(throws: (any Error).self) { try LogRecord.forEachRegion(b, h, segmentSize: 4096, data: nil) { _, _ in } }
        }
    }

    @Test func dataRegionsGoToTheirOwnTaker() throws {
        let r = Self.journalRecord()
        try r.withUnsafeBytes { b in
            let h = try #require(LogRecord.header(b, expecting: 9, logSize: 1 << 20))
            #expect(h.version == 2 && LogRecord.commitIsValid(b, h))
            var data: [(UInt64, [UInt8])] = []
            var segment: [(UInt64, [UInt8])] = []
            try LogRecord.forEachRegion(b, h, segmentSize: 1 << 20, data: { data.append(($0, Array($1))) }) { segment.append(($0, Array($1))) }
            #expect(data.count == 1 && data[0].0 == 8192 && data[0].1 == [UInt8](repeating: 3, count: 4096))
            #expect(segment.count == 1 && segment[0].0 == 100 && segment[0].1 == [UInt8](repeating: 4, count: 10))
            // Nobody to take the data: an error, never bytes dropped.
            #expect { try LogRecord.forEachRegion(b, h, segmentSize: 1 << 20, data: nil) { _, _ in } } throws: {
                ($0 as? TesseraError)?.message.contains("data-image bytes") == true
            }
        }
        // A version 1 record may not carry a data region.
        try Self.journalRecord(version2: false).withUnsafeBytes { b in
            let h = try #require(LogRecord.header(b, expecting: 9, logSize: 1 << 20))
            #expect(throws: (any Error).self) { try LogRecord.forEachRegion(b, h, segmentSize: 1 << 20, data: { _, _ in }) { _, _ in } }
        }
    }
}

@Suite struct ImageHeaderTests {
    static let header = ImageHeader(
        geometry: Geometry(pageSize: 4096, logSize: 1 << 20, pageCount: 100), generation: 3,
        logTail: 8192, logTailSeq: 17, uuid: [UInt8](repeating: 7, count: 16), created: 1)

    @Test func roundTrip() throws {
        let decoded = try ImageHeader.decode(Self.header.encode(), path: "x", slot: "A").get()
        #expect(decoded == Self.header)
    }

    @Test func damageIsNamed() {
        var b = Self.header.encode()
        b[70] ^= 1
        guard case .failure(let e) = ImageHeader.decode(b, path: "x", slot: "A") else { Issue.record("accepted"); return }
        #expect(e.message.contains("checksum"))
        var newer = Self.header.encode()
        newer.storeLE(UInt32(2), at: 8)
        newer.storeLE(CRC32CTestHelper.crc(Array(newer[0..<4092])), at: 4092)
        guard case .failure(let v) = ImageHeader.decode(newer, path: "x", slot: "A") else { Issue.record("accepted"); return }
        #expect(v.code == .unsupportedVersion)
    }

    @Test func geometryRefusesWhatCannotWork() {
        #expect(throws: (any Error).self) { try Geometry.forImage(size: 1 << 20, pageSize: 4096) }
        #expect(throws: (any Error).self) { try Geometry.forImage(size: 1 << 30, pageSize: 5000) }
        #expect(throws: (any Error).self) { try Geometry.forImage(size: 1 << 30, pageSize: 4096, logSize: 4096) }
        let g = try? Geometry.forImage(size: 1 << 30)
        #expect(g?.logSize == 128 << 20 && g?.pageSize == 16384)
    }
}

enum CRC32CTestHelper {
    static func crc(_ b: [UInt8]) -> UInt32 { TesseraCore.CRC32C.checksum(b) }
}

import TesseraCore
