// What a gateway or mount runs beside its requests: the S3 store over a cluster that follows
// the cluster map, the HA role, and the sweeper role (one process of the cluster at a time,
// an etcd election among gateways and mounts, frees pending data that no entry refers to
// and no live session owns).
import Logging
import TesseraClient
import TesseraS3
import TesseraState

extension ClusterState {
    /// The S3 store of a gateway or mount over `cluster`: the cluster follows the map, and
    /// this process campaigns for the HA and sweeper roles.
    func ownerStore(_ cluster: Cluster) -> S3Store {
        watchMap { cluster.apply($0) }
        runHealthMonitor(cluster.config)
        let store = S3Store(cluster: cluster, sessions: self)
        runSweeper(store)
        return store
    }

    /// Campaigns for the sweeper role; while held, sweeps every `sweep_interval`.
    func runSweeper(_ store: S3Store) {
        let logger = Logger(label: "tessera.sweeper")
        whileHolding(StateKeys.sweeperRole, every: settings.sweepInterval) { _ in
            do { try await store.sweep() } catch { logger.warning("sweeper: \(error)") }
        }
    }
}
