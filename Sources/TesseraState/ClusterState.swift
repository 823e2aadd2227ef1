// A process's view of the cluster state service (etcd, docs/CLUSTER.md): its session, the
// sessions of every other process, the cluster map it watches, and the roles it campaigns
// for. etcd is never on the data path: while it cannot be reached, everything here keeps the
// last it knew.
import Logging
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEtcd

public final class ClusterState: SessionRegistry {
    public let etcd: EtcdClient
    public let settings: ClusterConfig.State
    public let keys: StateKeys
    /// Reads of the map, the sessions and the roles.
    public let reader: StateReader
    public let info: SessionInfo
    let session: EtcdSession
    let logger: Logger

    private struct State {
        /// The session this process acts under: the last one etcd confirmed, kept while etcd
        /// cannot be reached (no one can sweep then either).
        var acting: UInt64
        /// Every session this process has acted under.
        var held: Set<UInt64> = []
        /// Renewals queued or running: owners wait (`current` is nil) until none is left.
        var renewing = 0
        /// The last renewal queued: each waits for the one before, so they run in order.
        var lastRenewal: Task<Void, Never>?
        var renewals: [@Sendable (UInt64, UInt64) async -> Bool] = []
        var losses: [@Sendable (UInt64) -> Void] = []
        var tasks: [Task<Void, Never>] = []
        var elections: [EtcdElection] = []
    }
    private let state: Locked<State>
    /// The newest cluster map seen (ClusterState+Map.swift).
    let mapHolder = Locked<ClusterMap?>(nil)

    private init(etcd: EtcdClient, settings: ClusterConfig.State, info: SessionInfo, session: EtcdSession, acting: UInt64, logger: Logger) {
        self.etcd = etcd
        self.settings = settings
        keys = StateKeys(settings)
        reader = StateReader(etcd: etcd, keys: keys)
        self.info = info
        self.session = session
        self.logger = logger
        var initial = State(acting: acting)
        initial.held = [acting]
        state = Locked(initial)
    }

    /// Connects to the cluster's etcd, checks that it is one, and takes a session describing
    /// this process. A missing, unreachable or wrong etcd is an error naming the endpoints.
    public static func start(config: ClusterConfig, info: SessionInfo, logger: Logger) async throws -> ClusterState {
        let settings = try config.requireState(for: "a \(info.kind.rawValue)")
        let etcd = try EtcdClient(endpoints: settings.endpoints, requestTimeout: .seconds(3), logger: logger)
        do {
            _ = try await etcd.version()
            let keys = StateKeys(settings)
            let ttl = Int((settings.ttl.components.seconds * 1000 + settings.ttl.components.attoseconds / 1_000_000_000_000_000 + 999) / 1000)
            // The lost lease is revoked by `renew`, once what it owned is noted again.
            let session = EtcdSession(client: etcd, key: { keys.session($0) }, value: encodeJSON(info), ttl: max(1, ttl), revokesLostLease: false, logger: logger)
            try await session.start()
            guard let id = session.current else { throw TesseraError(.closed, "etcd at \(settings.endpoints.joined(separator: ", ")): the new session is not valid") }
            let state = ClusterState(etcd: etcd, settings: settings, info: info, session: session, acting: UInt64(bitPattern: id), logger: logger)
            session.onChange { [weak state] lost, new in state?.sessionChanged(lost: lost, new: new) }
            logger.info("session \(hex16(UInt64(bitPattern: id))) on etcd \(settings.endpoints.joined(separator: ", ")) (ttl \(ttl) s)")
            return state
        } catch {
            await etcd.close()
            throw error
        }
    }

    /// Stops watching and campaigning, resigns every role, and ends the session (its key
    /// goes, and everything noted under it is left to the sweeper).
    public func close() async {
        let (tasks, elections) = state.withLock { s in
            defer {
                s.tasks = []
                s.elections = []
            }
            return (s.tasks, s.elections)
        }
        for t in tasks { t.cancel() }
        for e in elections { await e.stop() }
        await session.close()
        await etcd.close()
    }

    // MARK: SessionRegistry

    public var current: UInt64? { state.withLock { $0.renewing > 0 ? nil : $0.acting } }

    /// Whether this process has ever acted under session `lease` (it may have lapsed and
    /// been renewed since: the process, and what it holds in memory, are the same).
    public func held(_ lease: UInt64) -> Bool { state.withLock { $0.held.contains(lease) } }

