// The repair of one server's object data (REPLICATION.md, "Object data", "Repair"): every
// unit it holds is made equal to what the other units of its group imply, for every
// object any server holds. Run by the repair leader once the server's indexes are walked,
// while every other server is online; the server is `repairing`, so writers hold its
// lock of a unit's range for their whole group write, and the walk takes the same lock
// while it reads the group and writes the unit.
import Synchronization
import TesseraCore

/// What a data repair has done so far.
public struct DataRepairTotals: Sendable, Equatable, Codable {
    /// Objects (cobs) looked at, parity groups compared, units rewritten (or freed) on the
    /// repaired server, cobs made or deleted there.
    public var objects: UInt64 = 0
    public var groups: UInt64 = 0
    public var units: UInt64 = 0
    public var cobs: UInt64 = 0
    /// Groups whose unit could not be rebuilt: too many of their other units failed their
    /// checksums.
    public var unreadable: UInt64 = 0
    /// Bytes read from the other servers, and written to the repaired one.
    public var bytesRead: UInt64 = 0
    public var bytesWritten: UInt64 = 0

    public init() {}

    mutating func add(_ o: DataRepairTotals) {
        objects += o.objects
        groups += o.groups
        units += o.units
        cobs += o.cobs
        unreadable += o.unreadable
        bytesRead += o.bytesRead
        bytesWritten += o.bytesWritten
    }
}

extension Cluster {
    /// Objects repaired at once.
    static let repairParallelism = 8
    /// Cobs asked of each server per COBS request.
    static let repairCobPage = 1000
    /// Groups of one object repaired at once (times `repairParallelism` objects: at most 32
    /// groups, each holding the group's width of units: 96 MiB for 2+1 and 1 MiB units).
    static let repairGroupParallelism = 4

    /// Repairs the object data of server `id` (see the top of this file), calling
    /// `progress` with the totals after each batch of objects. Throws if a server cannot be
    /// reached or the map changes under it (the leader starts again later).
    public func repairData(of id: Int, progress: @Sendable (DataRepairTotals) async -> Void = { _ in }) async throws -> DataRepairTotals {
        guard let target = links.firstIndex(where: { $0.id == id }) else { throw TesseraError(.invalidArgument, "the cluster has no server \(id)") }
        guard layout.parityUnits > 0 else {
            throw TesseraError(.invalidArgument, "a layout without parity units cannot rebuild a server's data")
        }
        var totals = DataRepairTotals()
        try await forEveryCob({ try await self.repairObject($0, on: target) }) { page in
            for t in page { totals.add(t) }
            await progress(totals)
        }
        return totals
    }

    /// The next cobs in fid order after `after`, merged over every server (paged so that
    /// no server's cob is passed over), and where to go on (nil: done).
    func cobsAfter(_ after: Fid?) async throws -> (cobs: [Fid], next: Fid?) {
        let pages = try await withThrowingTaskGroup(of: (Int, [Fid]).self) { group in
            for s in links.indices {
                group.addTask {
                    guard case .fids(let f) = try await self.call(s, .cobs(after: after, limit: UInt32(Self.repairCobPage))).unwrap() else {
                        throw TesseraError(.io, "server \(self.links[s].id): malformed reply to COBS")
                    }
                    return (s, f)
                }
            }
            var out: [(Int, [Fid])] = []
            for try await p in group { out.append(p) }
            return out
        }
        // A full page may have more after it: go only as far as the smallest full page's
        // last cob, and on from there.
        let bound = pages.filter { $0.1.count >= Self.repairCobPage }.compactMap { $0.1.last }.min()
        var all = Set<Fid>()
        for (_, f) in pages { for c in f where bound == nil || c <= bound! { all.insert(c) } }
        return (all.sorted(), bound)
    }

    /// Every cob of the cluster, in fid order, `repairParallelism` at a time through `body`;
    /// `after` is called with the results of each page of cobs, in order.
    func forEveryCob<T: Sendable>(_ body: @escaping @Sendable (Fid) async throws -> T, after: ([T]) async throws -> Void) async throws {
        var cursor: Fid? = nil
        var finished = false
        while !finished {
            let (batch, next) = try await cobsAfter(cursor)
            (cursor, finished) = (next, next == nil)
            let results = try await concurrently(batch, limit: Self.repairParallelism, body)
            try await after(results)
        }
    }

