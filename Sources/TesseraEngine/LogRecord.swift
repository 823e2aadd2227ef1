// One commit group as written to the circular log: header, regions, commit block, padding.
//
// Record layout (docs/FORMAT.md, "Log record"); little-endian; every record starts on a
// 4096-byte boundary of the log region and is padded with zeros to a multiple of 4096:
//
//   +--------------------+  off size field
//   | header (32 bytes)  |  0   4    magic "TSLR"
//   |                    |  4   4    format version (1; 2 if it holds data regions)
//   |                    |  8   8    sequence number (groups are numbered 1, 2, 3, ...)
//   |                    |  16  4    region count
//   |                    |  20  4    payload length in bytes
//   |                    |  24  4    record length in bytes (multiple of 4096)
//   |                    |  28  4    CRC32C of header bytes 0..<28
//   +--------------------+
//   | payload            |  per region: u64 offset, u32 length, `length` bytes; an offset
//   |                    |  with bit 63 set is a data region (version 2): the rest is a
//   |                    |  byte offset in the server's data image, not in the segment
//   +--------------------+
//   | commit (16 bytes)  |  0 magic "TSCB", 4 CRC32C of header+payload, 8 sequence number
//   +--------------------+
//   | zero padding       |
//   +--------------------+
//
// A record counts only if header, payload and commit block all check out and its sequence
// number is the one expected next; anything else ends the log.
import TesseraCore

enum LogRecord {
    static let headerSize = 32
    static let commitSize = 16
    static let regionHeaderSize = 12
    static let align = 4096
    static let magic: UInt32 = 0x524C_5354  // "TSLR" little-endian
    static let commitMagic: UInt32 = 0x4243_5354  // "TSCB"
    /// Records with segment regions only; what every build reads.
    static let version: UInt32 = 1
    /// Records that also hold data regions (journaled data-image bytes).
    static let dataVersion: UInt32 = 2
    /// Bit 63 of a region's offset: the region is data-image bytes.
    public static let dataRegion: UInt64 = 1 << 63

    /// Bytes a record with `payload` payload bytes occupies in the log.
    static func recordLength(payload: Int) -> Int {
        roundUp(headerSize + payload + commitSize, to: align)
    }

