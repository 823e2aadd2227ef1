// IOS: units of component objects (cobs) on the data image, mapped by extents kept in the
// engine, written redirect-on-write, checked by CRC32C on every read.
//
// Catalogues (reserved fids, hi = UInt64.max; docs/FORMAT.md, "IO service"):
//   1 free extents:  key = first block (u64 BE)          value = block count (u64 LE)
//   2 extent map:    key = cob fid (16 B BE) ++ byte offset (u64 BE, block-aligned)
//                    value = first block (u64 LE), block count (u32 LE), one CRC32C (u32 LE) per block
//   3 pending free:  key = first block (u64 BE)          value = block count (u64 LE)
//   4 cobs:          key = cob fid (16 B BE)              value = u8 version (1)
//
// A cob exists from its CREATE (or first WRITE) until a FREE of its whole range deletes it.
// A READ of a cob that does not exist fails `notFound`, never zeros: a freed object read by
// mistake is an error; holes inside a cob that exists read as zeros. Images made before the
// cobs catalogue get one at open, with a record for every cob their extent map holds.
//
// A write puts its data into newly chosen free blocks, then one transaction takes them off
// the free list, switches the map, and moves the blocks it replaced to "pending free".
//
// The new blocks are durable when the group that maps them is LOGGED, one of two ways:
// - a write of up to `journalLimit` bytes also journals them in that group (a data region
//   of its log record), so a sync-wait write or an fsync costs one flush, the log's, and
//   the data image is flushed later, before that log space is reused (beforeRelease);
// - a larger write is not journaled (it would cost the log its bandwidth twice over): the
//   engine's beforeLog hook flushes the data image before the group is LOGGED.
//
// Pending-free blocks return to the free list only after the group that freed them is
// placed. By then every group that journaled bytes for them (all earlier) is placed too, so
// recovery never writes stale journaled bytes over a block that was given out again; and
// a crash never finds a mapped block overwritten.
import Foundation
import TesseraCore
import TesseraEngine

public final class IOService: @unchecked Sendable {
    // SAFETY of @unchecked Sendable: `reserved`, `pendingQueue` and the counters are touched
    // only under `lock`; the engine and the data file are thread-safe.
    /// The largest byte offset a cob may hold (2^60): offsets and lengths are checked against
    /// it, so no computation on them can overflow.
    public static let maxOffset: UInt64 = 1 << 60
    /// Writes of up to this many bytes (in whole blocks) are journaled in the log.
    public static let journalLimit = 128 << 10

    static let freeFid = Fid(hi: .max, lo: 1)
    static let mapFid = Fid(hi: .max, lo: 2)
    static let pendingFid = Fid(hi: .max, lo: 3)
    static let cobsFid = Fid(hi: .max, lo: 4)
    /// A cob record's value: its version byte.
    static let cobRecord: [UInt8] = [1]
    /// While an image made before the cobs catalogue is given its records: a 1-byte key no
    /// cob record has (theirs are 16 bytes), removed in the last transaction of the pass.
    static let migratingKey: [UInt8] = [0]
    /// Cobs made per transaction (CREATE, the migration).
    public static let maxCreate = 1024

    public let engine: Engine
    public let data: DataFile
    let header: DataImageHeader
    let blockSize: Int
    /// How errors name this server ("on server 2"), or "" when it has no number.
    let serverLabel: String
    /// Longest extent in blocks: its CRCs must fit in one engine value.
    let maxExtentBlocks: Int
    private let lock = NSLock()
    /// Blocks chosen for writes whose transactions have not closed yet.
    private var reserved: [(start: UInt64, count: UInt64)] = []
    /// Blocks moved to pending free, with the transaction that moved them.
    private var pendingQueue: [(tx: TxId, pieces: [(start: UInt64, count: UInt64)])] = []

    public private(set) var bytesWritten: UInt64 = 0
    public private(set) var bytesRead: UInt64 = 0
    /// Blocks a read found failing their CRC32C, and how many of them a write has replaced
    /// since (a client's self-healing read, a scrub or a repair rewriting them).
    public private(set) var checksumFailures: UInt64 = 0
    /// Units a repair walk checked here (CHECKSUMS with verify), and their bytes read.
    public private(set) var unitsVerified: UInt64 = 0
    public private(set) var bytesVerified: UInt64 = 0
    public private(set) var blocksHealed: UInt64 = 0
    /// The blocks (cob, offset) that failed and are not rewritten yet; bounded.
    private var badBlocks: Set<BadBlock> = []
    private struct BadBlock: Hashable {
        let cob: Fid
        let offset: UInt64
    }

