// Striped parity objects: writes in whole parity groups (read-modify-write for partial
// ones), reads of the data units, rebuilt from parity when a unit's server is down or its
// checksum fails. The store keeps no object size; the layer above does.
//
// An object exists on a server once a CREATE or a unit write reaches it (IOService.swift).
// Made with `create`, it exists on every server, and a unit a server says does not exist
// is missing (freed, or a CREATE the server missed), rebuilt from parity or an error. A new
// object written from its start with no CREATE (`unwritten`, as the S3 writer does: a
// CREATE would cost small objects a request and a log flush on the servers their writes
// miss) exists only where its writes went; its other units lie wholly at or past the end of
// its data. A caller that knows that end passes it as `size` to reads and partial writes,
// and a unit wholly at or past it that its server says does not exist counts as zeros, as
// long as some other unit of its group was read: a deleted object is still not found.
import Synchronization
import TesseraCore

extension Cluster {
    /// Parity groups worked on at once by one call.
    static let parallelGroups = 8

    /// Makes object `object` exist on every server (an IO CREATE of its cob), so the parts
    /// of it never written read as zeros; until then a read fails `notFound`, as it does once
    /// the object is deleted. Call it before the object's first write (or with it: a server
    /// makes a CREATE before anything the same connection sent after it), unless the object
    /// is written from its start and read with its `size` (see the top of this file).
    /// Idempotent.
    public func create(_ object: Fid) async throws {
        try await create([object])
    }

    /// `create` of many objects: `createBatch` cobs per request, all pipelined to each
    /// server at once. A server that cannot be reached misses the CREATE (its units of
    /// these objects will read `notFound`, rebuilt from parity like a down server's), as long
    /// as no more servers miss it than there are parity units; any other failure throws.
    /// A server that refuses it as `staleMap` (running, but not yet admitted by the map:
    /// just started) counts as missed too when the others are enough; when they are not,
    /// it is asked again as newer maps come, for up to `routingWindow`.
    public func create(_ objects: [Fid]) async throws {
        guard !objects.isEmpty else { return }
        let requests = stride(from: 0, to: objects.count, by: Cluster.createBatch).map {
            Request.create(cobs: Array(objects[$0..<min($0 + Cluster.createBatch, objects.count)]), syncWait: false)
        }
        let what = "object \(objects[0])\(objects.count > 1 ? " and \(objects.count - 1) more" : "")"
        let deadline = ContinuousClock.now + Self.routingWindow
        var todo = Array(links.indices)
        var missed: [String] = []
        while true {
            let m = currentMap.withLock { $0 }
            let refused = try await createOn(todo, requests, what)
            missed += refused.filter { !$0.stale }.map(\.why)
            let stale = refused.filter(\.stale)
            // Asked again only if that can help: the others must be few enough without them.
            if stale.isEmpty || missed.count + stale.count <= layout.parityUnits || missed.count > layout.parityUnits || ContinuousClock.now >= deadline {
                missed += stale.map(\.why)
                break
            }
            todo = stale.map(\.server)
            await waitForMap(after: m)
        }
        guard !missed.isEmpty else { return }
        guard missed.count <= layout.parityUnits else {
            throw TesseraError(.closed, "\(what) cannot be created: \(missed.joined(separator: "; "))")
        }
        logger.warning("\(what) created without \(missed.joined(separator: "; ")); its units there will be rebuilt from parity")
    }

    /// One try of `create` at server positions `servers`: those that missed it, why, and
    /// whether the refusal was `staleMap`; any other failure throws.
    private func createOn(_ servers: [Int], _ requests: [Request], _ what: String) async throws -> [(server: Int, stale: Bool, why: String)] {
        try await withThrowingTaskGroup(of: (server: Int, stale: Bool, why: String)?.self) { group in
            for s in servers {
                group.addTask {
                    let responses: [Response]
                    do {
                        let client = try await self.links[s].client()
                        responses = await client.pipeline(requests)
                        for (request, r) in zip(requests, responses) { await self.noted(s, request, r, from: client) }
                    } catch {
                        responses = [Response(error)]
                    }
                    for r in responses {
                        switch r {
                        case .statuses(let st, _) where st.allSatisfy({ $0 == .ok || $0 == .exists }): continue
                        case .failure(let status, let m) where [.closed, .timedOut, .staleMap].contains(status):
                            return (s, status == .staleMap, "server \(self.links[s].id): \(m)")
                        case .failure(let status, let m):
                            throw TesseraError(status.code ?? .io, "creating \(what) on server \(self.links[s].id): \(m)")
                        default:
                            throw TesseraError(.io, "creating \(what) on server \(self.links[s].id): unexpected reply \(r)")
                        }
                    }
                    return nil
                }
            }
            var out: [(server: Int, stale: Bool, why: String)] = []
            for try await r in group { if let r { out.append(r) } }
            return out
        }
    }

