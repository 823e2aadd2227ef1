// Watches against a real etcd: order, resuming from a revision, compaction, an etcd
// restart under a running watch, and cancellation.
import TesseraCore
import XCTest

@testable import TesseraEtcd

final class EtcdWatchTests: EtcdTestCase {
    /// Collects events from `stream` until `count` have come (or `timeout` passes).
    func collect(_ stream: AsyncThrowingStream<[EtcdWatchEvent], Error>, count: Int, timeout: Duration = .seconds(5)) async throws -> [EtcdWatchEvent] {
        try await withThrowingTaskGroup(of: [EtcdWatchEvent]?.self) { group in
            group.addTask {
                var seen: [EtcdWatchEvent] = []
                for try await events in stream {
                    seen += events
                    if seen.count >= count { break }
                }
                return seen
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                return nil
            }
            let first = try await group.next() ?? nil
            group.cancelAll()
            guard let first else { throw TesseraTestError("fewer than \(count) events within \(timeout)") }
            return first
        }
    }

    func describe(_ events: [EtcdWatchEvent]) -> [String] {
        events.map { "\($0.kind == .put ? "put" : "delete") \($0.kv.key)=\(String(decoding: $0.kv.value, as: UTF8.self))" }
    }

    func testWatchSeesPutsAndDeletesInOrder() async throws {
        try await client.put("w/before", b("old"))
        let stream = client.watch(prefix: "w/")
        // A watch from now starts once created; give it a moment before changing keys.
        try await Task.sleep(for: .milliseconds(200))
        let r1 = try await client.put("w/a", b("1"))
        try await client.put("other", b("x"))
        try await client.put("w/b", b("2"))
        try await client.delete("w/a")
        _ = try await client.txn(if: [], then: [.put("w/c", b("3")), .deletePrefix("w/b")])
        let events = try await collect(stream, count: 6)
        // The prefix delete takes w/before too, in key order, at the transaction's revision.
        XCTAssertEqual(describe(events), ["put w/a=1", "put w/b=2", "delete w/a=", "put w/c=3", "delete w/b=", "delete w/before="])
        XCTAssertEqual(events[0].kv.modRevision, r1)
        XCTAssertEqual(events[0].kv.createRevision, r1)
        XCTAssertEqual(events[2].kv.modRevision, r1 + 3)
        XCTAssertEqual(Set(events[3...].map(\.kv.modRevision)), [r1 + 4], "one transaction, one revision")
    }

    func testWatchFromARevisionReplaysHistory() async throws {
        let r1 = try await client.put("h/1", b("a"))
        try await client.put("h/2", b("b"))
        try await client.delete("h/1")
        let events = try await collect(client.watch(prefix: "h/", fromRevision: r1 + 1), count: 2)
        XCTAssertEqual(describe(events), ["put h/2=b", "delete h/1="])
    }

    func testWatchFromACompactedRevisionFinishesWithAnError() async throws {
        let r1 = try await client.put("c/1", b("a"))
        let r2 = try await client.put("c/1", b("b"))
        _ = try await client.call("/v3/kv/compaction", ["revision": String(r2)]) { _ in }
        do {
            _ = try await collect(client.watch(prefix: "c/", fromRevision: r1), count: 1)
            XCTFail("a watch from a compacted revision delivered events")
        } catch let e as TesseraError {
            XCTAssertEqual(e.code, .notFound)
            XCTAssertTrue(e.message.contains("compacted"), e.message)
            XCTAssertTrue(e.message.contains("revision \(r1)"), e.message)
        }
    }

    func testWatchSurvivesAnEtcdRestart() async throws {
        let stream = client.watch(prefix: "r/")
        try await Task.sleep(for: .milliseconds(200))
        try await client.put("r/1", b("before"))
        let first = try await collect(stream, count: 1)
        XCTAssertEqual(describe(first), ["put r/1=before"])

        // A change made while the watch cannot reach etcd (etcd restarted on another client
        // port), then etcd back where the watch looks: it must resume, not start from now.
        let port = etcd.clientPort
        etcd.stop()
        try await etcd.start(clientPort: try freePort())
        let elsewhere = try EtcdClient(endpoints: [etcd.endpoint], logger: logs.logger)
        try await elsewhere.put("r/2", b("missed unless resumed"))
        await elsewhere.close()
        etcd.stop()
        try await etcd.start(clientPort: port)
        try await client.put("r/3", b("after"))
        let seen = try await collect(stream, count: 2, timeout: .seconds(3))
        XCTAssertEqual(describe(seen), ["put r/2=missed unless resumed", "put r/3=after"])
        XCTAssertTrue(logs.messages(at: .warning).contains { $0.contains("watch broken") }, "the reconnect is logged")
    }

    func testWatchEndsWhenTheConsumerIsCancelled() async throws {
        let stream = client.watch(prefix: "x/")
        let consumer = Task {
            var n = 0
            for try await events in stream { n += events.count }
            return n
        }
        try await Task.sleep(for: .milliseconds(200))
        try await client.put("x/1", b("1"))
        try await Task.sleep(for: .milliseconds(100))
        consumer.cancel()
        _ = try? await consumer.value
        let ended = await eventually(.seconds(2)) { self.client.watchCount == 0 }
        XCTAssertTrue(ended, "the watch's task ended")
    }

    func testWatchEndsWhenTheStreamIsDropped() async throws {
        try await client.put("z/1", b("1"))
        for try await events in client.watch(prefix: "z/", fromRevision: 1) {
            XCTAssertEqual(describe(events), ["put z/1=1"])
            break
        }
        let ended = await eventually(.seconds(2)) { self.client.watchCount == 0 }
        XCTAssertTrue(ended, "the watch's task ended with its stream")
    }

    func testCloseEndsWatches() async throws {
        let stream = client.watch(prefix: "y/")
        try await Task.sleep(for: .milliseconds(100))
        await client.close()
        var iterator = stream.makeAsyncIterator()
        let next = try await iterator.next()
        XCTAssertNil(next, "the stream finished")
        XCTAssertEqual(client.watchCount, 0)
    }
}
