// `tessera debug free-data`: frees the data object an S3 entry names and leaves the entry,
// as a wrong free would; the tests read the entry afterwards and expect an error, not zeros.
import ArgumentParser
import TesseraClient
import TesseraCore
import TesseraS3
import TesseraState

struct FreeData: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "free-data", abstract: "Free the data object of BUCKET/KEY behind every reader's back, keeping its entry; prints the freed fids.")

    @OptionGroup var state: StateOption
    @Argument(help: "The bucket.") var bucket: String
    @Argument(help: "The key (a file's path in the mount).") var key: String

    func run() async throws {
        let sessions = try await ClusterState.start(config: try state.config(), info: SessionInfo(kind: .tool, serves: "tessera debug free-data"), logger: quietLogger)
        do {
            try await freeData(sessions)
            await sessions.close()
        } catch {
            await sessions.close()
            throw error
        }
    }

    private func freeData(_ sessions: ClusterState) async throws {
        try await withCluster(state) { cluster in
            let store = S3Store(cluster: cluster, sessions: sessions)
            guard let b = try await store.bucket(bucket) else { throw ValidationError("no bucket '\(bucket)'") }
            guard let o = try await store.object(b, key) else { throw ValidationError("no object '\(key)' in bucket '\(bucket)'") }
            guard o.objectHoldsData else { throw ValidationError("'\(key)' has no data object (empty, or its bytes are in its entry)") }
            let fids = o.multipart ? try await store.partRecords(o.fid, after: 0, limit: 10_000).map(\.fid) : [o.fid]
            try await cluster.delete(fids)
            for f in fids { print(f) }
        }
    }
}
