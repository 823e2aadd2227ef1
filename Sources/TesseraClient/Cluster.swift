// The client ("motr client" of the seed): one object that turns the servers of a cluster
// file into one store — replicated indexes and striped parity objects (docs/CLIENT.md).
import Logging
import Synchronization
import TesseraConfig
import TesseraCore
import TesseraRPC

public final class Cluster: Sendable {
    public let config: ClusterConfig
    public let layout: ObjectLayout
    let code: ErasureCode
    let links: [ServerLink]
    let groupLocks = KeyedLocks<GroupKey>()
    let logger: Logger
    /// Per server, the newest transaction this client made there and has not synced yet.
    private let unsynced: Locked<[UInt64]>
    private let degraded = Atomic<UInt64>(0)
    let healed = Atomic<UInt64>(0)
    /// The newest cluster map seen (nil: none yet, every server counts as online).
    let currentMap = Locked<ClusterMap?>(nil)
    private let mapSource = Locked<(@Sendable () async -> ClusterMap?)?>(nil)

    /// Units rebuilt from parity because a server was down or a checksum failed.
    public var degradedReads: UInt64 { degraded.load(ordering: .relaxed) }
    /// Units rewritten in place because their blocks failed their checksum on a read.
    public var healedUnits: UInt64 { healed.load(ordering: .relaxed) }

    /// The thread every connection is on, if one was asked for (`RPCLoop`); a task that
    /// prefers this executor makes its round trips without thread hops.
    public let executor: (any TaskExecutor)?

    /// A client of the cluster in `config`. Connections open on first use and reopen after
    /// a server comes back; all on `loop`'s thread if given, else on the shared event loops.
    public init(config: ClusterConfig, loop: RPCLoop? = nil, logger: Logger = Logger(label: "tessera.client")) throws {
        self.config = config
        executor = loop?.executor
        let servers = config.servers.sorted { $0.id < $1.id }
        layout = try ObjectLayout(
            dataUnits: config.layout.dataUnits, parityUnits: config.layout.parityUnits,
            unitSize: config.layout.unitSize, servers: servers.count)
        code = ErasureCode(dataUnits: layout.dataUnits, parityUnits: layout.parityUnits)
        links = servers.map { ServerLink(id: $0.id, endpoint: $0.address, secret: config.secret, loop: loop) }
        unsynced = Locked([UInt64](repeating: 0, count: servers.count))
        self.logger = logger
    }

    /// Closes every connection.
    public func close() async {
        for l in links { await l.close() }
    }

    // MARK: The cluster map

    /// Takes `map` if it is newer than the one held; true if it was.
    @discardableResult
    public func apply(_ map: ClusterMap) -> Bool { currentMap.withLock { $0.take(map) } }

    /// Where to read the map when a server says the one held is stale and no newer one has
    /// come (a process without a watch: one-shot commands, tests). Set once, before use.
    public func readMaps(from source: @escaping @Sendable () async -> ClusterMap?) { mapSource.withLock { $0 = source } }

    /// Reads the map from the source, if there is one, and takes it if newer.
    func refreshMap() async {
        guard let source = mapSource.withLock({ $0 }), let m = await source() else { return }
        apply(m)
    }

    /// Why server `server` (a position) must not be asked anything, if the map says so:
    /// it is failed, or, for a READ of object data, not online (REPLICATION.md, "Object
    /// data").
    func refusal(_ server: Int, reading: Bool = false) -> TesseraError? {
        let id = links[server].id
        guard let (state, version) = currentMap.withLock({ m in m.flatMap { m in m.server(id).map { ($0.state, m.version) } } }),
            state == .failed || (reading && state != .online)
        else { return nil }
        return TesseraError(.closed, "server \(id) at \(links[server].endpoint) is \(state.rawValue) in the cluster map (version \(version))")
    }

    /// Whether the map says server `server` (a position) is online `unrepaired`: its units
    /// may be stale, so reads use the others where they can (REPLICATION.md, "Two or more
    /// back at once").
    func unrepaired(_ server: Int) -> Bool {
        let id = links[server].id
        return currentMap.withLock { $0?.server(id)?.unrepaired == true }
    }

    // MARK: Calls

    /// Sends `request` to server `server` (a position in the id-sorted server list). A server
    /// that cannot be reached, or that the cluster map says failed, answers `.closed`.
    func call(_ server: Int, _ request: Request) async -> Response {
        await send(server, request).response
    }