    /// Cobs per CREATE request (the IO service takes at most `IOService.maxCreate`).
    static let createBatch = 1024

    /// Writes `bytes` at `offset` of object `object`: one `create` made, or a new one
    /// written from its start (`unwritten`). `unwritten`: the caller knows the groups
    /// touched hold nothing yet (a new object written in order), so partial groups need no
    /// read first. `size`: where the object's data ends before this write, if it was not
    /// made with `create` (the top of this file); a partial group's read needs it.
    public func write(_ object: Fid, at offset: UInt64, _ bytes: [UInt8], unwritten: Bool = false, size: UInt64? = nil) async throws {
        try checkRange(offset, UInt64(bytes.count))
        let pieces = layout.groups(offset: offset, length: bytes.count)
        _ = try await concurrently(pieces, limit: Cluster.parallelGroups) { piece in
            let start = Int(self.layout.objectOffset(group: piece.group, unit: 0, offsetInUnit: 0) + UInt64(piece.from) - offset)
            try await self.writeGroup(object, piece.group, from: piece.from, bytes[start..<(start + piece.to - piece.from)], unwritten: unwritten, size: size)
        }
    }

    /// Reads `length` bytes at `offset` of object `object`; never-written bytes read as zeros.
    /// An object deleted (or never created) fails `notFound`; a unit whose server says so
    /// while enough others have theirs is rebuilt, as for a server that is down. `size`:
    /// where the object's data ends, for an object not made with `create` (the top of this
    /// file); nil for one that was.
    public func read(_ object: Fid, at offset: UInt64, length: Int, size: UInt64? = nil) async throws -> [UInt8] {
        let out = ByteSink(count: length)
        try await read(object, at: offset, into: out, size: size)
        return out.bytes
    }

    /// Reads `buffer.count` bytes at `offset` into `buffer`, which must stay valid until the
    /// call returns: the caller's own reply buffer, with no intermediate copy.
    public func read(_ object: Fid, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer, size: UInt64? = nil) async throws {
        try await read(object, at: offset, into: ByteSink(borrowing: buffer), size: size)
    }

    private func read(_ object: Fid, at offset: UInt64, into out: ByteSink, size: UInt64?) async throws {
        try checkRange(offset, UInt64(out.count))
        let pieces = layout.groups(offset: offset, length: out.count)
        _ = try await concurrently(pieces, limit: Cluster.parallelGroups) { piece in
            let at = Int(self.layout.objectOffset(group: piece.group, unit: 0, offsetInUnit: 0) + UInt64(piece.from) - offset)
            try await self.readGroup(object, piece.group, from: piece.from, to: piece.to, into: out, at: at, size: size)
        }
    }

    /// Makes bytes [offset, offset+length) of the object read as zeros; whole parity groups
    /// give their blocks back to the servers. `size` as for `write`.
    public func free(_ object: Fid, at offset: UInt64, length: UInt64, size: UInt64? = nil) async throws {
        try checkRange(offset, length)
        guard length > 0 else { return }
        let gs = UInt64(layout.groupSize)
        let firstWhole = (offset + gs - 1) / gs
        let endWhole = (offset + length) / gs
        if firstWhole < endWhole {
            // Every unit of those groups sits in one contiguous cob range on each server.
            try await freeEverywhere(object, layout.cobOffset(group: firstWhole)..<layout.cobOffset(group: endWhole))
        }
        // The partial groups at either end are rewritten with zeros: each is less than a
        // group, so one write per end.
        var edges: [(UInt64, UInt64)] = []
        if firstWhole >= endWhole {
            edges.append((offset, offset + length))
        } else {
            if offset < firstWhole * gs { edges.append((offset, firstWhole * gs)) }
            if endWhole * gs < offset + length { edges.append((endWhole * gs, offset + length)) }
        }
        for (a, b) in edges { try await write(object, at: a, [UInt8](repeating: 0, count: Int(b - a)), size: size) }
    }

    /// Frees every unit of the object on every server (but failed ones: their repair
    /// deletes it there).
    public func delete(_ object: Fid) async throws {
        try await freeEverywhere(object, 0..<Cluster.maxObjectOffset)
    }

