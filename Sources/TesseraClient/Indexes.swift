// Replicated indexes (the seed's DIX): each index lives on 2 of the servers, chosen by
// hashing its fid. Changes go to both replicas in parallel and succeed when both do; reads
// go to the first replica that answers.
import TesseraCore

extension Cluster {
    /// The servers (positions) holding index `fid`, in the order reads try them.
    public func replicas(of fid: Fid) -> [Int] {
        let p = links.count
        guard p > 1 else { return [0] }
        // SplitMix64 finaliser over both halves: neighbouring fids spread over all pairs.
        var h = fid.hi &* 0x9E37_79B9_7F4A_7C15 ^ fid.lo
        h = (h ^ (h >> 30)) &* 0xBF58_476D_1CE4_E5B9
        h = (h ^ (h >> 27)) &* 0x94D0_49BB_1331_11EB
        h ^= h >> 31
        let first = Int(h % UInt64(p))
        return [first, (first + 1) % p]
    }

    /// Sends `request` to every replica of `fid` at once; throws the first failure.
    private func both(_ fid: Fid, _ request: Request) async throws -> [Response] {
        let servers = replicas(of: fid)
        let responses = await withTaskGroup(of: (Int, Response).self) { group in
            for (i, s) in servers.enumerated() { group.addTask { (i, await self.call(s, request)) } }
            var out = [Response](repeating: .done, count: servers.count)
            for await (i, r) in group { out[i] = r }
            return out
        }
        for (i, r) in responses.enumerated() {
            if case .failure(let status, let message) = r {
                throw TesseraError(status.code ?? .io, "index \(fid), replica on server \(links[servers[i]].id): \(message)")
            }
        }
        return responses
    }

    /// Tries the replicas in order until one answers without a transport failure.
    private func first(_ fid: Fid, _ request: Request) async throws -> Response {
        var last = ""
        for s in replicas(of: fid) {
            let r = await call(s, request)
            switch r {
            case .failure(let status, let message) where [.closed, .timedOut, .io, .checksum, .corrupt].contains(status):
                last = "server \(links[s].id): \(message)"
                continue
            default:
                return try r.unwrap()
            }
        }
        throw TesseraError(.closed, "index \(fid): no replica answered (\(last))")
    }

    /// Per record, the statuses of both replicas merged: the same status, or `.ok` if one
    /// replica had to catch up with the other.
    private func merged(_ responses: [Response]) throws -> [Status] {
        let lists = responses.map { r -> [Status] in
            if case .statuses(let s, _) = r { return s }
            return []
        }
        guard let firstList = lists.first, lists.allSatisfy({ $0.count == firstList.count }) else {
            throw TesseraError(.io, "replicas answered with different shapes")
        }
        return firstList.indices.map { i in
            let all = lists.map { $0[i] }
            return all.allSatisfy { $0 == all[0] } ? all[0] : (all.contains(.ok) ? .ok : all[0])
        }
    }

    /// Creates index `fid` on its replicas; false if it existed already.
    @discardableResult
    public func createIndex(_ fid: Fid) async throws -> Bool {
        try merged(try await both(fid, .createIndexes([fid])))[0] == .ok
    }

    /// Drops index `fid` with all its records; false if it did not exist.
    @discardableResult
    public func dropIndex(_ fid: Fid) async throws -> Bool {
        try merged(try await both(fid, .dropIndexes([fid])))[0] == .ok
    }

    /// Indexes of the cluster in fid order, after `after`, at most `limit`: the union of what
    /// every server that answers holds.
    public func listIndexes(after: Fid? = nil, limit: Int = 1000) async throws -> [Fid] {
        var all = Set<Fid>()
        var answered = 0
        var last = ""
        for s in links.indices {
            switch await call(s, .listIndexes(after: after, limit: UInt32(clamping: limit))) {
            case .fids(let f):
                answered += 1
                all.formUnion(f)
            case .failure(_, let m): last = m
            default: break
            }
        }
        guard answered >= max(1, links.count - 1) else { throw TesseraError(.closed, "too few servers answered to list every index: \(last)") }
        return Array(all.sorted().prefix(limit))
    }

    /// Puts records into index `fid` on both replicas. Per record: `.ok`, `.exists` (create-
    /// only and present) or `.tooLarge`.
    @discardableResult
    public func put(_ fid: Fid, _ records: [Record], mode: PutMode = .overwrite, sync: Bool = false) async throws -> [Status] {
        try merged(try await both(fid, .put(index: fid, records: records, mode: mode, syncWait: sync)))
    }

    /// Deletes keys from index `fid` on both replicas. Per key: `.ok` or `.notFound`.
    @discardableResult
    public func delete(_ fid: Fid, _ keys: [[UInt8]], sync: Bool = false) async throws -> [Status] {
        try merged(try await both(fid, .delete(index: fid, keys: keys, syncWait: sync)))
    }

    /// Deletes `deletes` then puts `puts` in index `fid`, in one transaction on each replica.
    /// Statuses: one per delete (`.ok`, `.notFound`), then one per put (`.ok`, `.tooLarge`).
    @discardableResult
    public func update(_ fid: Fid, deleting deletes: [[UInt8]], putting puts: [Record], sync: Bool = false) async throws -> [Status] {
        try merged(try await both(fid, .update(index: fid, deletes: deletes, puts: puts, syncWait: sync)))
    }

    /// Values of `keys` in index `fid` (nil where absent), from the first replica that answers.
    public func get(_ fid: Fid, _ keys: [[UInt8]]) async throws -> [[UInt8]?] {
        guard case .values(let v) = try await first(fid, .get(index: fid, keys: keys)), v.count == keys.count else {
            throw TesseraError(.io, "index \(fid): malformed GET reply")
        }
        return v
    }

    /// Up to `limit` records from each start key (nil: the first key), from one replica.
    public func next(_ fid: Fid, from starts: [[UInt8]?], limit: Int, excludeStart: Bool = false) async throws -> [[Record]] {
        guard case .records(let r) = try await first(fid, .next(index: fid, starts: starts, limit: UInt32(clamping: limit), excludeStart: excludeStart)),
            r.count == starts.count
        else { throw TesseraError(.io, "index \(fid): malformed NEXT reply") }
        return r
    }
}
