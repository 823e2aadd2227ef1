// Index replication at one server (docs/REPLICATION.md): the routed index requests a client
// sends, checked against this server's cluster map; changes decided and applied here as
// the head of an index's chain and sent down an ordered stream to the other member; the
// stream's entries applied here as a tail, in order; reads answered as the serving replica.
//
// Everything else (IOS, SYNC, STATISTICS, unrouted requests of a cluster without a state
// service) goes to the server's node unchanged.
import TesseraCore
import TesseraEngine

/// How this server reaches another one: a connection that answers requests (an RPC client),
/// opened on demand by whoever runs the server.
public typealias PeerConnector = @Sendable (_ server: Int) async throws -> any RequestHandler & PeerConnection


/// What the replication needs to know of this server's place in the cluster.
public struct ReplicationSettings: Sendable {
    /// This server's id.
    public var me: Int
    /// Every server's id, sorted: positions in it place indexes.
    public var servers: [Int]
    /// False when the cluster has a state service (maps come from it, unrouted changes are
    /// refused); true for a cluster without one, which runs under `everyoneOnline`.
    public var isStatic: Bool

    public init(me: Int, servers: [Int], isStatic: Bool) {
        self.me = me
        self.servers = servers.sorted()
        self.isStatic = isStatic
    }
}

/// A server's node behind the replication protocol.
public final class ReplicatedNode: RequestHandler {
    public let node: ServerNode
    let settings: ReplicationSettings
    private let connect: PeerConnector
    private let map: Locked<ClusterMap>
    /// This server's session while valid (nil: lapsed or not yet taken); nil-returning
    /// always for a cluster without a state service, where sessions are not checked.
    private let session: @Sendable () -> UInt64?
    /// Whether this process has ever held a session (a lapsed one renewed since is still
    /// this process: its units are as current as they were).
    private let heldSession: @Sendable (UInt64) -> Bool
    private let streams = Locked<[Int: ReplicationStream]>([:])
    /// Connections to peers for SYNC, opened on demand.
    private let links = Locked<[Int: any RequestHandler & PeerConnection]>([:])
    /// Per source server: the stream epoch being applied and the next number expected.
    private let incoming = Locked<[Int: (epoch: UInt64, next: UInt64)]>([:])
    /// Object data changes admitted and not yet applied (a large WRITE waits for the IO
    /// threads after its check), by the map version they were admitted under.
    private let unapplied = Locked<[UInt64: Int]>([:])

    /// The catalogue of indexes changed while a replica was not a member of their chain
    /// (REPLICATION.md, "What a failed server missed"): key u32 server id (big-endian) then
    /// the index fid (16 bytes), empty value.
    public static let missedCatalogue = Fid(hi: CatalogueService.reservedHi, lo: 0x4D49_5353)

    /// Makes the `missed` catalogue if the image has none yet.
    public init(
        node: ServerNode, settings: ReplicationSettings, session: @escaping @Sendable () -> UInt64? = { nil },
        heldSession: @escaping @Sendable (UInt64) -> Bool = { _ in false }, connect: @escaping PeerConnector
    ) throws {
        self.node = node
        self.settings = settings
        self.session = session
        self.heldSession = heldSession
        self.connect = connect
        map = Locked(ClusterMap.everyoneOnline(settings.servers))
        let engine = node.catalogues.engine
        if try !engine.catalogues().contains(Self.missedCatalogue) {
            let (_, tx) = try engine.write { t in try t.createCatalogue(Self.missedCatalogue) }
            try engine.waitLogged(tx)
        }
        // The mark of a clean stop is read and removed before anything is served.
        let (clean, tx) = try engine.write { t in try t.delete(Self.missedCatalogue, Self.cleanStopKey) }
        try engine.waitLogged(tx)
        stoppedCleanly = clean && engine.recoveredGroups == 0
    }

    /// The last run of this server stopped cleanly (`stopCleanly`): nothing it applied or
    /// sent is missing anywhere.
    public let stoppedCleanly: Bool

    /// The key of the clean-stop mark in the `missed` catalogue (no server-and-fid key is
    /// this short).
    static let cleanStopKey: [UInt8] = Array("clean".utf8)

