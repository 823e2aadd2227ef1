// Requests answered together: a run of changes in one transaction must answer each request
// as it would be answered alone, in order, and fall back to one at a time when the shared
// transaction cannot be made.
import Testing
import TesseraCore
import TesseraEngine
import TesseraServices
@testable import TesseraRPC

@Suite struct BatchTests {
    let fid = Fid(hi: 10, lo: 2)

    private func statuses(_ r: Response) -> [Status]? {
        if case .statuses(let s, _) = r { return s }
        return nil
    }

    @Test func aRunAnswersEachRequestAsAlone() async throws {
        let live = try await LiveServer()
        let node = ServerNode(engine: live.engine)
        _ = await node.handle(.createIndexes([fid]))
        let big = [UInt8](repeating: 1, count: live.engine.limits.maxKey + 1)
        let requests: [Request] = [
            .put(index: fid, records: [Record(key: [1], value: [10])], mode: .overwrite, syncWait: false),
            .put(index: fid, records: [Record(key: [1], value: [11]), Record(key: [2], value: [20])], mode: .createOnly, syncWait: false),
            .delete(index: fid, keys: [[3]], syncWait: false),
            .put(index: fid, records: [Record(key: big, value: [1])], mode: .overwrite, syncWait: false),
            .update(index: fid, deletes: [[2]], puts: [Record(key: [4], value: [40])], syncWait: false),
            .get(index: fid, keys: [[1], [2], [4]]),
            .put(index: Fid(hi: CatalogueService.reservedHi, lo: 1), records: [Record(key: [1], value: [1])], mode: .overwrite, syncWait: false),
            .delete(index: fid, keys: [[1]], syncWait: false),
            .put(index: fid, records: [Record(key: [5], value: [50])], mode: .overwrite, syncWait: true),
            .get(index: fid, keys: [[5]]),
        ]
        let responses = node.handleImmediately(requests[...])
        // Everything before the sync-wait put, which must wait, and nothing after it.
        try #require(responses.count == 8)
        #expect(statuses(responses[0]) == [.ok])
        #expect(statuses(responses[1]) == [.exists, .ok])
        #expect(statuses(responses[2]) == [.notFound])
        #expect(statuses(responses[3]) == [.tooLarge])
        #expect(statuses(responses[4]) == [.ok, .ok])
        #expect(responses[5] == .values([[10], nil, [40]]))
        if case .failure(let s, _) = responses[6] { #expect(s == .invalidArgument) } else { Issue.record("reserved index accepted: \(responses[6])") }
        #expect(statuses(responses[7]) == [.ok])
        #expect(await node.handle(.get(index: fid, keys: [[1], [4], [5]])) == .values([nil, [40], nil]))
        await live.stop()
    }

    /// A run is one transaction: it logs each changed page region once, where the same
    /// changes made one request at a time log a region per request (log records are
    /// 4 KiB-aligned, so measured here: 4 KiB against 12 KiB).
    @Test func aRunIsLoggedAsOneTransaction() async throws {
        let live = try await LiveServer()
        let node = ServerNode(engine: live.engine)
        let together = Fid(hi: 10, lo: 3)
        let alone = Fid(hi: 10, lo: 4)
        _ = await node.handle(.createIndexes([together, alone]))
        func puts(_ index: Fid) -> [Request] {
            (0..<50).map { .put(index: index, records: [Record(key: Array("key-\(1000 + $0)".utf8), value: [1, 2, 3])], mode: .overwrite, syncWait: false) }
        }
        func logged(after responses: [Response]) async throws -> UInt64 {
            guard case .statuses(_, let tx)? = responses.last else { throw TesseraError(.internalError, "no statuses") }
            try await live.engine.waitLogged(TxId(group: tx))
            return live.engine.statistics.bytesLogged
        }
        let start = live.engine.statistics.bytesLogged
        let afterRun = try await logged(after: node.handleImmediately(puts(together)[...]))
        let afterSingles = try await logged(after: puts(alone).map { node.handleImmediately($0)! })
        let run = afterRun - start
        let singles = afterSingles - afterRun
        #expect(run * 2 <= singles, "a run of 50 puts logged \(run) bytes, the same puts one by one \(singles)")
        await live.stop()
    }

    @Test func aRunTooLargeForOneTransactionIsMadeOneByOne() async throws {
        let live = try await LiveServer()
        let node = ServerNode(engine: live.engine)
        _ = await node.handle(.createIndexes([fid]))
        let value = [UInt8](repeating: 7, count: live.engine.limits.maxValue - 16)
        let perRequest = 300_000 / value.count
        // Each request (about 300 KB of values) fits in a transaction of a 4 MiB log (1 MiB
        // at most); all four together do not.
        let requests: [Request] = (0..<4).map { r in
            .put(index: fid, records: (0..<perRequest).map { Record(key: Array("r\(r)-\(1000 + $0)".utf8), value: value) }, mode: .overwrite, syncWait: false)
        }
        let responses = node.handleImmediately(requests[...])
        try #require(responses.count == 4)
        for r in responses { #expect(statuses(r)?.allSatisfy { $0 == .ok } == true, "\(String(describing: statuses(r)?.first))") }
        guard case .records(let lists) = await node.handle(.next(index: fid, starts: [nil], limit: 10_000, excludeStart: false)) else {
            Issue.record("next")
            return
        }
        #expect(lists[0].count == 4 * perRequest)
        await live.stop()
    }

    @Test func pipelinedChangesOverTheWireKeepTheirOrder() async throws {
        let live = try await LiveServer()
        let c = try await live.client()
        _ = await c.handle(.createIndexes([fid]))
        var requests: [Request] = []
        for i in 0..<200 {
            let k = Array("k\(i % 10)".utf8)
            requests.append(.put(index: fid, records: [Record(key: k, value: [UInt8(i & 0xFF)])], mode: .overwrite, syncWait: false))
            if i % 7 == 0 { requests.append(.delete(index: fid, keys: [k], syncWait: false)) }
            // A request that must wait runs on its own, unordered against later ones: a key
            // of its own.
            if i % 50 == 49 { requests.append(.put(index: fid, records: [Record(key: Array("s\(i)".utf8), value: [1])], mode: .overwrite, syncWait: true)) }
        }
        requests.append(.next(index: fid, starts: [nil], limit: 100, excludeStart: false))
        let responses = await c.pipeline(requests)
        // Replay the same requests one at a time on a model to know what the end must be.
        var model: [[UInt8]: [UInt8]] = [:]
        for r in requests {
            switch r {
            case .put(_, let records, _, false): for x in records { model[x.key] = x.value }
            case .delete(_, let keys, _): for k in keys { model[k] = nil }
            default: break
            }
        }
        let expected = model.keys.sorted { $0.lexicographicallyPrecedes($1) }.map { Record(key: $0, value: model[$0]!) }
        guard case .records(let lists) = responses.last else {
            Issue.record("next: \(String(describing: responses.last))")
            return
        }
        #expect(lists[0].filter { $0.key.first == UInt8(ascii: "k") } == expected)
        for r in responses.dropLast() { #expect(statuses(r)?.allSatisfy { $0 == .ok || $0 == .notFound } == true) }
        await c.close()
        await live.stop()
    }
}
