// The `up`, `down` and `status` commands over a local cluster's state folder
// (TesseraLocal: its files, processes and etcd).
import ArgumentParser
import Foundation
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEtcd
import TesseraLocal
import TesseraRPC
import TesseraState

/// `--dir STATE`, else `$TESSERA_HOME`, else `~/.local/share/tessera`.
struct StateOption: ParsableArguments, LocalStateFolder {
    @Option(name: .customLong("dir"), help: "State folder of the local cluster (default: $TESSERA_HOME, else ~/.local/share/tessera).")
    var dir: String?

    /// Always absolute: the processes `up` starts are recognised later by their `--config`
    /// argument, which must read the same whichever directory `down` runs in.
    var path: String {
        var p = NSHomeDirectory() + "/.local/share/tessera"
        if let dir {
            p = dir
        } else if let home = ProcessInfo.processInfo.environment["TESSERA_HOME"], !home.isEmpty {
            p = home
        }
        if !p.hasPrefix("/") { p = FileManager.default.currentDirectoryPath + "/" + p }
        return (p as NSString).standardizingPath
    }
}

extension StateOption {
    /// Returns once `servers`, started from this folder, answer, and with a state service
    /// once their processes hold their sessions there (so what reads the sessions next,
    /// such as `tessera repair --wait`, sees this run of them) and the map admits them under
    /// those sessions (they serve object data only then); throws if a process exits first,
    /// if answering takes more than 30 s, or admission more than a TTL and a grace period
    /// after that and 30 s (an HA role holder that was killed keeps the role until its
    /// lease ends).
    func waitUntilAnswering(_ servers: [ClusterConfig.Server], _ config: ClusterConfig) async throws {
        let deadline = ContinuousClock.now + .seconds(30)
        func check(_ server: ClusterConfig.Server) throws -> pid_t {
            guard let pid = runningPid(server.id), ContinuousClock.now < deadline else {
                throw TesseraError(.io, "server \(server.id) did not start; see \(logFile(server.id))")
            }
            return pid
        }
        for server in servers {
            while true {
                if let c = try? await RPCClient.connect(host: server.address.host, port: server.address.port, secret: config.secret, connectTimeout: .seconds(1)) {
                    await c.close()
                    break
                }
                _ = try check(server)
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        guard let settings = config.state else { return }
        let admission = ContinuousClock.now + settings.ttl + settings.grace + .seconds(30)
        try await StateReader.with(settings) { reader in
            for server in servers {
                while true {
                    guard let pid = runningPid(server.id) else {
                        throw TesseraError(.io, "server \(server.id) did not start; see \(logFile(server.id))")
                    }
                    guard ContinuousClock.now < admission else {
                        throw TesseraError(.io, "server \(server.id) runs (pid \(pid)) but the cluster map has not admitted its session yet; see tessera status and \(logFile(server.id))")
                    }
                    let sessions = (try? await reader.sessions()) ?? []
                    // Its session taken, and the map admitting it under that session: only
                    // then does it serve object data (REPLICATION.md, "Object data").
                    if let admitted = (try? await reader.map())??.map.server(server.id)?.session,
                        sessions.contains(where: { $0.lease == admitted && $0.info.kind == .server && $0.info.server == server.id && $0.info.pid == pid })
                    {
                        break
                    }
                    try await Task.sleep(for: .milliseconds(50))
                }
            }
        }
    }
}

struct Up: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Start a local three-server cluster (formatting its images on first run), and mount it on MOUNTPOINT if given.")

    @OptionGroup var state: StateOption
    @Option(help: "Metadata image size of each server, on first run.") var metaSize = "512M"
    @Option(help: "Data image size of each server, on first run (sparse file).") var dataSize = "4G"
    @Option(help: "Parity-group unit size, on first run.") var unitSize = "1M"
    @Option(name: .customLong("s3"), help: "Also start the S3 gateway on HOST:PORT (e.g. 127.0.0.1:9000).") var s3: String?
    @Option(help: "Session lease time to live, on first run (e.g. 5s).") var ttl = "5s"
    @Option(help: "How long a server's session is gone before the map says failed, on first run.") var grace = "5s"
    @Option(help: "How often the sweeper runs, on first run.") var sweepInterval = "10s"
    @Option(help: "The bucket to mount.") var bucket = "tessera"
    @Option(name: .short, help: "Mount options (see tessera mount --help).") var o: [String] = []
    @Argument(help: "Mount point: the bucket is mounted there.") var mountpoint: String?

    func run() async throws {
        // A dead mount daemon's mount point answers ENOTCONN, so it reads as no directory.
        if let mountpoint, !isFuseMount(mountTarget(mountpoint)) {
            switch isDirectory(mountpoint) {
            case nil: try FileManager.default.createDirectory(atPath: mountpoint, withIntermediateDirectories: true)
            case false?: throw ValidationError("\(mountpoint) is not a directory")
            case true?: break
            }
        }
        if let s3, Endpoint(s3) == nil { throw ValidationError("--s3 '\(s3)' is not HOST:PORT") }
        let dir = state.path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: state.configPath) {
            try writeClusterFile()
        }
        var config = try state.config()
        // The access key is made with the cluster, --s3 or not: the bucket a mount makes is
        // owned by it, so the gateway started later (`up --s3`) can use it.
        if config.s3.credentials.isEmpty {
            try addCredentials()
            config = try state.config()
        }
        if config.state == nil {
            try state.addLocalStateSection()
            config = try state.config()
        }
        // etcd first: every process takes its session there as it starts.
        try await state.startEtcd(config)
        for server in config.servers {
            if !FileManager.default.fileExists(atPath: server.metaPath) || !FileManager.default.fileExists(atPath: server.dataPath) {
                try runChild(tesseraExecutable, ["mkfs", "--config", state.configPath, "--id", String(server.id)])
            }
            if state.runningPid(server.id) != nil { continue }
            try state.spawn(["server", "--config", state.configPath, "--id", String(server.id)], log: state.logFile(server.id), pidFile: state.pidFile(server.id))
        }
        // Ready when every server answers.
        try await state.waitUntilAnswering(config.servers, config)
        // With --s3 stdout carries only lines a shell can eval.
        let say: (String) -> Void = s3 == nil ? { print("tessera: " + $0) } : { printError($0) }
        say("cluster of \(config.servers.count) servers up in \(dir)")
        say("  etcd at \(config.state?.endpoints.joined(separator: ", ") ?? "")")
        for s in config.servers { say("  server \(s.id) at \(s.address)") }
        if let s3, let endpoint = Endpoint(s3) { try await startGateway(config, endpoint) }
        if let mountpoint { try await mount(mountTarget(mountpoint), say: say) }
    }