    /// At a stop, after the RPC server has drained: marks the image as stopped cleanly if
    /// every stream entry was applied by its peer, so the next run keeps its place.
    public func stopCleanly() throws {
        guard streams.withLock({ $0.values.allSatisfy { $0.isDrained } }) else { return }
        let engine = node.catalogues.engine
        let (_, tx) = try engine.write { t in try t.put(Self.missedCatalogue, Self.cleanStopKey, []) }
        try engine.waitLogged(tx)
    }

    /// Takes a newer cluster map (from the state service's watch).
    public func update(_ newer: ClusterMap) {
        let taken = map.withLock { m -> Bool in
            guard newer.version > m.version else { return false }
            m = newer
            return true
        }
        if taken { for s in streams.withLock({ Array($0.values) }) { s.mapChanged() } }
    }

    public var mapVersion: UInt64 { map.withLock { $0.version } }

    var currentMap: ClusterMap { map.withLock { $0 } }

    /// The ids of index `fid`'s replicas, first replica first.
    func replicas(of fid: Fid) -> [Int] {
        indexReplicas(of: fid, servers: settings.servers.count).map { settings.servers[$0] }
    }

    func chain(_ fid: Fid, in m: ClusterMap) -> IndexChain { m.chain(replicas: replicas(of: fid)) }

    /// Why this server may not act under map `m` now, if it may not: its session lapsed, or
    /// the map does not admit it under the session it holds.
    private func notAdmitted(_ m: ClusterMap) -> TesseraError? {
        if settings.isStatic { return nil }
        guard let mine = session() else {
            return TesseraError(.staleMap, "server \(settings.me) has no valid session: it serves no index until it has one")
        }
        guard let entry = m.server(settings.me), entry.state != .failed else {
            return TesseraError(.staleMap, "server \(settings.me) is failed in map version \(m.version)")
        }
        if let admitted = entry.session, admitted != mine {
            return TesseraError(.staleMap, "server \(settings.me) restarted: map version \(m.version) has not admitted its new session yet")
        }
        return nil
    }

    // MARK: RequestHandler

    public func handleImmediately(_ request: Request) -> Response? {
        switch request {
        case .replicate(let source, let epoch, let seq, let version, let entries):
            return applyStream(source: source, epoch: epoch, seq: seq, version: version, entries: entries)
        case .routed(let version, let inner) where inner.isObjectData:
            // A newer map than ours: `handle` waits for our watch to catch up.
            guard version <= mapVersion else { return nil }
            return admitting(under: version) {
                if let refused = dataRefusal(inner, routedBy: version) { return Response(refused) }
                return node.handleImmediately(inner)
            }
        case .routed: return nil
        default:
            if let refused = refuseUnrouted(request) { return refused }
            return node.handleImmediately(request)
        }
    }

    public func handleImmediately(_ requests: ArraySlice<Request>) -> [Response] {
        var out: [Response] = []
        var i = requests.startIndex
        while i < requests.endIndex {
            if requests[i].isReplication || refuseUnrouted(requests[i]) != nil {
                guard let r = handleImmediately(requests[i]) else { return out }
                out.append(r)
                i += 1
                continue
            }
            // A run of plain requests: the node answers what it can at once (and makes a run
            // of changes in one transaction).
            var end = i
            while end < requests.endIndex, !requests[end].isReplication, refuseUnrouted(requests[end]) == nil { end += 1 }
            let answered = node.handleImmediately(requests[i..<end])
            out += answered
            if answered.count < end - i { return out }
            i = end
        }
        return out
    }

    public func read(_ request: Request, into destination: UnsafeMutableRawBufferPointer) async -> Response? {
        if let refused = dataRefusal(request, routedBy: nil) { return Response(refused) }
        return await node.read(request, into: destination)
    }