    /// Frees every unit of each of `objects` on every server: one pipeline of FREE requests
    /// per server (one write and one wake-up for all of them, not one per object). Throws
    /// the first failure; an object may then be freed on some servers only, which a later
    /// free of it finishes.
    /// With a server not online, or a pipeline that fails, each object is deleted on its
    /// own (`delete(_:)`: skipped, locked or retried as the map says).
    public func delete(_ objects: [Fid]) async throws {
        let m = currentMap.withLock { $0 }
        guard objects.count > 1, links.indices.allSatisfy({ dataState($0, in: m) == .online }) else {
            for o in objects { try await delete(o) }
            return
        }
        let requests = objects.map { routedData(.free(cob: $0, offset: 0, length: Cluster.maxObjectOffset, syncWait: false), m) }
        do {
            try await onEveryServer { s in
                let client = try await self.links[s].client()
                let responses = await client.pipeline(requests)
                for (request, r) in zip(requests, responses) {
                    await self.noted(s, request, r, from: client)
                    _ = try r.unwrap()
                }
            }
        } catch let e as TesseraError where [.closed, .timedOut, .staleMap].contains(e.code) {
            for o in objects { try await delete(o) }
        }
    }

    /// Objects end below 2^60 bytes of cob offset on every server (the IO service's limit).
    static let maxObjectOffset: UInt64 = 1 << 60

    private func checkRange(_ offset: UInt64, _ length: UInt64) throws {
        let limit = Cluster.maxObjectOffset / UInt64(layout.unitSize) * UInt64(layout.groupSize)
        guard offset <= limit, length <= limit - offset else {
            throw TesseraError(.tooLarge, "object range \(offset)+\(length) is beyond the largest object offset \(limit)")
        }
    }

    private func onEveryServer(_ body: @escaping @Sendable (Int) async throws -> Void) async throws {
        try await withThrowingTaskGroup(of: Void.self) { group in
            for s in links.indices { group.addTask { try await body(s) } }
            try await group.waitForAll()
        }
    }

    /// `body` of each of `items`, at most `limit` at a time; the results in the order they
    /// finish.
    func concurrently<Item: Sendable, T: Sendable>(_ items: [Item], limit: Int, _ body: @escaping @Sendable (Item) async throws -> T) async throws -> [T] {
        try await withThrowingTaskGroup(of: T.self) { group in
            var queue = items[...]
            var out: [T] = []
            func startNext() {
                guard let item = queue.popFirst() else { return }
                group.addTask { try await body(item) }
            }
            for _ in 0..<limit { startNext() }
            while let t = try await group.next() {
                out.append(t)
                startNext()
            }
            return out
        }
    }

    // MARK: One parity group

    /// Writes `bytes` at byte `from` of group `g`: the data units it touches and every
    /// parity unit. A partial group reads its current data first (rebuilt if need be) and
    /// writes each unit only up to its last non-zero byte, old or new: a small object, or
    /// the tail of one, takes the blocks it fills rather than whole units.
    private func writeGroup(_ object: Fid, _ g: UInt64, from: Int, _ bytes: ArraySlice<UInt8>, unwritten: Bool, size: UInt64?) async throws {
        let u = layout.unitSize
        let n = layout.dataUnits
        let to = from + bytes.count
        return try await groupLocks.withLock(GroupKey(object: object, group: g)) {
            var data: [[UInt8]]
            // Bytes to write of each data unit, and of the parity units.
            var extent = [Int](repeating: u, count: n)
            var parityExtent = u
            if from == 0 && to == layout.groupSize {
                data = (0..<n).map { d in Array(bytes[(bytes.startIndex + d * u)..<(bytes.startIndex + (d + 1) * u)]) }
            } else {
                // A unit is kept only as long as its content (an empty array is all zeros), so
                // a small write into an unwritten group touches kilobytes, not whole units.
                data = unwritten ? Array(repeating: [], count: n) : try await readUnits(object, g, size: size)
                let oldExtent = data.map(Self.usedLength)
                for d in (from / u)...((to - 1) / u) {
                    let a = max(from, d * u) - d * u
                    let b = min(to, (d + 1) * u) - d * u
                    if data[d].count < b { data[d] += [UInt8](repeating: 0, count: b - data[d].count) }
                    let src = bytes.startIndex + d * u + a - from
                    data[d].replaceSubrange(a..<b, with: bytes[src..<(src + b - a)])
                }
                // Whole 4 KiB blocks (the data image's block size), so a server never
                // reads an old block back to merge a partial one.
                extent = (0..<n).map { min(u, (max(oldExtent[$0], Self.usedLength(data[$0])) + 4095) & ~4095) }
                parityExtent = extent.max() ?? 0
                data = data.map { unit in
                    unit.count >= parityExtent ? Array(unit.prefix(parityExtent)) : unit + [UInt8](repeating: 0, count: parityExtent - unit.count)
                }
            }
            let parity = code.encode(data)
            let touched = (from / u)...((to - 1) / u)
            var writes: [(unit: Int, bytes: [UInt8])] = touched.compactMap { d in
                extent[d] == 0 ? nil : (d, extent[d] == data[d].count ? data[d] : Array(data[d].prefix(extent[d])))
            }
            if parityExtent > 0 {
                for p in 0..<layout.parityUnits { writes.append((n + p, parity[p])) }
            }
            // A new object's group of zeros writes no block anywhere: made to exist instead,
            // or it would read as not found.
            if unwritten && writes.allSatisfy({ $0.bytes.allSatisfy { $0 == 0 } }) {
                try await create(object)
                return
            }
            try await send(object, group: g, writes.map { ($0.unit, 0, $0.bytes) }, stripeAt: 0, stripes: data + parity, syncWait: false)
        }
    }

