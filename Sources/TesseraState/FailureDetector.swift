// The HA role's decision, as a pure state machine: given the map, which servers hold a
// session, and the time, the map to write next (or none). Tested without etcd.
import TesseraClient
import TesseraCore

public struct FailureDetector: Sendable {
    public let grace: Duration
    /// Since when (by this process's monotonic clock) each server has had no session.
    private var missingSince: [Int: ContinuousClock.Instant] = [:]

    public init(grace: Duration) { self.grace = grace }

    /// The next map, if anything changed: a server without a session for `grace` becomes
    /// failed; a failed server with a session again becomes online. A server first seen
    /// missing now is given the whole grace period from now (a new role holder does not know
    /// how long it has been gone).
    public mutating func step(map: ClusterMap, present: Set<Int>, now: ContinuousClock.Instant, wallNow: UInt64) -> ClusterMap? {
        var next = map
        var changed = false
        for (i, server) in map.servers.enumerated() {
            if present.contains(server.id) {
                missingSince[server.id] = nil
                if server.state == .failed {
                    next.servers[i].state = .online
                    next.servers[i].since = wallNow
                    changed = true
                }
                continue
            }
            let since = missingSince[server.id] ?? now
            missingSince[server.id] = since
            if server.state != .failed && now - since >= grace {
                next.servers[i].state = .failed
                next.servers[i].since = wallNow
                changed = true
            }
        }
        guard changed else { return nil }
        next.version = map.version + 1
        return next
    }

    /// The first map of a cluster: every server of the cluster file online, version 1.
    public static func initialMap(servers: [(id: Int, address: String)], wallNow: UInt64) -> ClusterMap {
        ClusterMap(version: 1, servers: servers.sorted { $0.id < $1.id }.map { .init(id: $0.id, address: $0.address, state: .online, since: wallNow) })
    }
}