    public func owner() async throws -> UInt64 {
        while true {
            if let s = current { return s }
            try await Task.sleep(for: .milliseconds(20))
        }
    }

    public func alive() async throws -> Set<UInt64> {
        let (kvs, _) = try await etcd.range(prefix: keys.sessions)
        return Set(kvs.compactMap { $0.lease == 0 ? nil : UInt64(bitPattern: $0.lease) })
    }

    public func onRenewal(_ body: @escaping @Sendable (UInt64, UInt64) async -> Bool) {
        state.withLock { $0.renewals.append(body) }
    }

    public func onOwnershipLost(_ body: @escaping @Sendable (UInt64) -> Void) {
        state.withLock { $0.losses.append(body) }
    }

    /// The etcd session noticed a loss (`new` nil) or took a new lease after one.
    private func sessionChanged(lost: Int64, new: Int64?) {
        guard let new else {
            logger.error("session \(hex16(UInt64(bitPattern: lost))) lost: no keep-alive reached etcd at \(settings.endpoints.joined(separator: ", ")) within the lease's time to live; roles are given up until a new session is taken")
            return
        }
        let (old, next) = (UInt64(bitPattern: lost), UInt64(bitPattern: new))
        let task = state.withLock { s -> Task<Void, Never> in
            s.renewing += 1
            let previous = s.lastRenewal
            let t = Task {
                await previous?.value
                await self.renew(from: old, to: next, lease: lost)
            }
            s.lastRenewal = t
            return t
        }
        keep(task)
    }

    /// Moves what this process owns from session `old` to `new`, then lets the old lease go:
    /// 1. note everything again under the new session (the renewal callbacks);
    /// 2. ask etcd whether the old lease still lives: if not, a sweeper may have freed what
    ///    was noted under it, and the owners are told (ownership lost);
    /// 3. revoke the old lease; 4. act under the new session.
    private func renew(from old: UInt64, to new: UInt64, lease: Int64) async {
        logger.notice("new session \(hex16(new)) after losing \(hex16(old))")
        // 1. Until every owner has noted what it owns under the new session; the old lease
        //    is kept alive meanwhile, if etcd still has it.
        while !Task.isCancelled {
            var done = true
            for body in state.withLock({ $0.renewals }) where await !body(old, new) { done = false }
            if done { break }
            _ = try? await etcd.keepAlive(lease)
            try? await Task.sleep(for: .milliseconds(500))
        }
        // 2. Whether the old lease outlived that, as etcd says (asked until it answers).
        var left: Int?
        while left == nil && !Task.isCancelled {
            left = try? await etcd.keepAlive(lease)
            if left == nil { try? await Task.sleep(for: .milliseconds(200)) }
        }
        if left == 0 {
            logger.error("session \(hex16(old)) had ended in etcd before this process took a new one: what it owned may have been freed")
            for body in state.withLock({ $0.losses }) { body(old) }
        }
        // 3. Let it go; 4. act under the new one (a renewal queued after this one follows).
        try? await etcd.revokeLease(lease)
        state.withLock { s in
            s.acting = new
            s.held.insert(new)
            s.renewing -= 1
        }
    }

    // MARK: Roles

    /// Campaigns for `role` in the background for as long as this process lives.
    public func campaign(_ role: String) -> EtcdElection {
        let value = encodeJSON(RoleHolder(info: info))
        let e = EtcdElection(client: etcd, session: session, key: keys.role(role), value: value, logger: logger)
        e.start()
        state.withLock { $0.elections.append(e) }
        return e
    }

    /// Runs `body` every `interval` while this process holds `role` (campaigning for it);
    /// `body` is told when a turn is the first of a tenure.
    public func whileHolding(_ role: String, every interval: Duration, _ body: @escaping @Sendable (_ newlyHeld: Bool) async -> Void) {
        let election = campaign(role)
        let task = Task {
            var held = false
            while !Task.isCancelled {
                if election.isLeader {
                    if !held { logger.notice("holding the \(role) role") }
                    let first = !held
                    held = true
                    await body(first)
                } else if held {
                    logger.notice("no longer holding the \(role) role")
                    held = false
                }
                try? await Task.sleep(for: held ? interval : min(interval, .milliseconds(500)))
            }
        }
        keep(task)
    }

    /// Keeps `task` to cancel at `close`.
    func keep(_ task: Task<Void, Never>) {
        state.withLock { $0.tasks.append(task) }
    }
}
