// The HA role's decision, as a pure state machine: given the map, which servers hold a
// session, and the time, the map to write next (or none). Tested without etcd.
import TesseraClient
import TesseraCore

public struct FailureDetector: Sendable {
    public let grace: Duration
    /// Since when (by this process's monotonic clock) each server has had no session.
    private var missingSince: [Int: ContinuousClock.Instant] = [:]

    public init(grace: Duration) { self.grace = grace }

    /// A server's session as the HA role sees it: its lease, and whether its last run
    /// stopped cleanly.
    public struct Present: Sendable, Equatable {
        public var session: UInt64
        public var stoppedCleanly: Bool
        /// The process holding it (`SessionInfo.process`), if it says.
        public var process: UInt64?
        public init(session: UInt64, stoppedCleanly: Bool, process: UInt64? = nil) {
            self.session = session
            self.stoppedCleanly = stoppedCleanly
            self.process = process
        }
    }

    /// The next map, if anything changed (docs/REPLICATION.md, "Repair"):
    /// - a server without a session for `grace` becomes failed (a server first seen missing
    ///   now is given the whole grace period from now: a new role holder does not know how
    ///   long it has been gone);
    /// - a failed server with a session again becomes `repairing` under that session;
    /// - an online server with a new session stays online under it if it is the same
    ///   process (its session lapsed while etcd was away and was renewed) or its last run
    ///   stopped cleanly, and becomes `repairing` if not (it may have lost what it
    ///   acknowledged);
    /// - the map notes the session of every server it admits.
    public mutating func step(map: ClusterMap, present: [Int: Present], now: ContinuousClock.Instant, wallNow: UInt64) -> ClusterMap? {
        var next = map
        var changed = false
        for (i, server) in map.servers.enumerated() {
            if let p = present[server.id] {
                missingSince[server.id] = nil
                switch server.state {
                case .failed:
                    next.servers[i].state = .repairing
                    next.servers[i].session = p.session
                    next.servers[i].process = p.process
                    next.servers[i].since = wallNow
                    changed = true
                case .online where server.session != p.session:
                    let sameProcess = server.process != nil && server.process == p.process
                    next.servers[i].session = p.session
                    next.servers[i].process = p.process
                    if server.session != nil && !p.stoppedCleanly && !sameProcess {
                        next.servers[i].state = .repairing
                        next.servers[i].since = wallNow
                        next.servers[i].leftIn = map.version + 1
                    }
                    changed = true
                case .repairing where server.session != p.session:
                    next.servers[i].session = p.session
                    next.servers[i].process = p.process
                    changed = true
                default: break
                }
                continue
            }
            let since = missingSince[server.id] ?? now
            missingSince[server.id] = since
            if server.state != .failed && now - since >= grace {
                if server.state == .online { next.servers[i].leftIn = map.version + 1 }
                next.servers[i].state = .failed
                next.servers[i].since = wallNow
                changed = true
            }
        }
        // Every server back at once (all were killed, or the power went) and none online:
        // no replica can be repaired from another, so each takes its place again, the heads
        // of before heading again (their `onlineSince` is kept). Changes in flight at the
        // crash may be on one replica only (REPLICATION.md, "Failure cases"). A replaced
        // server holds nothing: it stays repairing, to be repaired from the others.
        let kept = next.servers.filter { $0.replaced != true }
        if changed, !next.servers.contains(where: { $0.state == .online }), !kept.isEmpty,
            kept.allSatisfy({ $0.state == .repairing && present[$0.id] != nil })
        {
            for i in next.servers.indices where next.servers[i].replaced != true { next.servers[i].state = .online }
        }
        if Self.endWait(&next, present: present, wallNow: wallNow) || Self.walkAgain(&next, present: present, wallNow: wallNow) {
            changed = true
        }
        guard changed else { return nil }
        next.version = map.version + 1
        return next
    }

