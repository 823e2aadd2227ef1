// Small files keep their data in their entry (FileData.swift, ObjectRecord's data field):
// the record format, the limit learned from the servers, and the moves between the entry
// and an object.
import Foundation
import Glibc
import Testing
import TesseraClient
import TesseraCore
import TesseraFS
import TesseraS3

@Suite struct InlineDataTests {
    @Test func recordsCarryTheirDataAndRefuseAMismatch() throws {
        let fid = Fid(hi: 0x5453_3341_0000_0001, lo: 9)
        let r = ObjectRecord(fid: fid, size: 5, modified: 77, etag: "x-1", attributes: [("content-type", "text/plain")], posix: [1, 2], inline: Array("hello".utf8))
        let back = try ObjectRecord.decode(r.encode())
        #expect(back.inline == Array("hello".utf8))
        #expect(back.size == 5 && back.posix == [1, 2] && !back.objectHoldsData)
        // Without data in it the record reads as before (version 1 when no flag needs 2).
        let plain = ObjectRecord(fid: fid, size: 5, modified: 77, etag: "x", attributes: [])
        #expect(plain.encode()[0] == 1)
        #expect(try ObjectRecord.decode(plain.encode()).inline == nil)
        #expect(try ObjectRecord.decode(plain.encode()).objectHoldsData)
        // A size that disagrees with the data is corrupt, not a crash or a short read.
        var wrong = r
        wrong.size = 6
        #expect(throws: TesseraError.self) { try ObjectRecord.decode(wrong.encode()) }
        // Every truncation of a valid record is an error.
        let bytes = r.encode()
        for n in 0..<bytes.count { #expect(throws: TesseraError.self) { try ObjectRecord.decode(Array(bytes[0..<n])) } }
    }

    @Test func smallFilesLiveInTheirEntryUntilTheyGrow() async throws {
        let cluster = try await InProcessCluster()
        let (client, fs) = try await cluster.mount(bucket: "inline")
        let store = fs.store
        let bucket = try #require(try await store.bucket("inline"))
        // 4 KiB test images: the servers' largest value bounds what fits in an entry.
        let stats = await client.statistics()
        #expect(stats.allSatisfy { ($0.stats?.maxValue ?? 0) > 500 && ($0.stats?.maxValue ?? 0) < 4096 })

        let (_, h) = try await fs.create(FileSystem.rootIno, Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        _ = try await fs.write(h, at: 0, bytes: pattern(1, 100))
        try await fs.flush(h)
        var e = try #require(try await store.entry(bucket, "f"))
        #expect(e.inline == pattern(1, 100))
        // Its object was never made: no CREATE went out for a file that lives in its entry.
        await #expect(throws: TesseraError.self, "the object exists") { _ = try await client.read(e.fid, at: 0, length: 100) }
        #expect(try await store.reading(e) { try await $0.read(at: 10, length: 20) } == Array(pattern(1, 100)[10..<30]))

        // Growing past what fits moves the bytes to the object, with the new ones.
        _ = try await fs.write(h, at: 5000, bytes: pattern(2, 10))
        try await fs.flush(h)
        e = try #require(try await store.entry(bucket, "f"))
        #expect(e.inline == nil && e.size == 5010)
        var expect = pattern(1, 100) + [UInt8](repeating: 0, count: 4900) + pattern(2, 10)
        #expect(try await store.reading(e) { try await $0.read(at: 0, length: 5010) } == expect)
        #expect(try await fs.read(h, at: 0, count: 6000) == expect)

        // Cut to nothing, the file is small again, and the object gave back its blocks.
        let fid = e.fid
        try await fs.release(h)
        let (_, h2) = try await fs.create(FileSystem.rootIno, Array("g".utf8), mode: 0o644, flags: O_RDWR, caller: .root)
        try await fs.release(h2)
        let ino = try await fs.lookup(FileSystem.rootIno, Array("f".utf8)).ino
        let h3 = try await fs.open(ino, flags: O_RDWR | O_TRUNC).handle
        _ = try await fs.write(h3, at: 0, bytes: pattern(3, 50))
        try await fs.release(h3)
        e = try #require(try await store.entry(bucket, "f"))
        #expect(e.inline == pattern(3, 50) && e.fid == fid)
        #expect(try await client.read(fid, at: 4096, length: 10) == [UInt8](repeating: 0, count: 10))

        // A new mount reads it from the entry; a truncation up within the limit stays there.
        await fs.flushAll()
        await client.close()
        let (client2, fs2) = try await cluster.mount(bucket: "inline")
        let ino2 = try await fs2.lookup(FileSystem.rootIno, Array("f".utf8)).ino
        #expect(ino2 == ino)
        _ = try await fs2.setattr(ino2, AttributeChanges(size: 60), caller: .root)
        let h4 = try await fs2.open(ino2, flags: O_RDONLY).handle
        expect = pattern(3, 50) + [UInt8](repeating: 0, count: 10)
        #expect(try await fs2.read(h4, at: 0, count: 100) == expect)
        try await fs2.release(h4)
        #expect(try #require(try await fs2.store.entry(bucket, "f")).inline == expect)
        await client2.close()
        await cluster.stop()
    }

    /// ftruncate up of an open file is answered on the caller's thread (FUSE), in memory;
    /// shrinking, or growing bytes kept in the entry past the limit, goes the long way.
    @Test func growingAnOpenFileNeedsNoRoundTrip() async throws {
        let cluster = try await InProcessCluster()
        let (client, fs) = try await cluster.mount(bucket: "grow")
        let bucket = try #require(try await fs.store.bucket("grow"))
        let user = Caller(uid: 1000, gid: 1000)
        let (a, h) = try await fs.create(FileSystem.rootIno, Array("g".utf8), mode: 0o4755, flags: O_RDWR, caller: user)
        _ = try await fs.write(h, at: 0, bytes: pattern(4, 100))
        // In the entry, and within the limit: grown in memory.
        let before = try fs.getattr(a.ino)
        let small = try #require(try fs.setattrNow(a.ino, AttributeChanges(size: 300), caller: user))
        #expect(small.size == 300 && small.mtime >= before.mtime && small.ctime >= before.ctime)
        #expect(small.mode & 0o4000 == 0, "a size change by a user drops set-user-ID")
        // Past the limit the bytes must move to the object: not here.
        #expect(try fs.setattrNow(a.ino, AttributeChanges(size: 1 << 20), caller: user) == nil)
        #expect(try fs.getattr(a.ino).size == 300)
        _ = try await fs.setattr(a.ino, AttributeChanges(size: 1 << 20), caller: user)
        // An object's file grows in memory too; shrinking is not done here.
        #expect(try fs.setattrNow(a.ino, AttributeChanges(size: 3 << 20), caller: user)?.size == 3 << 20)
        #expect(try fs.setattrNow(a.ino, AttributeChanges(size: 2 << 20), caller: user) == nil)
        #expect(try await fs.read(h, at: 0, count: 200) == pattern(4, 100) + [UInt8](repeating: 0, count: 100))
        #expect(try await fs.read(h, at: (3 << 20) - 10, count: 100) == [UInt8](repeating: 0, count: 10))
        // The close stores the grown size.
        try await fs.release(h)
        let e = try #require(try await fs.store.entry(bucket, "g"))
        #expect(e.size == 3 << 20)
        #expect(try await fs.store.reading(e) { try await $0.read(at: 0, length: 100) } == pattern(4, 100))
        // A closed file's size is never changed here.
        #expect(try fs.setattrNow(a.ino, AttributeChanges(size: 4 << 20), caller: user) == nil)
        await client.close()
        await cluster.stop()
    }
}
