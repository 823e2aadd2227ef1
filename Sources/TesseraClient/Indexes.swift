// Replicated indexes (the seed's DIX, docs/REPLICATION.md): each index lives on 2 of the
// servers, chosen by hashing its fid. A change goes to the head of the index's chain under
// the cluster map, which decides it, applies it and has the other replica apply it before
// answering; a read goes to the chain's serving replica. Every request names the map
// version it was routed by, and a server whose map disagrees refuses it (`staleMap`): the
// client then waits for a newer map and sends it again.
import TesseraCore

extension Cluster {
    /// The servers (positions) holding index `fid`, first replica first.
    public func replicas(of fid: Fid) -> [Int] { indexReplicas(of: fid, servers: links.count) }

    /// Index `fid`'s chain under the map requests are routed by now (server ids), and
    /// that map's version.
    public func chain(of fid: Fid) -> (chain: IndexChain, replicas: [Int], mapVersion: UInt64) {
        let m = routingMap()
        let ids = replicas(of: fid).map { links[$0].id }
        return (m.chain(replicas: ids), ids, m.version)
    }

    /// How long an index request is retried while its chain has no head, or the head does
    /// not answer: long enough for the map to fail a dead server (TTL + grace + a poll with
    /// the defaults) and route around it.
    static let routingWindow = Duration.seconds(30)

    /// The map requests are routed by: the newest seen, or, without a state service, every
    /// server online (version 0).
    func routingMap() -> ClusterMap {
        currentMap.withLock { $0 } ?? ClusterMap.everyoneOnline(links.map(\.id))
    }

    /// Sends `request` about index `fid` to the server its chain names (the head for a
    /// change, the serving replica for a read), routed by the map version; retries, waiting
    /// for a newer map, while the server refuses it as stale or cannot be reached. `retried`
    /// tells whether an earlier attempt may have taken effect: one that reached a server and
    /// whose answer was lost (the connection closed or timed out). An attempt that never
    /// left (no connection) or that a server refused as stale (checked before anything is
    /// decided) did not, so the answer to the last one is the whole story.
    private func routed(_ fid: Fid, _ request: Request, read: Bool) async throws -> (response: Response, retried: Bool) {
        let deadline = ContinuousClock.now + Self.routingWindow
        var last = ""
        var lost = false
        while true {
            let m = routingMap()
            let replicaIDs = replicas(of: fid).map { links[$0].id }
            let c = m.chain(replicas: replicaIDs)
            // Without a state service (version 0) no map will ever route around a dead
            // server, so a read tries the other replica at once: both hold every change
            // that was answered. A change still needs the head.
            var targets = [read ? c.serving : c.head].compactMap { $0 }
            if read, m.version == 0, let first = targets.first { targets += c.others(than: first) }
            if targets.isEmpty {
                last = "no replica of index \(fid) is online in cluster map version \(m.version) (replicas: servers \(replicaIDs.map(String.init).joined(separator: " and ")))"
            }
            for target in targets {
                guard let position = links.firstIndex(where: { $0.id == target }) else { continue }
                let (r, sent) = await send(position, .routed(mapVersion: m.version, request: request))
                switch r {
                case .failure(.staleMap, let message):
                    last = message
                case .failure(.closed, let message) where read && m.version == 0:
                    // Only a server that is gone: a slow tail may still be applying changes
                    // the head has, unanswered, and a read must not go back after one.
                    last = "server \(target): \(message)"
                    continue
                case .failure(let status, let message) where [.closed, .timedOut].contains(status):
                    last = "server \(target): \(message)"
                    lost = lost || sent
                default:
                    return (r, lost)
                }
                break
            }
            guard ContinuousClock.now < deadline else { throw TesseraError(.closed, "index \(fid): \(last)") }
            await newerMap(than: m.version, within: .milliseconds(250))
            if routingMap().version == m.version { await refreshMap() }
        }
    }

    /// Returns when the map is newer than `version`, or after `within`.
    func newerMap(than version: UInt64, within: Duration) async {
        let until = ContinuousClock.now + within
        while ContinuousClock.now < until {
            if routingMap().version > version { return }
            try? await Task.sleep(for: .milliseconds(10))
        }
    }

    /// Statuses of a change routed to its head.
    private func change(_ fid: Fid, _ request: Request) async throws -> (statuses: [Status], retried: Bool) {
        let (r, retried) = try await routed(fid, request, read: false)
        guard case .statuses(let statuses, _) = try r.unwrap() else { throw TesseraError(.io, "index \(fid): malformed reply to \(request.opcode)") }
        return (statuses, retried)
    }

    /// Creates index `fid` on its replicas; false if it existed already.
    @discardableResult
    public func createIndex(_ fid: Fid) async throws -> Bool {
        try await change(fid, .createIndexes([fid])).statuses[0] == .ok
    }