    public func handle(_ request: Request) async -> Response {
        switch request {
        case .routed(let version, let inner) where inner.isObjectData:
            do { _ = try await agreed(version) } catch { return Response(error) }
            return await applying(inner, admittedUnder: version) {
                self.dataRefusal(inner, routedBy: version).map { Response($0) }
            }
        case .checksums:
            // The repair walk asks this under the repaired server's lock before it reads the
            // group here: a change admitted under the map before it was repairing, whose
            // writer therefore took no lock, must be in what the walk reads.
            await appliedBefore(mapVersion)
            return await node.handle(request)
        case .routed(let version, let inner):
            do { return try await routed(version, inner) } catch { return Response(error) }
        case .sync(let transactions) where transactions.isEmpty:
            // From a head: everything applied here so far is to be logged.
            do {
                try await node.catalogues.engine.waitLogged(node.catalogues.engine.currentTransaction)
                return await node.handle(.sync(transactions: []))
            } catch { return Response(error) }
        case .sync:
            // From a client: its changes here are logged, and so is what this server had the
            // other members of its chains apply.
            let local = await node.handle(request)
            guard case .done = local else { return local }
            do {
                for peer in streams.withLock({ Array($0.keys) }) { try await syncPeer(peer) }
                return local
            } catch { return Response(error) }
        case .replicate(let source, let epoch, let seq, let version, let entries):
            return applyStream(source: source, epoch: epoch, seq: seq, version: version, entries: entries)
        case .repair(let target, let version, let after, let limit):
            do { return .repaired(try await repair(to: target, under: version, after: after, limit: limit)) } catch { return Response(error) }
        default:
            let version = mapVersion
            return await applying(request, admittedUnder: version) { self.refuseUnrouted(request) }
        }
    }

    /// Has the node apply `request` unless `refusal` (checked first) says no; an object data
    /// change is counted among those admitted under map `version` from before that check
    /// until it is applied (`appliedBefore`).
    private func applying(_ request: Request, admittedUnder version: UInt64, unless refusal: () -> Response?) async -> Response {
        let counted = request.isObjectData && request.opcode != .read
        if counted { admit(version) }
        defer { if counted { applied(version) } }
        if let refused = refusal() { return refused }
        return await node.handle(request)
    }

    /// `applying` for a change made at once (or not made: nil).
    private func admitting(under version: UInt64, _ body: () -> Response?) -> Response? {
        admit(version)
        defer { applied(version) }
        return body()
    }

    private func admit(_ version: UInt64) {
        unapplied.withLock { $0[version, default: 0] += 1 }
    }

    private func applied(_ version: UInt64) {
        unapplied.withLock {
            $0[version, default: 1] -= 1
            if $0[version] == 0 { $0[version] = nil }
        }
    }

    /// Returns once every object data change admitted under a map older than `version` is
    /// applied (none is admitted under one once this server holds `version`).
    private func appliedBefore(_ version: UInt64) async {
        while unapplied.withLock({ u in u.keys.contains { $0 < version } }) {
            try? await Task.sleep(for: .milliseconds(1))
        }
    }

    /// With a state service, index changes must come routed: one sent straight to a
    /// replica would bypass its chain. Object data requests this server must not serve now
    /// are refused too (`dataRefusal`).
    private func refuseUnrouted(_ request: Request) -> Response? {
        guard !settings.isStatic else { return nil }
        if let refused = dataRefusal(request, routedBy: nil) { return Response(refused) }
        switch request {
        case .createIndexes, .dropIndexes, .put, .delete, .update, .cas:
            return .failure(.invalidArgument, "index changes must be routed through the index's chain (docs/REPLICATION.md)")
        default: return nil
        }
    }

    // MARK: Object data (REPLICATION.md, "Object data")

    /// Why this server must not serve object data request `request` now, routed by map
    /// version `version` (nil: sent plain), if it must not:
    /// - a READ, unless this server is `online` under the session it holds: a server that
    ///   restarted, or is being repaired, may hold units a crash or a failure left stale;
    /// - a WRITE, FREE or CREATE while it is not admitted, or routed by another map version
    ///   than ours (a writer that thinks a server failed must not skip it once it is back);
    /// - a WRITE or FREE while it is `repairing`, unless its sender holds the lock of the
    ///   range here, so the repair never sees half a group write.
    func dataRefusal(_ request: Request, routedBy version: UInt64?) -> TesseraError? {
        guard !settings.isStatic, request.isObjectData else { return nil }
        let m = currentMap
        // The map a server starts with (version 0, everyone online) is no map: until the
        // state service's comes, this process cannot know whether it was admitted, and it
        // serves as soon as it listens (a restarted server's units may be stale).
        guard m.version > 0 else {
            return TesseraError(.staleMap, "server \(settings.me) has no cluster map yet: it serves no object data until the state service's map admits it")
        }
        guard let entry = m.server(settings.me), entry.state != .failed else {
            return TesseraError(.staleMap, "server \(settings.me) is failed in map version \(m.version)")
        }
        // Unlike an index, a unit needs no valid session to be served: only this process
        // must be the one the map admitted, under a session it holds or held (a lapsed one
        // renewed since is this process still: etcd down for everyone, say). A map that
        // names no session for it (a cluster's first, before the HA role saw the servers)
        // admits no process yet.
        guard let admitted = entry.session, admitted == session() || heldSession(admitted) else {
            return TesseraError(.staleMap, "server \(settings.me) restarted: map version \(m.version) has not admitted it yet")
        }
        let state = entry.state
        let range: Range<UInt64>
        let owner: UInt64
        switch request {
        case .read:
            guard state == .online else {
                return TesseraError(.staleMap, "server \(settings.me) is \(state.rawValue) in map version \(m.version): it serves no object data until it is online")
            }
            return nil
        case .write(_, let offset, let data, _, let lock):
            guard offset <= IOService.maxOffset else { return nil }  // the IO service refuses it
            range = offset..<(offset + UInt64(data.count))
            owner = lock
        case .free(_, let offset, let length, _, let lock):
            guard offset <= IOService.maxOffset else { return nil }
            range = offset..<(offset + min(length, IOService.maxOffset - offset))
            owner = lock
        default:
            range = 0..<0
            owner = 0
        }
        if let version, version != m.version {
            return TesseraError(.staleMap, "server \(settings.me) has map version \(m.version), the write was routed by version \(version)")
        }
        if state == .repairing, let cob = request.cob, !range.isEmpty, !node.locks.holds(cob, range, owner: owner) {
            return TesseraError(.staleMap, "server \(settings.me) is repairing (map version \(m.version)): a write here must hold the lock of its range")
        }
        return nil
    }

