// `tessera server`: one server process in the foreground, until SIGTERM or SIGINT.
import ArgumentParser
import Dispatch
import Foundation
import Logging
import NIOPosix
import TesseraConfig
import TesseraCore
import TesseraEngine
import TesseraLocal
import TesseraRPC
import TesseraServices
import TesseraState

struct Server: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run one server of the cluster in the foreground.")

    @Option(help: "Cluster file.") var config: String
    @Option(help: "This server's id in the cluster file.") var id: Int
    @Option(help: "Node-cache budget, such as 256M.") var cache: String = "256M"
    @Option(help: ArgumentHelp("Serve on this inherited socket, bound to the server's address and listening, instead of binding the address (for a supervisor that holds the port).", visibility: .hidden))
    var listenFd: Int32?

    func run() async throws {
        let logger = Logger(label: "tessera.server.\(id)")
        let node: ServerNode
        let replicated: ReplicatedNode
        let rpc: RPCServer
        var metricsEndpoint: MetricsEndpoint?
        var clusterState: ClusterState?
        do {
            let cluster = try ClusterConfig.load(path: config)
            let me = try cluster.server(id)
            var options = EngineOptions()
            options.cacheBytes = Int(try parseSize(cache))
            node = try ServerNode.open(metaPath: me.metaPath, dataPath: me.dataPath, options: options, server: me.id)
            // Index requests go through the replication (docs/REPLICATION.md): its peers are
            // the other servers of the cluster file, its map the state service's.
            let session = SessionBox()
            let peers = Dictionary(uniqueKeysWithValues: cluster.servers.map { ($0.id, $0.address) })
            let secret = cluster.secret
            replicated = try ReplicatedNode(
                node: node, settings: ReplicationSettings(me: me.id, servers: cluster.servers.map(\.id), isStatic: cluster.state == nil),
                session: { session.current }, heldSession: { session.state?.held($0) ?? false }
            ) { peer in
                guard let address = peers[peer] else { throw TesseraError(.notFound, "no server \(peer) in the cluster file") }
                return try await RPCClient.connect(host: address.host, port: address.port, secret: secret, connectTimeout: .seconds(2))
            }
            let metrics = ServerMetrics(node, answeredBy: replicated)
            rpc = try await RPCServer.start(
                host: me.address.host, port: me.address.port, listening: listenFd, secret: cluster.secret,
                handler: metrics, group: MultiThreadedEventLoopGroup.singleton, logger: logger)
            if let m = me.metrics {
                metricsEndpoint = try await MetricsEndpoint.start(host: m.host, port: m.port, group: MultiThreadedEventLoopGroup.singleton) { metrics.scrape() }
                logger.info("server \(id): metrics at http://\(m)/metrics")
            }
            logger.info("server \(id) serving \(me.address) (meta \(me.metaPath), data \(me.dataPath))")
            if cluster.state != nil {
                // Serving first, then the session: the HA role sees the server online only
                // once it answers. Without one the server stops as cleanly as on SIGTERM.
                let state: ClusterState
                do {
                    state = try await ClusterState.start(config: cluster, info: SessionInfo(kind: .server, serves: me.address.description, server: id, stoppedCleanly: replicated.stoppedCleanly), logger: logger)
                } catch {
                    await metricsEndpoint?.close()
                    await rpc.shutdown()
                    try? node.close()
                    throw error
                }
                session.state = state
                state.watchMap { [replicated] map in replicated.update(map) }
                state.runHealthMonitor(cluster)
                clusterState = state
            } else {
                logger.notice("server \(id): the cluster file has no [state]: running without a session (the cluster map will not know this server)")
            }
        } catch let e as TesseraError {
            let missing = e.code == .notFound && e.message.hasSuffix("does not exist")
            printError(e.message + (missing ? " (format it with: tessera mkfs --config \(config) --id \(id))" : ""))
            throw ExitCode(1)
        } catch {
            printError("server \(id): \(error)")
            throw ExitCode(1)
        }
        let signal = await Self.waitForTermination()
        logger.info("server \(id): \(signal), shutting down")
        // 1. end the session (the map will say failed after the grace period); 2. stop
        // accepting and let requests in progress finish; 3. log and place the last group and
        // close the image.
        await clusterState?.close()
        await metricsEndpoint?.close()
        await rpc.shutdown()
        do { try replicated.stopCleanly() } catch {
            logger.error("server \(id): marking the clean stop failed: \(error); the next start will be repaired")
        }
        do { try node.close() } catch {
            logger.error("server \(id): closing the metadata image failed: \(error)")
            throw ExitCode(1)
        }
        logger.info("server \(id): stopped")
    }

    /// Waits for SIGTERM or SIGINT and returns its name.
    static func waitForTermination() async -> String {
        await withCheckedContinuation { (c: CheckedContinuation<String, Never>) in
            let queue = DispatchQueue(label: "tessera.signals")
            let once = Once()
            var sources: [DispatchSourceSignal] = []
            for (sig, name) in [(SIGTERM, "SIGTERM"), (SIGINT, "SIGINT")] {
                signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: queue)
                source.setEventHandler { if once.first() { c.resume(returning: name) } }
                source.resume()
                sources.append(source)
            }
            Self.keepAlive = sources
        }
    }

    nonisolated(unsafe) static var keepAlive: [DispatchSourceSignal] = []
}

/// True the first time only.
final class Once: @unchecked Sendable {
    // SAFETY: `done` is touched only under `lock`.
    private let lock = NSLock()
    private var done = false
    func first() -> Bool { lock.withLock { defer { done = true }; return !done } }
}

/// The server's session, once it has one: what the replication checks before it serves an
/// index (a server whose session lapsed serves none).
final class SessionBox: Sendable {
    private let holder = Locked<ClusterState?>(nil)
    var state: ClusterState? {
        get { holder.withLock { $0 } }
        set { holder.withLock { $0 = newValue } }
    }
    var current: UInt64? { state?.current }
}