    /// Drops index `fid` with all its records; false if it did not exist.
    @discardableResult
    public func dropIndex(_ fid: Fid) async throws -> Bool {
        try await change(fid, .dropIndexes([fid])).statuses[0] == .ok
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

    /// Puts records into index `fid`. Per record: `.ok`, `.exists` (create-only and
    /// present) or `.tooLarge`. A create-only put sent again after a lost answer counts a
    /// record as ours (`.ok`) if the value stored is the one it put.
    @discardableResult
    public func put(_ fid: Fid, _ records: [Record], mode: PutMode = .overwrite, sync: Bool = false) async throws -> [Status] {
        var (statuses, retried) = try await change(fid, .put(index: fid, records: records, mode: mode, syncWait: sync))
        if retried && mode == .createOnly && statuses.contains(.exists) {
            let present = statuses.indices.filter { statuses[$0] == .exists }
            let stored = try await get(fid, present.map { records[$0].key })
            for (i, value) in zip(present, stored) where value == records[i].value { statuses[i] = .ok }
        }
        return statuses
    }

    /// Compare-and-put: if `key`'s value is `expected` (nil: absent), makes it `value` (nil:
    /// deletes it) and puts `also` in the same transaction. Sent again after a lost answer
    /// and then refused, it is done if the value stored is `value` (values should be unique
    /// to their writer), and of unknown outcome if not: the first may have taken effect and
    /// been changed since. A caller must not decide again from the value then stored as if
    /// its change had not been made.
    public func compareAndPut(_ fid: Fid, key: [UInt8], expected: [UInt8]?, value: [UInt8]?, also: [Record] = [], sync: Bool = false) async throws -> CASOutcome {
        let (r, retried) = try await routed(fid, .cas(index: fid, key: key, expected: expected, value: value, also: also, syncWait: sync), read: false)
        guard case .cas(let status, let current, _) = try r.unwrap() else { throw TesseraError(.io, "index \(fid): malformed reply to a compare-and-put") }
        switch status {
        case .ok: return .done
        case .conflict where retried: return current == value ? .done : .unknown(current: current)
        case .conflict: return .conflict(current: current)
        default: throw TesseraError(status.code ?? .io, "index \(fid): compare-and-put: \(status)")
        }
    }

    /// Deletes keys from index `fid` on both replicas. Per key: `.ok` or `.notFound`.
    @discardableResult
    public func delete(_ fid: Fid, _ keys: [[UInt8]], sync: Bool = false) async throws -> [Status] {
        try await change(fid, .delete(index: fid, keys: keys, syncWait: sync)).statuses
    }

    /// Deletes `deletes` then puts `puts` in index `fid`, in one transaction on each replica.
    /// Statuses: one per delete (`.ok`, `.notFound`), then one per put (`.ok`, `.tooLarge`).
    @discardableResult
    public func update(_ fid: Fid, deleting deletes: [[UInt8]], putting puts: [Record], sync: Bool = false) async throws -> [Status] {
        try await change(fid, .update(index: fid, deletes: deletes, puts: puts, syncWait: sync)).statuses
    }

    /// Values of `keys` in index `fid` (nil where absent), from its serving replica.
    public func get(_ fid: Fid, _ keys: [[UInt8]]) async throws -> [[UInt8]?] {
        guard case .values(let v) = try await routed(fid, .get(index: fid, keys: keys), read: true).response.unwrap(), v.count == keys.count else {
            throw TesseraError(.io, "index \(fid): malformed GET reply")
        }
        return v
    }

    /// Up to `limit` records from each start key (nil: the first key), from its serving replica.
    public func next(_ fid: Fid, from starts: [[UInt8]?], limit: Int, excludeStart: Bool = false) async throws -> [[Record]] {
        guard case .records(let r) = try await routed(fid, .next(index: fid, starts: starts, limit: UInt32(clamping: limit), excludeStart: excludeStart), read: true).response.unwrap(),
            r.count == starts.count
        else { throw TesseraError(.io, "index \(fid): malformed NEXT reply") }
        return r
    }

    /// Up to `limit` records of index `fid` in key order from `start` (the first key if
    /// nil), asking again after the last record of each answer (a server answers at most
    /// 10,000 records a request) until `limit` are read or the index ends.
    public func records(_ fid: Fid, from start: [UInt8]?, excludeStart: Bool = false, limit: Int) async throws -> [Record] {
        var out: [Record] = []
        var (from, exclude) = (start, excludeStart)
        while out.count < limit {
            let batch = try await next(fid, from: [from], limit: limit - out.count, excludeStart: exclude)[0]
            out += batch
            guard let last = batch.last else { break }
            (from, exclude) = (last.key, true)
        }
        return out
    }
}

/// What a compare-and-put did.
public enum CASOutcome: Sendable, Equatable {
    case done
    /// Not done: the value stored did not match (nil: absent).
    case conflict(current: [UInt8]?)
    /// Sent again after a lost answer and refused: it may or may not have taken effect;
    /// `current` is what is stored now.
    case unknown(current: [UInt8]?)
}
