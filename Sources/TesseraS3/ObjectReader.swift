// Reads ranges of an S3 object: one striped object, or the parts of a multipart one laid
// end to end.
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
        if parts.isEmpty { return try await cluster.read(record.fid, at: offset, length: n) }
        var out: [UInt8] = []
        out.reserveCapacity(n)
        var at = offset
        let end = offset + UInt64(n)
        // The last part starting at or before `at`.
        var i = parts.count - 1
        var lo = 0
        var hi = parts.count - 1
        while lo <= hi {
            let mid = (lo + hi) / 2
            if parts[mid].start <= at {
                i = mid
                lo = mid + 1
            } else {
                hi = mid - 1
            }
        }
        while at < end && i < parts.count {
            let (start, p) = parts[i]
            let inPart = at - start
            let take = Int(min(end - at, p.size - inPart))
            if take > 0 { out += try await cluster.read(p.fid, at: inPart, length: take) }
            at += UInt64(take)
            i += 1
        }
        return out
    }
}

extension ObjectReader {
    /// Reads `buffer.count` bytes at `offset` straight into the caller's buffer (a reply
    /// buffer), which must lie within the object and stay valid until the call returns.
    public func read(at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws {
        precondition(offset + UInt64(buffer.count) <= record.size, "read past the end of the object")
        if parts.isEmpty { return try await cluster.read(record.fid, at: offset, into: buffer) }
        var at = offset
        var filled = 0
        for (start, p) in parts where at < start + p.size && filled < buffer.count {
            guard start + p.size > at else { continue }
            let inPart = at - start
            let take = Int(min(UInt64(buffer.count - filled), p.size - inPart))
            try await cluster.read(p.fid, at: inPart, into: UnsafeMutableRawBufferPointer(rebasing: buffer[filled..<(filled + take)]))
            filled += take
            at += UInt64(take)
        }
    }
}

/// MD5 of `bytes`: ETags.
public func md5Digest(_ bytes: [UInt8]) -> [UInt8] { Array(Insecure.MD5.hash(data: bytes)) }
