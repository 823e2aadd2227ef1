// What the layers above the client need from the cluster state service (etcd, docs/CLUSTER.md):
// this process's session, which sessions are alive, and the cluster map. The service itself
// (TesseraState) implements `SessionRegistry` over etcd; `LocalSessions` is its in-memory
// twin for tests of the layers above, never for a process that shares a cluster.
import TesseraCore

/// Sessions decide lifetimes: data noted pending-free under a session is left alone while
/// that session is alive (docs/S3.md, "Pending frees").
public protocol SessionRegistry: Sendable {
    /// This process's session while it is valid; nil while it is lost or not yet taken.
    var current: UInt64? { get }
    /// This process's session, waiting while none is valid (a lost one is being replaced).
    func owner() async throws -> UInt64
    /// Every session alive now, read fresh from the service. Throws when it cannot be reached:
    /// nothing may be freed on a guess.
    func alive() async throws -> Set<UInt64>
    /// Calls `body` each time this process takes a new session after losing `old`, before
    /// the old lease is let go: what the process owned under `old` must be noted under `new`.
    /// `current` is nil meanwhile. `body` returns false if it could not; it is then called
    /// again (the old lease kept alive meanwhile) until it returns true.
    func onRenewal(_ body: @escaping @Sendable (_ old: UInt64, _ new: UInt64) async -> Bool)
    /// Calls `body` when a session of this process turns out to have ended before its
    /// renewal was complete: what it owned under it may have been freed.
    func onOwnershipLost(_ body: @escaping @Sendable (_ session: UInt64) -> Void)
}

extension SessionRegistry {
    /// Throws unless `session` is still this process's valid session: a process that lost its
    /// lease may have had its data freed and must not make an entry refer to it.
    public func checkOwner(_ session: UInt64) throws {
        guard current == session else {
            throw TesseraError(.closed, "this process lost its session \(String(session, radix: 16)) while writing; what it wrote under it may have been freed")
        }
    }
}

/// The in-memory twin of the state service's session table, for unit tests: sessions of
/// several `LocalSessions` (one per simulated process) live until `end`.
public final class LocalSessionTable: Sendable {
    private struct State {
        var live: Set<UInt64> = []
        var next: UInt64 = 1
    }
    private let state = Locked(State())

    public init() {}

    /// Starts a new session.
    public func begin() -> UInt64 {
        state.withLock { s in
            let id = s.next
            s.next += 1
            s.live.insert(id)
            return id
        }
    }

    /// Ends `session`, as its lease expiring does.
    public func end(_ session: UInt64) { _ = state.withLock { $0.live.remove(session) } }

    public var live: Set<UInt64> { state.withLock { $0.live } }
}

/// One simulated process's sessions over a `LocalSessionTable`, for unit tests.
public final class LocalSessions: SessionRegistry {
    public let table: LocalSessionTable
    private let mine: Locked<UInt64>
    private let renewals = Locked<[@Sendable (UInt64, UInt64) async -> Bool]>([])
    private let renewing = Locked(false)
    private let losses = Locked<[@Sendable (UInt64) -> Void]>([])

    public init(table: LocalSessionTable = LocalSessionTable()) {
        self.table = table
        mine = Locked(table.begin())
    }

    /// This process's session, alive or not.
    public var session: UInt64 { mine.withLock { $0 } }

    public var current: UInt64? {
        let s = session
        return !renewing.withLock({ $0 }) && table.live.contains(s) ? s : nil
    }

    public func owner() async throws -> UInt64 {
        while true {
            if let s = current { return s }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    public func alive() async throws -> Set<UInt64> { table.live }

    public func onRenewal(_ body: @escaping @Sendable (UInt64, UInt64) async -> Bool) {
        renewals.withLock { $0.append(body) }
    }

    public func onOwnershipLost(_ body: @escaping @Sendable (UInt64) -> Void) {
        losses.withLock { $0.append(body) }
    }

    /// Takes a new session, runs the renewal callbacks, then ends the old one; if the old
    /// one had ended already, runs the ownership-lost callbacks for it.
    @discardableResult
    public func renew() async -> UInt64 {
        let old = session
        let new = table.begin()
        renewing.withLock { $0 = true }
        for b in renewals.withLock({ $0 }) { _ = await b(old, new) }
        let ended = !table.live.contains(old)
        mine.withLock { $0 = new }
        renewing.withLock { $0 = false }
        table.end(old)
        if ended { for b in losses.withLock({ $0 }) { b(old) } }
        return new
    }
}

extension Optional where Wrapped == ClusterMap {
    /// Replaces the map held here with `newer` if it has a higher version; true if it did.
    public mutating func take(_ newer: ClusterMap) -> Bool {
        guard (self?.version ?? 0) < newer.version else { return false }
        self = newer
        return true
    }
}
