// The sweeper role: one process of the cluster at a time (an etcd election among gateways
// and mounts) frees pending data that no entry refers to and no live session owns.
import Logging
import TesseraS3
import TesseraState

extension ClusterState {
    /// Campaigns for the sweeper role; while held, sweeps every `sweep_interval`.
    func runSweeper(_ store: S3Store) {
        let logger = Logger(label: "tessera.sweeper")
        whileHolding(StateKeys.sweeperRole, every: settings.sweepInterval) { _ in
            do { try await store.sweep() } catch { logger.warning("sweeper: \(error)") }
        }
    }
}
