// How object writes reach their servers under the cluster map (REPLICATION.md, "Object
// data"):
//
// - a unit on a `failed` server is skipped; a group with more than K of its units on
//   failed servers is refused before anything is sent, naming them;
// - a unit on a `repairing` server is written whole (over the stripe the change covers)
//   under that server's lock of the unit's range, taken before any unit of the group is
//   sent and given back after the last is answered, so its repair never reads half a write;
// - a server that does not answer is tried again until it answers or the map fails it
//   (`routingWindow`), a server that says the map is stale once a newer map has come;
// - every write and free is routed by the map version, so a server that knows a newer map
//   refuses a writer that would skip a server which is back.
//
// Without a state service (no map) every server counts as online and nothing is skipped.
import TesseraCore

extension Cluster {
    /// What the map says of server `server` (a position) for object data.
    func dataState(_ server: Int, in m: ClusterMap?) -> ClusterMap.ServerState {
        m?.server(links[server].id)?.state ?? .online
    }

    /// `request` routed by the map `m` (sent as it is without one).
    func routedData(_ request: Request, _ m: ClusterMap?) -> Request {
        guard let m else { return request }
        return .routed(mapVersion: m.version, request: request)
    }

    /// Sends the unit writes of one group change: `writes` (unit, offset in the unit,
    /// bytes), where every unit's content over the stripe the change covers is `stripes`
    /// (data units then parity, starting at unit offset `stripeAt`). See the top of this file.
    func send(_ object: Fid, group g: UInt64, _ writes: [(unit: Int, at: Int, bytes: [UInt8])], stripeAt: Int, stripes: [[UInt8]], syncWait: Bool) async throws {
        let offset = layout.cobOffset(group: g)
        let servers = (0..<layout.width).map { layout.server(group: g, unit: $0) }
        var done = Set<Int>()
        // Units skipped (failed) or written whole (repairing) by an earlier attempt: a repair
        // may have read the group half written meanwhile, so each goes whole with every later
        // attempt, whatever its server's state now (unless failed).
        var whole = Set<Int>()
        let deadline = ContinuousClock.now + Self.routingWindow
        var last = ""
        while true {
            let m = currentMap.withLock { $0 }
            let states = servers.map { dataState($0, in: m) }
            let failed = states.indices.filter { states[$0] == .failed }
            guard failed.count <= layout.parityUnits else {
                let names = failed.map { "server \(links[servers[$0]].id)" }.joined(separator: ", ")
                throw TesseraError(.closed, "object \(object) group \(g) cannot be written: \(names) failed in the cluster map (version \(m?.version ?? 0)); a group survives at most \(layout.parityUnits)")
            }
            let repairing = states.indices.filter { states[$0] == .repairing && !stripes[$0].isEmpty }
            let wholeNow = Set(repairing).union(whole.filter { states[$0] != .failed && !stripes[$0].isEmpty })
            var sends = writes.filter { !done.contains($0.unit) && states[$0.unit] == .online && !wholeNow.contains($0.unit) && !$0.bytes.isEmpty }
            // Whole units go with every attempt that sends anything (see `whole`).
            if !sends.isEmpty || wholeNow.contains(where: { !done.contains($0) }) {
                sends += wholeNow.sorted().map { (unit: $0, at: stripeAt, bytes: stripes[$0]) }
            }
            whole.formUnion(repairing)
            whole.formUnion(failed)
            guard !sends.isEmpty else { return }
            let owner = repairing.isEmpty ? 0 : UInt64.random(in: 1...UInt64.max)
            let unitSize = UInt64(layout.unitSize)
            let requests = sends.map { w in
                (tag: w.unit, server: servers[w.unit],
                 request: Request.write(cob: object, offset: offset + UInt64(w.at), data: w.bytes, syncWait: syncWait, lock: repairing.contains(w.unit) ? owner : 0))
            }
            let (answered, retry) = try await attempt(
                object, requests, lockAt: repairing.map { servers[$0] }, range: offset..<(offset + unitSize), owner: owner, map: m, last: &last
            ) { "object \(object) group \(g) unit \($0) on server \(self.links[servers[$0]].id)" }
            done.formUnion(answered)
            if !retry { return }
            guard ContinuousClock.now < deadline else { throw TesseraError(.closed, "object \(object) group \(g): \(last)") }
            await waitForMap(after: m)
        }
    }