    /// The unit writes that store bytes `changed` of group `g`, given every byte of the group
    /// as the object is to hold it (`content`, the group's size; the caller knows the object
    /// already holds the rest): each data unit over its part of the range, and every parity
    /// unit over the same unit offsets, computed from `content`, in whole 4 KiB blocks. Made
    /// at once (the bytes are copied), sent by `write(_:_:)`, with no read.
    public func groupWrite(group g: UInt64, content: UnsafeRawBufferPointer, changed: Range<Int>) -> GroupWrite {
        let u = layout.unitSize
        let n = layout.dataUnits
        precondition(content.count == layout.groupSize && changed.lowerBound >= 0 && changed.upperBound <= layout.groupSize && !changed.isEmpty)
        var pieces: [(unit: Int, range: Range<Int>)] = []
        for d in (changed.lowerBound / u)...((changed.upperBound - 1) / u) {
            let a = (max(changed.lowerBound, d * u) - d * u) & ~4095
            let b = min(u, (min(changed.upperBound, (d + 1) * u) - d * u + 4095) & ~4095)
            pieces.append((d, a..<b))
        }
        let stripe = pieces.map(\.range.lowerBound).min()!..<pieces.map(\.range.upperBound).max()!
        // Every data unit over the stripe, copied once: the parity's input, and (cut to its
        // own range where that is narrower) a data unit's write.
        let stripes = (0..<n).map { d in Array(UnsafeRawBufferPointer(rebasing: content[(d * u + stripe.lowerBound)..<(d * u + stripe.upperBound)])) }
        var writes = pieces.map { piece in
            let bytes = piece.range == stripe
                ? stripes[piece.unit] : Array(stripes[piece.unit][(piece.range.lowerBound - stripe.lowerBound)..<(piece.range.upperBound - stripe.lowerBound)])
            return (unit: piece.unit, at: piece.range.lowerBound, bytes: bytes)
        }
        let parity = code.encode(stripes)
        for (p, bytes) in parity.enumerated() {
            writes.append((n + p, stripe.lowerBound, bytes))
        }
        return GroupWrite(group: g, writes: writes, stripeAt: stripe.lowerBound, stripes: stripes + parity)
    }

    /// Sends the unit writes of `w` to object `object`.
    public func write(_ object: Fid, _ w: GroupWrite, syncWait: Bool = false) async throws {
        try await groupLocks.withLock(GroupKey(object: object, group: w.group)) {
            try await send(object, group: w.group, w.writes, stripeAt: w.stripeAt, stripes: w.stripes, syncWait: syncWait)
        }
    }

    /// The length of `unit` without its trailing zeros.
    static func usedLength(_ unit: [UInt8]) -> Int {
        unit.withUnsafeBytes { b in
            var end = b.count
            while end >= 8 && b.loadUnaligned(fromByteOffset: end - 8, as: UInt64.self) == 0 { end -= 8 }
            while end > 0 && b[end - 1] == 0 { end -= 1 }
            return end
        }
    }

