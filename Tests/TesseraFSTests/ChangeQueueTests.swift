// The mount's ordered queue of object list changes (ChangeQueue.swift): merged batches end
// where the changes one by one would have, a change written behind is in the store once the
// queue is drained, and one that cannot be stored is reported, once.
import Foundation
import Testing
import TesseraClient
import TesseraCore
@testable import TesseraFS

@Suite struct ChangeQueueTests {
    private func k(_ s: String) -> [UInt8] { Array(s.utf8) }
    private func r(_ s: String, _ v: String) -> Record { Record(key: Array(s.utf8), value: Array(v.utf8)) }

    @Test func aKeysLastChangeDecidesIt() {
        let m = ChangeQueue.merge([
            ([], [r("a", "1"), r("p", "t1")]),  // create a, parent's times
            ([k("a")], [r("p", "t2")]),  // unlink a
            ([k("b")], [r("b", "2")]),  // a change that deletes then puts b
            ([], [r("c", "1")]),
            ([k("c")], []),  // c put, then deleted
            ([k("d")], []),
            ([], [r("d", "new")]),  // d deleted, then put
        ])
        #expect(m.deletes == [k("a"), k("c")])
        #expect(m.puts == [r("b", "2"), r("d", "new"), r("p", "t2")])
        #expect(m.putFrom == [2, 6, 1])
    }

    @Test func changesWrittenBehindLandInOrder() async throws {
        let cluster = try await InProcessCluster()
        let (client, _) = try await cluster.mount(bucket: "queue")
        let index = Fid(hi: 0x5445_5354_0000_0001, lo: 7)
        try await client.createIndex(index)
        let queue = ChangeQueue(cluster: client, index: index)
        let afters = Locked(0)
        // The first goes out at once; the rest queue up behind it and go merged.
        queue.submitBehind(deleting: [], putting: [r("x", "0")], after: nil, lost: { _ in })
        for i in 0..<200 {
            queue.submitBehind(deleting: [], putting: [r("f\(i)", "v\(i)")], after: { afters.withLock { $0 += 1 } }, lost: { _ in })
            if i % 2 == 0 { queue.submitBehind(deleting: [k("f\(i)")], putting: [], after: nil, lost: { _ in }) }
        }
        queue.submitBehind(deleting: [k("x")], putting: [r("x", "last")], after: nil, lost: { _ in })
        // A waited change after them returns once they are all in the store.
        try await queue.submit(deleting: [], putting: [r("y", "1")], sync: false)
        #expect(afters.withLock { $0 } == 200)
        await queue.drained()
        #expect(afters.withLock { $0 } == 200)
        let got = try await client.get(index, (0..<200).map { k("f\($0)") } + [k("x")])
        for i in 0..<200 { #expect(got[i] == (i % 2 == 0 ? nil : k("v\(i)")), "f\(i)") }
        #expect(got[200] == k("last"))
        #expect(queue.takeFailure() == nil)
        await client.close()
        await cluster.stop()
    }

    @Test func aChangeWrittenBehindIsHeldForItsOwnHoldTime() async throws {
        let cluster = try await InProcessCluster()
        let (client, _) = try await cluster.mount(bucket: "queue-hold")
        let index = Fid(hi: 0x5445_5354_0000_0003, lo: 11)
        try await client.createIndex(index)
        let clock = TestClock()
        let queue = ChangeQueue(cluster: client, index: index, hold: .seconds(2), clock: clock)
        // `a` arms the hold (a sleep until 2 s); a waited change at 0.4 s carries it.
        queue.submitBehind(deleting: [], putting: [r("a", "1")], after: nil, lost: { _ in })
        try await clock.waitForSleeper(until: .seconds(2))
        clock.advance(to: .milliseconds(400))
        try await queue.submit(deleting: [], putting: [r("w", "1")], sync: false)
        #expect(try await client.get(index, [k("a")]) == [k("1")])
        // `b`, queued at 0.6 s, is not sent when `a`'s hold ends (2 s) but at its own (2.6 s):
        // the armed sleep wakes at 2 s and sleeps again until 2.6 s.
        clock.advance(to: .milliseconds(600))
        queue.submitBehind(deleting: [], putting: [r("b", "1")], after: nil, lost: { _ in })
        clock.advance(to: .milliseconds(2200))
        try await clock.waitForSleeper(until: .milliseconds(2600))
        #expect(try await client.get(index, [k("b")]) == [nil], "sent before it was held its own 2 s")
        clock.advance(to: .milliseconds(2600))
        try await waitUntil("b sent by itself once held 2 s") { try await client.get(index, [k("b")]) == [k("1")] }
        await client.close()
        await cluster.stop()
    }

    @Test func settledWaitsForTheChangesOfOneNameOnly() async throws {
        let cluster = try await InProcessCluster()
        let (client, _) = try await cluster.mount(bucket: "queue-settled")
        let index = Fid(hi: 0x5445_5354_0000_0004, lo: 13)
        try await client.createIndex(index)
        let clock = TestClock()
        // Changes held 10 s unless a waited change, a drain or `settled` takes them.
        let queue = ChangeQueue(cluster: client, index: index, hold: .seconds(10), clock: clock)
        await queue.settled(k("nothing"))  // nothing queued of it: at once
        try await client.put(index, [r("d/x", "1"), r("f", "1")])
        queue.submitBehind(deleting: [k("d/x")], putting: [], after: nil, lost: { _ in })  // rm of a name under d
        queue.submitBehind(deleting: [k("f")], putting: [], after: nil, lost: { _ in })
        try await clock.waitForSleeper(until: .seconds(10))
        #expect(try await client.get(index, [k("d/x"), k("f")]) == [k("1"), k("1")], "held")
        // Settling `d` sends what is queued (in order, so the removal of f goes too), and
        // returns once the removal under `d` is in the store.
        await queue.settled(k("d"))
        #expect(try await client.get(index, [k("d/x")]) == [nil])
        await queue.drained()
        #expect(try await client.get(index, [k("f")]) == [nil])
        // Answered changes are forgotten: settling them again returns at once.
        await queue.settled(k("d"))
        await queue.settled(k("f"))
        await client.close()
        await cluster.stop()
    }

    @Test func aChangeThatCannotBeStoredIsReportedOnce() async throws {
        let cluster = try await InProcessCluster()
        let (client, _) = try await cluster.mount(bucket: "queue-lost")
        // No such index: every UPDATE fails.
        let queue = ChangeQueue(cluster: client, index: Fid(hi: 0x5445_5354_0000_0002, lo: 9))
        let lost = Locked(0)
        queue.submitBehind(deleting: [], putting: [r("a", "1")], after: nil, lost: { _ in lost.withLock { $0 += 1 } })
        await queue.drained()
        #expect(lost.withLock { $0 } == 1)
        #expect(queue.takeFailure() != nil)
        #expect(queue.takeFailure() == nil)
        await #expect(throws: (any Error).self) { try await queue.submit(deleting: [], putting: [r("b", "1")], sync: false) }
        await client.close()
        await cluster.stop()
    }
}

/// A clock the test moves: sleepers wake when `advance` passes their deadline.
final class TestClock: QueueClock, @unchecked Sendable {
    // SAFETY: `state` is behind a lock.
    private struct State {
        var now: Duration = .zero
        var sleepers: [(deadline: Duration, wake: CheckedContinuation<Void, Never>)] = []
    }
    private let state = Locked(State())