    /// Sends FREE of cob range `range` of `object` to every server that is not failed (a
    /// failed one is repaired later), under the lock of the range at repairing ones, routed
    /// by the map; retries as `send` does.
    func freeEverywhere(_ object: Fid, _ range: Range<UInt64>) async throws {
        var done = Set<Int>()
        // Servers repairing in an earlier attempt: freed again with every later one.
        var again = Set<Int>()
        let deadline = ContinuousClock.now + Self.routingWindow
        var last = ""
        while true {
            let m = currentMap.withLock { $0 }
            let repairing = links.indices.filter { dataState($0, in: m) == .repairing }
            let todo = links.indices.filter { s in
                dataState(s, in: m) != .failed && (!done.contains(s) || repairing.contains(s) || again.contains(s))
            }
            guard todo.contains(where: { !done.contains($0) }) else { return }
            again.formUnion(repairing)
            // The locks of every repairing server first, held until every FREE is answered,
            // as for a group write (the top of this file).
            let owner = repairing.isEmpty ? 0 : UInt64.random(in: 1...UInt64.max)
            let requests = todo.map { s in
                (tag: s, server: s, request: Request.free(cob: object, offset: range.lowerBound, length: UInt64(range.count), syncWait: false, lock: repairing.contains(s) ? owner : 0))
            }
            let (answered, retry) = try await attempt(object, requests, lockAt: repairing, range: range, owner: owner, map: m, last: &last) {
                "freeing object \(object) on server \(self.links[$0].id)"
            }
            done.formUnion(answered)
            if !retry { return }
            guard ContinuousClock.now < deadline else { throw TesseraError(.closed, "freeing object \(object): \(last)") }
            await waitForMap(after: m)
        }
    }

    /// One attempt of `send` or `freeEverywhere`: `requests` (each with a tag for the caller)
    /// sent in parallel, routed by `m`, under the locks of `range` at `lockAt` for `owner`.
    /// Returns the tags answered, and whether to try again (a lock not taken, or a refusal
    /// `retried` says to wait out: its reason goes to `last`); any other failure throws,
    /// named by `name(tag)`.
    private func attempt(
        _ object: Fid, _ requests: [(tag: Int, server: Int, request: Request)], lockAt: [Int], range: Range<UInt64>, owner: UInt64, map m: ClusterMap?,
        last: inout String, name: (Int) -> String
    ) async throws -> (answered: [Int], retry: Bool) {
        let outcome = try await withLocks(object, at: lockAt, range: range, owner: owner) {
            await withTaskGroup(of: (Int, Response).self) { group in
                for r in requests {
                    group.addTask { (r.tag, await self.call(r.server, self.routedData(r.request, m))) }
                }
                var out: [(Int, Response)] = []
                for await r in group { out.append(r) }
                return out
            }
        }
        guard let outcome else { return ([], true) }
        var answered: [Int] = []
        var retry = false
        for (tag, r) in outcome {
            switch r {
            case .statuses: answered.append(tag)
            case .failure(let status, let message) where Self.retried(status, m):
                last = "\(name(tag)): \(message)"
                retry = true
            case .failure(let status, let message):
                throw TesseraError(status.code ?? .io, "\(name(tag)): \(message)")
            default:
                throw TesseraError(.io, "\(name(tag)): unexpected reply \(r)")
            }
        }
        return (answered, retry)
    }

    /// Whether a write refused with `status` under map `m` is sent again: a server that
    /// does not answer, until the map fails it (never without a map, which never would),
    /// a stale map, a lock another writer holds.
    static func retried(_ status: Status, _ m: ClusterMap?) -> Bool {
        switch status {
        case .closed, .timedOut: return m != nil
        case .staleMap, .busy: return true
        default: return false
        }
    }

    /// Runs `body` holding the lock of `range` of `object` at each of `servers` for `owner`,
    /// and gives them back after; nil (body not run) if a lock could not be taken because
    /// a server did not answer or stayed busy. Any other refusal throws.
    func withLocks<R>(_ object: Fid, at servers: [Int], range: Range<UInt64>, owner: UInt64, _ body: () async throws -> R) async throws -> R? {
        guard !servers.isEmpty else { return try await body() }
        var held: [Int] = []
        defer {
            let taken = held
            if !taken.isEmpty {
                Task { for s in taken { _ = await self.call(s, .unlock(cob: object, owner: owner)) } }
            }
        }
        for s in servers {
            switch await call(s, .lock(cob: object, offset: range.lowerBound, length: UInt64(range.count), owner: owner)) {
            case .done: held.append(s)
            case .failure(let status, _) where [.closed, .timedOut, .busy].contains(status): return nil
            case .failure(let status, let message): throw TesseraError(status.code ?? .io, "locking object \(object) on server \(links[s].id): \(message)")
            default: throw TesseraError(.io, "locking object \(object) on server \(links[s].id): unexpected reply")
            }
        }
        let result = try await body()
        // Given back before returning: the repair waits for it.
        for s in held { _ = await call(s, .unlock(cob: object, owner: owner)) }
        held = []
        return result
    }

    /// Returns once the map is newer than `m`, reading it again if none came within a
    /// quarter of a second; at once without a state service (a pause instead).
    func waitForMap(after m: ClusterMap?) async {
        guard let m else {
            try? await Task.sleep(for: .milliseconds(250))
            return
        }
        await newerMap(than: m.version, within: .milliseconds(250))
        if routingMap().version == m.version { await refreshMap() }
    }
}
