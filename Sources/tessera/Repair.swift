// `tessera repair`: shows the index repairs the HA role runs, starts one for an online
// server (--id), and waits for them to finish (--wait). REPLICATION.md, "Repair".
import ArgumentParser
import Foundation
import TesseraCore
import TesseraEtcd
import TesseraLocal
import TesseraState

struct Repair: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show index repairs, walk an online server's replicas again (--id), or wait until every running server is online (--wait).",
        discussion: "The HA role repairs a server that comes back from failed, or restarts without a clean stop, by itself; this command shows that work and waits for it.")

    @OptionGroup var state: StateOption
    @Option(help: "Walk this online server's index replicas again (every other server must be online).") var id: Int?
    @Flag(help: "Wait until no running server is repairing or waiting to be admitted.") var wait = false
    @Option(help: "With --wait: give up after this many seconds (exit 1).") var timeout: Int = 3600

    func run() async throws {
        let config = try state.config()
        guard let settings = config.state else { throw ValidationError("the cluster file has no [state]: repair needs the cluster state service") }
        let etcd = try EtcdClient(endpoints: settings.endpoints, requestTimeout: .seconds(5), logger: quietLogger)
        let reader = StateReader(etcd: etcd, keys: StateKeys(settings))
        do {
            try await run(reader)
            await etcd.close()
        } catch {
            await etcd.close()
            throw error
        }
    }

    private func run(_ reader: StateReader) async throws {
        if let id {
            let version = try await reader.repairAgain(id)
            print("server \(id) is repairing (map version \(version)): the HA role walks its replicas")
        }
        var view = try await reader.repairView()
        guard wait else {
            printView(view)
            return
        }
        let deadline = ContinuousClock.now + .seconds(timeout)
        var said = ""
        while !view.isDone {
            let line = progressLine(view)
            if line != said {
                print(line)
                said = line
            }
            guard ContinuousClock.now < deadline else {
                printError("repair: not done after \(timeout) s: \(line)")
                throw ExitCode(1)
            }
            try await Task.sleep(for: .milliseconds(500))
            view = try await reader.repairView()
        }
        printView(view)
    }

    private func progressLine(_ v: RepairView) -> String {
        let servers = v.pending.map { id -> String in
            let state = v.map.server(id)?.state.rawValue ?? "unknown"
            guard state == "repairing", let p = v.progress.first(where: { $0.server == id && $0.done == nil && $0.session == v.map.server(id)?.session }) else {
                return "server \(id) \(state == "repairing" ? "repairing, not started" : "waiting to be admitted")"
            }
            return "server \(id) repairing: \(p.indexes) indexes, \(p.records) records compared, \(p.copied) copied, \(Int(p.rate)) records/s"
        }
        return "waiting: " + servers.joined(separator: "; ")
    }

    private func printView(_ v: RepairView) {
        print("cluster map version \(v.map.version)")
        for s in v.map.servers {
            let note = v.pending.contains(s.id) && s.state == .online ? " (restarted: waiting to be admitted)" : ""
            print("server \(s.id)  \(s.state.rawValue)\(note)")
        }
        for id in v.absent { print("server \(id) has no session: it is repaired when it comes back") }
        for p in v.progress { print(StatusView.describe(p)) }
    }
}