    /// `call`, telling also whether the request left this process: it did not when this
    /// client refused it (the map says the server failed) or no connection could be made,
    /// so a server cannot have acted on it whatever the answer says.
    func send(_ server: Int, _ request: Request) async -> (response: Response, sent: Bool) {
        if let refused = refusal(server, reading: request.opcode == .read) { return (Response(refused), false) }
        let client: RPCClient
        do { client = try await links[server].client() } catch { return (Response(error), false) }
        let response = await client.handle(request)
        await noted(server, request, response, from: client)
        return (response, true)
    }

    /// Notes what `response` (to `request`, from `client`, server `server`) says: the
    /// transaction it made, LOGGED or still to SYNC; a connection that closed.
    func noted(_ server: Int, _ request: Request, _ response: Response, from client: RPCClient) async {
        if case .statuses(_, let tx) = response, tx > 0 {
            if request.waitsLogged { noteLogged(server, tx) } else { noteTransaction(server, tx) }
        }
        if case .failure(.closed, _) = response { await links[server].lost(client) }
    }

    /// Sends READ `request` to server `server`, its data going straight into `destination`
    /// (see `RPCClient.call(_:dataInto:)`); `.done` when it is filled.
    func read(_ server: Int, _ request: Request, into destination: UnsafeMutableRawBufferPointer) async -> Response {
        if let refused = refusal(server, reading: true) { return Response(refused) }
        let client: RPCClient
        do { client = try await links[server].client() } catch { return Response(error) }
        let response = await client.call(request, dataInto: destination)
        if case .failure(.closed, _) = response { await links[server].lost(client) }
        return response
    }

    func noteTransaction(_ server: Int, _ tx: UInt64) {
        unsynced.withLock { $0[server] = max($0[server], tx) }
    }

    /// Group `tx` of server `server` is LOGGED (a sync-wait reply), and so is every earlier
    /// group there: nothing up to it needs a SYNC.
    func noteLogged(_ server: Int, _ tx: UInt64) {
        unsynced.withLock { if $0[server] <= tx { $0[server] = 0 } }
    }

    /// Makes every change this client made so far durable: each server it wrote to waits
    /// until those transactions are LOGGED and flushes its data image. Servers in
    /// `skipping` are left out (a sync-wait request the caller sends them covers them).
    /// A server the map has failed is skipped: what it took and did not log is rebuilt by
    /// its repair before it serves again (REPLICATION.md, "Object data"); one that does not
    /// answer is tried again until it does or the map fails it.
    public func sync(skipping: [Int] = []) async throws {
        let pending = unsynced.withLock { $0 }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for (server, tx) in pending.enumerated() where tx > 0 && !skipping.contains(server) {
                group.addTask { try await self.sync(server, tx) }
            }
            try await group.waitForAll()
        }
        unsynced.withLock { state in
            for (server, tx) in pending.enumerated() where state[server] == tx { state[server] = 0 }
        }
    }

    /// SYNC of transaction `tx` at server `server`, as `sync()` says.
    private func sync(_ server: Int, _ tx: UInt64) async throws {
        let deadline = ContinuousClock.now + Self.routingWindow
        while true {
            let m = currentMap.withLock { $0 }
            if dataState(server, in: m) == .failed { return }
            let r = await call(server, .sync(transactions: [tx]))
            guard case .failure(let status, let message) = r, Self.retried(status, m), ContinuousClock.now < deadline else {
                _ = try r.unwrap()
                return
            }
            logger.debug("SYNC at server \(links[server].id): \(message); trying again")
            await waitForMap(after: m)
        }
    }

    /// The largest record value every answering server takes (the smallest of their
    /// limits); 0 if none answers or one does not say (it then takes nothing inlined).
    public func maxRecordValue() async -> Int {
        let limits = await statistics().compactMap { $0.stats?.maxValue }
        return limits.contains(0) ? 0 : Int(limits.min() ?? 0)
    }

    /// Usage of every server, nil for one that does not answer.
    public func statistics() async -> [(id: Int, address: Endpoint, stats: ServerStatistics?, error: String?)] {
        await withTaskGroup(of: (Int, ServerStatistics?, String?).self) { group in
            for i in links.indices {
                group.addTask {
                    switch await self.call(i, .statistics) {
                    case .statistics(let s): return (i, s, nil)
                    case .failure(_, let m): return (i, nil, m)
                    default: return (i, nil, "unexpected reply")
                    }
                }
            }
            var out: [(Int, Endpoint, ServerStatistics?, String?)] = []
            for await (i, s, e) in group { out.append((links[i].id, links[i].endpoint, s, e)) }
            return out.sorted { $0.0 < $1.0 }
        }
    }

    /// Counts a degraded read; logged as a warning unless `expected` (every unit missing
    /// was on a server the map says is down or being repaired, which the map's own
    /// changes already log).
    func noteDegraded(_ what: String, expected: Bool = false) {
        degraded.add(1, ordering: .relaxed)
        if expected { logger.debug("degraded read: \(what)") } else { logger.warning("degraded read: \(what)") }
    }
}

