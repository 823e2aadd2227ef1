// What `tessera status` reads from the cluster state service: the map, the sessions, the
// roles. etcd being unreachable is said, not fatal: the servers' own lines still print.
import Foundation
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEtcd
import TesseraState

struct StatusView {
    var endpoints: [String] = []
    var map: ClusterMap?
    var sessions: [(lease: UInt64, info: SessionInfo)] = []
    var roles: [String: (session: UInt64, holder: RoleHolder)] = [:]
    var repairs: [RepairProgress] = []
    var error: String?

    static func read(_ config: ClusterConfig) async throws -> StatusView {
        var v = StatusView()
        guard let settings = config.state else {
            v.error = "the cluster file has no [state]"
            return v
        }
        v.endpoints = settings.endpoints
        do {
            try await StateReader.with(settings) { reader in
                v.map = try await reader.map()?.map
                v.sessions = try await reader.sessions()
                v.roles = try await reader.roles()
                v.repairs = try await reader.repairs()
            }
        } catch {
            v.error = "\(error)"
        }
        return v
    }

    func print(bytes: Bool) {
        let now = wallClockNanoseconds()
        if let error {
            Swift.print(bytes ? "etcd=\(endpoints.joined(separator: ",")) error=\"\(error)\"" : "etcd \(endpoints.joined(separator: ", ")): \(error)")
            return
        }
        Swift.print(bytes ? "map version=\(map?.version ?? 0) etcd=\(endpoints.joined(separator: ","))" : "cluster map version \(map?.version ?? 0)  (etcd \(endpoints.joined(separator: ", ")))")
        for s in sessions.sorted(by: { ($0.info.kind.rawValue, $0.info.server ?? 0, $0.info.pid) < ($1.info.kind.rawValue, $1.info.server ?? 0, $1.info.pid) }) {
            let age = now > s.info.started ? (now - s.info.started) / 1_000_000_000 : 0
            let lease = String(s.lease, radix: 16)
            if bytes {
                Swift.print("session=\(lease) kind=\(s.info.kind.rawValue) host=\(s.info.host) pid=\(s.info.pid) age_s=\(age) version=\(s.info.version) serves=\"\(s.info.serves)\"")
            } else {
                Swift.print("session \(lease)  \(s.info.kind.rawValue)  \(s.info.host) pid \(s.info.pid)  age \(duration(age))  \(s.info.serves)")
            }
        }
        for (name, (session, h)) in roles.sorted(by: { $0.key < $1.key }) {
            let lease = String(session, radix: 16)
            Swift.print(bytes ? "role=\(name) session=\(lease) kind=\(h.kind.rawValue) pid=\(h.pid)" : "role \(name)  held by \(h.kind.rawValue) on \(h.host) pid \(h.pid) (session \(lease))")
        }
        for p in repairs {
            if bytes {
                let walker = p.walker.map { " walker=\($0)" } ?? ""
                let data = p.data.map {
                    " data=\($0.done == nil ? "running" : "done") objects=\($0.totals.objects) groups=\($0.totals.groups) units=\($0.totals.units) data_read=\($0.totals.bytesRead) data_written=\($0.totals.bytesWritten) data_rate=\(Int($0.rate))\($0.eta.map { " eta=\($0)" } ?? "")"
                } ?? ""
                Swift.print("repair=\(p.server) state=\(p.done == nil ? "running" : "done") indexes=\(p.indexes) records=\(p.records) copied=\(p.copied) rate=\(Int(p.rate))\(walker)\(data)")
            } else {
                Swift.print(Self.describe(p))
            }
        }
    }

    /// One repair's progress, in words.
    static func describe(_ p: RepairProgress) -> String {
        var totals = "\(p.indexes) indexes walked, \(p.records) records compared, \(p.copied) copied, \(Int(p.rate)) records/s"
        if let d = p.data {
            let t = d.totals
            totals += "; object data\(d.done == nil ? " (running)" : ""): \(t.objects) objects, \(t.groups) groups compared, \(t.units) units rewritten, "
                + "\(t.bytesRead >> 20) MiB read, \(t.bytesWritten >> 20) MiB written, \(Int(d.rate) >> 20) MiB/s"
                + (d.eta.map { ", about \($0) s left" } ?? "")
        }
        guard let done = p.done else {
            let walker = p.walker.map { ", server \($0) walking" } ?? ""
            return "repair of server \(p.server)  running\(walker): \(totals)"
        }
        let seconds = Double(done &- p.started) / 1e9
        return "repair of server \(p.server)  done in \(String(format: "%.1f", seconds)) s: \(totals)"
    }

    private func duration(_ s: UInt64) -> String {
        s < 120 ? "\(s) s" : s < 7200 ? "\(s / 60) min" : "\(s / 3600) h"
    }
}
