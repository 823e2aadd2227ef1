// An election on one etcd key: the process whose session's lease holds the key holds the
// role; the others watch the key and try again when it goes.
import Logging
import NIOConcurrencyHelpers
import TesseraCore

/// One holder at a time of a named role (an etcd election on one key under a session's lease).
public final class EtcdElection: Sendable {
    private let client: EtcdClient
    private let session: EtcdSession
    private let key: String
    private let value: [UInt8]
    private let logger: Logger
    private let state = NIOLockedValueBox(State())
    private struct State {
        /// The lease under which this process put the key, while it believes it holds it.
        var leaderLease: Int64?
        var task: Task<Void, Never>?
        var stopped = false
    }

    public init(client: EtcdClient, session: EtcdSession, key: String, value: [UInt8], logger: Logger) {
        self.client = client
        self.session = session
        self.key = key
        self.value = value
        self.logger = logger
    }

    /// Campaigns in the background: creates `key` under the session's lease if absent (txn
    /// createRevision == 0), else watches it and tries again when it is deleted; after the
    /// session is lost and renewed, campaigns again.
    public func start() {
        state.withLockedValue { s in
            guard s.task == nil, !s.stopped else { return }
            s.task = Task { await self.campaign() }
        }
    }

    /// True while this process holds the role with a valid session.
    public var isLeader: Bool {
        guard let lease = state.withLockedValue({ $0.leaderLease }) else { return false }
        return session.current == lease
    }

    /// The current holder's value, nil if none.
    public func holder() async throws -> [UInt8]? {
        try await client.get(key)?.value
    }

    /// Resigns (deletes the key if it is ours) and stops campaigning.
    public func stop() async {
        let task = state.withLockedValue { s in
            s.stopped = true
            defer { s.task = nil }
            return s.task
        }
        task?.cancel()
        await task?.value
        guard let lease = state.withLockedValue({ s in defer { s.leaderLease = nil }; return s.leaderLease }) else { return }
        do {
            // Only if the key is still under our lease: never delete another holder's key.
            let r = try await client.txn(if: [.leaseOf(key, equals: lease)], then: [.delete(key)])
            if r.succeeded { logger.notice("resigned", metadata: ["key": "\(key)"]) }
        } catch {
            logger.warning("cannot resign; the key goes when the session ends", metadata: ["key": "\(key)", "error": "\(error)"])
        }
    }

    /// Tries to take the key, then waits until that attempt is stale (the key went, or the
    /// session changed), and again, until stopped.
    private func campaign() async {
        while !Task.isCancelled {
            let lease = await session.valid()
            guard lease != 0, !Task.isCancelled else { return }
            do {
                let (holderLease, revision) = try await attempt(lease)
                try await waitForChange(holderLease: holderLease, ours: lease, from: revision + 1)
            } catch {
                // Stopped: `stop` resigns with the lease this held, if any.
                guard !Task.isCancelled, (error as? TesseraError)?.code != .closed else { return }
                logger.warning("election attempt failed", metadata: ["key": "\(key)", "error": "\(error)"])
                try? await Task.sleep(for: session.interval)
            }
            guard !Task.isCancelled else { return }
            let was = state.withLockedValue { s in defer { s.leaderLease = nil }; return s.leaderLease }
            if was != nil { logger.notice("no longer the leader", metadata: ["key": "\(key)"]) }
        }
    }

    /// Creates the key under `lease` if it is absent. Returns the lease of whoever holds it
    /// now and the revision to watch after.
    private func attempt(_ lease: Int64) async throws -> (holder: Int64, revision: Int64) {
        let r = try await client.txn(
            if: [.createRevision(key, equals: 0)], then: [.put(key, value, lease: lease)], else: [.get(key)])
        let holder = r.succeeded ? nil : r.gets.first?.first
        guard r.succeeded || holder != nil else {
            throw TesseraError(.internalError, "the election key \(key) neither could be created nor was read")
        }
        let holderLease = holder?.lease ?? lease
        if holderLease == lease {
            state.withLockedValue { $0.leaderLease = lease }
            logger.notice("elected", metadata: ["key": "\(key)", "lease": "\(EtcdSession.hex(lease))"])
        }
        return (holderLease, holder?.modRevision ?? r.revision)
    }

    /// Returns when the key is deleted or changes hands, or when the session's lease is no
    /// longer `ours` (lost, or renewed under a new lease).
    private func waitForChange(holderLease: Int64, ours: Int64, from revision: Int64) async throws {
        let (client, session, key) = (client, session, key)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                for try await events in client.watch(prefix: key, fromRevision: revision) {
                    let changed = events.contains { $0.kv.key == key && ($0.kind == .delete || $0.kv.lease != holderLease) }
                    if changed { return }
                }
            }
            group.addTask {
                // The session's validity is a matter of time, not of an event: look often.
                while session.current == ours { try await Task.sleep(for: .milliseconds(100)) }
            }
            try await group.next()
            group.cancelAll()
        }
    }
}