    /// Puts bytes [from, to) of group `g`'s data into `sink` at `at`. Reads only the data
    /// units that hold them; if one fails (server down, checksum), reads the whole group and
    /// rebuilds it.
    private func readGroup(_ object: Fid, _ g: UInt64, from: Int, to: Int, into sink: ByteSink, at: Int, size: UInt64?) async throws {
        let u = layout.unitSize
        let offset = layout.cobOffset(group: g)
        let units = Array((from / u)...((to - 1) / u))
        // Each unit's bytes go from the connection's buffer straight to their place in the sink.
        let allRead = await withTaskGroup(of: Bool.self) { group in
            for d in units {
                let a = max(from, d * u) - d * u
                let b = min(to, (d + 1) * u) - d * u
                let server = layout.server(group: g, unit: d)
                let target = sink.region(at: at + d * u + a - from, count: b - a)
                group.addTask {
                    await self.read(server, .read(cob: object, offset: offset + UInt64(a), length: UInt32(b - a)), into: target.buffer) == .done
                }
            }
            var ok = true
            for await r in group { ok = ok && r }
            return ok
        }
        if allRead { return }
        var corrupt: [Int] = []
        let all = try await readUnits(object, g, size: size, corrupt: &corrupt).flatMap { $0 }
        sink.put(Array(all[from..<to]), at: at)
        if !corrupt.isEmpty {
            // The caller has its bytes: a heal that fails is logged, and the next read tries again.
            do { try await heal(object, g, size: size) } catch {
                logger.warning("object \(object) group \(g): unit(s) that failed their checksum were not rewritten: \(error)")
            }
        }
    }

    /// Rewrites in place the units of group `g` whose blocks failed their checksum, with what
    /// parity rebuilds (a self-healing read: REPLICATION.md, "Object data"), under the group's
    /// lock, after reading the group again there (a writer may have replaced them).
    private func heal(_ object: Fid, _ g: UInt64, size: UInt64?) async throws {
        try await groupLocks.withLock(GroupKey(object: object, group: g)) {
            var corrupt: [Int] = []
            let data = try await readUnits(object, g, size: size, corrupt: &corrupt)
            guard !corrupt.isEmpty else { return }
            let units = data + code.encode(data)
            try await send(object, group: g, corrupt.map { ($0, 0, units[$0]) }, stripeAt: 0, stripes: units, syncWait: false)
            healed.add(UInt64(corrupt.count), ordering: .relaxed)
            logger.warning("object \(object) group \(g): unit(s) \(corrupt.map(String.init).joined(separator: ", ")) failed their checksum; rebuilt from parity and rewritten")
        }
    }

    /// All N data units of group `g`, rebuilt from parity where a unit cannot be read. With
    /// `size`, a data unit wholly at or past it that its server says does not exist is
    /// zeros (the top of this file), if some other unit of the group was read.
    private func readUnits(_ object: Fid, _ g: UInt64, size: UInt64?) async throws -> [[UInt8]] {
        var corrupt: [Int] = []
        return try await readUnits(object, g, size: size, corrupt: &corrupt)
    }

