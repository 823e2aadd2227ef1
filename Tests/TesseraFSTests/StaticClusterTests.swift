// A cluster without a state service runs under one map forever (every server online,
// version 0): nothing will route around a dead server, so an index read goes to the other
// replica at once, while changes still need the index's head.
import Testing
import TesseraClient
import TesseraCore

@Suite struct StaticClusterTests {
    /// For each server in turn, down: every index still reads back, whichever replica
    /// served its reads (before, a read of one served by the dead server waited out the
    /// routing window for a map that never changes, and failed).
    @Test(arguments: [0, 1, 2]) func everyIndexReadsWithAnyServerDown(down: Int) async throws {
        let cluster = try await InProcessCluster()
        let client = try Cluster(config: cluster.config)
        let fids = (1...12).map { Fid(hi: 0x5747_4943, lo: UInt64($0)) }
        for fid in fids {
            #expect(try await client.createIndex(fid))
            _ = try await client.put(fid, [Record(key: Array("k".utf8), value: Array("\(fid)".utf8))], sync: true)
        }
        let served = fids.filter { ClusterMap.everyoneOnline([0, 1, 2]).chain(replicas: client.replicas(of: $0)).serving == down }
        #expect(!served.isEmpty, "some index is served by server \(down)")
        await cluster.servers[down].shutdown(drain: .seconds(1))
        for fid in fids {
            #expect(try await client.get(fid, [Array("k".utf8)]) == [Array("\(fid)".utf8)], "index \(fid)")
        }
        await client.close()
        await cluster.stop()
    }

    /// Without a map nothing repairs a unit a write skipped, so a write that needs a server
    /// that is down fails at once, naming it (REPLICATION.md, "Object data"); reads of
    /// another object written before go on through parity.
    @Test func aWriteNeedingADownServerFailsAtOnceNamingIt() async throws {
        let cluster = try await InProcessCluster()
        let client = try Cluster(config: cluster.config)
        let object = Fid(hi: 0x5747_4944, lo: 1)
        let other = Fid(hi: 0x5747_4944, lo: 2)
        let group = client.layout.groupSize
        let before = (0..<group).map { UInt8(truncatingIfNeeded: $0 &* 7) }
        try await client.write(other, at: 0, before, unwritten: true)
        await cluster.servers[1].shutdown(drain: .seconds(1))
        let started = ContinuousClock.now
        do {
            try await client.write(object, at: 0, [UInt8](repeating: 9, count: group))
            Issue.record("a write with a unit for a down server went through without a map")
        } catch let e as TesseraError {
            #expect(e.code == .closed && e.message.contains("server 1"), "\(e)")
        }
        #expect(ContinuousClock.now - started < .seconds(10), "it waited for a map that never changes")
        #expect(try await client.read(other, at: 0, length: group, size: UInt64(group)) == before)
        await client.close()
        await cluster.stop()
    }
}