    /// The service over an engine and a data image. First use creates the catalogues (all
    /// blocks free); every later open returns pending-free blocks, all LOGGED by then.
    /// The engine must have been opened with the data file's hooks, as `ServerNode.open`
    /// sets them: `flushUnjournaled` before a group is logged, `flushIfDirty` before log
    /// space is released, and `replay` for journaled blocks at recovery.
    /// `server` is its number in the cluster, for error messages.
    public init(engine: Engine, data: DataFile, server: Int? = nil) throws {
        self.engine = engine
        self.data = data
        serverLabel = server.map { " on server \($0)" } ?? ""
        let header = data.header
        self.header = header
        blockSize = header.blockSize
        maxExtentBlocks = min(256, (engine.limits.maxValue - 12) / 4)
        let created = try engine.write { t -> Bool in
            guard try t.createCatalogue(IOService.freeFid) else { return false }
            try t.createCatalogue(IOService.mapFid)
            try t.createCatalogue(IOService.pendingFid)
            try t.createCatalogue(IOService.cobsFid)
            try t.put(IOService.freeFid, be(0), le(header.blockCount))
            return true
        }.result
        if !created {
            try releasePending(all: true)
            try addCobsCatalogue()
        }
    }

    /// An image made before the cobs catalogue: makes it, with the migrating marker, then a
    /// record for every cob the extent map holds, `maxCreate` per transaction, and drops the
    /// marker in the last one. An open that finds the marker (a crash midway) runs the pass
    /// again; its puts are idempotent.
    private func addCobsCatalogue() throws {
        let made = try engine.write { t -> Bool in
            guard try t.createCatalogue(IOService.cobsFid) else { return false }
            try t.put(IOService.cobsFid, IOService.migratingKey, [])
            return true
        }.result
        guard try made || engine.get(IOService.cobsFid, IOService.migratingKey) != nil else { return }
        var batch: [[UInt8]] = []
        var after: [UInt8]? = nil
        func put(_ cobs: [[UInt8]], last: Bool) throws {
            try engine.write(credit: engine.credit(operations: cobs.count + 1, payloadBytes: 20 * cobs.count)) { t in
                for c in cobs { try t.put(IOService.cobsFid, c, IOService.cobRecord) }
                if last { try t.delete(IOService.cobsFid, IOService.migratingKey) }
            }
        }
        // One seek per cob: past the last key a cob can have (its fid, then offset 2^64-1).
        while let (k, _) = try engine.scan(IOService.mapFid, from: after, inclusive: after == nil, limit: 1).first {
            guard k.count == 24 else { throw TesseraError(.corrupt, "extent map record has a \(k.count)-byte key") }
            let cob = Array(k[0..<16])
            batch.append(cob)
            if batch.count == IOService.maxCreate {
                try put(batch, last: false)
                batch.removeAll()
            }
            after = cob + [UInt8](repeating: 0xFF, count: 8)
        }
        try put(batch, last: true)
    }

    // MARK: Existence

    /// Makes each of `cobs` exist; returns per cob whether it was made (false: it existed),
    /// and the transaction. At most `maxCreate` cobs.
    public func create(cobs: [Fid]) throws -> (made: [Bool], tx: TxId) {
        guard cobs.count <= IOService.maxCreate else {
            throw TesseraError(.tooLarge, "CREATE of \(cobs.count) cobs exceeds the \(IOService.maxCreate)-cob limit")
        }
        guard !cobs.isEmpty else { return ([], engine.loggedThrough) }
        let r = try engine.write(credit: engine.credit(operations: cobs.count, payloadBytes: 20 * cobs.count)) { t in
            try cobs.map { try createIfAbsent(t, $0) }
        }
        return (r.result, r.tx)
    }

    /// Whether `cob` exists (its record, checked).
    public func exists(_ cob: Fid) throws -> Bool {
        guard let v = try engine.get(IOService.cobsFid, cob.bytes) else { return false }
        try checkCobRecord(cob, v)
        return true
    }

    private func createIfAbsent(_ t: Transaction, _ cob: Fid) throws -> Bool {
        if let v = try t.get(IOService.cobsFid, cob.bytes) {
            try checkCobRecord(cob, v)
            return false
        }
        try t.put(IOService.cobsFid, cob.bytes, IOService.cobRecord)
        return true
    }

    /// A cob record read from meta.img: untrusted.
    private func checkCobRecord(_ cob: Fid, _ v: [UInt8]) throws {
        guard let version = v.first else { throw TesseraError(.corrupt, "cob \(cob)\(serverLabel): empty cob record") }
        guard version == 1 else { throw TesseraError(.unsupportedVersion, "cob \(cob)\(serverLabel): cob record version \(version); this build reads version 1") }
    }