    /// Where `cob` lies: the servers (positions) that have it, and per group with data on
    /// some server, how far into its units that data reaches (bytes).
    func placement(of cob: Fid) async throws -> (present: Set<Int>, groups: [UInt64: Int]) {
        var present = Set<Int>()
        var groups: [UInt64: Int] = [:]
        let u = UInt64(layout.unitSize)
        for s in links.indices {
            var from: UInt64 = 0
            while true {
                let r = await call(s, .extents(cob: cob, from: from, limit: UInt32(Self.repairCobPage)))
                if case .failure(.notFound, _) = r { break }
                guard case .ranges(let ranges) = try r.unwrap() else { throw TesseraError(.io, "server \(links[s].id): malformed reply to EXTENTS") }
                present.insert(s)
                for range in ranges where range.length > 0 {
                    for g in (range.offset / u)...((range.end - 1) / u) {
                        let reach = Int(min(range.end, (g + 1) * u) - g * u)
                        groups[g] = max(groups[g] ?? 0, reach)
                    }
                }
                guard ranges.count >= Self.repairCobPage, let last = ranges.last else { break }
                from = last.end
            }
        }
        return (present, groups)
    }

    /// Repairs every unit of `cob` on server position `target`.
    private func repairObject(_ cob: Fid, on target: Int) async throws -> DataRepairTotals {
        var t = DataRepairTotals()
        t.objects = 1
        let (present, groups) = try await placement(of: cob)
        let others = present.subtracting([target])
        if others.isEmpty {
            // Only the repaired server has it: deleted while it was away.
            if present.contains(target), try await deleteIfOnlyOn(target, cob) { t.cobs += 1 }
            return t
        }
        if !present.contains(target), try await createIfElsewhere(target, cob) { t.cobs += 1 }
        // A large object's groups a few at a time: each waits on round trips (lock, reach,
        // reads, checksums, write), so one at a time left the disks idle.
        let units = groups.keys.sorted().compactMap { g in
            (0..<layout.width).first { layout.server(group: g, unit: $0) == target }.map { (g, $0) }
        }
        for done in try await concurrently(units, limit: Self.repairGroupParallelism, { try await self.repairUnit(cob, group: $0.0, unit: $0.1, on: target) }) {
            t.add(done)
        }
        return t
    }

    /// Makes unit `unit` of group `g` of `cob` on server position `target` what the group's
    /// other units imply, under its lock there.
    private func repairUnit(_ cob: Fid, group g: UInt64, unit: Int, on target: Int) async throws -> DataRepairTotals {
        var t = DataRepairTotals()
        t.groups = 1
        let offset = layout.cobOffset(group: g)
        let owner = UInt64.random(in: 1...UInt64.max)
        let m = currentMap.withLock { $0 }
        let done: DataRepairTotals? = try await withLocks(cob, at: [target], range: offset..<(offset + UInt64(layout.unitSize)), owner: owner) {
            // How far the other units' data reaches, asked under the lock (a writer may have
            // grown the group since the walk listed it): only that much is read.
            let size = try await self.reach(cob, group: g, besides: unit)
            // The other units as they are now (a cob a server lacks reads as zeros there: it
            // holds no unit of this group).
            var units = [[UInt8]?](repeating: nil, count: layout.width)
            var bad: [String] = []
            try await withThrowingTaskGroup(of: (Int, [UInt8]?).self) { group in
                for v in 0..<layout.width where v != unit {
                    let server = layout.server(group: g, unit: v)
                    group.addTask {
                        switch await self.call(server, .read(cob: cob, offset: offset, length: UInt32(size))) {
                        case .data(let bytes) where bytes.count == size: return (v, bytes)
                        case .failure(.notFound, _): return (v, [UInt8](repeating: 0, count: size))
                        case .failure(.checksum, _): return (v, nil)  // gone bad there: rebuilt when that server's turn comes
                        case .failure(let status, let message):
                            throw TesseraError(status.code ?? .io, "repair of object \(cob) group \(g): unit \(v) on server \(self.links[server].id): \(message)")
                        default: throw TesseraError(.io, "repair of object \(cob) group \(g): malformed reply from server \(self.links[server].id)")
                        }
                    }
                }
                for try await (v, bytes) in group {
                    units[v] = bytes
                    if bytes == nil { bad.append("unit \(v) on server \(self.links[layout.server(group: g, unit: v)].id)") }
                }
            }
            var r = DataRepairTotals()
            r.bytesRead = UInt64(size * (layout.width - 1))
            guard units.compactMap({ $0 }).count >= layout.dataUnits else {
                // Too few good units to rebuild this one from: left as it is, and said so.
                r.unreadable = 1
                logger.error("repair of object \(cob) group \(g) on server \(links[target].id): cannot be rebuilt, \(bad.joined(separator: ", ")) failed their checksums")
                return r
            }
            let wanted = try code.reconstruct(units)[unit]
            // Compare block by block with what the server holds, read and checked there (not
            // sent): the whole unit (past `reach` it should hold nothing).
            let unitSize = layout.unitSize
            guard case .checksums(_, let held) = try await call(target, .checksums(cob: cob, offset: offset, length: UInt32(unitSize), verify: true)).unwrap(),
                held.count == unitSize / 4096
            else { throw TesseraError(.io, "repair of object \(cob) group \(g): malformed reply to CHECKSUMS") }
            let used = (Self.usedLength(wanted) + 4095) & ~4095
            let differs = wanted.withUnsafeBytes { w in
                (0..<held.count).filter { b in
                    let crc = b * 4096 < used ? CRC32C.checksum(UnsafeRawBufferPointer(rebasing: w[(b * 4096)..<((b + 1) * 4096)])) : CRC32C.zeroBlock
                    return crc != held[b]
                }
            }
            guard let first = differs.first, let last = differs.last else { return r }
            r.units = 1
            // The differing blocks that hold data are written; past the data, freed.
            let writeEnd = min((last + 1) * 4096, used)
            if first * 4096 < writeEnd {
                let bytes = Array(wanted[(first * 4096)..<writeEnd])
                _ = try await call(target, routedData(.write(cob: cob, offset: offset + UInt64(first * 4096), data: bytes, syncWait: false, lock: owner), m)).unwrap()
                r.bytesWritten = UInt64(bytes.count)
            }
            if (last + 1) * 4096 > used {
                let from = offset + UInt64(max(used, first * 4096))
                _ = try await call(target, routedData(.free(cob: cob, offset: from, length: offset + UInt64(unitSize) - from, syncWait: false, lock: owner), m)).unwrap()
            }
            return r
        }
        guard let done else { throw TesseraError(.busy, "repair of object \(cob) group \(g): the lock at server \(links[target].id) could not be taken") }
        t.add(done)
        return t
    }