    // MARK: Routed requests

    private func routed(_ version: UInt64, _ inner: Request) async throws -> Response {
        guard let index = inner.index else { throw TesseraError(.invalidArgument, "a routed request must name one index: \(inner.opcode)") }
        let m = try await agreed(version)
        let c = chain(index, in: m)
        if inner.isIndexRead {
            // Without a state service a client reads from either member when the serving
            // one does not answer: both hold every change that was answered.
            guard c.serving == settings.me || (settings.isStatic && c.others(than: -1).contains(settings.me)) else {
                throw TesseraError(.staleMap, "server \(settings.me) does not serve reads of index \(index) under map version \(m.version)")
            }
            let (response, tx) = try readLocally(inner)
            // The only member of a replicated index: what a read saw must be logged before
            // it is told (a crash of this server must not take back what someone read).
            if isDegraded(index, c) { try await node.catalogues.engine.waitLogged(tx) }
            return response
        }
        guard c.head == settings.me else {
            throw TesseraError(.staleMap, "server \(settings.me) is not the head of index \(index) under map version \(m.version)")
        }
        return try await change(inner, index: index, chain: c, map: m)
    }

    /// The map to act under for a request routed by `version`: ours if the versions agree;
    /// a request with a newer one waits briefly for our watch to catch up.
    private func agreed(_ version: UInt64) async throws -> ClusterMap {
        var m = currentMap
        if version > m.version {
            let deadline = ContinuousClock.now + .seconds(2)
            while version > m.version, ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
                m = currentMap
            }
        }
        guard version == m.version else {
            throw TesseraError(.staleMap, "server \(settings.me) has map version \(m.version), the request was routed by version \(version)")
        }
        if let refused = notAdmitted(m) { throw refused }
        return m
    }

    /// The index has two replicas and its chain has one member.
    private func isDegraded(_ index: Fid, _ c: IndexChain) -> Bool {
        replicas(of: index).count > 1 && c.others(than: settings.me).isEmpty
    }

    private func readLocally(_ request: Request) throws -> (Response, TxId) {
        let engine = node.catalogues.engine
        let tx = engine.currentTransaction
        switch request {
        case .get(let index, let keys):
            return (.values(try keys.map { try engine.get(index, $0) }), tx)
        case .next(let index, let starts, let limit, let excludeStart):
            let n = min(Int(limit), CatalogueService.maxNext)
            return (.records(try starts.map { start in
                try engine.scan(index, from: start, inclusive: !excludeStart || start == nil, limit: n).map { Record(key: $0.key, value: $0.value) }
            }), tx)
        default: throw TesseraError(.invalidArgument, "not an index read: \(request.opcode)")
        }
    }

    /// Decides and applies a change as the head of `chain`, sends its effect down the stream
    /// to the other member, and answers once that member has applied it (or, alone, once it
    /// is logged).
    private func change(_ request: Request, index: Fid, chain: IndexChain, map m: ClusterMap) async throws -> Response {
        let engine = node.catalogues.engine
        let others = chain.others(than: settings.me)
        let missed = settings.isStatic ? [] : chain.missing
        let (operations, payload) = CatalogueService.size(of: request)
        guard operations <= Engine.maxOperationsPerTransaction - missed.count else {
            throw TesseraError(.tooLarge, "\(operations) records in one request; at most \(Engine.maxOperationsPerTransaction - missed.count)")
        }
        var reserved: [(ReplicationStream, UInt64)] = []
        let decided: (response: Response, effect: StreamEntry)
        let tx: TxId
        do {
            (decided, tx) = try engine.write(credit: engine.credit(operations: operations + missed.count, payloadBytes: payload)) { t in
                let d = try node.catalogues.decide(request, t)
                for id in missed { _ = try t.put(Self.missedCatalogue, Self.missedKey(id, index), []) }
                // Numbered last, in the engine's order of transactions: nothing after this throws.
                reserved = others.map { id in
                    let s = stream(to: id)
                    return (s, s.reserve())
                }
                return d
            }
        } catch {
            for (s, seq) in reserved { s.fill(seq, .change(index: index, deletes: [], puts: []), mapVersion: m.version) }
            throw error
        }
        for (s, seq) in reserved { s.fill(seq, decided.effect, mapVersion: m.version) }
        var alone = isDegraded(index, chain)
        for (s, seq) in reserved {
            do { try await s.acknowledged(seq) } catch let e as TesseraError where e.code == .closed {
                // The member left the chain (failed in a newer map) before applying it: its
                // repair will copy this index.
                _ = try engine.write { t in try t.put(Self.missedCatalogue, Self.missedKey(s.peer, index), []) }
                alone = true
            }
        }
        if request.waitsLogged && !alone {
            // Both logs at once: the peers' SYNCs go out while this server's group is logged.
            try await withThrowingTaskGroup(of: Void.self) { group in
                for id in others { group.addTask { try await self.syncPeer(id) } }
                try await engine.waitLogged(tx)
                try await group.waitForAll()
            }
        } else if alone || request.changesIndexes {
            try await engine.waitLogged(tx)
        }
        return decided.response.with(transaction: tx.group)
    }

    static func missedKey(_ server: Int, _ index: Fid) -> [UInt8] {
        withUnsafeBytes(of: UInt32(server).bigEndian) { Array($0) } + index.bytes
    }

    /// Has `peer` log everything it has applied: what this server sent it is durable there.
    /// A peer the map has failed is skipped (it left the chains).
    private func syncPeer(_ peer: Int) async throws {
        if !settings.isStatic && currentMap.server(peer)?.state == .failed { return }
        var link = links.withLock { $0[peer] }
        if link == nil || link?.isActive == false {
            let made = try await connect(peer)
            links.withLock { $0[peer] = made }
            link = made
        }
        let r = await link!.handle(.sync(transactions: []))
        if case .failure(.closed, _) = r {
            links.withLock { _ = $0.removeValue(forKey: peer) }
            if !settings.isStatic && currentMap.server(peer)?.state == .failed { return }
        }
        _ = try r.unwrap()
    }

    private func stream(to peer: Int) -> ReplicationStream {
        streams.withLock { s in
            if let existing = s[peer] { return existing }
            let made = ReplicationStream(source: settings.me, peer: peer, connect: connect) { [weak self] in
                guard let self else { return true }
                let m = self.currentMap
                return !self.settings.isStatic && m.server(peer)?.state == .failed
            }
            s[peer] = made
            return made
        }
    }

    // MARK: Repair (REPLICATION.md, "Repair")

    /// Records a repair walk compares (and copies) at a time.
    static let repairChunk = 1000
    /// Records after which a REPAIR step ends (at the end of an index).
    static let repairStepRecords: UInt64 = 100_000

    /// Walks, in fid order after `after`, up to `limit` of the indexes this server heads
    /// with `target` as its other member: each in key-order chunks sent down the stream
    /// among the changes, a `compare` of each chunk and a `replace` where it differs. A walk
    /// is idempotent, so a step cut short is simply walked again. Under map `version` only:
    /// a walker whose map lags would not see `target` in its chains and walk nothing.
    /// A step also ends after an index once `repairStepRecords` were compared.
    private func repair(to target: Int, under version: UInt64, after: Fid?, limit: Int) async throws -> RepairStep {
        let engine = node.catalogues.engine
        let m = try await agreed(version)
        var step = RepairStep()
        let indexes = try engine.catalogues().filter { index in index.hi != CatalogueService.reservedHi && after.map { index > $0 } ?? true }.sorted()
        for index in indexes {
            let c = chain(index, in: m)
            guard c.head == settings.me, c.tail == target else { continue }
            if step.indexes == max(limit, 1) || step.records >= Self.repairStepRecords { return step }
            let s = stream(to: target)
            // The index first, so an empty one exists there too.
            try await s.acknowledged(try reserved(s) { _ in .createIndex(index) })
            var from: [UInt8] = []
            while true {
                // A chunk read and numbered in one engine critical section: the peer applies
                // it after every change made before it and before every later one.
                var last: [UInt8]?
                var more = false
                var compared = 0
                let entry = try reserved(s) { t -> StreamEntry in
                    let records = try t.scan(index, from: from, inclusive: true, limit: Self.repairChunk + 1)
                    more = records.count > Self.repairChunk
                    let chunk = records.prefix(Self.repairChunk).map { Record(key: $0.key, value: $0.value) }
                    last = more ? chunk.last?.key : nil
                    compared = chunk.count
                    let (count, digest) = CatalogueService.digest(of: chunk)
                    return .compare(index: index, from: from, to: last, count: count, digest: digest)
                }
                if try await s.outcome(entry) == .conflict {
                    let (rangeFrom, rangeTo) = (from, last)
                    var copied = 0
                    let replaced = try reserved(s) { t in
                        let records = try CatalogueService.range(index, rangeFrom, rangeTo, t)
                        copied = records.count
                        return .replace(index: index, from: rangeFrom, to: rangeTo, records: records)
                    }
                    try await s.acknowledged(replaced)
                    step.copied += UInt64(copied)
                    repairCounts.withLock { $0.copied += UInt64(copied) }
                }
                step.records += UInt64(compared)
                repairCounts.withLock { $0.records += UInt64(compared) }
                guard more, let last else { break }
                from = last + [0]
            }
            // Its missed note goes: the peer's replica equals this one as of the walk's end.
            _ = try engine.write { t in try t.delete(Self.missedCatalogue, Self.missedKey(target, index)) }
            step.indexes += 1
            step.next = index
            repairCounts.withLock { $0.indexes += 1 }
        }
        step.next = nil
        return step
    }

    /// What this server's repair walks have done since it started (for the metrics).
    public var repairTotals: RepairStep { repairCounts.withLock { $0 } }
    private let repairCounts = Locked(RepairStep())

    /// Makes a stream entry from what `body` reads, numbering it in the same engine critical
    /// section (a transaction that changes nothing), and fills it.
    private func reserved(_ s: ReplicationStream, _ body: (Transaction) throws -> StreamEntry) throws -> UInt64 {
        let engine = node.catalogues.engine
        var seq: UInt64 = 0
        let (entry, _) = try engine.write { t -> StreamEntry in
            let e = try body(t)
            seq = s.reserve()
            return e
        }
        s.fill(seq, entry, mapVersion: mapVersion)
        return seq
    }

    // MARK: The stream, as a receiver

    /// Applies entries `seq…` of `source`'s stream epoch `epoch`, in one transaction, in
    /// order; each must come from the head of its index's chain under this server's map.
    private func applyStream(source: Int, epoch: UInt64, seq: UInt64, version: UInt64, entries: [StreamEntry]) -> Response {
        let m = currentMap
        if version > m.version {
            return .failure(.staleMap, "server \(settings.me) has map version \(m.version), the stream entry was sent under \(version)")
        }
        if let refused = notAdmitted(m) { return Response(refused) }
        for e in entries {
            let c = chain(e.index, in: m)
            guard c.head == source, c.tail == settings.me else {
                return .failure(.staleMap, "server \(source) is not the head of index \(e.index) with server \(settings.me) in its chain under map version \(m.version)")
            }
        }
        let expected = incoming.withLock { $0[source] }
        if let expected, expected.epoch == epoch, expected.next != seq {
            return .failure(.invalidArgument, "stream from server \(source), epoch \(epoch): entry \(seq) where \(expected.next) was due")
        }
        do {
            let (statuses, tx) = try node.catalogues.applyEntries(entries)
            incoming.withLock { $0[source] = (epoch, seq + UInt64(entries.count)) }
            return .statuses(statuses, transaction: tx.group)
        } catch {
            return Response(error)
        }
    }
}