    /// `readUnits`, putting in `corrupt` the units whose server answered that a block
    /// failed its checksum.
    private func readUnits(_ object: Fid, _ g: UInt64, size: UInt64?, corrupt: inout [Int]) async throws -> [[UInt8]] {
        let u = layout.unitSize
        let offset = layout.cobOffset(group: g)
        let width = layout.width
        let n = layout.dataUnits
        // Data units first; parity only when a data unit is missing.
        var units = [[UInt8]?](repeating: nil, count: width)
        // Units taken as zeros: past the end of the data, and not on their servers.
        var pastEnd: Set<Int> = []
        var problems: [String] = []
        // A unit failed on a server the map calls online (not one it says is down).
        var unexpected = false
        // Servers that said the cob does not exist: freed, never written, or (if the others
        // have it) a CREATE the server missed while down.
        var absent: [Int] = []
        func fetch(_ which: [Int]) async {
            let got = await withTaskGroup(of: (Int, Response).self) { group in
                for unit in which {
                    let server = layout.server(group: g, unit: unit)
                    group.addTask { (unit, await self.call(server, .read(cob: object, offset: offset, length: UInt32(u)))) }
                }
                var out: [(Int, Response)] = []
                for await x in group { out.append(x) }
                return out
            }
            for (unit, r) in got {
                switch r {
                case .data(let bytes) where bytes.count == u: units[unit] = bytes
                case .failure(let status, let m):
                    let server = links[layout.server(group: g, unit: unit)].id
                    if status == .checksum { corrupt.append(unit) }
                    if status == .notFound {
                        absent.append(server)
                        if let size, unit < n, layout.objectOffset(group: g, unit: unit, offsetInUnit: 0) >= size {
                            units[unit] = [UInt8](repeating: 0, count: u)
                            pastEnd.insert(unit)
                            continue
                        }
                    }
                    problems.append("unit \(unit) on server \(server): \(m)")
                    if refusal(layout.server(group: g, unit: unit), reading: true) == nil { unexpected = true }
                default: problems.append("unit \(unit): malformed reply")
                }
            }
        }
        /// Whether some unit of the group came from its server: else, if every server said
        /// it has no such object, the object is gone whatever its size says.
        func anyRead() -> Bool { units.indices.contains { units[$0] != nil && !pastEnd.contains($0) } }
        // Too few units to rebuild from: if a server said the object does not exist, it is
        // gone (or was never made), and the caller must hear so, never get zeros.
        func unreadable(_ why: String) -> TesseraError {
            guard absent.isEmpty else {
                let servers = absent.sorted().map(String.init).joined(separator: ", ")
                return TesseraError(.notFound, "object \(object) group \(g) not found on server(s) \(servers): freed or never written (\(problems.joined(separator: "; ")))")
            }
            return TesseraError(.io, "object \(object) group \(g) \(why): \(problems.joined(separator: "; "))")
        }
        // A unit on an `unrepaired` server may lack writes it acknowledged before a crash:
        // read only when the group cannot be had without it.
        let doubtful = Set((0..<width).filter { unrepaired(layout.server(group: g, unit: $0)) })
        await fetch((0..<n).filter { !doubtful.contains($0) })
        if units[0..<n].contains(where: { $0 == nil }) || !anyRead() {
            guard layout.parityUnits > 0 else { throw unreadable("cannot be read and has no parity") }
            await fetch((n..<width).filter { !doubtful.contains($0) })
            if !doubtful.isEmpty, units.lazy.filter({ $0 != nil }).count < n { await fetch(doubtful.sorted()) }
            guard anyRead() else { throw unreadable("has no unit on any server") }
            if !units[0..<n].contains(where: { $0 == nil }) { return units[0..<n].map { $0! } }
            let rebuilt: [[UInt8]]
            do { rebuilt = try code.reconstruct(units) } catch { throw unreadable("cannot be rebuilt") }
            noteDegraded("object \(object) group \(g) rebuilt from parity (\(problems.joined(separator: "; ")))", expected: !unexpected)
            return Array(rebuilt[0..<n])
        }
        return units[0..<n].map { $0! }
    }
}

/// The result buffer of a parallel read: each group fills its own disjoint range, and
/// every byte of the range is written (holes come back from the servers as zeros).
final class ByteSink: @unchecked Sendable {
    // SAFETY: ranges written by concurrent tasks never overlap, and the bytes are read only
    // after every writer finished (the task group's completion orders the accesses).
    private let buffer: UnsafeMutableRawBufferPointer
    private let owned: Bool
    let count: Int

    init(count: Int) {
        buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        owned = true
        self.count = count
    }

    init(borrowing buffer: UnsafeMutableRawBufferPointer) {
        self.buffer = buffer
        owned = false
        count = buffer.count
    }

    deinit { if owned { buffer.deallocate() } }

    /// Bytes [offset, offset + count) of the buffer, for one writer to fill.
    func region(at offset: Int, count: Int) -> Region {
        precondition(offset >= 0 && offset + count <= self.count)
        return Region(buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + count)]))
    }

    /// A disjoint part of a sink, handed to the one task that fills it.
    struct Region: @unchecked Sendable {
        // SAFETY: as for the sink: one writer per region, read after the writers finish.
        let buffer: UnsafeMutableRawBufferPointer
    }

    func put(_ bytes: [UInt8], at offset: Int) {
        precondition(offset >= 0 && offset + bytes.count <= count)
        bytes.withUnsafeBytes { UnsafeMutableRawBufferPointer(rebasing: buffer[offset..<(offset + $0.count)]).copyMemory(from: $0) }
    }

    var bytes: [UInt8] { Array(buffer.prefix(count)) }
}

/// The unit writes of part of one parity group (`Cluster.groupWrite`): unit index (data
/// units first, then parity), byte offset in the unit, bytes.
public struct GroupWrite: Sendable {
    public let group: UInt64
    let writes: [(unit: Int, at: Int, bytes: [UInt8])]
    /// Every unit's content over the stripe the writes cover (data units, then parity),
    /// from unit offset `stripeAt`: what a repairing server's unit is written with.
    let stripeAt: Int
    let stripes: [[UInt8]]
}
