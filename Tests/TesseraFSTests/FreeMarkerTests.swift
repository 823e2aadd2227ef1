// An unlink that dies after its UPDATE (entry gone, free marker written) and before the free:
// S3 listings never show the marker, and the sweeper frees the data and drops the marker
// once the dead process's session is gone, not before.
import Foundation
import Glibc
import Testing
import TesseraClient
import TesseraCore
import TesseraFS
import TesseraS3

@Suite struct FreeMarkerTests {
    @Test func theSweeperFreesWhatADeadUnlinkLeftOnceItsSessionIsGone() async throws {
        let cluster = try await InProcessCluster()
        let (client, fs) = try await cluster.mount(bucket: "markers")
        let (_, h) = try await fs.create(FileSystem.rootIno, Array("victim".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try await fs.write(h, at: 0, bytes: [UInt8](repeating: 7, count: 100_000))
        try await fs.release(h)
        let store = fs.store
        let bucket = try #require(try await store.bucket("markers"))
        let fid = try #require(try await store.entry(bucket, "victim")).fid
        // What unlink's UPDATE does, and no more.
        try await client.update(bucket.objects, deleting: [Array("victim".utf8)], putting: [store.freeMarker(fid, owner: "victim", bucket: "markers")])
        #expect(try await client.read(fid, at: 0, length: 4) == [7, 7, 7, 7])
        let listing = try await store.list(bucket.objects, prefix: "", delimiter: nil, after: nil, limit: 100)
        #expect(listing.entries.isEmpty, "the marker shows in an S3 listing: \(listing.entries.map(\.key))")
        await fs.flushAll()
        // Another process's sweeper leaves it alone while the unlinking process's session lives.
        let (client2, fs2) = try await cluster.mount(bucket: "markers")
        #expect(try await fs2.store.sweep() == 0)
        #expect(try await client2.get(bucket.objects, [S3Store.freeMarkerKey(fid)])[0] != nil)
        #expect(try await client2.read(fid, at: 0, length: 4) == [7, 7, 7, 7])
        // The process dies: its session ends, and the next sweep frees the data.
        await client.close()
        cluster.sessionTable.end(try #require(store.sessions.current))
        #expect(try await fs2.store.sweep() == 1)
        await #expect { _ = try await client2.read(fid, at: 0, length: 4) } throws: { ($0 as? TesseraError)?.code == .notFound }
        #expect(try await client2.get(bucket.objects, [S3Store.freeMarkerKey(fid)])[0] == nil)
        let root = try fs2.opendir(FileSystem.rootIno)
        #expect(try await fs2.readdir(root, from: 0).map(\.name) == [[0x2E], [0x2E, 0x2E]])
        await client2.close()
        await cluster.stop()
    }
}
