// The local cluster's etcd (docs/CLUSTER.md, "The state folder"): a single member that `up`
// starts from STATE/etcd.yml with its data in STATE/etcd, and `down` stops after everything
// else. A cluster file whose `[state]` names an operator's etcd has no etcd.yml: `up` then
// starts none and only checks that it answers.
import Foundation
import TesseraConfig
import TesseraCore
import TesseraEtcd
import TesseraState

extension LocalStateFolder {
    public var etcdConfigFile: String { path + "/etcd.yml" }
    public var etcdDataDir: String { path + "/etcd" }
    public var etcdLogFile: String { path + "/etcd.log" }
    public var etcdPidFile: String { path + "/etcd.pid" }

    /// The pid of the etcd `up` started, if it is running.
    public func runningEtcdPid() -> pid_t? {
        runningPid(etcdPidFile) { args in
            (args.first.map { $0.hasSuffix("etcd") } ?? false) && args.contains(etcdConfigFile)
        }
    }

    /// Writes etcd.yml for a one-member etcd on loopback ports `client` and `peer`.
    public func writeEtcdConfig(client: Int, peer: Int) throws {
        let yaml = """
            # Written by `tessera up`: the local cluster's one-member etcd (docs/CLUSTER.md).
            name: tessera
            data-dir: \(etcdDataDir)
            listen-client-urls: http://127.0.0.1:\(client)
            advertise-client-urls: http://127.0.0.1:\(client)
            listen-peer-urls: http://127.0.0.1:\(peer)
            initial-advertise-peer-urls: http://127.0.0.1:\(peer)
            initial-cluster: tessera=http://127.0.0.1:\(peer)
            initial-cluster-state: new
            auto-compaction-mode: periodic
            auto-compaction-retention: "1h"
            # Tessera speaks etcd's v3 JSON gateway, which a configuration file leaves off.
            enable-grpc-gateway: true
            logger: zap
            log-outputs: [stderr]

            """
        try yaml.write(toFile: etcdConfigFile, atomically: true, encoding: .utf8)
    }

    /// Adds a `[state]` section naming a new local etcd to a cluster file that has none (a
    /// state folder made before etcd was part of the cluster), and writes its etcd.yml.
    public func addLocalStateSection() throws {
        let ports = try freePorts(2)
        try writeEtcdConfig(client: ports[0], peer: ports[1])
        let text = try String(contentsOfFile: configPath, encoding: .utf8)
        let added = """

            # Written by `tessera up`: the cluster state service, a one-member etcd in this folder.
            [state]
            endpoints = ["127.0.0.1:\(ports[0])"]

            """
        try (text + added).write(toFile: configPath, atomically: true, encoding: .utf8)
        chmod(configPath, 0o600)
    }

    /// Starts the local etcd if this folder has one and it is not running, then waits until
    /// the cluster's endpoints answer as an etcd (30 s at most, or until the process dies).
    public func startEtcd(_ config: ClusterConfig) async throws {
        let settings = try config.requireState(for: "the cluster")
        let local = FileManager.default.fileExists(atPath: etcdConfigFile)
        if local && runningEtcdPid() == nil {
            guard let etcd = findExecutable("etcd") else {
                throw TesseraError(.notFound, "etcd is not installed (Debian: apt-get install etcd-server; scripts/install-deps does it)")
            }
            try spawn(executable: etcd, ["--config-file", etcdConfigFile], log: etcdLogFile, pidFile: etcdPidFile)
        }
        let client = try EtcdClient(endpoints: settings.endpoints, requestTimeout: .seconds(2), logger: quietLogger)
        defer { Task { await client.close() } }
        // Ours may still be starting; an operator's answers now or is reported now.
        let deadline = ContinuousClock.now + (local ? .seconds(30) : .zero)
        while true {
            do {
                _ = try await client.version()
                return
            } catch {
                let dead = local && runningEtcdPid() == nil
                guard !dead, ContinuousClock.now < deadline else {
                    throw TesseraError(.io, "\(error)" + (local ? "; see \(etcdLogFile)" : ""))
                }
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    /// Stops the local etcd (last: the others end their sessions in it as they stop).
    public func stopEtcd() async throws -> Bool {
        guard let pid = runningEtcdPid() else { return false }
        try await stop(pid, what: "etcd", stillRunning: runningEtcdPid)
        unlink(etcdPidFile)
        return true
    }
}

/// The first `name` in $PATH (then /usr/bin, /usr/local/bin) that is executable.
public func findExecutable(_ name: String) -> String? {
    let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
    let dirs = path.split(separator: ":").map(String.init) + ["/usr/bin", "/usr/local/bin"]
    return dirs.map { $0 + "/" + name }.first { FileManager.default.isExecutableFile(atPath: $0) }
}
