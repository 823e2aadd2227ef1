// A comparison of both replicas of every index, each read straight from its server (not
// routed: the point is to see each copy): `tessera fsck`, `tessera scrub` and
// `tessera debug replicas`.
import TesseraCore

/// Two replicas of one index that differ.
public struct IndexDifference: Sendable, CustomStringConvertible {
    public var index: Fid
    /// Server ids, first replica first, and their record counts.
    public var servers: [Int]
    public var counts: [Int]
    /// A few keys and values found on one replica only, per replica.
    public var onlyOn: [[String]]
    public var description: String {
        "index \(index): server \(servers[0]) has \(counts[0]) records, server \(servers[1]) \(counts[1]); "
            + "only on \(servers[0]): \(onlyOn[0]); only on \(servers[1]): \(onlyOn[1])"
    }
}

extension Cluster {
    /// Compares both replicas of every index; returns how many indexes were compared and
    /// those that differ.
    public func compareIndexReplicas() async throws -> (compared: Int, differing: [IndexDifference]) {
        var compared = 0
        var differing: [IndexDifference] = []
        for position in links.indices {
            // Each index once: from its first replica's list.
            for index in try await listIndexes(at: position) where replicas(of: index).first == position {
                let holders = replicas(of: index)
                guard holders.count == 2 else { continue }
                let a = try await allRecords(index, at: holders[0])
                let b = try await allRecords(index, at: holders[1])
                compared += 1
                guard a != b else { continue }
                func text(_ r: Record) -> String { "\(String(decoding: r.key, as: UTF8.self))=\(String(decoding: r.value, as: UTF8.self))" }
                let sa = Set(a.map(text))
                let sb = Set(b.map(text))
                differing.append(IndexDifference(
                    index: index, servers: holders.map { links[$0].id }, counts: [a.count, b.count],
                    onlyOn: [Array(sa.subtracting(sb).sorted().prefix(5)), Array(sb.subtracting(sa).sorted().prefix(5))]))
            }
        }
        return (compared, differing)
    }

    private func listIndexes(at server: Int) async throws -> [Fid] {
        var out: [Fid] = []
        while true {
            guard case .fids(let batch) = try await call(server, .listIndexes(after: out.last, limit: 1000)).unwrap() else {
                throw TesseraError(.io, "server \(links[server].id): malformed reply to LIST INDEXES")
            }
            out += batch
            if batch.count < 1000 { return out }
        }
    }

    private func allRecords(_ index: Fid, at server: Int) async throws -> [Record] {
        var out: [Record] = []
        while true {
            let r = try await call(server, .next(index: index, starts: [out.last?.key], limit: 1000, excludeStart: !out.isEmpty)).unwrap()
            guard case .records(let lists) = r, let batch = lists.first else { throw TesseraError(.io, "server \(links[server].id): malformed reply to NEXT") }
            out += batch
            if batch.count < 1000 { return out }
        }
    }
}
