// The data image (`data.img`): a header, then fixed-size blocks that hold units of component
// objects. Which block holds what lives in the engine (see IOService); this file only
// formats, opens and checks the image.
//
// Header (4096 bytes; docs/FORMAT.md, "Data image"); little-endian:
//
//   off  size  field
//   0    8     magic "TSRADATA"
//   8    4     format version (1)
//   12   4     block size (4096)
//   16   8     image size
//   24   8     block count
//   32   8     offset of block 0 (4096)
//   40   16    image uuid (random at mkfs)
//   56   4036  zero
//   4092 4     CRC32C of bytes 0..<4092
import Foundation
import TesseraCore
import TesseraEngine

#if canImport(Glibc)
import Glibc
#endif

public struct DataImageHeader: Sendable, Equatable {
    public static let magic: [UInt8] = Array("TSRADATA".utf8)
    public static let version: UInt32 = 1
    public static let headerSize = 4096

    public var blockSize: Int
    public var blockCount: UInt64
    public var uuid: [UInt8]

    public var firstBlockOffset: UInt64 { UInt64(DataImageHeader.headerSize) }
    public var imageSize: UInt64 { firstBlockOffset + blockCount * UInt64(blockSize) }

    func encode() -> [UInt8] {
        var b = DataImageHeader.magic
        b.appendLE(DataImageHeader.version)
        b.appendLE(UInt32(blockSize))
        b.appendLE(imageSize)
        b.appendLE(blockCount)
        b.appendLE(firstBlockOffset)
        b += uuid
        b += [UInt8](repeating: 0, count: DataImageHeader.headerSize - 4 - b.count)
        b.appendLE(CRC32C.checksum(b))
        return b
    }

    static func decode(_ b: [UInt8], path: String, fileSize: UInt64) throws -> DataImageHeader {
        func bad(_ why: String, _ code: TesseraError.Code = .corrupt) -> TesseraError { TesseraError(code, "\(path): \(why)") }
        guard b.count == headerSize, Array(b[0..<8]) == magic else { throw bad("bad magic: not a Tessera data image") }
        guard b.loadLE(at: 4092, as: UInt32.self) == CRC32C.checksum(Array(b[0..<4092])) else { throw bad("header checksum mismatch") }
        let version = b.loadLE(at: 8, as: UInt32.self)
        guard version == DataImageHeader.version else {
            throw bad("format version \(version) is newer than this build reads (\(DataImageHeader.version))", .unsupportedVersion)
        }
        let h = DataImageHeader(blockSize: Int(b.loadLE(at: 12, as: UInt32.self)), blockCount: b.loadLE(at: 24, as: UInt64.self), uuid: Array(b[40..<56]))
        guard h.blockSize == 4096, h.blockCount > 0, h.blockCount < 1 << 40,
            b.loadLE(at: 16, as: UInt64.self) == h.imageSize, b.loadLE(at: 32, as: UInt64.self) == h.firstBlockOffset
        else { throw bad("inconsistent geometry") }
        guard fileSize >= h.imageSize else { throw bad("truncated: \(fileSize) bytes, but the header describes \(h.imageSize)") }
        return h
    }
}

public enum DataImage {
    /// Creates a data image of `size` bytes at `path` (which must not exist).
    @discardableResult
    public static func format(path: String, size: UInt64) throws -> DataImageHeader {
        let blocks = size / 4096
        guard blocks > 1 else { throw TesseraError(.invalidArgument, "data image size \(size) is too small") }
        var uuid = [UInt8](repeating: 0, count: 16)
        for i in uuid.indices { uuid[i] = UInt8.random(in: 0...255) }
        let header = DataImageHeader(blockSize: 4096, blockCount: blocks - 1, uuid: uuid)
        let file = try ImageFile(path: path, create: true)
        do {
            try file.setLength(header.imageSize)  // sparse: grows as blocks are written
            try file.write(header.encode(), atAbsoluteOffset: 0)
            try file.flush()
        } catch {
            unlink(path)
            throw error
        }
        return header
    }

    /// Opens and checks a data image; the error names the file and the problem.
    public static func open(path: String, faults: FaultInjector? = nil) throws -> (ImageFile, DataImageHeader) {
        let file = try ImageFile(path: path, faults: faults)
        let size = try file.size()
        guard size >= UInt64(DataImageHeader.headerSize) else {
            throw TesseraError(.corrupt, "\(path): truncated: \(size) bytes is smaller than the header")
        }
        let header = try DataImageHeader.decode(try file.read(fromAbsoluteOffset: 0, count: DataImageHeader.headerSize), path: path, fileSize: size)
        return (file, header)
    }
}

