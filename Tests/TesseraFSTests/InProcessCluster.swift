// Three servers in this process (engine, CAS, IOS, RPC on loopback ports), and the
// file-system core over them: what the property tests drive.
import Foundation
import NIOPosix
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEngine
import TesseraFS
import TesseraRPC
import TesseraS3
import TesseraServices

final class InProcessCluster: @unchecked Sendable {
    // SAFETY: set up in init, torn down in stop(), used by one test at a time.
    let dir: String
    var nodes: [ServerNode] = []
    var servers: [RPCServer] = []
    var config: ClusterConfig!
    /// The sessions of every simulated process (mount) on this cluster.
    let sessionTable = LocalSessionTable()

    init(unitSize: String = "64K") async throws {
        var template = Array((NSTemporaryDirectory() + "/tessera-fs-XXXXXX").utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        var ports: [Int] = []
        // The replication's peers are the other in-process servers, whose ports are known
        // once all are listening.
        let peerPorts = Locked<[Int: Int]>([:])
        for i in 0..<3 {
            try FileManager.default.createDirectory(atPath: dir + "/\(i)", withIntermediateDirectories: true)
            _ = try Engine.format(path: dir + "/\(i)/meta.img", size: 64 << 20, pageSize: 4096, logSize: 8 << 20)
            _ = try DataImage.format(path: dir + "/\(i)/data.img", size: 512 << 20)
            var o = EngineOptions()
            o.logger.logLevel = .warning
            let node = try ServerNode.open(metaPath: dir + "/\(i)/meta.img", dataPath: dir + "/\(i)/data.img", options: o, server: i)
            let replicated = try ReplicatedNode(node: node, settings: ReplicationSettings(me: i, servers: [0, 1, 2], isStatic: true)) { peer in
                guard let port = peerPorts.withLock({ $0[peer] }) else { throw TesseraError(.closed, "server \(peer) is not listening yet") }
                return try await RPCClient.connect(host: "127.0.0.1", port: port, secret: "fs-test-secret-0123456")
            }
            let server = try await RPCServer.start(host: "127.0.0.1", port: 0, secret: "fs-test-secret-0123456", handler: replicated, group: MultiThreadedEventLoopGroup.singleton)
            nodes.append(node)
            servers.append(server)
            ports.append(server.port)
        }
        peerPorts.withLock { p in for (i, port) in ports.enumerated() { p[i] = port } }
        var toml = "secret = \"fs-test-secret-0123456\"\n[layout]\ndata_units = 2\nparity_units = 1\nunit_size = \"\(unitSize)\"\n"
        for i in 0..<3 {
            toml += "[[server]]\nid = \(i)\naddress = \"127.0.0.1:\(ports[i])\"\nmeta = \"\(i)/meta.img\"\nmeta_size = \"64M\"\ndata = \"\(i)/data.img\"\ndata_size = \"512M\"\n"
        }
        config = try ClusterConfig.parse(toml, path: dir + "/cluster.toml", directory: dir)
    }

    /// A new client and file system over the bucket, as a new mount would make, with a
    /// session of its own.
    func mount(bucket: String = "fs-test", memory: Int = 1 << 20, inlineLimit: Int? = nil) async throws -> (Cluster, FileSystem) {
        let cluster = try Cluster(config: config)
        var o = FileSystemOptions()
        o.memoryBudget = memory
        if let inlineLimit { o.inlineLimit = inlineLimit }
        let store = S3Store(cluster: cluster, sessions: LocalSessions(table: sessionTable))
        let fs = try await FileSystem(store: store, bucket: bucket, owner: "owner", options: o)
        return (cluster, fs)
    }

    func stop() async {
        for s in servers { await s.shutdown(drain: .seconds(2)) }
        for n in nodes { try? n.close() }
        try? FileManager.default.removeItem(atPath: dir)
    }
}