    /// Bytes into group `g`'s units that the data of its units other than `unit` reaches
    /// (whole 4 KiB blocks, at least one), from the checksums their servers keep.
    private func reach(_ cob: Fid, group g: UInt64, besides unit: Int) async throws -> Int {
        let offset = layout.cobOffset(group: g)
        let size = layout.unitSize
        let ends = try await concurrently(Array((0..<layout.width).filter { $0 != unit }), limit: layout.width) { v -> Int in
            let server = self.layout.server(group: g, unit: v)
            guard case .checksums(_, let crcs) = try await self.call(server, .checksums(cob: cob, offset: offset, length: UInt32(size), verify: false)).unwrap() else {
                throw TesseraError(.io, "repair of object \(cob) group \(g): malformed reply to CHECKSUMS from server \(self.links[server].id)")
            }
            return (crcs.lastIndex { $0 != CRC32C.zeroBlock } ?? 0) + 1
        }
        let blocks = ends.max() ?? 1
        return min(blocks * 4096, size)
    }

    /// Makes `cob` exist on server position `target`, under its lock of the whole cob there,
    /// if another server still has it (asked under the lock: a delete may have removed it
    /// everywhere since the walk listed it, and a CREATE after that would leave an object
    /// nothing names); whether it did.
    private func createIfElsewhere(_ target: Int, _ cob: Fid) async throws -> Bool {
        let owner = UInt64.random(in: 1...UInt64.max)
        let r = try await withLocks(cob, at: [target], range: 0..<Cluster.maxObjectOffset, owner: owner) { () async throws -> Bool in
            guard try await heldElsewhere(cob, than: target) else { return false }
            _ = try await call(target, .create(cobs: [cob], syncWait: false)).unwrap()
            return true
        }
        guard let r else { throw TesseraError(.busy, "repair of object \(cob): the lock at server \(links[target].id) could not be taken") }
        return r
    }

    /// Whether a server other than `target` has `cob` now.
    private func heldElsewhere(_ cob: Fid, than target: Int) async throws -> Bool {
        for s in links.indices where s != target {
            let found = await call(s, .extents(cob: cob, from: 0, limit: 1))
            if case .failure(.notFound, _) = found { continue }
            _ = try found.unwrap()
            return true
        }
        return false
    }

    /// Deletes `cob` on server position `target`, under its lock there, if no other server
    /// has it now (asked under the lock: a writer may have just made it elsewhere); whether
    /// it did.
    private func deleteIfOnlyOn(_ target: Int, _ cob: Fid) async throws -> Bool {
        let owner = UInt64.random(in: 1...UInt64.max)
        let m = currentMap.withLock { $0 }
        let range: Range<UInt64> = 0..<Cluster.maxObjectOffset
        let r = try await withLocks(cob, at: [target], range: range, owner: owner) { () async throws -> Bool in
            guard try await !heldElsewhere(cob, than: target) else { return false }
            _ = try await call(target, routedData(.free(cob: cob, offset: 0, length: UInt64(range.count), syncWait: false, lock: owner), m)).unwrap()
            return true
        }
        guard let r else { throw TesseraError(.busy, "repair of object \(cob): the lock at server \(links[target].id) could not be taken") }
        return r
    }
}