extension Request {
    /// The one index a routed index request is about.
    var index: Fid? {
        switch self {
        case .createIndexes(let f), .dropIndexes(let f): return f.count == 1 ? f[0] : nil
        case .get(let i, _), .put(let i, _, _, _), .delete(let i, _, _), .next(let i, _, _, _), .update(let i, _, _, _), .cas(let i, _, _, _, _, _): return i
        default: return nil
        }
    }

    var isIndexRead: Bool {
        switch self {
        case .get, .next: return true
        default: return false
        }
    }

    /// Creates or drops an index (answered once logged, as without replication).
    var changesIndexes: Bool {
        switch self {
        case .createIndexes, .dropIndexes: return true
        default: return false
        }
    }

    /// An IOS request that reads or changes a cob's data or existence.
    var isObjectData: Bool {
        switch self {
        case .write, .read, .free, .create: return true
        default: return false
        }
    }

    /// The cob a WRITE, READ or FREE is about.
    var cob: Fid? {
        switch self {
        case .write(let c, _, _, _, _), .read(let c, _, _), .free(let c, _, _, _, _): return c
        default: return nil
        }
    }

    var isReplication: Bool {
        switch self {
        case .routed, .replicate: return true
        default: return false
        }
    }
}

extension Response {
    /// The same answer, naming transaction `tx`.
    func with(transaction tx: UInt64) -> Response {
        switch self {
        case .statuses(let s, _): return .statuses(s, transaction: tx)
        case .cas(let s, let current, _): return .cas(s, current: current, transaction: tx)
        default: return self
        }
    }
}