    private func notFound(_ cob: Fid) -> TesseraError {
        TesseraError(.notFound, "cob \(cob) does not exist\(serverLabel): freed or never written")
    }

    /// Bytes of free blocks: the free list plus blocks waiting in pending free.
    public func freeBytes() throws -> UInt64 {
        var blocks: UInt64 = 0
        for fid in [IOService.freeFid, IOService.pendingFid] {
            try engine.forEach(fid, from: nil) { _, v in
                if v.count == 8 { blocks += v.loadUnaligned(as: UInt64.self).littleEndian }
                return true
            }
        }
        return blocks * UInt64(blockSize)
    }

    // MARK: Write

    /// Writes `bytes` at `offset` of `cob`. Returns the transaction that maps them.
    public func write(cob: Fid, offset: UInt64, bytes: [UInt8]) throws -> TxId {
        try checkRange(offset, UInt64(bytes.count))
        guard !bytes.isEmpty else { return engine.loggedThrough }
        let bs = UInt64(blockSize)
        let first = offset / bs * bs
        let end = offset + UInt64(bytes.count)
        let last = (end + bs - 1) / bs * bs
        let count = Int((last - first) / bs)
        var buffer: [UInt8]
        if offset == first && end == last {
            buffer = bytes  // whole blocks: no copy
        } else {
            // Partial blocks at either edge keep their other bytes: read, then overlay.
            buffer = [UInt8](repeating: 0, count: count * blockSize)
            if offset != first {
                let old = try currentBlock(cob, at: first)
                buffer.replaceSubrange(0..<blockSize, with: old)
            }
            if end != last && (count > 1 || offset == first) {
                let old = try currentBlock(cob, at: last - bs)
                buffer.replaceSubrange((count - 1) * blockSize..<count * blockSize, with: old)
            }
            buffer.replaceSubrange(Int(offset - first)..<Int(end - first), with: bytes)
        }
        let crcs = buffer.withUnsafeBytes { b in (0..<count).map { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: b[($0 * blockSize)..<(($0 + 1) * blockSize)])) } }

        try releasePending(all: false)
        let pieces = try reserveWaitingForPending(UInt64(count))
        defer { unreserve(pieces) }
        // One transaction: take the blocks off the free list, unmap what they replace, map them.
        var extents: [(offset: UInt64, block: UInt64, count: Int, crcs: ArraySlice<UInt32>)] = []
        var index = 0
        var fileOffset = first
        for p in pieces {
            var left = Int(p.count)
            var block = p.start
            while left > 0 {
                let n = min(left, maxExtentBlocks)
                extents.append((fileOffset, block, n, crcs[index..<(index + n)]))
                index += n
                fileOffset += UInt64(n) * bs
                block += UInt64(n)
                left -= n
            }
        }
        let base = engine.credit(operations: 9 + 4 * extents.count, payloadBytes: count * 4 + 64 * extents.count + 20)
        // Journaled if small, and if the transaction still fits the log (a tiny log's may not).
        let logged = buffer.count + Engine.journalRegionOverhead * pieces.count
        let journaled = buffer.count <= IOService.journalLimit && base + logged <= engine.maxTransactionBytes
        let credit = base + (journaled ? logged : 0)
        // Each piece's first block and its bytes in `buffer`.
        var slices: [(block: UInt64, bytes: Range<Int>)] = []
        for p in pieces {
            let at = slices.last?.bytes.upperBound ?? 0
            slices.append((p.start, at..<(at + Int(p.count) * blockSize)))
        }
        for s in slices {
            try buffer.withUnsafeBytes { try data.write(UnsafeRawBufferPointer(rebasing: $0[s.bytes]), atBlock: s.block, journaled: journaled) }
        }
        lock.withLock { bytesWritten += UInt64(bytes.count) }
        let (freed, tx) = try engine.write(credit: credit) { t in
            for s in slices where journaled {
                try buffer.withUnsafeBytes { try t.journal(UnsafeRawBufferPointer(rebasing: $0[s.bytes]), at: data.offset(ofBlock: s.block)) }
            }
            for p in pieces { try takeFree(t, p.start, p.count) }
            _ = try createIfAbsent(t, cob)
            let freed = try unmap(t, cob: cob, from: first, to: last)
            for e in extents { try t.put(IOService.mapFid, mapKey(cob, e.offset), extentValue(e.block, Array(e.crcs))) }
            return freed
        }
        queuePending(freed, tx)
        noteRewritten(cob, first, last)
        return tx
    }

    /// Unmaps whole blocks of `cob` in [from, to) (block-aligned); their blocks go to pending
    /// free, and are returned.
    private func unmap(_ t: Transaction, cob: Fid, from: UInt64, to: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        try unmap(t, cob: cob, from: from, to: to, limit: .max).freed
    }

    /// Unmaps at most `limit` extents; `next` is where the unmapping stopped (`to` when done).
    private func unmap(_ t: Transaction, cob: Fid, from: UInt64, to: UInt64, limit: Int) throws -> (freed: [(start: UInt64, count: UInt64)], next: UInt64) {
        let bs = UInt64(blockSize)
        var freed: [(start: UInt64, count: UInt64)] = []
        var found = try extents(t, cob: cob, from: from, to: to, limit: limit == .max ? .max : limit + 1)
        var next = to
        if found.count > limit {
            next = found[limit].offset
            found.removeLast(found.count - limit)
        }
        let to = next
        for e in found {
            let eEnd = e.offset + UInt64(e.crcs.count) * bs
            try t.delete(IOService.mapFid, mapKey(cob, e.offset))
            // Keep the parts outside [from, to).
            if e.offset < from {
                let keep = Int((from - e.offset) / bs)
                try t.put(IOService.mapFid, mapKey(cob, e.offset), extentValue(e.block, Array(e.crcs[0..<keep])))
            }
            if eEnd > to {
                let skip = Int((to - e.offset) / bs)
                try t.put(IOService.mapFid, mapKey(cob, to), extentValue(e.block + UInt64(skip), Array(e.crcs[skip...])))
            }
            let lo = max(from, e.offset)
            let hi = min(to, eEnd)
            let start = e.block + (lo - e.offset) / bs
            try t.put(IOService.pendingFid, be(start), le((hi - lo) / bs))
            freed.append((start, (hi - lo) / bs))
        }
        return (freed, next)
    }

    private func queuePending(_ freed: [(start: UInt64, count: UInt64)], _ tx: TxId) {
        guard !freed.isEmpty else { return }
        lock.withLock { pendingQueue.append((tx, freed)) }
    }

    // MARK: Read

    /// Reads `length` bytes at `offset`; holes read as zeros. A block whose CRC32C does not
    /// match is an error, never data; so is a cob that does not exist (`notFound`).
    public func read(cob: Fid, offset: UInt64, length: Int) throws -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: length) { typed, initialized in
            try read(cob: cob, offset: offset, into: UnsafeMutableRawBufferPointer(typed))
            initialized = length
        }
    }

    /// Reads `buffer.count` bytes at `offset` into `buffer` (a server's outgoing frame), with
    /// the same checks. On a throw the buffer's contents are unspecified.
    ///
    /// Existence is checked after the data is read, and only if the range held a hole: a
    /// range all of whose blocks are mapped belongs to a cob that exists, or to one whose
    /// delete has begun and not yet unmapped it (the read then comes before the delete). A
    /// delete removes the record in its first transaction, before it unmaps anything, so a
    /// read that raced it and found some of the range unmapped (zeros) sees the record gone
    /// and fails, as does any read of a cob deleted or never made (all holes).
    public func read(cob: Fid, offset: UInt64, into out: UnsafeMutableRawBufferPointer) throws {
        try checkRange(offset, UInt64(out.count))
        let holes: Bool
        do {
            holes = try readData(cob: cob, offset: offset, into: out)
        } catch let e as TesseraError where e.code == .checksum {
            // A checksum error on a cob deleted meanwhile (its blocks given out again).
            guard try exists(cob) else { throw notFound(cob) }
            throw e
        }
        guard try !holes || exists(cob) else { throw notFound(cob) }
    }

    /// The bytes block `at` of `cob` holds now, for a write that covers part of it: zeros
    /// if it is a hole, or the cob does not exist yet (the write makes it).
    private func currentBlock(_ cob: Fid, at: UInt64) throws -> [UInt8] {
        try [UInt8](unsafeUninitializedCapacity: blockSize) { typed, initialized in
            _ = try readData(cob: cob, offset: at, into: UnsafeMutableRawBufferPointer(typed))
            initialized = blockSize
        }
    }

    /// Reads the range's bytes (zeros in holes); whether any of it was a hole.
    private func readData(cob: Fid, offset: UInt64, into out: UnsafeMutableRawBufferPointer) throws -> Bool {
        let length = out.count
        guard length > 0 else { return true }
        let bs = UInt64(blockSize)
        let end = offset + UInt64(length)
        var found = try extents(nil, cob: cob, from: offset / bs * bs, to: end)
        // A concurrent write may remap the range, and its freed blocks be reused, between the
        // map lookup and the data read: a checksum error with a changed map is retried.
        for _ in 0..<3 {
            do { return try read(found, cob: cob, offset: offset, into: out) } catch let e as TesseraError where e.code == .checksum {
                let again = try extents(nil, cob: cob, from: offset / bs * bs, to: end)
                guard again.map(\.block) != found.map(\.block) || again.map(\.offset) != found.map(\.offset) else { throw e }
                found = again
            }
        }
        return try read(found, cob: cob, offset: offset, into: out)
    }

    private func read(_ found: [Extent], cob: Fid, offset: UInt64, into out: UnsafeMutableRawBufferPointer) throws -> Bool {
        let length = out.count
        let bs = UInt64(blockSize)
        let end = offset + UInt64(length)
        // Filled in offset order with no zeroing first: only the holes between extents are
        // cleared (a unit-sized reply is mostly data, and a memset of it costs a copy's time).
        var filled = offset
        var holes = false
        func zero(to: UInt64) {
            if to > filled {
                UnsafeMutableRawBufferPointer(rebasing: out[Int(filled - offset)..<Int(to - offset)]).initializeMemory(as: UInt8.self, repeating: 0)
                holes = true
            }
            filled = max(filled, to)
        }
        for e in found.sorted(by: { $0.offset < $1.offset }) {
            let lo = max(offset, e.offset)
            let hi = min(end, e.offset + UInt64(e.crcs.count) * bs)
            guard lo < hi else { continue }
            zero(to: lo)
            let firstBlock = Int((lo - e.offset) / bs)
            let lastBlock = Int((hi - 1 - e.offset) / bs)
            let n = lastBlock - firstBlock + 1
            let blocksAt = e.offset + UInt64(firstBlock) * bs
            // Whole blocks inside the result are read in place; blocks cut by its edges go
            // through a scratch buffer, since the checksum covers the whole block.
            let inPlace = blocksAt >= offset && blocksAt + UInt64(n) * bs <= end
            let scratch = inPlace ? nil : UnsafeMutableRawBufferPointer.allocate(byteCount: n * blockSize, alignment: DataFile.directAlignment)
            defer { scratch?.deallocate() }
            let target = scratch ?? UnsafeMutableRawBufferPointer(rebasing: out[Int(blocksAt - offset)..<(Int(blocksAt - offset) + n * blockSize)])
            try data.read(block: e.block + UInt64(firstBlock), into: target)
            for i in 0..<n where CRC32C.checksum(UnsafeRawBufferPointer(rebasing: target[(i * blockSize)..<((i + 1) * blockSize)])) != e.crcs[firstBlock + i] {
                let at = blocksAt + UInt64(i) * bs
                noteBad(cob, at)
                throw TesseraError(.checksum, "cob \(cob) bytes \(at)..<\(at + bs): block \(e.block + UInt64(firstBlock + i)) of the data image failed its CRC32C check")
            }
            if let scratch {
                let from = Int(lo - blocksAt)
                UnsafeMutableRawBufferPointer(rebasing: out[Int(lo - offset)..<Int(hi - offset)])
                    .copyMemory(from: UnsafeRawBufferPointer(rebasing: scratch[from..<(from + Int(hi - lo))]))
            }
            filled = hi
        }
        zero(to: end)
        lock.withLock { bytesRead += UInt64(length) }
        return holes
    }

    // MARK: What a cob holds (for repair: REPLICATION.md, "Object data")

    /// Up to `limit` cobs that exist, in fid order after `after`.
    public func cobs(after: Fid?, limit: Int) throws -> [Fid] {
        var out: [Fid] = []
        var cursor = after?.bytes
        while out.count < limit {
            let batch = try engine.scan(IOService.cobsFid, from: cursor, inclusive: cursor == nil, limit: 256)
            // 16-byte keys only: not the migration marker.
            for (k, _) in batch where k.count == 16 && out.count < limit {
                if let f = Fid(bytes: k) { out.append(f) }
            }
            guard batch.count == 256, let last = batch.last?.key else { break }
            cursor = last
        }
        return out
    }

    /// Up to `limit` mapped ranges of `cob` that start at or after `from`, in offset order,
    /// adjacent extents merged; `notFound` if the cob does not exist.
    public func mappedRanges(cob: Fid, from: UInt64, limit: Int) throws -> [ByteRange] {
        guard try exists(cob) else { throw notFound(cob) }
        let bs = UInt64(blockSize)
        var out: [ByteRange] = []
        var cursor = mapKey(cob, from)
        var inclusive = true
        scanning: while true {
            let batch = try engine.scan(IOService.mapFid, from: cursor, inclusive: inclusive, limit: 64)
            for (k, v) in batch {
                guard Array(k[0..<min(16, k.count)]) == cob.bytes else { break scanning }
                let e = try decodeExtent(k, v)
                let length = UInt64(e.crcs.count) * bs
                if let last = out.last, last.end == e.offset {
                    out[out.count - 1].length += length
                } else {
                    guard out.count < limit else { break scanning }
                    out.append(ByteRange(offset: e.offset, length: length))
                }
            }
            guard let last = batch.last?.key, batch.count == 64 else { break }
            cursor = last
            inclusive = false
        }
        return out
    }

    /// Whether `cob` exists, and the CRC32C of each block of [offset, offset + length)
    /// (block-aligned), a hole's being that of a zero block: what the cob holds there,
    /// compared without sending it. With `verify` each block is read from the data image and
    /// its CRC computed: a block that no longer matches the map shows with what it holds.
    public func blockChecksums(cob: Fid, offset: UInt64, length: Int, verify: Bool = false) throws -> (exists: Bool, crcs: [UInt32]) {
        let bs = UInt64(blockSize)
        guard offset % bs == 0, length % blockSize == 0 else {
            throw TesseraError(.invalidArgument, "CHECKSUMS of bytes \(offset)+\(length): not whole \(blockSize)-byte blocks")
        }
        try checkRange(offset, UInt64(length))
        let count = length / blockSize
        guard count <= 1 << 16 else { throw TesseraError(.tooLarge, "CHECKSUMS of \(count) blocks; at most 65536") }
        var crcs = [UInt32](repeating: CRC32C.zeroBlock, count: count)
        let buffer = verify ? UnsafeMutableRawBufferPointer.allocate(byteCount: blockSize, alignment: DataFile.directAlignment) : nil
        defer { buffer?.deallocate() }
        for e in try extents(nil, cob: cob, from: offset, to: offset + UInt64(length)) {
            for (i, crc) in e.crcs.enumerated() {
                let at = e.offset + UInt64(i) * bs
                guard at >= offset, at < offset + UInt64(length) else { continue }
                var got = crc
                if let buffer {
                    try data.read(block: e.block + UInt64(i), into: buffer)
                    got = CRC32C.checksum(UnsafeRawBufferPointer(buffer))
                    if got != crc { noteBad(cob, at) }
                }
                crcs[Int((at - offset) / bs)] = got
                if verify { lock.withLock { bytesVerified += bs } }
            }
        }
        if verify { lock.withLock { unitsVerified += 1 } }
        return (try exists(cob), crcs)
    }

    /// Counts a block that failed its checksum, remembered until a write replaces it.
    private func noteBad(_ cob: Fid, _ offset: UInt64) {
        lock.withLock {
            if badBlocks.count < 100_000, badBlocks.insert(BadBlock(cob: cob, offset: offset)).inserted { checksumFailures += 1 }
        }
    }

    /// Counts the remembered bad blocks of `cob` in [from, to) that a write just replaced.
    private func noteRewritten(_ cob: Fid, _ from: UInt64, _ to: UInt64) {
        lock.withLock {
            guard !badBlocks.isEmpty else { return }
            var at = from
            while at < to {
                if badBlocks.remove(BadBlock(cob: cob, offset: at)) != nil { blocksHealed += 1 }
                at += UInt64(blockSize)
            }
        }
    }

    // MARK: Free

    /// Frees `length` bytes at `offset`: whole blocks are unmapped (and read as holes), the
    /// partial blocks at the edges are overwritten with zeros. A free of the whole range
    /// [0, 2^60) deletes the cob: its record goes in the first transaction, so reads fail
    /// `notFound` from then on, and its extents with it and after.
    public func free(cob: Fid, offset: UInt64, length: UInt64) throws -> TxId {
        let bs = UInt64(blockSize)
        try checkRange(offset, 0)
        let end = min(offset + min(length, IOService.maxOffset), IOService.maxOffset)
        var deleting = offset == 0 && end == IOService.maxOffset
        let innerFrom = (offset + bs - 1) / bs * bs
        let innerTo = end / bs * bs
        var tx = engine.loggedThrough
        let headEnd = min(innerFrom, end)
        if offset < headEnd { tx = try write(cob: cob, offset: offset, bytes: [UInt8](repeating: 0, count: Int(headEnd - offset))) }
        let tailStart = max(innerTo, headEnd)
        if tailStart < end { tx = try write(cob: cob, offset: tailStart, bytes: [UInt8](repeating: 0, count: Int(end - tailStart))) }
        // At most `unmapBatch` extents per transaction, so a free of any size fits the limits.
        var from = innerFrom
        while from < innerTo {
            let r = try engine.write(credit: engine.credit(operations: 3 * IOService.unmapBatch + 1)) { t in
                if deleting { try t.delete(IOService.cobsFid, cob.bytes) }
                return try unmap(t, cob: cob, from: from, to: innerTo, limit: IOService.unmapBatch)
            }
            deleting = false
            queuePending(r.result.freed, r.tx)
            tx = r.tx
            from = r.result.next
        }
        return tx
    }

    static let unmapBatch = 512

    /// Decodes a free or pending-free record (first block, block count), checked against the
    /// image: bytes read from meta.img are not trusted.
    private func blockRange(_ k: [UInt8], _ v: [UInt8], _ what: String) throws -> (start: UInt64, count: UInt64) {
        guard k.count == 8, v.count == 8 else { throw TesseraError(.corrupt, "\(what) record has a \(k.count)-byte key and \(v.count)-byte value") }
        let start = UInt64(bigEndianBytes: k)
        let count = v.loadLE(at: 0, as: UInt64.self)
        guard count > 0, start < header.blockCount, count <= header.blockCount - start else {
            throw TesseraError(.corrupt, "\(what) \(start)+\(count) lies outside the \(header.blockCount)-block data image")
        }
        return (start, count)
    }

    private func checkRange(_ offset: UInt64, _ length: UInt64) throws {
        guard offset <= IOService.maxOffset, length <= IOService.maxOffset - offset else {
            throw TesseraError(.invalidArgument, "bytes \(offset)+\(length) lie beyond the largest cob offset (2^60)")
        }
    }

    // MARK: Extents

    struct Extent {
        var offset: UInt64
        var block: UInt64
        var crcs: [UInt32]
    }

    /// The extents of `cob` that overlap [from, to), in offset order.
    private func extents(_ t: Transaction?, cob: Fid, from: UInt64, to: UInt64, limit: Int = .max) throws -> [Extent] {
        func scan(_ start: [UInt8], _ dir: ScanDirection, _ inclusive: Bool, _ limit: Int) throws -> [(key: [UInt8], value: [UInt8])] {
            if let t { return try t.scan(IOService.mapFid, from: start, direction: dir, inclusive: inclusive, limit: limit) }
            return try engine.scan(IOService.mapFid, from: start, direction: dir, inclusive: inclusive, limit: limit)
        }
        let prefix = cob.bytes
        var out: [Extent] = []
        // The extent that starts at or before `from` may reach into the range.
        if let (k, v) = try scan(mapKey(cob, from), .backward, true, 1).first, Array(k[0..<16]) == prefix {
            let e = try decodeExtent(k, v)
            if e.offset + UInt64(e.crcs.count * blockSize) > from { out.append(e) }
        }
        var cursor = mapKey(cob, from)
        while true {
            let batch = try scan(cursor, .forward, false, 64)
            for (k, v) in batch {
                guard Array(k[0..<16]) == prefix else { return out }
                let e = try decodeExtent(k, v)
                guard e.offset < to, out.count < limit else { return out }
                out.append(e)
            }
            guard let lastKey = batch.last?.key, batch.count == 64 else { return out }
            cursor = lastKey
        }
    }

    private func decodeExtent(_ k: [UInt8], _ v: [UInt8]) throws -> Extent {
        guard k.count == 24, v.count >= 12 else { throw TesseraError(.corrupt, "extent map record has a \(k.count)-byte key and \(v.count)-byte value") }
        let count = Int(v.loadLE(at: 8, as: UInt32.self))
        guard v.count == 12 + 4 * count, count > 0 else { throw TesseraError(.corrupt, "extent map record: \(count) blocks but \(v.count) bytes") }
        let block = v.loadLE(at: 0, as: UInt64.self)
        guard block < header.blockCount, UInt64(count) <= header.blockCount - block else { throw TesseraError(.corrupt, "extent map record points past the data image") }
        let offset = UInt64(bigEndianBytes: k[16..<24])
        return Extent(offset: offset, block: block, crcs: (0..<count).map { v.loadLE(at: 12 + 4 * $0, as: UInt32.self) })
    }

    private func extentValue(_ block: UInt64, _ crcs: [UInt32]) -> [UInt8] {
        var v = le(block) + le32(UInt32(crcs.count))
        for c in crcs { v += le32(c) }
        return v
    }

    // MARK: Allocation

    /// `reserve`, and when the image is full but blocks wait in pending free, has their
    /// groups placed now and tries once more.
    private func reserveWaitingForPending(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        do { return try reserve(count) } catch let e as TesseraError where e.code == .noSpace {
            guard let last = lock.withLock({ pendingQueue.last?.tx }) else { throw e }
            try engine.waitPlaced(last)
            try releasePending(all: false)
            return try reserve(count)
        }
    }

    /// Chooses `count` free blocks (in as few pieces as it can) and reserves them in memory
    /// until the write's transaction closes.
    private func reserve(_ count: UInt64) throws -> [(start: UInt64, count: UInt64)] {
        try lock.withLock {
            var need = count
            var pieces: [(start: UInt64, count: UInt64)] = []
            var cursor: [UInt8]? = nil
            var done = false
            defer { if !done { reserved.removeAll { r in pieces.contains { $0.start == r.start && $0.count == r.count } } } }
            while need > 0 {
                let batch = try engine.scan(IOService.freeFid, from: cursor, inclusive: cursor == nil, limit: 256)
                guard !batch.isEmpty else {
                    throw TesseraError(.noSpace, "data image \(data.path) is full: no free blocks for \(count * UInt64(blockSize)) bytes")
                }
                for (k, v) in batch where need > 0 {
                    var (start, length) = try blockRange(k, v, "free extent")
                    let end = start + length
                    // Skip the parts other writers hold.
                    while start < end && need > 0 {
                        if let r = reserved.first(where: { $0.start <= start && start < $0.start + $0.count }) {
                            start = r.start + r.count
                            continue
                        }
                        let nextReserved = reserved.filter { $0.start > start }.map(\.start).min() ?? end
                        let n = min(need, min(end, nextReserved) - start)
                        pieces.append((start, n))
                        reserved.append((start, n))
                        need -= n
                        start += n
                    }
                }
                cursor = batch.last!.key
            }
            done = true
            return pieces
        }
    }

    private func unreserve(_ pieces: [(start: UInt64, count: UInt64)]) {
        lock.withLock { reserved.removeAll { r in pieces.contains { $0.start == r.start && $0.count == r.count } } }
    }

    /// Removes [start, start+count) from the free extent that holds it.
    private func takeFree(_ t: Transaction, _ start: UInt64, _ count: UInt64) throws {
        guard let (k, v) = try t.scan(IOService.freeFid, from: be(start), direction: .backward, limit: 1).first else {
            throw TesseraError(.internalError, "block \(start) is not free")
        }
        let (s, n) = try blockRange(k, v, "free extent")
        guard s <= start, start + count <= s + n else { throw TesseraError(.internalError, "blocks \(start)+\(count) are not free") }
        try t.delete(IOService.freeFid, k)
        if start > s { try t.put(IOService.freeFid, be(s), le(start - s)) }
        if start + count < s + n { try t.put(IOService.freeFid, be(start + count), le(s + n - start - count)) }
    }

    /// Adds [start, start+count) to the free list, merging with its neighbours.
    private func giveFree(_ t: Transaction, _ start: UInt64, _ count: UInt64) throws {
        var s = start
        var n = count
        if let (k, v) = try t.scan(IOService.freeFid, from: be(start), direction: .backward, inclusive: false, limit: 1).first {
            let (ps, pn) = try blockRange(k, v, "free extent")
            if ps + pn == start {
                try t.delete(IOService.freeFid, k)
                s = ps
                n += pn
            }
        }
        if let v = try t.get(IOService.freeFid, be(start + count)) {
            try t.delete(IOService.freeFid, be(start + count))
            n += try blockRange(be(start + count), v, "free extent").count
        }
        try t.put(IOService.freeFid, be(s), le(n))
    }

    /// Returns pending-free blocks to the free list once the transactions that freed them
    /// are placed. With `all` (at open, when everything in the image is placed), returns
    /// every pending-free block recorded in the image.
    private func releasePending(all: Bool) throws {
        var pieces: [(start: UInt64, count: UInt64)] = []
        if all {
            for (k, v) in try engine.scan(IOService.pendingFid, from: nil, limit: Int.max) {
                pieces.append(try blockRange(k, v, "pending-free extent"))
            }
        } else {
            let placed = engine.placedThrough
            lock.withLock {
                pieces = pendingQueue.filter { $0.tx <= placed }.flatMap(\.pieces)
                pendingQueue.removeAll { $0.tx <= placed }
            }
        }
        for chunk in stride(from: 0, to: pieces.count, by: 128) {
            let part = pieces[chunk..<min(chunk + 128, pieces.count)]
            try engine.write(credit: engine.credit(operations: 4 * part.count)) { t in
                for p in part {
                    try t.delete(IOService.pendingFid, be(p.start))
                    try giveFree(t, p.start, p.count)
                }
            }
        }
    }
}

private func be(_ v: UInt64) -> [UInt8] { bigEndianBytes(v) }
private func le(_ v: UInt64) -> [UInt8] { var b: [UInt8] = []; b.appendLE(v); return b }
private func le32(_ v: UInt32) -> [UInt8] { var b: [UInt8] = []; b.appendLE(v); return b }
private func mapKey(_ cob: Fid, _ offset: UInt64) -> [UInt8] { cob.bytes + be(offset) }