/// An open data image: block reads and writes, and flushes that are skipped when nothing
/// they must cover was written since the last one. Writes whose bytes are journaled in the
/// engine's log (see IOService) need a flush only before that log space is reused
/// (`flushIfDirty`, the engine's beforeRelease hook); other writes need one before the group
/// that maps them is LOGGED (`flushUnjournaled`, its beforeLog hook).
public final class DataFile: @unchecked Sendable {
    // SAFETY: `dirty` and `unjournaled` are touched only under `lock`; `file` is thread-safe.
    public let file: ImageFile
    public let header: DataImageHeader
    /// The image opened again for large reads, O_DIRECT where the file system allows it,
    /// else with the kernel's read-ahead off. A client streaming an object reads ahead
    /// itself and keeps what it read; a server's next blocks after a unit are as likely a
    /// parity unit no reader needs, or another object's, as the next unit of this one; and
    /// passing the page cache by saves a copy and the cache's bookkeeping, which on two
    /// cores held a streaming read back. (Read-ahead state belongs to an open file, so
    /// `file` keeps its own for small reads, where the next blocks are often the next
    /// small file a tree copy wrote.) An O_DIRECT read of blocks written since the last
    /// flush writes them out first, so it reads what was written.
    private let largeReads: ImageFile
    private let largeReadsDirect: Bool
    /// Reads of at least this many bytes go through `largeReads`.
    static let largeRead = 256 << 10
    /// O_DIRECT buffers and lengths are multiples of this.
    public static let directAlignment = 4096
    private let lock = NSLock()
    /// Written since the last flush.
    private var dirty = false
    /// Written since the last flush by a write whose bytes are not in the log.
    private var unjournaled = false

    public init(path: String, faults: FaultInjector? = nil) throws {
        (file, header) = try DataImage.open(path: path, faults: faults)
        file.adviseSequential()
        if let direct = try? ImageFile(path: path, writable: false, lock: false, direct: true, faults: faults) {
            largeReads = direct
            largeReadsDirect = true
        } else {
            largeReads = try ImageFile(path: path, writable: false, lock: false, faults: faults)
            largeReads.adviseRandom()
            largeReadsDirect = false
        }
    }

    public var path: String { file.path }

    /// Sets the engine hooks this image needs (ServerNode.open, tessera check): a flush of
    /// unjournaled writes before a group is logged, a flush of everything before log space
    /// is released, and the write-back of journaled blocks at recovery.
    public func hook(into options: inout EngineOptions) {
        options.commit.beforeLog = { [self] in try flushUnjournaled() }
        options.commit.beforeRelease = { [self] in try flushIfDirty() }
        options.replayData = { [self] in try replay(offset: $0, bytes: $1) }
    }

    /// The byte offset of `block` in the image.
    func offset(ofBlock block: UInt64) -> UInt64 { header.firstBlockOffset + block * UInt64(header.blockSize) }

    func write(_ bytes: UnsafeRawBufferPointer, atBlock block: UInt64, journaled: Bool) throws {
        try file.write(bytes, atAbsoluteOffset: offset(ofBlock: block))
        lock.withLock {
            dirty = true
            unjournaled = unjournaled || !journaled
        }
    }

    /// Writes journaled bytes back at recovery (the engine's replayData hook). The offset
    /// and length come from the log: whole blocks inside the image, or a corruption error.
    public func replay(offset: UInt64, bytes: UnsafeRawBufferPointer) throws {
        let bs = UInt64(header.blockSize)
        guard offset >= header.firstBlockOffset, offset % bs == 0, UInt64(bytes.count) % bs == 0,
            offset <= header.imageSize, UInt64(bytes.count) <= header.imageSize - offset
        else {
            throw TesseraError(.corrupt, "\(path): the log holds \(bytes.count) bytes for offset \(offset), which are not whole blocks of this \(header.imageSize)-byte image")
        }
        try file.write(bytes, atAbsoluteOffset: offset)
        lock.withLock { dirty = true }
    }

    func read(block: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        let offset = offset(ofBlock: block)
        let a = Self.directAlignment
        let aligned = Int(bitPattern: buffer.baseAddress) % a == 0 && buffer.count % a == 0 && offset % UInt64(a) == 0
        let large = buffer.count >= Self.largeRead && (aligned || !largeReadsDirect)
        try (large ? largeReads : file).read(fromAbsoluteOffset: offset, into: buffer)
    }

    /// Flushes the image if anything was written since the last flush.
    public func flushIfDirty() throws {
        try flush { $0.dirty }
    }

    /// Flushes the image if a write whose bytes are not journaled was made since the last
    /// flush.
    public func flushUnjournaled() throws {
        try flush { $0.unjournaled }
    }

    /// A flush covers every write that returned before it starts: both marks are cleared
    /// first, and a write that finishes later sets them again.
    private func flush(if needed: (DataFile) -> Bool) throws {
        let go = lock.withLock { () -> Bool in
            guard needed(self) else { return false }
            dirty = false
            unjournaled = false
            return true
        }
        if go { try file.flush() }
    }

    public func close() {
        largeReads.close()
        file.close()
    }
}