/// The ordered stream from this server to one peer (REPLICATION.md, "The stream between two
/// servers"): entries numbered as the engine applies them, sent in that order, one batch in
/// flight at a time; a broken connection is replaced by a new epoch that sends again
/// everything not acknowledged.
final class ReplicationStream: Sendable {
    let source: Int
    let peer: Int
    private let connect: PeerConnector
    /// True once the peer is failed in the map: its waiters are released with `.closed`.
    private let peerFailed: @Sendable () -> Bool

    private struct State {
        var reserved: UInt64 = 0
        /// Filled entries not yet acknowledged, by number.
        var entries: [UInt64: (entry: StreamEntry, mapVersion: UInt64)] = [:]
        /// Every entry up to this number is acknowledged or dropped.
        var done: UInt64 = 0
        /// Numbers dropped because the peer left (their changes are noted missed).
        var dropped: [ClosedRange<UInt64>] = []
        var waiters: [UInt64: [CheckedContinuation<Void, Error>]] = [:]
        /// What the peer answered for `compare` entries, until `outcome` takes it.
        var outcomes: [UInt64: Status] = [:]
        var sending = false
        /// The connection to the peer and its epoch, kept between bursts while no sender
        /// runs (a new connection, and its handshake, per change cost a round trip each).
        var connection: (any RequestHandler & PeerConnection)?
        var epoch = UInt64.random(in: 1...UInt64.max)

