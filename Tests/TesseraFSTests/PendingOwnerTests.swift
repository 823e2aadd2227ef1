// Pending frees are owned by sessions, not clocks: the sweeper leaves a live session's data
// alone however old, frees a dead one's, follows an owner that renewed its session, and an
// owner whose session ended before it renewed cannot commit what it was writing.
import Foundation
import Testing
import TesseraClient
import TesseraCore
import TesseraS3

@Suite struct PendingOwnerTests {
    /// Three stores (processes) over one cluster, each with its own session.
    private func stores(_ cluster: InProcessCluster, _ n: Int) throws -> [(S3Store, LocalSessions)] {
        try (0..<n).map { _ in
            let sessions = LocalSessions(table: cluster.sessionTable)
            return (S3Store(cluster: try Cluster(config: cluster.config), sessions: sessions), sessions)
        }
    }

    private func record(_ fid: Fid, size: UInt64) -> ObjectRecord {
        ObjectRecord(fid: fid, size: size, modified: S3Store.now(), etag: "e", attributes: [])
    }

    /// A cluster with `n` processes; the first has made bucket "owners" and written an
    /// object for key "k" that it has not committed yet.
    private func started(processes n: Int) async throws
        -> (cluster: InProcessCluster, stores: [(S3Store, LocalSessions)], bucket: BucketRecord, writer: ObjectWriter, size: UInt64)
    {
        let cluster = try await InProcessCluster()
        let s = try stores(cluster, n)
        let bucket = try await s[0].0.createBucket("owners", owner: "o")
        let w = try await s[0].0.newObject(for: .object(bucket: "owners", key: "k"))
        try await w.write([UInt8](repeating: 9, count: 200_000))
        return (cluster, s, bucket, w, try await w.finish())
    }

    @Test func aLiveSessionsDataIsNeverSweptADeadOnesIs() async throws {
        let (cluster, s, bucket, w, size) = try await started(processes: 2)
        let (owner, ownerSessions) = s[0]
        let (sweeper, _) = s[1]
        // However often it sweeps, the other process leaves the data of a live owner alone.
        for _ in 0..<3 { #expect(try await sweeper.sweep() == 0) }
        #expect(try await owner.cluster.read(w.fid, at: 0, length: 4) == [9, 9, 9, 9])
        // The owner dies before its commit: the next sweep frees the data.
        cluster.sessionTable.end(ownerSessions.session)
        #expect(try await sweeper.sweep() == 1)
        #expect(try await sweeper.sweep() == 0)
        // And the owner, should it still be running, cannot make an entry refer to it.
        await #expect(throws: TesseraError.self) { try await owner.commit("owners", bucket, "k", record(w.fid, size: size)) }
        #expect(try await sweeper.object(bucket, "k") == nil)
        await cluster.stop()
    }

    @Test func aRenewedOwnerKeepsWhatItNotedAndCommitsIt() async throws {
        let (cluster, s, bucket, w, size) = try await started(processes: 2)
        let (owner, ownerSessions) = s[0]
        let (sweeper, _) = s[1]
        let old = ownerSessions.session
        let new = await ownerSessions.renew()  // notes it again under `new`, then ends `old`
        #expect(old != new && !cluster.sessionTable.live.contains(old))
        #expect(try await sweeper.sweep() == 0)
        try await owner.commit("owners", bucket, "k", record(w.fid, size: size))
        #expect(try await sweeper.object(bucket, "k")?.fid == w.fid)
        #expect(try await sweeper.cluster.read(w.fid, at: 0, length: 4) == [9, 9, 9, 9])
        await cluster.stop()
    }

    @Test func anOwnerWhoseSessionEndedBeforeItRenewedCannotCommit() async throws {
        let (cluster, s, bucket, w, size) = try await started(processes: 1)
        let (owner, ownerSessions) = s[0]
        cluster.sessionTable.end(ownerSessions.session)  // expired while it was cut off
        await ownerSessions.renew()
        await #expect(throws: TesseraError.self) { try await owner.commit("owners", bucket, "k", record(w.fid, size: size)) }
        #expect(try await owner.object(bucket, "k") == nil)
        await cluster.stop()
    }

    /// The sweeper frees a dead session's object while its writer, cut off, is still writing
    /// it; the writer's later units make the object exist again. Its commit is refused, and
    /// what it wrote after the sweep is freed then, so nothing is left that no record names.
    @Test func whatAnOwnerWroteAfterItsObjectWasSweptIsFreedWhenItsCommitIsRefused() async throws {
        let cluster = try await InProcessCluster()
        let s = try stores(cluster, 2)
        let (owner, ownerSessions) = s[0]
        let (sweeper, _) = s[1]
        let bucket = try await owner.createBucket("owners", owner: "o")
        let w = try await owner.newObject(for: .object(bucket: "owners", key: "k"))
        try await w.write([UInt8](repeating: 9, count: 200_000))
        cluster.sessionTable.end(ownerSessions.session)  // expired while it was cut off
        #expect(try await sweeper.sweep() == 1)
        try await w.write([UInt8](repeating: 7, count: 200_000))
        let size = try await w.finish()
        #expect(try await owner.cluster.read(w.fid, at: 200_000, length: 4, size: size) == [7, 7, 7, 7])
        await ownerSessions.renew()
        await #expect(throws: TesseraError.self) { try await owner.commit("owners", bucket, "k", record(w.fid, size: size)) }
        #expect(try await owner.object(bucket, "k") == nil)
        do {
            _ = try await owner.cluster.read(w.fid, at: 200_000, length: 4, size: size)
            Issue.record("the object written after the sweep is still there")
        } catch let e as TesseraError {
            #expect(e.code == .notFound)
        }
        #expect(try await sweeper.sweep() == 0)
        await cluster.stop()
    }
}
