// A process's etcd session: a lease kept alive in the background and a key under it
// describing the process. It calls itself valid only while etcd cannot have expired it.
import Logging
import NIOConcurrencyHelpers
import TesseraCore

/// A process's session: a lease kept alive in the background and a key under it describing
/// the process. Validity is judged by this process's monotonic clock from when the last
/// successful keep-alive was *sent*, so a paused or partitioned process stops calling
/// itself the owner before etcd can expire the lease. A session that was invalid once is
/// lost for good: others may have acted on it, so a new lease (and key) replaces it.
public final class EtcdSession: Sendable {
    let client: EtcdClient
    private let key: @Sendable (Int64) -> String
    private let value: [UInt8]
    let ttl: Int
    /// Whether a lost lease is revoked before a new one is taken; false when the caller of
    /// `onChange` revokes it itself, after moving what it owned to the new lease.
    let revokesLostLease: Bool
    private let logger: Logger
    /// Keep-alives are sent this often, each allowed this long to be answered.
    let interval: Duration
    /// A lease is valid this long after its last successful keep-alive was sent: the TTL
    /// less a margin (a sixth) for clock-rate differences and etcd's expiry checks.
    let validity: Duration
    private let state = NIOLockedValueBox(State())
    private struct State {
        var lease: Int64?
        var validUntil = ContinuousClock.Instant.now
        var started = false
        var closed = false
        var task: Task<Void, Never>?
        var handlers: [@Sendable (Int64, Int64?) -> Void] = []
        var waiters: [UInt64: CheckedContinuation<Int64, Never>] = [:]
        var nextWaiter: UInt64 = 0
    }

    /// A session whose key is named from its lease id by `key`; `ttl` in seconds (at least 1).
    /// With `revokesLostLease` false, a lost lease is left for the `onChange` handler to revoke
    /// once it has moved what it owned under the new one (etcd may still hold the old lease,
    /// and with it that ownership, until then).
    public init(client: EtcdClient, key: @escaping @Sendable (Int64) -> String, value: [UInt8], ttl: Int, revokesLostLease: Bool = true, logger: Logger) {
        self.client = client
        self.revokesLostLease = revokesLostLease
        self.key = key
        self.value = value
        self.ttl = max(1, ttl)
        self.logger = logger
        interval = .seconds(self.ttl) / 3
        validity = .seconds(self.ttl) - .seconds(self.ttl) / 6
    }

    /// Grants the lease and puts the key; throws a clear error (naming the endpoints) if etcd
    /// cannot be reached within the request timeout. Then keeps the lease alive every ttl/3
    /// in a background task.
    public func start() async throws {
        try state.withLockedValue { s in
            guard !s.closed else { throw TesseraError(.closed, "the etcd session is closed") }
            guard !s.started else { throw TesseraError(.busy, "the etcd session is already started") }
            s.started = true
        }
        let (lease, sent): (Int64, ContinuousClock.Instant)
        do {
            (lease, sent) = try await establish()
        } catch {
            state.withLockedValue { $0.started = false }
            let e = error as? TesseraError ?? TesseraError(.io, "\(error)")
            throw TesseraError(e.code, "cannot start an etcd session (endpoints \(client.endpoints.joined(separator: ", "))): \(e.message)")
        }
        // The loop starts from the lease: set it first (unless closed meanwhile).
        let closed = state.withLockedValue { s in
            if !s.closed { (s.lease, s.validUntil) = (lease, sent + validity) }
            return s.closed
        }
        guard !closed else {
            abandon(lease)
            throw TesseraError(.closed, "the etcd session was closed while it started")
        }
        let task = Task { await self.keepAliveLoop() }
        let closedMeanwhile = state.withLockedValue { s in
            s.task = task
            return s.closed
        }
        if closedMeanwhile { task.cancel() }
        logger.info("etcd session started", metadata: ["lease": "\(Self.hex(lease))", "key": "\(key(lease))"])
    }

    /// The current lease id while the session is valid, else nil.
    public var current: Int64? {
        state.withLockedValue { s in s.lease.flatMap { ContinuousClock.now < s.validUntil ? $0 : nil } }
    }

    /// Waits until the session is valid (a new lease is taken if it was lost) and returns
    /// its lease id. Returns 0, which is no lease, if the session is closed or the waiting
    /// task is cancelled first.
    public func valid() async -> Int64 {
        if let lease = current { return lease }
        let id = state.withLockedValue { s in
            s.nextWaiter += 1
            return s.nextWaiter
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { (c: CheckedContinuation<Int64, Never>) in
                let now: Int64? = state.withLockedValue { s in
                    if s.closed { return 0 }
                    if let lease = s.lease, ContinuousClock.now < s.validUntil { return lease }
                    s.waiters[id] = c
                    return nil
                }
                if let now { c.resume(returning: now) }
            }
        } onCancel: {
            state.withLockedValue { $0.waiters.removeValue(forKey: id) }?.resume(returning: 0)
        }
    }

    /// Calls `body` (on some task) when a loss is noticed, with the lost lease and nil, and
    /// each time a new lease replaces it, with the lost and the new lease.
    public func onChange(_ body: @escaping @Sendable (_ lost: Int64, _ new: Int64?) -> Void) {
        state.withLockedValue { $0.handlers.append(body) }
    }