    private func mount(_ target: String, say: (String) -> Void) async throws {
        if isFuseMount(target) {
            if state.runningMountPid() != nil {
                say("\(target) is mounted already")
                return
            }
            // Left by a mount daemon that died: its mount point only answers ENOTCONN.
            _ = try runTool("/bin/fusermount3", ["-u", "-z", target])
        }
        try state.spawn(["mount", "--config", state.configPath, "-f"] + o.flatMap { ["-o", $0] } + [bucket, target], log: state.mountLogFile, pidFile: state.mountPidFile)
        try target.write(toFile: state.mountPointFile, atomically: true, encoding: .utf8)
        let deadline = ContinuousClock.now + .seconds(60)
        while !isFuseMount(target) {
            guard state.runningMountPid() != nil, ContinuousClock.now < deadline else {
                throw TesseraError(.io, "bucket \(bucket) was not mounted on \(target); see \(state.mountLogFile)")
            }
            try await Task.sleep(for: .milliseconds(20))
        }
        say("bucket \(bucket) mounted on \(target)")
    }

    private func startGateway(_ config: ClusterConfig, _ endpoint: Endpoint) async throws {
        if state.runningGatewayPid() == nil {
            try state.spawn(["gateway", "--config", state.configPath, "--listen", endpoint.description], log: state.gatewayLogFile, pidFile: state.gatewayPidFile)
            let deadline = ContinuousClock.now + .seconds(30)
            while !accepting(endpoint.host, endpoint.port) {
                guard state.runningGatewayPid() != nil, ContinuousClock.now < deadline else {
                    throw TesseraError(.io, "the S3 gateway did not start; see \(state.gatewayLogFile)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
        let (key, secret) = config.s3.credentials.sorted { $0.key < $1.key }.first!
        printError("S3 gateway at http://\(endpoint)")
        print("export AWS_ENDPOINT_URL=http://\(endpoint)")
        print("export AWS_ACCESS_KEY_ID=\(key)")
        print("export AWS_SECRET_ACCESS_KEY=\(secret)")
        print("export AWS_DEFAULT_REGION=\(config.s3.region)")
    }

    /// Adds a generated S3 access key to the cluster file.
    private func addCredentials() throws {
        var rng = SystemRandomNumberGenerator()
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
        let key = "TSR" + String((0..<17).map { _ in alphabet[Int.random(in: 0..<alphabet.count, using: &rng)] })
        let secret = (0..<20).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
        let text = try String(contentsOfFile: state.configPath, encoding: .utf8)
        let added = "\n# Written by `tessera up`: the S3 access key, owner of the buckets mounts make.\n[[s3.credentials]]\naccess_key = \"\(key)\"\nsecret_key = \"\(secret)\"\n"
        try (text + added).write(toFile: state.configPath, atomically: true, encoding: .utf8)
        chmod(state.configPath, 0o600)
    }

    private func writeClusterFile() throws {
        var rng = SystemRandomNumberGenerator()
        let secret = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
        var toml = """
            # Written by `tessera up`: a local cluster of three servers on loopback.
            secret = "\(secret)"

            [layout]
            data_units = 2
            parity_units = 1
            unit_size = "\(unitSize)"

            """
        let ports = try freePorts(5)
        try state.writeEtcdConfig(client: ports[3], peer: ports[4])
        toml += """

            # The cluster state service: a one-member etcd in this folder (etcd.yml).
            [state]
            endpoints = ["127.0.0.1:\(ports[3])"]
            ttl = "\(ttl)"
            grace = "\(grace)"
            sweep_interval = "\(sweepInterval)"

            """
        for (id, port) in ports.prefix(3).enumerated() {
            toml += """

                [[server]]
                id = \(id)
                address = "127.0.0.1:\(port)"
                meta = "server-\(id)/meta.img"
                meta_size = "\(metaSize)"
                data = "server-\(id)/data.img"
                data_size = "\(dataSize)"

                """
            try FileManager.default.createDirectory(atPath: state.path + "/server-\(id)", withIntermediateDirectories: true)
        }
        try toml.write(toFile: state.configPath, atomically: true, encoding: .utf8)
        chmod(state.configPath, 0o600)
    }
}

struct Down: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Unmount and stop what `tessera up` started.")

    @OptionGroup var state: StateOption
    @Argument(help: "Mount point to unmount first (default: the one `up` mounted).") var mountpoint: String?

    func run() async throws {
        let config = try state.config()
        try await unmount()
        if let pid = state.runningGatewayPid() {
            try await state.stop(pid, what: "the S3 gateway", stillRunning: state.runningGatewayPid)
            unlink(state.gatewayPidFile)
            print("tessera: S3 gateway stopped")
        }
        var pids: [(Int, pid_t)] = []
        for s in config.servers {
            if let pid = state.runningPid(s.id) {
                kill(pid, SIGTERM)
                pids.append((s.id, pid))
            }
        }
        // Each server logs and places its last group, then exits; give them 60 s.
        let deadline = ContinuousClock.now + .seconds(60)
        for (id, pid) in pids {
            while state.runningPid(id) == pid && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(20))
            }
            if state.runningPid(id) == pid {
                printError("server \(id) (pid \(pid)) did not stop in time; killing it")
                kill(pid, SIGKILL)
            }
            unlink(state.pidFile(id))
        }
        print("tessera: \(pids.count) server(s) stopped")
        if try await state.stopEtcd() { print("tessera: etcd stopped") }
    }
}

extension Down {
    /// Unmounts what `up` mounted (or MOUNTPOINT) and waits for the daemon to exit.
    private func unmount() async throws {
        let recorded = try? String(contentsOfFile: state.mountPointFile, encoding: .utf8)
        guard let path = mountpoint ?? recorded else { return }
        let target = mountTarget(path)
        if isFuseMount(target) {
            var status = try runTool("/bin/fusermount3", ["-u", target])
            if status != 0 { status = try runTool("/bin/umount", [target]) }
            if status != 0 { throw TesseraError(.busy, "cannot unmount \(target) (files open there?)") }
            print("tessera: \(target) unmounted")
        }
        if let pid = state.runningMountPid() {
            let deadline = ContinuousClock.now + .seconds(60)
            while state.runningMountPid() == pid && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
            if state.runningMountPid() == pid { try await state.stop(pid, what: "the mount daemon", stillRunning: state.runningMountPid) }
        }
        if mountpoint == nil || recorded == target {
            unlink(state.mountPidFile)
            unlink(state.mountPointFile)
        }
    }
}

struct Status: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The cluster map (each server's state, address and usage), the sessions of mounts and gateways, and who holds each role.")

    @OptionGroup var state: StateOption
    @Flag(help: "Print exact byte counts as name=value fields, for scripts.") var bytes = false

    func run() async throws {
        let config = try state.config()
        let view = try await StatusView.read(config)
        var down = 0
        for (id, address, stats, error) in try await withCluster(state, { await $0.statistics() }) {
            let mapState = view.map?.server(id).map { $0.state.rawValue + ($0.unrepaired == true ? "-unrepaired" : "") } ?? "unknown"
            guard let s = stats else {
                down += 1
                print(bytes ? "server=\(id) address=\(address) state=down map=\(mapState)" : "server \(id)  \(address)  \(mapState)  down  (\(error ?? "no answer"))")
                continue
            }
            let used = s.dataBytes - min(s.dataBytes, s.dataFreeBytes)
            if bytes {
                print("server=\(id) address=\(address) state=up map=\(mapState) data_used=\(used) data_total=\(s.dataBytes) log_used=\(s.logUsedBytes) log_total=\(s.logBytes)"
                    + " data_image=\(s.dataImageBytes) data_image_on_disk=\(s.dataAllocatedBytes) meta_image=\(s.metaImageBytes) meta_image_on_disk=\(s.metaAllocatedBytes)")
                continue
            }
            let onDisk = s.dataAllocatedBytes + s.metaAllocatedBytes, configured = s.dataImageBytes + s.metaImageBytes
            print("server \(id)  \(address)  \(mapState)  up  data \(human(used)) of \(human(s.dataBytes)) used  log \(human(s.logUsedBytes)) of \(human(s.logBytes)) used"
                + "  images \(human(onDisk)) of \(human(configured)) on disk")
        }
        view.print(bytes: bytes)
        if down > 0 { throw ExitCode(1) }
    }
}

func human(_ n: UInt64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"]
    var v = Double(n)
    var i = 0
    while v >= 1024 && i < units.count - 1 {
        v /= 1024
        i += 1
    }
    return i == 0 ? "\(n) B" : String(format: "%.1f %@", v, units[i])
}