        func wasDropped(_ seq: UInt64) -> Bool { dropped.contains { $0.contains(seq) } }
    }
    private let state = Locked(State())
    /// The most entries one REPLICATE carries.
    static let batch = 256

    init(source: Int, peer: Int, connect: @escaping PeerConnector, peerFailed: @escaping @Sendable () -> Bool) {
        self.source = source
        self.peer = peer
        self.connect = connect
        self.peerFailed = peerFailed
    }

    /// The next number: called inside the engine transaction that makes the entry.
    func reserve() -> UInt64 { state.withLock { $0.reserved += 1; return $0.reserved } }

    /// Gives entry `seq` its contents; the sender sends it once every earlier one is filled.
    func fill(_ seq: UInt64, _ entry: StreamEntry, mapVersion: UInt64) {
        let start = state.withLock { s -> Bool in
            guard !s.wasDropped(seq) else { return false }
            s.entries[seq] = (entry, mapVersion)
            guard !s.sending else { return false }
            s.sending = true
            return true
        }
        if start { Task { await self.send() } }
    }

    /// Returns once the peer has applied entry `seq`; throws `.closed` if the peer left (the
    /// map failed it) before it did.
    func acknowledged(_ seq: UInt64) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            let outcome = state.withLock { s -> Bool? in
                if s.wasDropped(seq) { return false }
                if s.done >= seq { return true }
                s.waiters[seq, default: []].append(c)
                return nil
            }
            switch outcome {
            case true?: c.resume()
            case false?: c.resume(throwing: TesseraError(.closed, "server \(peer) left the chain before it applied the change"))
            case nil: break
            }
        }
    }

    /// Every entry numbered so far is acknowledged (or dropped: the peer left).
    var isDrained: Bool { state.withLock { $0.done == $0.reserved } }

    /// What the peer answered for `compare` entry `seq`, once it is acknowledged.
    func outcome(_ seq: UInt64) async throws -> Status {
        try await acknowledged(seq)
        return state.withLock { $0.outcomes.removeValue(forKey: seq) } ?? .ok
    }

    /// The map changed: a sender waiting out a failed peer looks again.
    func mapChanged() {
        let start = state.withLock { s -> Bool in
            guard !s.sending, !s.entries.isEmpty else { return false }
            s.sending = true
            return true
        }
        if start { Task { await self.send() } }
    }

    /// Sends filled entries in order until none is left, reconnecting (a new epoch) after a
    /// failure; releases every waiter with `.closed` if the peer is failed in the map.
    private func send() async {
        var (connection, epoch) = state.withLock { s in
            defer { s.connection = nil }
            return (s.connection, s.epoch)
        }
        var delay = Duration.milliseconds(10)
        while true {
            let next = state.withLock { s -> (UInt64, [(StreamEntry, UInt64)])? in
                var out: [(StreamEntry, UInt64)] = []
                var n = s.done + 1
                while out.count < Self.batch, let e = s.entries[n] {
                    out.append((e.entry, e.mapVersion))
                    n += 1
                }
                if out.isEmpty {
                    // The connection stays for the next burst, handed over in the same
                    // critical section that lets the next sender start.
                    (s.connection, s.epoch, s.sending) = (connection, epoch, false)
                    return nil
                }
                return (s.done + 1, out)
            }
            guard let (first, batch) = next else { return }
            if peerFailed() {
                releaseAll(TesseraError(.closed, "server \(peer) is failed in the cluster map"))
                await connection?.close()
                connection = nil
                continue
            }
            do {
                if connection == nil || connection?.isActive == false {
                    connection = try await connect(peer)
                    epoch = UInt64.random(in: 1...UInt64.max)
                }
                let version = batch.map(\.1).max() ?? 0
                let r = await connection!.handle(.replicate(source: source, epoch: epoch, seq: first, mapVersion: version, entries: batch.map(\.0)))
                guard case .statuses(let statuses, _) = try r.unwrap(), statuses.count == batch.count else {
                    throw TesseraError(.io, "server \(peer): malformed reply to REPLICATE")
                }
                let compared = zip(batch, statuses).enumerated().compactMap { i, pair -> (UInt64, Status)? in
                    if case .compare = pair.0.0 { return (first + UInt64(i), pair.1) }
                    return nil
                }
                state.withLock { s in for (seq, status) in compared { s.outcomes[seq] = status } }
                acknowledge(through: first + UInt64(batch.count) - 1)
                delay = .milliseconds(10)
            } catch {
                // Retry on a new connection (a new epoch) after a pause, until it works or
                // the map fails the peer.
                await connection?.close()
                connection = nil
                try? await Task.sleep(for: delay)
                delay = min(delay * 2, .milliseconds(500))
            }
        }
    }

    private func acknowledge(through seq: UInt64) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Error>] in
            var out: [CheckedContinuation<Void, Error>] = []
            for n in (s.done + 1)...seq {
                s.entries[n] = nil
                out += s.waiters.removeValue(forKey: n) ?? []
            }
            s.done = seq
            return out
        }
        for c in ready { c.resume() }
    }

    /// Drops every entry not acknowledged and fails its waiters: the peer left.
    private func releaseAll(_ error: Error) {
        let waiting = state.withLock { s -> [CheckedContinuation<Void, Error>] in
            let out = s.waiters.values.flatMap { $0 }
            s.waiters = [:]
            // Every number reserved so far is dropped, filled or not: one filled later is
            // ignored, and its waiter told the peer left.
            if s.reserved > s.done { s.dropped.append((s.done + 1)...s.reserved) }
            s.done = s.reserved
            s.entries = [:]
            return out
        }
        for c in waiting { c.resume(throwing: error) }
    }
}