    /// Revokes the lease (its key goes with it) and stops the keep-alive.
    public func close() async {
        let (task, lease, waiters) = state.withLockedValue { s in
            s.closed = true
            defer {
                s.task = nil
                s.lease = nil
                s.waiters = [:]
            }
            return (s.task, s.lease, s.waiters.values)
        }
        for w in waiters { w.resume(returning: 0) }
        task?.cancel()
        await task?.value
        guard let lease else { return }
        do {
            try await client.revokeLease(lease)
            logger.info("etcd session closed", metadata: ["lease": "\(Self.hex(lease))"])
        } catch {
            logger.warning("etcd session closed; its lease could not be revoked and will expire", metadata: ["lease": "\(Self.hex(lease))", "error": "\(error)"])
        }
    }

    static func hex(_ lease: Int64) -> String { String(UInt64(bitPattern: lease), radix: 16) }

    /// Revokes a lease taken after the session was closed, on a task of its own (the one
    /// that took it may be cancelled).
    private func abandon(_ lease: Int64) {
        let client = client
        Task { try? await client.revokeLease(lease) }
    }
}

// MARK: - The keep-alive loop

extension EtcdSession {
    /// Grants a lease and puts the key under it; returns the lease and when the grant was sent.
    private func establish() async throws -> (Int64, ContinuousClock.Instant) {
        let sent = ContinuousClock.now
        let (lease, _) = try await client.grantLease(ttl: ttl)
        do {
            try await client.put(key(lease), value, lease: lease)
        } catch {
            try? await client.revokeLease(lease)
            throw error
        }
        return (lease, sent)
    }

    /// Sends a keep-alive every `interval`; notices a loss when the validity ends first or
    /// etcd says the lease is gone, and then takes a new one.
    private func keepAliveLoop() async {
        var next = ContinuousClock.now + interval
        while !Task.isCancelled {
            guard let (lease, validUntil) = state.withLockedValue({ s in s.lease.map { ($0, s.validUntil) } }) else { return }
            try? await Task.sleep(until: min(next, validUntil), clock: .continuous)
            guard !Task.isCancelled else { return }
            let sent = ContinuousClock.now
            if sent >= validUntil {
                await replace(lease, why: "no keep-alive was answered for \(validity.secondsText)")
                next = .now + interval
                continue
            }
            guard sent >= next else { continue }
            next += interval
            if next < sent { next = sent + interval }  // late (a slow keep-alive): no burst
            do {
                let remaining = try await client.keepAlive(lease, timeout: interval)
                if remaining <= 0 {
                    await replace(lease, why: "etcd says it is gone")
                    next = .now + interval
                } else if !extend(lease, sent: sent) {
                    await replace(lease, why: "a keep-alive was answered too late")
                    next = .now + interval
                }
            } catch {
                guard !Task.isCancelled else { return }
                logger.warning("etcd keep-alive failed", metadata: ["lease": "\(Self.hex(lease))", "error": "\(error)"])
            }
        }
    }

    /// Moves the validity on after a keep-alive sent at `sent` succeeded; false if the
    /// session stopped being valid meanwhile (a lapse is never undone).
    private func extend(_ lease: Int64, sent: ContinuousClock.Instant) -> Bool {
        state.withLockedValue { s in
            guard s.lease == lease, ContinuousClock.now < s.validUntil else { return false }
            s.validUntil = max(s.validUntil, sent + validity)
            return true
        }
    }

    /// The session was lost: says so, then takes a new lease and key, retrying until it
    /// can (or the session is closed).
    private func replace(_ lost: Int64, why: String) async {
        logger.error("session lost: lease \(Self.hex(lost)) expired (\(why))")
        state.withLockedValue { s in if s.lease == lost { s.validUntil = .now } }
        notify(lost, nil)
        // Its key must not outlive it: revoke it in case etcd still holds it (unless the
        // handler does, after moving what it owns).
        if revokesLostLease { try? await client.revokeLease(lost, timeout: interval) }
        while !Task.isCancelled {
            do {
                let (lease, sent) = try await establish()
                let waiters: Dictionary<UInt64, CheckedContinuation<Int64, Never>>.Values? = state.withLockedValue { s in
                    guard !s.closed else { return nil }
                    (s.lease, s.validUntil) = (lease, sent + validity)
                    defer { s.waiters = [:] }
                    return s.waiters.values
                }
                guard let waiters else { return abandon(lease) }
                logger.notice("etcd session renewed: lease \(Self.hex(lease)) replaces lost lease \(Self.hex(lost))")
                // Handlers first: whoever `valid()` wakes finds them already told.
                notify(lost, lease)
                for w in waiters { w.resume(returning: lease) }
                return
            } catch {
                guard !Task.isCancelled else { return }
                logger.warning("cannot renew the etcd session yet", metadata: ["error": "\(error)"])
                try? await Task.sleep(for: interval)
            }
        }
    }

    private func notify(_ lost: Int64, _ new: Int64?) {
        for handler in state.withLockedValue({ $0.handlers }) { handler(lost, new) }
    }
}
