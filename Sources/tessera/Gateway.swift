// `tessera gateway`: the S3 HTTP endpoint over a cluster. It holds a session in the cluster
// state service, watches the cluster map, and campaigns for the HA and sweeper roles.
import ArgumentParser
import Foundation
import Logging
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraGateway
import TesseraS3
import TesseraState

struct Gateway: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Serve the cluster's buckets over the S3 HTTP API.")

    @Option(help: "The cluster file.") var config: String
    @Option(help: "HOST:PORT to listen on (port 0: any free port, printed at start).") var listen = "127.0.0.1:9000"

    func run() async throws {
        let cfg = try ClusterConfig.load(path: config)
        guard let endpoint = Endpoint(listen) ?? (listen.hasSuffix(":0") ? Endpoint(host: String(listen.dropLast(2)), port: 0) : nil) else {
            throw ValidationError("--listen '\(listen)' is not HOST:PORT")
        }
        if cfg.s3.credentials.isEmpty {
            throw TesseraError(.invalidArgument, "\(config): no [[s3.credentials]]: the gateway would refuse every signed request (see docs/CLUSTER.md)")
        }
        let logger = Logger(label: "tessera.gateway")
        let state = try await ClusterState.start(config: cfg, info: SessionInfo(kind: .gateway, serves: "http://\(endpoint)"), logger: logger)
        let cluster = try Cluster(config: cfg)
        ClusterState.follow(cluster, cfg.state)
        let store = state.ownerStore(cluster)
        // Buckets a mount made before the cluster had an access key go to its first key, so
        // the user who ran `tessera up DIR` and then `tessera up --s3 …` can use them.
        let firstKey = cfg.s3.credentials.keys.sorted()[0]
        if cfg.s3.credentials[S3Store.keylessOwner] == nil {
            do {
                let moved = try await store.transferBuckets(from: S3Store.keylessOwner, to: firstKey)
                if !moved.isEmpty { logger.notice("buckets \(moved.joined(separator: ", ")), made by a mount without an access key, are now owned by \(firstKey)") }
            } catch {
                logger.warning("could not give buckets made without an access key to \(firstKey) (the next start tries again): \(error)")
            }
        }
        let gateway = S3Gateway(store: store, settings: cfg.s3)
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                try await gateway.run(host: endpoint.host, port: endpoint.port) { port in
                    let host = endpoint.host.contains(":") ? "[\(endpoint.host)]" : endpoint.host
                    FileHandle.standardOutput.write(Data("tessera: S3 gateway listening on http://\(host):\(port)\n".utf8))
                }
            }
            group.addTask {
                let signal = await Server.waitForTermination()
                logger.info("gateway: \(signal), stopping")
                throw CancellationError()
            }
            do { try await group.next() } catch is CancellationError {}
            group.cancelAll()
        }
        await state.close()
        await cluster.close()
    }
}
