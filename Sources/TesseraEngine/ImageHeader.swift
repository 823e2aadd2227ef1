// The metadata image header: geometry and log tail, kept in two alternating slots.
//
// Image layout (docs/FORMAT.md, "Metadata image"); all integers little-endian:
//
//   offset 0        header slot A (4096 bytes)
//   offset 4096     header slot B (4096 bytes)
//   offset 8192     log region    (logSize bytes, a multiple of 4096; circular)
//   logOffset+logSize  segment    (pageCount pages of pageSize bytes; page 0 is the root page)
//
// Header slot:
//
//   off  size  field
//   0    8     magic "TSRAMETA"
//   8    4     format version (1)
//   12   4     page size (4096, 8192, 16384 or 32768)
//   16   8     image size in bytes
//   24   8     log offset (8192)
//   32   8     log size
//   40   8     segment offset (= log offset + log size)
//   48   8     page count of the segment
//   56   8     generation: bumped on every header write; the valid slot with the higher wins
//   64   8     log tail: offset, within the log region, of the first record recovery replays
//   72   8     log tail sequence: the sequence number that record must carry
//   80   16    image uuid (random at mkfs)
//   96   8     creation time, seconds since 1970
//   104  3988  zero
//   4092 4     CRC32C of bytes 0..<4092
import TesseraCore

#if canImport(Glibc)
import Glibc
#endif

/// Fixed sizes of a metadata image, decided at mkfs.
public struct Geometry: Sendable, Equatable {
    public static let slotSize = 4096
    public static let logOffset: UInt64 = 8192
    public static let supportedPageSizes = [4096, 8192, 16384, 32768]

    public var pageSize: Int
    public var logSize: UInt64
    public var pageCount: UInt64

    public var segmentOffset: UInt64 { Geometry.logOffset + logSize }
    public var imageSize: UInt64 { segmentOffset + pageCount * UInt64(pageSize) }

    /// The geometry mkfs picks for an image of `size` bytes: a log of 1/8 of the image,
    /// between 4 MiB and 256 MiB (never more than half), and the rest as segment.
    public static func forImage(size: UInt64, pageSize: Int = 16384, logSize: UInt64? = nil) throws -> Geometry {
        guard supportedPageSizes.contains(pageSize) else {
            throw TesseraError(.invalidArgument, "page size \(pageSize) is not one of \(supportedPageSizes)")
        }
        var log = logSize ?? min(max(size / 8, 4 << 20), 256 << 20)
        log = log / 4096 * 4096
        guard log >= 64 * 1024 else {
            throw TesseraError(.invalidArgument, "log size \(log) is below the 64 KiB minimum")
        }
        guard size > logOffset + log else {
            throw TesseraError(.invalidArgument, "image size \(size) leaves no room for a segment after a \(log)-byte log")
        }
        let pages = (size - logOffset - log) / UInt64(pageSize)
        guard pages >= 16 else {
            throw TesseraError(.invalidArgument, "image size \(size) is too small: at least 16 pages of \(pageSize) bytes are needed after the log")
        }
        return Geometry(pageSize: pageSize, logSize: log, pageCount: pages)
    }
}

/// One decoded header slot.
struct ImageHeader: Equatable {
    static let magic: [UInt8] = Array("TSRAMETA".utf8)
    static let version: UInt32 = 1

    var geometry: Geometry
    var generation: UInt64
    var logTail: UInt64
    var logTailSeq: UInt64
    var uuid: [UInt8]
    var created: UInt64

    func encode() -> [UInt8] {
        var b = ImageHeader.magic
        b.appendLE(ImageHeader.version)
        b.appendLE(UInt32(geometry.pageSize))
        b.appendLE(geometry.imageSize)
        b.appendLE(Geometry.logOffset)
        b.appendLE(geometry.logSize)
        b.appendLE(geometry.segmentOffset)
        b.appendLE(geometry.pageCount)
        b.appendLE(generation)
        b.appendLE(logTail)
        b.appendLE(logTailSeq)
        b += uuid
        b.appendLE(created)
        b += [UInt8](repeating: 0, count: Geometry.slotSize - 4 - b.count)
        b.appendLE(CRC32C.checksum(b))
        return b
    }

