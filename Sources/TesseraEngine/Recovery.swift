// Recovery on open: replay every complete commit group from the log tail, in order.
//
// Replay writes each group's regions into the segment (idempotent: a region holds the bytes
// as they were after its transaction) and hands its data regions to `data` (the data image),
// flushes both, and only then records the new, empty log in the header. A crash anywhere in
// between leaves the old header, so the next open replays the same groups again. A record
// that is torn, corrupt, or carries an unexpected sequence number ends the log; what
// follows it is ignored.
import TesseraCore

#if canImport(Glibc)
import Glibc
#endif

enum Recovery {
    struct Result {
        var header: ImageHeader
        var slot: Int
        var groups: Int
    }

    static func replay(
        file: ImageFile, header: ImageHeader, slot: Int,
        data: ((UInt64, UnsafeRawBufferPointer) throws -> Void)?, flushData: (() throws -> Void)?
    ) throws -> Result {
        let g = header.geometry
        var position = header.logTail
        var seq = header.logTailSeq
        var groups = 0
        var first = [UInt8](repeating: 0, count: LogRecord.align)
        let segmentSize = g.pageCount * UInt64(g.pageSize)
        while groups < Int(g.logSize) / LogRecord.align {
            guard let (at, record) = try readRecord(file, g, seq: seq, at: position, scratch: &first) else { break }
            var placer = RegionPlacer()
            try record.bytes.withUnsafeBytes { bytes in
                try LogRecord.forEachRegion(bytes, record.header, segmentSize: segmentSize, data: data) { placer.add(offset: $0, bytes: $1) }
                try placer.write(to: file, segmentOffset: g.segmentOffset)
            }
            groups += 1
            seq += 1
            position = at + UInt64(record.header.recordLength)
            if position == g.logSize { position = 0 }
        }
        guard groups > 0 || position != header.logTail else {
            return Result(header: header, slot: slot, groups: 0)
        }
        try file.flush()
        try flushData?()
        var next = header
        next.generation += 1
        next.logTail = position
        next.logTailSeq = seq
        try file.write(next.encode(), atAbsoluteOffset: UInt64((slot ^ 1) * Geometry.slotSize))
        try file.flush()
        return Result(header: next, slot: slot ^ 1, groups: groups)
    }

    private struct Record {
        var header: LogRecord.Header
        var bytes: [UInt8]
    }

    /// The record with sequence `seq` at `position`, or at 0 when the writer wrapped.
    private static func readRecord(
        _ file: ImageFile, _ g: Geometry, seq: UInt64, at position: UInt64, scratch: inout [UInt8]
    ) throws -> (UInt64, Record)? {
        for at in position == 0 ? [UInt64(0)] : [position, 0] {
            if let r = try readRecord(file, g, seq: seq, exactlyAt: at, scratch: &scratch) { return (at, r) }
        }
        return nil
    }

    private static func readRecord(
        _ file: ImageFile, _ g: Geometry, seq: UInt64, exactlyAt at: UInt64, scratch: inout [UInt8]
    ) throws -> Record? {
        guard at + UInt64(LogRecord.align) <= g.logSize else { return nil }
        try scratch.withUnsafeMutableBytes { try file.read(fromAbsoluteOffset: Geometry.logOffset + at, into: $0) }
        guard let h = scratch.withUnsafeBytes({ LogRecord.header($0, expecting: seq, logSize: g.logSize) }),
            at + UInt64(h.recordLength) <= g.logSize
        else { return nil }
        var bytes = scratch
        if h.recordLength > scratch.count {
            bytes += try file.read(fromAbsoluteOffset: Geometry.logOffset + at + UInt64(scratch.count), count: h.recordLength - scratch.count)
        }
        guard bytes.withUnsafeBytes({ LogRecord.commitIsValid($0, h) }) else { return nil }
        return Record(header: h, bytes: bytes)
    }
}

extension Engine {
    /// Creates a new metadata image of `size` bytes at `path` (which must not exist): both
    /// header slots, a zeroed log, the segment root page and an empty meta-b-tree.
    public static func format(path: String, size: UInt64, pageSize: Int = 16384, logSize: UInt64? = nil) throws -> Geometry {
        let g = try Geometry.forImage(size: size, pageSize: pageSize, logSize: logSize)
        let file = try ImageFile(path: path, create: true)
        do {
            // Sparse: the image grows as it is written. The log's first step is zeroed (its
            // blocks written, so a log write updates no file metadata); the commit pipeline
            // zeroes the rest ahead of itself on its first pass.
            try file.setLength(g.imageSize)
            try CommitPipeline.zero(file, from: Geometry.logOffset, count: min(g.logSize, CommitPipeline.logZeroStep))
            try Store.formatSegment(file, g)
            var uuid = [UInt8](repeating: 0, count: 16)
            for i in uuid.indices { uuid[i] = UInt8.random(in: 0...255) }
            var ts = timespec()
            clock_gettime(CLOCK_REALTIME, &ts)
            let header = ImageHeader(geometry: g, generation: 1, logTail: 0, logTailSeq: 1, uuid: uuid, created: UInt64(ts.tv_sec))
            try file.flush()
            try file.write(header.encode(), atAbsoluteOffset: 0)
            try file.write(header.encode(), atAbsoluteOffset: UInt64(Geometry.slotSize))
            try file.flush()
        } catch {
            unlink(path)
            throw error
        }
        return g
    }
}
