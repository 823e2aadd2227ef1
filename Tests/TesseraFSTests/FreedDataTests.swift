// A file whose data object was freed behind the mount's back reads EIO, naming the object,
// never zeros; objects the mount starts exist before anything reads them, so holes, and a
// file grown by a truncation alone, still read as zeros.
import Foundation
import Glibc
import Testing
import TesseraClient
import TesseraCore
import TesseraFS
import TesseraS3

@Suite struct FreedDataTests {
    /// `body` fails with EIO whose message names `fid`.
    func expectEIO(_ fid: Fid, _ what: Comment, _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("\(what): no error")
        } catch let e as FSError {
            #expect(e.errno == EIO && e.message.contains("\(fid)"), "\(what): \(e)")
        } catch {
            Issue.record("\(what): \(error)")
        }
    }

    @Test func aFileWhoseObjectWasFreedReadsEIO() async throws {
        let cluster = try await InProcessCluster()
        let (client, fs) = try await cluster.mount(bucket: "freed")
        let (a, h) = try await fs.create(FileSystem.rootIno, Array("victim".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try await fs.write(h, at: 0, bytes: pattern(5, 300_000))
        try await fs.release(h)
        let bucket = try #require(try await fs.store.bucket("freed"))
        let fid = try #require(try await fs.store.entry(bucket, "victim")).fid
        try await client.delete(fid)
        // Opened again (its pages gone): the read reaches the servers, which have no such object.
        let r = try await fs.open(a.ino, flags: O_RDONLY).handle
        await expectEIO(fid, "read") { _ = try await fs.read(r, at: 0, count: 4096) }
        await expectEIO(fid, "read further on") { _ = try await fs.read(r, at: 200_000, count: 4096) }
        try await fs.release(r)
        // A partial write needs the group's old bytes: EIO too, not a group of zeros around it.
        let w = try await fs.open(a.ino, flags: O_RDWR).handle
        await expectEIO(fid, "write") {
            _ = try await fs.write(w, at: 10, bytes: [1])
            try await fs.flush(w)
        }
        try? await fs.release(w)
        await client.close()
        await cluster.stop()
    }

    /// A file whose object came from the S3 writer, which makes it only on the servers its
    /// writes reached: it reads whole, takes changes within its size with no CREATE (the
    /// freed-object test above fails if one goes out), and written past its end it is
    /// made on every server first, so the hole in between reads as zeros from each.
    @Test func aFileFromTheS3WriterIsMadeEverywhereBeforeItGrows() async throws {
        let cluster = try await InProcessCluster()
        let store = S3Store(cluster: try Cluster(config: cluster.config), sessions: LocalSessions(table: cluster.sessionTable))
        let bucket = try await store.createBucket("grow", owner: "owner")
        let w = try await store.newObject(for: .object(bucket: "grow", key: "s3"))
        let body = pattern(7, 5000)
        try await w.write(body)
        let size = try await w.finish()
        try await store.commit("grow", bucket, "s3", ObjectRecord(fid: w.fid, size: size, modified: S3Store.now(), etag: "e", attributes: []))
        await store.cluster.close()
        // Unit 1 of group 0 (bytes 64 KiB to 128 KiB) lies on server 1, which has no such object.
        let probe = try Cluster(config: cluster.config)
        _ = try await probe.read(w.fid, at: 65536, length: 10)
        #expect(probe.degradedReads == 1, "server 1 has the object already: nothing here tests the CREATE")

        let (client, fs) = try await cluster.mount(bucket: "grow", inlineLimit: 0)
        let ino = try await fs.lookup(FileSystem.rootIno, Array("s3".utf8)).ino
        let r = try await fs.open(ino, flags: O_RDONLY).handle
        #expect(try await fs.read(r, at: 0, count: 10_000) == body)
        try await fs.release(r)
        let h = try await fs.open(ino, flags: O_RDWR).handle
        _ = try await fs.write(h, at: 200_000, bytes: [5])
        try await fs.release(h)
        await fs.flushAll()
        let before = probe.degradedReads
        #expect(try await probe.read(w.fid, at: 65536, length: 10) == [UInt8](repeating: 0, count: 10))
        #expect(probe.degradedReads == before, "the hole was rebuilt: server 1 still has no such object")
        let g = try await fs.open(ino, flags: O_RDONLY).handle
        #expect(try await fs.read(g, at: 0, count: 5000) == body)
        #expect(try await fs.read(g, at: 5000, count: 195_000) == [UInt8](repeating: 0, count: 195_000))
        #expect(try await fs.read(g, at: 200_000, count: 10) == [5])
        try await fs.release(g)
        #expect(client.degradedReads == 0)
        await probe.close()
        await client.close()
        await cluster.stop()
    }

    /// A file written in order makes its object only where its writes go, as the S3 writer
    /// does: no CREATE (server 1, which holds no unit of a 5000-byte file, has no such
    /// object), and its reads pass its size, so it still reads whole with the server of its
    /// data down.
    @Test func aFileWrittenInOrderSendsNoCreateAndReadsWithAServerDown() async throws {
        let cluster = try await InProcessCluster()
        let (client, fs) = try await cluster.mount(bucket: "order", inlineLimit: 0)
        let body = pattern(3, 5000)
        let (a, h) = try await fs.create(FileSystem.rootIno, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try await fs.write(h, at: 0, bytes: Array(body[0..<3000]))
        try await fs.flush(h)
        _ = try await fs.write(h, at: 3000, bytes: Array(body[3000...]))
        try await fs.release(h)
        await fs.flushAll()
        let bucket = try #require(try await fs.store.bucket("order"))
        let fid = try #require(try await fs.store.entry(bucket, "f")).fid
        let probe = try Cluster(config: cluster.config)
        _ = try await probe.read(fid, at: 65536, length: 10)
        #expect(probe.degradedReads == 1, "server 1 has the object: a CREATE went out")
        await probe.close()
        await cluster.servers[0].shutdown(drain: .seconds(1))
        let r = try await fs.open(a.ino, flags: O_RDONLY).handle
        #expect(try await fs.read(r, at: 0, count: 10_000) == body)
        try await fs.release(r)
        #expect(client.degradedReads > 0, "unit 0 was rebuilt from parity")
        await client.close()
        await cluster.stop()
    }

    /// With files kept in their entries (the default) and without (every file's bytes in
    /// its object from the start).
    @Test(arguments: [nil, 0]) func newObjectsExistBeforeTheirHolesAreRead(inlineLimit: Int?) async throws {
        let cluster = try await InProcessCluster()
        let (client, fs) = try await cluster.mount(bucket: "holes", inlineLimit: inlineLimit)
        // Grown by a truncation alone, past what an entry holds: the entry names the object
        // with a size, and nothing was written to it.
        let (a, h) = try await fs.create(FileSystem.rootIno, Array("grown".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try await fs.setattr(a.ino, AttributeChanges(size: 3 << 20), caller: .root)
        try await fs.release(h)
        // Sparse: one byte far out, the groups before it never written.
        let (_, h2) = try await fs.create(FileSystem.rootIno, Array("sparse".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try await fs.write(h2, at: 5 << 20, bytes: [9])
        try await fs.release(h2)
        await fs.flushAll()
        await client.close()
        let (client2, fs2) = try await cluster.mount(bucket: "holes", inlineLimit: inlineLimit)
        let g = try await fs2.open(try await fs2.lookup(FileSystem.rootIno, Array("grown".utf8)).ino, flags: O_RDONLY).handle
        #expect(try await fs2.read(g, at: 0, count: 100_000) == [UInt8](repeating: 0, count: 100_000))
        #expect(try await fs2.read(g, at: (3 << 20) - 10, count: 100) == [UInt8](repeating: 0, count: 10))
        let s = try await fs2.open(try await fs2.lookup(FileSystem.rootIno, Array("sparse".utf8)).ino, flags: O_RDONLY).handle
        #expect(try await fs2.read(s, at: 0, count: 100_000) == [UInt8](repeating: 0, count: 100_000))
        #expect(try await fs2.read(s, at: (5 << 20) - 1, count: 10) == [0, 9])
        #expect(client2.degradedReads == 0)
        await client2.close()
        await cluster.stop()
    }
}
