// A local cluster started with `tessera up` (three server processes): objects of every
// awkward size round-trip through the CLI; random overwrites match a model; with a server
// killed, or a unit's bytes corrupted on disk, every object still reads correctly; with one
// replica's server down, index GET and NEXT still answer. A deleted object reads as not
// found, never zeros; one whose CREATE a server missed still reads whole. A server started
// again serves no unit before the map admits it.
import Foundation
@testable import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraLocal
import TesseraState
import Testing

func tesseraBinary() -> String {
    if let path = ProcessInfo.processInfo.environment["TESSERA_BIN"] { return path }
    return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("tessera").path
}

/// Runs `tessera ARGS`; returns exit status and stdout.
@discardableResult
func tessera(_ args: [String], stdin: String? = nil) throws -> (Int32, Data) {
    let p = try ChildProcess(tesseraBinary(), args, stdin: stdin.map { .file($0) } ?? .null, stdout: .pipe, stderr: .null)
    let data = Data(p.readOutput())
    return (p.wait().status, data)
}

/// A `tessera up` cluster in a temporary state folder; `tessera down` and removal on release,
/// and any server still running is killed by the pid its pid file names.
final class UpCluster: @unchecked Sendable {
    let dir: String

    init(unitSize: String = "64K") throws {
        var template = Array((NSTemporaryDirectory() + "/tessera-up-XXXXXX").utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        let (status, _) = try tessera(["up", "--dir", dir, "--meta-size", "128M", "--data-size", "1G", "--unit-size", unitSize])
        guard status == 0 else { throw TesseraError(.io, "tessera up exited \(status)") }
    }

    func config() throws -> ClusterConfig { try ClusterConfig.load(path: dir + "/cluster.toml") }

    /// A client of the cluster that reads the map from its etcd.
    func cluster() throws -> Cluster {
        let config = try config()
        let c = try Cluster(config: config)
        ClusterState.follow(c, config.state)
        return c
    }

    func pid(_ id: Int) -> pid_t? {
        (try? String(contentsOfFile: dir + "/server-\(id).pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    func kill9(_ id: Int) {
        guard let p = pid(id) else { return }
        kill(p, SIGKILL)
        while kill(p, 0) == 0 { usleep(10_000) }
    }

    deinit {
        _ = try? tessera(["down", "--dir", dir])
        for id in 0..<3 { kill9(id) }
        // The cluster's etcd, should `down` have failed to stop it.
        if let text = try? String(contentsOfFile: dir + "/etcd.pid", encoding: .utf8), let p = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), p > 0 {
            kill(p, SIGKILL)
        }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

func pattern(_ n: Int, seed: UInt64) -> [UInt8] {
    var rng = SeededRandom(seed: seed)
    var out = [UInt8](repeating: 0, count: n)
    var i = 0
    while i < n {
        var v = rng.next()
        for _ in 0..<8 where i < n {
            out[i] = UInt8(truncatingIfNeeded: v)
            v >>= 8
            i += 1
        }
    }
    return out
}

@Suite(.serialized) struct LocalClusterTests {
    @Test func objectsRoundTripThroughTheCommandLine() throws {
        let cluster = try UpCluster()
        let unit = 64 << 10
        let group = 2 * unit
        let sizes = [0, 1, unit - 1, unit, unit + 1, 3 * group + 5, 100 << 20]
        for (i, size) in sizes.enumerated() {
            let input = cluster.dir + "/in-\(i)"
            let bytes = pattern(size, seed: UInt64(i))
            _ = FileManager.default.createFile(atPath: input, contents: Data(bytes))
            #expect(try tessera(["object", "put", "--dir", cluster.dir, "obj-\(i)", input]).0 == 0)
            let output = cluster.dir + "/out-\(i)"
            #expect(try tessera(["object", "get", "--dir", cluster.dir, "obj-\(i)", output]).0 == 0)
            #expect(FileManager.default.contents(atPath: output) == Data(bytes), "object of \(size) bytes")
            // stdin in, stdout out.
            let (s, out) = try tessera(["object", "get", "--dir", cluster.dir, "obj-\(i)"])
            #expect(s == 0 && out == Data(bytes))
            try FileManager.default.removeItem(atPath: input)
            try FileManager.default.removeItem(atPath: output)
        }
        let stdinFile = cluster.dir + "/stdin"
        _ = FileManager.default.createFile(atPath: stdinFile, contents: Data(pattern(12345, seed: 99)))
        #expect(try tessera(["object", "put", "--dir", cluster.dir, "from-stdin"], stdin: stdinFile).0 == 0)
        #expect(try tessera(["object", "get", "--dir", cluster.dir, "from-stdin"]).1 == Data(pattern(12345, seed: 99)))
        #expect(try tessera(["object", "rm", "--dir", cluster.dir, "from-stdin"]).0 == 0)
        #expect(try tessera(["object", "get", "--dir", cluster.dir, "from-stdin"]).0 == 1)
        let (status, text) = try tessera(["status", "--dir", cluster.dir])
        #expect(status == 0 && String(decoding: text, as: UTF8.self).components(separatedBy: " up ").count == 4)
    }

    @Test func randomOverwritesMatchAModelAndSurviveFailures() async throws {
        let up = try UpCluster()
        let cluster = try up.cluster()
        let unit = 64 << 10
        let size = 9 * unit + 123
        let objects = (0..<3).map { Fid(hi: 7, lo: UInt64($0)) }
        var models = objects.map { _ in [UInt8](repeating: 0, count: size) }
        try await cluster.create(objects)
        var rng = SeededRandom(seed: 5)
        for step in 0..<150 {
            let o = Int.random(in: 0..<objects.count, using: &rng)
            let offset = Int.random(in: 0..<size, using: &rng)
            let length = Int.random(in: 1...min(size - offset, 3 * unit), using: &rng)
            if step % 10 == 9 {
                try await cluster.free(objects[o], at: UInt64(offset), length: UInt64(length))
                models[o].replaceSubrange(offset..<(offset + length), with: repeatElement(0, count: length))
            } else {
                let bytes = pattern(length, seed: UInt64(step))
                try await cluster.write(objects[o], at: UInt64(offset), bytes)
                models[o].replaceSubrange(offset..<(offset + length), with: bytes)
            }
            let a = Int.random(in: 0..<size, using: &rng)
            let b = Int.random(in: a...size, using: &rng)
            #expect(try await cluster.read(objects[o], at: UInt64(a), length: b - a) == Array(models[o][a..<b]), "step \(step)")
        }
        try await cluster.sync()
        // Into a caller's buffer, across several groups and a partial unit at each end.
        let into = UnsafeMutableRawBufferPointer.allocate(byteCount: size - 1000, alignment: 16)
        defer { into.deallocate() }
        try await cluster.read(objects[2], at: 500, into: into)
        #expect(Array(into) == Array(models[2][500..<(size - 500)]))
        // Indexes: replicated records.
        let index = Fid(hi: 7, lo: 100)
        try await cluster.createIndex(index)
        let records = (0..<50).map { Record(key: Array("k\($0)".utf8), value: Array("v\($0)".utf8)) }
        #expect(try await cluster.put(index, records, sync: true).allSatisfy { $0 == .ok })

        // One unit's bytes corrupted on disk on server 0: reads are rebuilt from parity.
        let before = cluster.degradedReads
        let data = try up.config().servers.first { $0.id == 0 }!.dataPath
        let h = FileHandle(forUpdatingAtPath: data)!
        for block in 0..<4096 {
            try h.seek(toOffset: UInt64(4096 + block * 4096 + 100))
            let old = try h.read(upToCount: 1)!
            try h.seek(toOffset: UInt64(4096 + block * 4096 + 100))
            try h.write(contentsOf: Data([old[0] ^ 0xFF]))
        }
        try h.close()
        for (o, f) in objects.enumerated() {
            #expect(try await cluster.read(f, at: 0, length: size) == models[o], "object \(o) after corruption")
        }
        #expect(cluster.degradedReads > before, "no read was rebuilt: the corruption was not under a unit")
        // Those reads rewrote the bad units in place: read again, nothing needs parity.
        #expect(cluster.healedUnits > 0, "no unit was rewritten after its checksum failed")
        let healed = cluster.degradedReads
        for (o, f) in objects.enumerated() {
            #expect(try await cluster.read(f, at: 0, length: size) == models[o], "object \(o) after healing")
        }
        #expect(cluster.degradedReads == healed, "a healed unit still read degraded")

        // Rewritten in full (new blocks everywhere), so only one failure at a time is tested.
        for (o, f) in objects.enumerated() { try await cluster.write(f, at: 0, models[o]) }
        try await cluster.sync()

        // A server killed: every object still reads; index GET and NEXT still answer.
        up.kill9(1)
        for (o, f) in objects.enumerated() {
            #expect(try await cluster.read(f, at: 0, length: size) == models[o], "object \(o) with server 1 down")
        }
        #expect(try await cluster.get(index, [Array("k7".utf8), Array("nope".utf8)]) == [Array("v7".utf8), nil])
        let listed = try await cluster.next(index, from: [nil], limit: 100)[0]
        #expect(listed.count == 50)
        // A write with a unit for the down server waits until the map fails it, then goes
        // on without that unit (a degraded write); it reads back through parity, and what
        // was there still reads.
        let patch = [UInt8](repeating: 1, count: 2 * unit)
        try await cluster.write(objects[0], at: 0, patch)
        models[0].replaceSubrange(0..<(2 * unit), with: patch)
        #expect(try await cluster.read(objects[0], at: 0, length: size) == models[0], "a degraded write")
        #expect(try await cluster.read(objects[1], at: 0, length: size) == models[1])
        await cluster.close()
    }

    /// `body` fails with notFound naming `object` as freed or never written.
    func expectNotFound(_ object: Fid, _ what: Comment, _ body: () async throws -> Void) async {
        do {
            try await body()
            Issue.record("\(what): read without an error")
        } catch let e as TesseraError {
            #expect(e.code == .notFound && e.message.contains("\(object)") && e.message.contains("freed or never written"), "\(what): \(e)")
        } catch {
            Issue.record("\(what): \(error)")
        }
    }

    @Test func aDeletedObjectReadsAsNotFoundNeverZeros() async throws {
        let up = try UpCluster()
        let cluster = try up.cluster()
        let unit = 64 << 10
        let object = Fid(hi: 8, lo: 1)
        await expectNotFound(object, "never created") { _ = try await cluster.read(object, at: 0, length: 100) }
        try await cluster.create(object)
        #expect(try await cluster.read(object, at: 0, length: 3 * unit) == [UInt8](repeating: 0, count: 3 * unit), "a new object is all holes")
        let bytes = pattern(5 * unit + 17, seed: 1)
        try await cluster.write(object, at: 0, bytes)
        #expect(try await cluster.read(object, at: 0, length: bytes.count) == bytes)
        try await cluster.delete(object)
        let degraded = cluster.degradedReads
        for (at, n) in [(0, 100), (3 * unit, 2 * unit + 17), (20 * unit, 10)] {
            await expectNotFound(object, "deleted, \(n) bytes at \(at)") { _ = try await cluster.read(object, at: UInt64(at), length: n) }
        }
        let into = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        defer { into.deallocate() }
        await expectNotFound(object, "deleted, into a caller's buffer") { try await cluster.read(object, at: 0, into: into) }
        #expect(cluster.degradedReads == degraded, "nothing to rebuild from")
        // A partial write of a deleted object is refused too: its read-modify-write finds nothing.
        await expectNotFound(object, "written after its delete") { try await cluster.write(object, at: 10, [1]) }

        // Deleted together (one pipeline of FREEs per server).
        let many = (2..<6).map { Fid(hi: 8, lo: UInt64($0)) }
        try await cluster.create(many)
        for f in many { try await cluster.write(f, at: 0, pattern(unit + 1, seed: f.lo)) }
        try await cluster.delete(many)
        for f in many { await expectNotFound(f, "deleted in a batch") { _ = try await cluster.read(f, at: 0, length: unit + 1) } }
        await cluster.close()
    }

    /// A new object written from its start with no CREATE, as the S3 writer does, exists
    /// only where its writes went; read with its size, its units elsewhere (past its end)
    /// are zeros, so it reads whole with the server of its data down.
    @Test func anObjectWrittenWithoutCreateReadsWholeWithAServerDown() async throws {
        let up = try UpCluster()
        let unit = 64 << 10
        let object = Fid(hi: 10, lo: 1)
        // Group 0 of a 5000-byte object: unit 0 on server 0 and parity on server 2 are
        // written; server 1, which holds unit 1, never hears of the object.
        let small = pattern(5000, seed: 4)
        let writer = try up.cluster()
        try await writer.write(object, at: 0, small, unwritten: true)
        try await writer.sync()
        await writer.close()
        up.kill9(0)
        let reader = try up.cluster()
        #expect(try await reader.read(object, at: 0, length: small.count, size: UInt64(small.count)) == small)
        #expect(try await reader.read(object, at: 100, length: 10, size: UInt64(small.count)) == Array(small[100..<110]))
        #expect(reader.degradedReads > 0, "unit 0 was rebuilt from parity")
        // Without its size, or with one past unit 1's start, unit 1 is missing as well: two
        // units of three, too few to rebuild from.
        await expectNotFound(object, "read without its size") { _ = try await reader.read(object, at: 0, length: small.count) }
        await expectNotFound(object, "read with a size past unit 1's start") {
            _ = try await reader.read(object, at: 0, length: small.count, size: UInt64(unit + 1))
        }
        await reader.close()
        // Deleted, no server has a unit of it: not found, whatever size the reader passes.
        #expect(try tessera(["up", "--dir", up.dir]).0 == 0)
        let again = try up.cluster()
        try await again.delete(object)
        await expectNotFound(object, "deleted") { _ = try await again.read(object, at: 0, length: small.count, size: UInt64(small.count)) }
        await expectNotFound(object, "deleted, read past its end") {
            _ = try await again.read(object, at: UInt64(unit), length: 10, size: UInt64(small.count))
        }
        await again.close()
    }

    /// A server killed and started again may have lost units it acknowledged: until the
    /// state service's map admits its new process, it answers no READ (it listens before it
    /// has a map). etcd is stopped (SIGSTOP) so the restarted server waits for it, listening.
    @Test func aRestartedServerServesNoUnitBeforeTheMapAdmitsIt() async throws {
        let up = try UpCluster()
        let object = Fid(hi: 11, lo: 1)
        let writer = try up.cluster()
        try await writer.create(object)
        try await writer.write(object, at: 0, pattern(5000, seed: 5))
        try await writer.sync()
        await writer.close()
        let read = Request.read(cob: object, offset: 0, length: 4096)
        // A client with no map sends the READ to server 0 as it is; the server it reaches
        // decides. The running server, admitted, serves it.
        let raw = try Cluster(config: try up.config())
        var served = false
        if case .data = await raw.call(0, read) { served = true }
        #expect(served, "server 0 serves the unit before the restart")
        let etcd = try #require((try? String(contentsOfFile: up.dir + "/etcd.pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        kill(etcd, SIGSTOP)
        defer { kill(etcd, SIGCONT) }
        up.kill9(0)
        unlink(up.dir + "/server-0.pid")  // the server started below is stopped by its own pid
        let server = try ChildProcess(tesseraBinary(), ["server", "--config", up.dir + "/cluster.toml", "--id", "0"], stdout: .null, stderr: .null)
        defer {
            kill(server.pid, SIGKILL)
            _ = server.wait()
        }
        // It listens at once, then waits (3 s) for etcd before it would exit.
        var answer = Response.failure(.closed, "not started")
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            answer = await raw.call(0, read)
            guard case .failure(.closed, _) = answer else { break }
            try await Task.sleep(for: .milliseconds(10))
        }
        var refused = false
        if case .failure(.staleMap, _) = answer { refused = true }
        #expect(refused, "the restarted server, with no map, answered \(answer)")
        await raw.close()
        withExtendedLifetime(up) {}
    }

    /// Two servers restarted while etcd is frozen listen but refuse object data (`staleMap`)
    /// until the map admits them: a CREATE then misses more servers than there are parity
    /// units, and waits for the map instead of failing.
    @Test func aCreateThatTwoUnadmittedServersRefuseWaitsForTheMap() async throws {
        let up = try UpCluster()
        let writer = try up.cluster()
        try await writer.create(Fid(hi: 12, lo: 1))  // the writer has its map and connections
        let etcd = try #require((try? String(contentsOfFile: up.dir + "/etcd.pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) })
        kill(etcd, SIGSTOP)
        defer { kill(etcd, SIGCONT) }
        var servers: [ChildProcess] = []
        defer {
            for s in servers {
                kill(s.pid, SIGKILL)
                _ = s.wait()
            }
        }
        for id in [0, 1] {
            up.kill9(id)
            unlink(up.dir + "/server-\(id).pid")  // stopped by their own pids, below
        }
        for id in [0, 1] {
            servers.append(try ChildProcess(tesseraBinary(), ["server", "--config", up.dir + "/cluster.toml", "--id", String(id)], stdout: .null, stderr: .null))
        }
        // Both listen at once and refuse data until admitted. They wait 3 s for etcd before
        // they would exit.
        for id in [0, 1] {
            let deadline = ContinuousClock.now + .seconds(2)
            var answer = Response.failure(.closed, "not started")
            while ContinuousClock.now < deadline {
                // A client of its own each time: one that found the port closed backs off.
                let raw = try Cluster(config: try up.config())
                answer = await raw.call(id, .create(cobs: [Fid(hi: 12, lo: 2)], syncWait: false))
                await raw.close()
                guard case .failure(.closed, _) = answer else { break }
                try await Task.sleep(for: .milliseconds(10))
            }
            var refused = false
            if case .failure(.staleMap, _) = answer { refused = true }
            #expect(refused, "restarted server \(id), not admitted, answered \(answer)")
        }
        // The CREATE waits while etcd is frozen (the old code threw at once), and is done
        // once the thawed map admits a server.
        let object = Fid(hi: 12, lo: 3)
        let finished = Locked(false)
        let creating = Task {
            defer { finished.withLock { $0 = true } }
            try await writer.create(object)
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(!finished.withLock { $0 }, "the CREATE waits for a map that admits the restarted servers")
        kill(etcd, SIGCONT)
        try await creating.value
        // (Both come back repairing, and stay so: two servers restarted at once wait for
        // each other's repair, REPLICATION.md, "Known gaps". Nothing here reads the object.)
        var made = false
        if case .ranges = await writer.call(2, .extents(cob: object, from: 0, limit: 1)) { made = true }
        #expect(made, "the object is made on server 2, the one admitted throughout")
        await writer.close()
        withExtendedLifetime(up) {}
    }

    @Test func anObjectWhoseCreateMissedAServerStillReadsWhole() async throws {
        let up = try UpCluster()
        let unit = 64 << 10
        let object = Fid(hi: 9, lo: 1)
        up.kill9(1)
        let writer = try up.cluster()
        // One server down is as many as there are parity units: the CREATE goes ahead.
        try await writer.create(object)
        #expect(try tessera(["up", "--dir", up.dir]).0 == 0)
        // Back, server 1 is repaired: the walk makes on it the cob the others have. As it
        // would be had it missed the CREATE with no repair since, the cob goes again there
        // (a FREE of the whole cob, sent to server 1 alone).
        #expect(try tessera(["repair", "--dir", up.dir, "--wait", "--timeout", "60"]).0 == 0)
        // (A client of its own: the writer's connection to server 1 is still backing off.)
        let remover = try up.cluster()
        if case .failure(let status, let m) = await remover.call(1, .free(cob: object, offset: 0, length: Cluster.maxObjectOffset, syncWait: true)) {
            Issue.record("deleting the cob on server 1: \(status) \(m)")
        }
        await remover.close()
        // Group 0 of a 5000-byte object: unit 0 on server 0 and parity on server 2 are
        // written; unit 1, on server 1, is never written there and the cob is not there.
        let small = pattern(5000, seed: 3)
        try await writer.write(object, at: 0, small)
        try await writer.sync()
        await writer.close()
        // Server 1 answers, and says it has no such object: that unit is rebuilt.
        let reader = try up.cluster()
        #expect(try await reader.read(object, at: 0, length: 2 * unit) == small + [UInt8](repeating: 0, count: 2 * unit - small.count))
        #expect(try await reader.read(object, at: UInt64(unit), length: unit) == [UInt8](repeating: 0, count: unit))
        #expect(reader.degradedReads > 0, "server 1's unit was read, not rebuilt")
        // Deleted, it is not found on any server: an error, not a group rebuilt as zeros.
        try await reader.delete(object)
        await expectNotFound(object, "deleted after a missed create") { _ = try await reader.read(object, at: 0, length: 2 * unit) }
        await reader.close()
    }
}
