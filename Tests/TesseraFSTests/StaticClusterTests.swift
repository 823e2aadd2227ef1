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
}