    func now() -> Duration { state.withLock { $0.now } }

    func sleep(for duration: Duration) async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let wake = state.withLock { s -> Bool in
                guard duration > .zero else { return true }
                s.sleepers.append((s.now + duration, c))
                return false
            }
            if wake { c.resume() }
        }
    }

    /// Moves the time to `time`, waking every sleeper whose deadline it reaches.
    func advance(to time: Duration) {
        let woken = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.now = time
            let due = s.sleepers.filter { $0.deadline <= time }.map(\.wake)
            s.sleepers.removeAll { $0.deadline <= time }
            return due
        }
        for c in woken { c.resume() }
    }

    /// Returns once something sleeps until exactly `deadline`; fails after 10 s of real time.
    func waitForSleeper(until deadline: Duration) async throws {
        try await waitUntil("a sleeper until \(deadline)") { self.state.withLock { $0.sleepers.contains { $0.deadline == deadline } } }
    }
}

/// Polls `condition` every 10 ms until it holds; fails the test after 10 s.
func waitUntil(_ what: String, _ condition: () async throws -> Bool) async throws {
    let deadline = ContinuousClock.now + .seconds(10)
    while try await !condition() {
        guard ContinuousClock.now < deadline else { throw TesseraError(.timedOut, "gave up waiting for \(what)") }
        try await Task.sleep(for: .milliseconds(10))
    }
}
