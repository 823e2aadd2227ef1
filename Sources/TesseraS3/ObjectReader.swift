// Reads ranges of an S3 object: one striped object, the parts of a multipart one laid end
// to end, or the bytes kept in the record itself (a small file the mount wrote). Every read
// passes the object's (or part's) size: the S3 writer makes an object only on the servers
// its writes reach (ObjectWriter.swift).
import Crypto
import TesseraClient
import TesseraCore

public struct ObjectReader: Sendable {
    let cluster: Cluster
    public let record: ObjectRecord
    /// (start offset in the object, part), in order; empty for a single-part object.
    private let parts: [(start: UInt64, part: PartRecord)]

    init(cluster: Cluster, record: ObjectRecord, parts: [PartRecord]) {
        self.cluster = cluster
        self.record = record
        var at: UInt64 = 0
        var laid: [(UInt64, PartRecord)] = []
        for p in parts {
            laid.append((at, p))
            at += p.size
        }
        self.parts = laid
    }

    /// The preferred read size: one parity group.
    public var chunkSize: Int { cluster.layout.groupSize }

    /// Bytes [offset, offset + length) of the object, clipped to its size.
    public func read(at offset: UInt64, length: Int) async throws -> [UInt8] {
        guard offset < record.size else { return [] }
        let n = Int(min(UInt64(length), record.size - offset))
        if let data = record.inline { return Array(data[Int(offset)..<(Int(offset) + n)]) }
        if parts.isEmpty { return try await cluster.read(record.fid, at: offset, length: n, size: record.size) }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(n, 1), alignment: 16)
        defer { buffer.deallocate() }
        try await read(at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<n]))
        return Array(buffer[0..<n])
    }

    /// Reads `buffer.count` bytes at `offset` straight into the caller's buffer (a reply
    /// buffer), which must lie within the object and stay valid until the call returns.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws {
        precondition(offset + UInt64(buffer.count) <= record.size, "read past the end of the object")
        if let data = record.inline {
            data.withUnsafeBytes { buffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: $0[Int(offset)..<(Int(offset) + buffer.count)])) }
            return
        }
        if parts.isEmpty { return try await cluster.read(record.fid, at: offset, into: buffer, size: record.size) }
        var at = offset
        var filled = 0
        // Parts lie end to end: walk from the first that ends after `offset`.
        for (start, p) in parts where start + p.size > at && filled < buffer.count {
            let inPart = at - start
            let take = Int(min(UInt64(buffer.count - filled), p.size - inPart))
            try await cluster.read(p.fid, at: inPart, into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + take)]), size: p.size)
            filled += take
            at += UInt64(take)
        }
    }
}

/// MD5 of `bytes`: ETags.
public func md5Digest(_ bytes: [UInt8]) -> [UInt8] { Array(Insecure.MD5.hash(data: bytes)) }