    /// Decodes one slot; the error says what is wrong with it.
    static func decode(_ b: [UInt8], path: String, slot: String) -> Result<ImageHeader, TesseraError> {
        func bad(_ why: String, _ code: TesseraError.Code = .corrupt) -> Result<ImageHeader, TesseraError> {
            .failure(TesseraError(code, "\(path): header slot \(slot): \(why)"))
        }
        guard b.count == Geometry.slotSize else { return bad("short read") }
        guard Array(b[0..<8]) == magic else {
            return bad(b.allSatisfy { $0 == 0 } ? "empty (all zeros)" : "bad magic: not a Tessera metadata image")
        }
        guard b.loadLE(at: 4092, as: UInt32.self) == CRC32C.checksum(Array(b[0..<4092])) else {
            return bad("checksum mismatch")
        }
        let version = b.loadLE(at: 8, as: UInt32.self)
        guard version == ImageHeader.version else {
            return bad("format version \(version) is newer than this build reads (\(ImageHeader.version))", .unsupportedVersion)
        }
        let geometry = Geometry(
            pageSize: Int(b.loadLE(at: 12, as: UInt32.self)),
            logSize: b.loadLE(at: 32, as: UInt64.self),
            pageCount: b.loadLE(at: 48, as: UInt64.self))
        guard Geometry.supportedPageSizes.contains(geometry.pageSize),
            b.loadLE(at: 24, as: UInt64.self) == Geometry.logOffset,
            geometry.logSize % 4096 == 0, geometry.logSize >= 65536,
            geometry.pageCount >= 16, geometry.pageCount < (1 << 40),
            b.loadLE(at: 40, as: UInt64.self) == geometry.segmentOffset,
            b.loadLE(at: 16, as: UInt64.self) == geometry.imageSize
        else { return bad("inconsistent geometry") }
        let header = ImageHeader(
            geometry: geometry,
            generation: b.loadLE(at: 56, as: UInt64.self),
            logTail: b.loadLE(at: 64, as: UInt64.self),
            logTailSeq: b.loadLE(at: 72, as: UInt64.self),
            uuid: Array(b[80..<96]),
            created: b.loadLE(at: 96, as: UInt64.self))
        guard header.logTail < geometry.logSize, header.logTail % 4096 == 0 else {
            return bad("log tail \(header.logTail) outside the log")
        }
        return .success(header)
    }

    /// Reads both slots and returns the valid one with the higher generation, plus the
    /// problems found with the other slot (reported by `check`).
    static func load(from file: ImageFile) throws -> (header: ImageHeader, slot: Int, problems: [String]) {
        let size = try file.size()
        guard size >= Geometry.logOffset else {
            throw TesseraError(.corrupt, "\(file.path): truncated: \(size) bytes is smaller than the two header slots")
        }
        var results: [Result<ImageHeader, TesseraError>] = []
        for (i, name) in ["A", "B"].enumerated() {
            let bytes = try file.read(fromAbsoluteOffset: UInt64(i * Geometry.slotSize), count: Geometry.slotSize)
            results.append(decode(bytes, path: file.path, slot: name))
        }
        var best: (ImageHeader, Int)?
        var problems: [String] = []
        for (i, r) in results.enumerated() {
            switch r {
            case .success(let h): if best == nil || h.generation > best!.0.generation { best = (h, i) }
            case .failure(let e): problems.append(e.message)
            }
        }
        guard let (header, slot) = best else {
            // A newer version is the more useful message when that is what we saw.
            let errors = results.compactMap { if case .failure(let e) = $0 { return e } else { return nil } }
            throw errors.first { $0.code == .unsupportedVersion } ?? TesseraError(.corrupt, problems.joined(separator: "; "))
        }
        if size < header.geometry.imageSize {
            throw TesseraError(.corrupt, "\(file.path): truncated: \(size) bytes, but the header describes \(header.geometry.imageSize)")
        }
        return (header, slot, problems)
    }
}