/// One server's connection, opened on demand; after a failed connect the server counts as
/// down for a second, so a dead server costs callers one connect attempt, not one each.
actor ServerLink {
    let id: Int
    let endpoint: Endpoint
    private let secret: String
    private let loop: RPCLoop?
    /// The open connection, read without entering the actor: every call takes it.
    private nonisolated let current = Locked<RPCClient?>(nil)
    private var connection: RPCClient? {
        get { current.withLock { $0 } }
        set { current.withLock { $0 = newValue } }
    }
    private var connecting: Task<RPCClient, Error>?
    private var downUntil: ContinuousClock.Instant?

    init(id: Int, endpoint: Endpoint, secret: String, loop: RPCLoop?) {
        self.id = id
        self.endpoint = endpoint
        self.secret = secret
        self.loop = loop
    }

    nonisolated func client() async throws -> RPCClient {
        if let c = current.withLock({ $0 }), c.isActive { return c }
        return try await connect()
    }

    private func connect() async throws -> RPCClient {
        if let c = connection, c.isActive { return c }
        connection = nil
        if let task = connecting { return try await task.value }
        if let until = downUntil, ContinuousClock.now < until {
            throw TesseraError(.closed, "server \(id) at \(endpoint) is down")
        }
        let (host, port, secret, id, endpoint, loop) = (endpoint.host, endpoint.port, secret, id, endpoint, loop)
        let task = Task {
            do {
                if let loop { return try await RPCClient.connect(host: host, port: port, secret: secret, on: loop, connectTimeout: .seconds(2)) }
                return try await RPCClient.connect(host: host, port: port, secret: secret, connectTimeout: .seconds(2))
            } catch {
                throw TesseraError(.closed, "server \(id) at \(endpoint) cannot be reached: \((error as? TesseraError)?.message ?? "\(error)")")
            }
        }
        connecting = task
        defer { connecting = nil }
        do {
            let c = try await task.value
            connection = c
            downUntil = nil
            return c
        } catch {
            downUntil = ContinuousClock.now + .seconds(1)
            throw error
        }
    }

    func lost(_ c: RPCClient) {
        if connection === c { connection = nil }
    }

    func close() async {
        await connection?.close()
        connection = nil
    }
}

/// Async mutual exclusion per key: writers of one parity group of one object go one at a
/// time, so two read-modify-writes of a group never interleave; the S3 layer serialises
/// switches of one object name the same way.
public final class KeyedLocks<Key: Hashable & Sendable>: Sendable {
    private struct State {
        var held: Set<Key> = []
        var waiters: [Key: [CheckedContinuation<Void, Never>]] = [:]
    }
    private let state = Locked(State())

    public init() {}

    public func withLock<R>(_ key: Key, _ body: () async throws -> R) async rethrows -> R {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if s.held.insert(key).inserted { return true }
                s.waiters[key, default: []].append(c)
                return false
            }
            if now { c.resume() }
        }
        defer { release(key) }
        return try await body()
    }

    /// Runs `body` under `key`'s lock if no one holds it, without waiting; nil if someone does.
    public func withLockIfFree<R>(_ key: Key, _ body: () throws -> R) rethrows -> R? {
        guard state.withLock({ $0.held.insert(key).inserted }) else { return nil }
        defer { release(key) }
        return try body()
    }

    private func release(_ key: Key) {
        let next = state.withLock { s -> CheckedContinuation<Void, Never>? in
            if var w = s.waiters[key], !w.isEmpty {
                let n = w.removeFirst()
                s.waiters[key] = w.isEmpty ? nil : w
                return n  // ownership passes to the next waiter: `held` keeps the key
            }
            s.held.remove(key)
            return nil
        }
        next?.resume()
    }
}

struct GroupKey: Hashable, Sendable {
    let object: Fid
    let group: UInt64
}