    /// Completes a group buffer (32 bytes reserved at the front, payload after) into a record.
    static func seal(_ buffer: inout [UInt8], seq: UInt64, regionCount: UInt32, dataRegions: Bool) {
        let payload = buffer.count - headerSize
        let length = recordLength(payload: payload)
        buffer.storeLE(magic, at: 0)
        buffer.storeLE(dataRegions ? dataVersion : version, at: 4)
        buffer.storeLE(seq, at: 8)
        buffer.storeLE(regionCount, at: 16)
        buffer.storeLE(UInt32(payload), at: 20)
        buffer.storeLE(UInt32(length), at: 24)
        let headerCRC = buffer.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[0..<28])) }
        buffer.storeLE(headerCRC, at: 28)
        let bodyCRC = CRC32C.checksum(buffer)
        buffer.appendLE(commitMagic)
        buffer.appendLE(bodyCRC)
        buffer.appendLE(seq)
        buffer += [UInt8](repeating: 0, count: length - buffer.count)
    }

    struct Header {
        var seq: UInt64
        var version: UInt32
        var regionCount: Int
        var payloadLength: Int
        var recordLength: Int
    }

    /// Decodes a header read from the log; nil if it is not a valid header of `seq`.
    static func header(_ b: UnsafeRawBufferPointer, expecting seq: UInt64, logSize: UInt64) -> Header? {
        guard b.count >= headerSize else { return nil }
        let version = b.loadUnaligned(fromByteOffset: 4, as: UInt32.self).littleEndian
        guard
            b.loadUnaligned(fromByteOffset: 0, as: UInt32.self).littleEndian == magic,
            b.loadUnaligned(fromByteOffset: 28, as: UInt32.self).littleEndian
                == CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[0..<28])),
            version == Self.version || version == dataVersion,
            b.loadUnaligned(fromByteOffset: 8, as: UInt64.self).littleEndian == seq
        else { return nil }
        let h = Header(
            seq: seq,
            version: version,
            regionCount: Int(b.loadUnaligned(fromByteOffset: 16, as: UInt32.self).littleEndian),
            payloadLength: Int(b.loadUnaligned(fromByteOffset: 20, as: UInt32.self).littleEndian),
            recordLength: Int(b.loadUnaligned(fromByteOffset: 24, as: UInt32.self).littleEndian))
        guard h.recordLength % align == 0, UInt64(h.recordLength) <= logSize,
            h.recordLength == recordLength(payload: h.payloadLength)
        else { return nil }
        return h
    }

    /// Checks the commit block of a whole record whose header is `h`.
    static func commitIsValid(_ record: UnsafeRawBufferPointer, _ h: Header) -> Bool {
        let end = headerSize + h.payloadLength
        guard record.count >= end + commitSize else { return false }
        let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: record[0..<end]))
        return record.loadUnaligned(fromByteOffset: end, as: UInt32.self).littleEndian == commitMagic
            && record.loadUnaligned(fromByteOffset: end + 4, as: UInt32.self).littleEndian == crc
            && record.loadUnaligned(fromByteOffset: end + 8, as: UInt64.self).littleEndian == h.seq
    }

    /// Calls `body(segmentOffset, bytes)` for each segment region of a record's payload and
    /// `data(dataImageOffset, bytes)` for each data region, checking every bound first: a
    /// region outside the segment is corruption, reported, never applied. A data region with
    /// no `data` to take it is an error too: its bytes must not be dropped.
    static func forEachRegion(
        _ record: UnsafeRawBufferPointer, _ h: Header, segmentSize: UInt64,
        data: ((UInt64, UnsafeRawBufferPointer) throws -> Void)?,
        _ body: (UInt64, UnsafeRawBufferPointer) throws -> Void
    ) throws {
        var at = headerSize
        let end = headerSize + h.payloadLength
        for i in 0..<h.regionCount {
            guard at + regionHeaderSize <= end else {
                throw TesseraError(.corrupt, "log record \(h.seq): region \(i) header runs past the payload")
            }
            let offset = record.loadUnaligned(fromByteOffset: at, as: UInt64.self).littleEndian
            let length = Int(record.loadUnaligned(fromByteOffset: at + 8, as: UInt32.self).littleEndian)
            at += regionHeaderSize
            if offset & dataRegion != 0 {
                guard h.version == dataVersion, length <= end - at else {
                    throw TesseraError(.corrupt, "log record \(h.seq): data region \(i) (length \(length)) is out of bounds or in a version \(h.version) record")
                }
                guard let data else {
                    throw TesseraError(.invalidArgument, "log record \(h.seq) holds data-image bytes to replay, and no data image was given to take them")
                }
                try data(offset & ~dataRegion, UnsafeRawBufferPointer(rebasing: record[at..<(at + length)]))
                at += length
                continue
            }
            guard length <= end - at, offset <= segmentSize, UInt64(length) <= segmentSize - offset else {
                throw TesseraError(.corrupt, "log record \(h.seq): region \(i) (offset \(offset), length \(length)) is out of bounds")
            }
            try body(offset, UnsafeRawBufferPointer(rebasing: record[at..<(at + length)]))
            at += length
        }
        guard at == end else { throw TesseraError(.corrupt, "log record \(h.seq): payload has trailing bytes") }
    }
}

@inline(__always)
func roundUp(_ n: Int, to a: Int) -> Int { (n + a - 1) / a * a }

/// Writes the regions of several records into the segment: regions are sorted by offset,
/// overlapping ones merged with later groups winning, and each merged run written once.
struct RegionPlacer {
    private struct Region {
        var offset: UInt64
        var order: Int
        var bytes: UnsafeRawBufferPointer
    }
    private var regions: [Region] = []

    mutating func add(offset: UInt64, bytes: UnsafeRawBufferPointer) {
        regions.append(Region(offset: offset, order: regions.count, bytes: bytes))
    }

    /// Writes every added region at `segmentOffset + offset`. The buffers passed to `add`
    /// must stay alive until this returns.
    mutating func write(to file: ImageFile, segmentOffset: UInt64) throws {
        regions.sort { ($0.offset, $0.order) < ($1.offset, $1.order) }
        var scratch: [UInt8] = []
        var i = 0
        while i < regions.count {
            var end = regions[i].offset + UInt64(regions[i].bytes.count)
            var j = i + 1
            while j < regions.count && regions[j].offset <= end {
                end = max(end, regions[j].offset + UInt64(regions[j].bytes.count))
                j += 1
            }
            let start = regions[i].offset
            if j == i + 1 {
                try file.write(regions[i].bytes, atAbsoluteOffset: segmentOffset + start)
            } else {
                scratch.removeAll(keepingCapacity: true)
                scratch.append(contentsOf: repeatElement(0, count: Int(end - start)))
                let run = regions[i..<j].sorted { $0.order < $1.order }
                scratch.withUnsafeMutableBytes { dst in
                    for r in run {
                        dst.baseAddress!.advanced(by: Int(r.offset - start))
                            .copyMemory(from: r.bytes.baseAddress!, byteCount: r.bytes.count)
                    }
                }
                try file.write(scratch, atAbsoluteOffset: segmentOffset + start)
            }
            i = j
        }
        regions.removeAll(keepingCapacity: true)
    }
}