    /// Two or more servers `repairing` and admitted, none failed, some online: the repair of
    /// each waits for every other server to be online (the other may hold the only copy of
    /// what it missed), so none would ever start. The one that left `online` last (it
    /// missed least; a replaced one holds nothing and is never chosen) takes its place
    /// again `unrepaired`, and the others can then be repaired from it (REPLICATION.md,
    /// "Two or more back at once"). One a step: with three waiting, the next step frees the
    /// next. True if it changed `map`.
    static func endWait(_ map: inout ClusterMap, present: [Int: Present], wallNow: UInt64) -> Bool {
        let waiting = map.servers.filter { $0.state == .repairing }
        guard waiting.count >= 2, !map.servers.contains(where: { $0.state == .failed }),
            map.servers.contains(where: { $0.state == .online }),
            waiting.allSatisfy({ $0.session != nil && present[$0.id]?.session == $0.session }),
            let chosen = waiting.filter({ $0.replaced != true }).max(by: { ($0.leftIn ?? 0, -$0.id) < ($1.leftIn ?? 0, -$1.id) }),
            let i = map.servers.firstIndex(where: { $0.id == chosen.id })
        else { return false }
        map.servers[i].state = .online
        map.servers[i].unrepaired = true
        map.servers[i].since = wallNow
        return true
    }

    /// An `unrepaired` server, once every other server is online, is made `repairing` under
    /// its session, to be walked as after a crash (the smallest id first). True if it
    /// changed `map`.
    static func walkAgain(_ map: inout ClusterMap, present: [Int: Present], wallNow: UInt64) -> Bool {
        guard map.servers.allSatisfy({ $0.state == .online }),
            let i = map.servers.firstIndex(where: { $0.unrepaired == true && $0.session != nil && present[$0.id]?.session == $0.session })
        else { return false }
        map.servers[i].state = .repairing
        map.servers[i].since = wallNow
        map.servers[i].leftIn = map.version + 1
        return true
    }

    /// The map once the repair of `server` under `session` is done: online, and online
    /// since the new version (so it joins every chain as the tail). Nil if the map no longer
    /// has it repairing under that session.
    public static func repaired(_ map: ClusterMap, server: Int, session: UInt64, wallNow: UInt64) -> ClusterMap? {
        guard let i = map.servers.firstIndex(where: { $0.id == server }), map.servers[i].state == .repairing, map.servers[i].session == session else { return nil }
        var next = map
        next.version = map.version + 1
        next.servers[i].state = .online
        next.servers[i].onlineSince = next.version
        next.servers[i].since = wallNow
        next.servers[i].replaced = nil
        next.servers[i].unrepaired = nil
        next.servers[i].leftIn = nil
        return next
    }

    /// The map with server `server` failed and marked replaced (`tessera replace`, before
    /// its blank images serve): it comes back `repairing` and is online only once repaired.
    public static func replacing(_ map: ClusterMap, server: Int, wallNow: UInt64) -> ClusterMap? {
        guard let i = map.servers.firstIndex(where: { $0.id == server }) else { return nil }
        var next = map
        next.version = map.version + 1
        if next.servers[i].state == .online { next.servers[i].leftIn = next.version }
        next.servers[i].state = .failed
        next.servers[i].session = nil
        next.servers[i].replaced = true
        next.servers[i].since = wallNow
        return next
    }

    /// The map with online server `server` made `repairing` under the session it holds, to
    /// have its replicas walked again (`tessera repair --id`). Nil unless it is online with
    /// a session and every other server is online: with one that is not, the server may be
    /// the only member of some chain, which `repairing` would leave with none.
    /// `session`: the one the server runs under now, for a map that admitted it whatever
    /// its session (a cluster's first map names none).
    public static func repairAgain(_ map: ClusterMap, server: Int, session: UInt64? = nil, wallNow: UInt64) -> ClusterMap? {
        guard let i = map.servers.firstIndex(where: { $0.id == server }), map.servers[i].state == .online,
            let admitted = map.servers[i].session ?? session,
            map.servers.allSatisfy({ $0.id == server || $0.state == .online })
        else { return nil }
        var next = map
        next.version = map.version + 1
        next.servers[i].state = .repairing
        next.servers[i].since = wallNow
        next.servers[i].session = admitted
        next.servers[i].leftIn = next.version
        return next
    }

    /// The first map of a cluster: every server of the cluster file online, version 1.
    public static func initialMap(servers: [(id: Int, address: String)], wallNow: UInt64) -> ClusterMap {
        ClusterMap(version: 1, servers: servers.sorted { $0.id < $1.id }.map { .init(id: $0.id, address: $0.address, state: .online, since: wallNow) })
    }
}
