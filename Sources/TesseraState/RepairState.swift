// What a tool sees of index repair in etcd (REPLICATION.md, "Repair"): which servers still
// need one, and the request to walk an online server's replicas again. The HA role holder
// runs every repair (ClusterState+Map.swift); a tool only reads, or marks a server
// `repairing` (or replaced) for it to pick up.
import TesseraClient
import TesseraCore
import TesseraEtcd

/// Where the cluster's repairs stand, read at one moment.
public struct RepairView: Sendable {
    public var map: ClusterMap
    /// Servers not yet serving under the session they run with: `repairing` in the map,
    /// online `unrepaired` (to be walked again), or running with a session the map has not
    /// admitted yet (the HA role is about to).
    public var pending: [Int]
    /// Failed servers with no session: repaired once they come back, not waited for.
    public var absent: [Int]
    public var progress: [RepairProgress]

    public var isDone: Bool { pending.isEmpty }
}

extension StateReader {
    /// The map, the servers' sessions and the repairs kept, as one view.
    public func repairView() async throws -> RepairView {
        guard let (m, _) = try await map() else { throw TesseraError(.notFound, "etcd has no cluster map yet: no server of this cluster has started") }
        var running: [Int: (session: UInt64, started: UInt64)] = [:]
        for (lease, info) in try await sessions() where info.kind == .server {
            guard let id = info.server, info.started >= running[id]?.started ?? 0 else { continue }
            running[id] = (lease, info.started)
        }
        var pending: [Int] = []
        var absent: [Int] = []
        for s in m.servers {
            guard let live = running[s.id] else {
                if s.state != .online { absent.append(s.id) }
                continue
            }
            if s.state != .online || s.unrepaired == true || (s.session != nil && s.session != live.session) { pending.append(s.id) }
        }
        return RepairView(map: m, pending: pending, absent: absent, progress: try await repairs())
    }

    /// Marks server `id` replaced and failed in the map, before blank images of it start
    /// (`tessera replace`). Refused while a process of that server holds a session.
    public func markReplaced(_ id: Int) async throws -> UInt64 {
        guard let (m, revision) = try await map() else { throw TesseraError(.notFound, "etcd has no cluster map yet") }
        if let (lease, info) = try await sessions().first(where: { $0.info.kind == .server && $0.info.server == id }) {
            throw TesseraError(.exists, "server \(id) is running (pid \(info.pid) on \(info.host), session \(String(lease, radix: 16))): stop it before replacing it")
        }
        guard let next = FailureDetector.replacing(m, server: id, wallNow: wallClockNanoseconds()) else {
            throw TesseraError(.invalidArgument, "the cluster map has no server \(id)")
        }
        let r = try await etcd.txn(if: [.modRevision(keys.map, equals: revision)], then: [.put(keys.map, encodeJSON(next))])
        guard r.succeeded else { throw TesseraError(.conflict, "the cluster map changed meanwhile: try again") }
        return next.version
    }

    /// Makes online server `id` `repairing`, so the HA role walks its replicas again.
    /// Returns the new map version.
    public func repairAgain(_ id: Int) async throws -> UInt64 {
        guard let (m, revision) = try await map() else { throw TesseraError(.notFound, "etcd has no cluster map yet") }
        guard let s = m.server(id) else { throw TesseraError(.invalidArgument, "the cluster map has no server \(id)") }
        let running = try await sessions().filter { $0.info.kind == .server && $0.info.server == id }.max { $0.info.started < $1.info.started }?.lease
        guard let next = FailureDetector.repairAgain(m, server: id, session: running, wallNow: wallClockNanoseconds()) else {
            let others = m.servers.filter { $0.id != id && $0.state != .online }.map { "server \($0.id) is \($0.state.rawValue)" }
            let why = s.state != .online ? "server \(id) is \(s.state.rawValue)" : others.isEmpty ? "server \(id) has no session in the map" : others.joined(separator: ", ")
            throw TesseraError(.invalidArgument, "cannot repair server \(id) again: \(why) (every server must be online)")
        }
        let r = try await etcd.txn(if: [.modRevision(keys.map, equals: revision)], then: [.put(keys.map, encodeJSON(next))])
        guard r.succeeded else { throw TesseraError(.conflict, "the cluster map changed meanwhile: try again") }
        return next.version
    }
}
