// `tessera repair`: shows the index repairs the HA role runs, starts one for an online
// server (--id), and waits for them to finish (--wait); `tessera replace`: a blank server
// in the place of a lost one. REPLICATION.md, "Repair".
import ArgumentParser
import Foundation
import TesseraConfig
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
        try await StateReader.with(settings, requestTimeout: .seconds(5)) { try await run($0) }
    }

    private func run(_ reader: StateReader) async throws {
        if let id {
            let version = try await reader.repairAgain(id)
            print("server \(id) is repairing (map version \(version)): the HA role walks its replicas")
        }
        let deadline = ContinuousClock.now + .seconds(timeout)
        var view: RepairView
        while true {
            do {
                view = try await reader.repairView()
                break
            } catch let e as TesseraError where e.code == .notFound && wait && ContinuousClock.now < deadline {
                // A cluster just started: its first HA holder has not written the map yet.
                try await Task.sleep(for: .milliseconds(200))
            }
        }
        guard wait else {
            printView(view)
            return
        }
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
                if v.map.server(id)?.unrepaired == true, state == "online" { return "server \(id) online unrepaired, to be walked again" }
                return "server \(id) \(state == "repairing" ? "repairing, not started" : "waiting to be admitted")"
            }
            return "server \(id) repairing: \(p.indexes) indexes, \(p.records) records compared, \(p.copied) copied, \(Int(p.rate)) records/s"
        }
        return "waiting: " + servers.joined(separator: "; ")
    }

    private func printView(_ v: RepairView) {
        print("cluster map version \(v.map.version)")
        for s in v.map.servers {
            let note = s.state != .online || !v.pending.contains(s.id) ? ""
                : s.unrepaired == true ? " (unrepaired: to be walked again)" : " (restarted: waiting to be admitted)"
            print("server \(s.id)  \(s.state.rawValue)\(note)")
        }
        for id in v.absent { print("server \(id) has no session: it is repaired when it comes back") }
        for p in v.progress { print(StatusView.describe(p)) }
    }
}

struct Replace: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Put a blank server in the place of one whose images are lost: formats new images for --id and starts it; the HA role then repairs it.",
        discussion: "The server must be stopped and its images gone (remove them first). It is marked replaced in the cluster map, so it serves nothing until a repair has copied every index replica it holds; `tessera repair --wait` waits for that. Object data on it is not rebuilt by this.")

    @OptionGroup var state: StateOption
    @Option(help: "The server to replace.") var id: Int

    func run() async throws {
        let config = try state.config()
        guard let settings = config.state else { throw ValidationError("the cluster file has no [state]: replace needs the cluster state service") }
        guard let server = config.servers.first(where: { $0.id == id }) else { throw ValidationError("the cluster file has no server \(id)") }
        if let pid = state.runningPid(id) { throw ValidationError("server \(id) is running (pid \(pid)): stop it before replacing it") }
        let left = [server.metaPath, server.dataPath].filter { FileManager.default.fileExists(atPath: $0) }
        guard left.isEmpty else {
            throw ValidationError("server \(id) still has images (\(left.joined(separator: ", "))): replace formats new ones; remove these first")
        }
        try await state.startEtcd(config)
        // A server killed moments ago still has its session until its lease ends.
        let version = try await StateReader.with(settings, requestTimeout: .seconds(5)) { reader in
            let deadline = ContinuousClock.now + settings.ttl * 2
            while true {
                do {
                    return try await reader.markReplaced(id)
                } catch let e as TesseraError where [.exists, .conflict].contains(e.code) && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(200))
                }
            }
        }
        print("server \(id) is replaced in cluster map version \(version)")
        try runChild(tesseraExecutable, ["mkfs", "--config", state.configPath, "--id", String(id)])
        try state.spawn(["server", "--config", state.configPath, "--id", String(id)], log: state.logFile(id), pidFile: state.pidFile(id))
        try await state.waitUntilAnswering([server], config)
        print("server \(id) started on blank images at \(server.address): the HA role repairs it (tessera repair --wait)")
    }
}
