// The HA role's decision without etcd: the map notes each server's session; a server missing
// for the grace period is failed; one that comes back is repairing, and online only once
// repaired; a server restarted under a new session keeps its place only if it stopped
// cleanly; each change bumps the version once.
import Testing
import TesseraClient
import TesseraCore
import TesseraState

@Suite struct FailureDetectorTests {
    let start = ContinuousClock.now
    let map = FailureDetector.initialMap(servers: [(0, "a:1"), (1, "b:1"), (2, "c:1")], wallNow: 7)

    /// Servers `ids` present, server i under session `base + i`.
    func present(_ ids: [Int], base: UInt64 = 100, clean: Bool = false) -> [Int: FailureDetector.Present] {
        Dictionary(uniqueKeysWithValues: ids.map { ($0, FailureDetector.Present(session: base + UInt64($0), stoppedCleanly: clean)) })
    }

    @Test func aServerGoneForTheGracePeriodIsFailedThenRepairedBeforeItIsOnline() throws {
        var d = FailureDetector(grace: .seconds(5))
        #expect(map.version == 1 && map.servers.allSatisfy { $0.state == .online && $0.session == nil })
        // The first look notes every session.
        let notedStep = d.step(map: map, present: present([0, 1, 2]), now: start, wallNow: 8)
        let noted = try #require(notedStep)
        #expect(noted.version == 2 && noted.servers.map(\.session) == [100, 101, 102])
        #expect(d.step(map: noted, present: present([0, 1, 2]), now: start, wallNow: 8) == nil)
        // Missing, but not for the whole grace period yet.
        #expect(d.step(map: noted, present: present([0, 2]), now: start + .seconds(1), wallNow: 9) == nil)
        #expect(d.step(map: noted, present: present([0, 2]), now: start + .milliseconds(5900), wallNow: 10) == nil)
        let failedStep = d.step(map: noted, present: present([0, 2]), now: start + .seconds(6), wallNow: 11)
        let failed = try #require(failedStep)
        #expect(failed.version == 3)
        #expect(failed.server(1)?.state == .failed && failed.server(1)?.since == 11)
        #expect(failed.server(0)?.state == .online && failed.server(2)?.state == .online)
        // Written: nothing more to change while it stays away.
        #expect(d.step(map: failed, present: present([0, 2]), now: start + .seconds(60), wallNow: 12) == nil)
        // Back under a new session: repairing, not online.
        var returned = present([0, 2])
        returned[1] = FailureDetector.Present(session: 201, stoppedCleanly: false)
        let backStep = d.step(map: failed, present: returned, now: start + .seconds(61), wallNow: 13)
        let back = try #require(backStep)
        #expect(back.version == 4 && back.server(1)?.state == .repairing && back.server(1)?.session == 201)
        // Repaired under that session: online since the new version; under another, nothing.
        #expect(FailureDetector.repaired(back, server: 1, session: 999, wallNow: 14) == nil)
        let online = try #require(FailureDetector.repaired(back, server: 1, session: 201, wallNow: 14))
        #expect(online.version == 5 && online.server(1)?.state == .online && online.server(1)?.onlineSince == 5)
        // It is now the tail of its chains: the longer-online replica stays the head.
        let chain = online.chain(replicas: [1, 2])
        #expect(chain.head == 2 && chain.tail == 1 && chain.serving == 1)
    }

    @Test func aRestartKeepsItsPlaceOnlyAfterACleanStop() throws {
        var d = FailureDetector(grace: .seconds(5))
        let notedStep = d.step(map: map, present: present([0, 1, 2]), now: start, wallNow: 1)
        let noted = try #require(notedStep)
        // Restarted within the grace period after a clean stop: online under the new session.
        var next = present([0, 1, 2])
        next[1] = FailureDetector.Present(session: 501, stoppedCleanly: true)
        let cleanStep = d.step(map: noted, present: next, now: start + .seconds(1), wallNow: 2)
        let clean = try #require(cleanStep)
        #expect(clean.server(1)?.state == .online && clean.server(1)?.session == 501)
        // Killed and restarted: it may have lost what it acknowledged, so it is repaired.
        next[1] = FailureDetector.Present(session: 502, stoppedCleanly: false)
        let killedStep = d.step(map: clean, present: next, now: start + .seconds(2), wallNow: 3)
        let killed = try #require(killedStep)
        #expect(killed.server(1)?.state == .repairing && killed.server(1)?.session == 502)
        #expect(killed.chain(replicas: [1, 2]).serving == 2)
    }

    @Test func aServerThatComesBackWithinTheGraceIsNeverFailed() throws {
        var d = FailureDetector(grace: .seconds(5))
        let notedStep = d.step(map: map, present: present([0, 1, 2]), now: start, wallNow: 1)
        let noted = try #require(notedStep)
        #expect(d.step(map: noted, present: present([0, 2]), now: start, wallNow: 1) == nil)
        #expect(d.step(map: noted, present: present([0, 1, 2]), now: start + .seconds(4), wallNow: 2) == nil)
        // Gone again: the grace period starts over.
        #expect(d.step(map: noted, present: present([0, 2]), now: start + .seconds(6), wallNow: 3) == nil)
        #expect(d.step(map: noted, present: present([0, 2]), now: start + .seconds(10), wallNow: 4) == nil)
        #expect(d.step(map: noted, present: present([0, 2]), now: start + .seconds(11), wallNow: 5)?.server(1)?.state == .failed)
    }

    @Test func twoServersAtOnceAreOneVersion() {
        var d = FailureDetector(grace: .seconds(1))
        _ = d.step(map: map, present: present([0]), now: start, wallNow: 1)
        let next = d.step(map: map, present: present([0]), now: start + .seconds(2), wallNow: 2)
        #expect(next?.version == 2)
        #expect(next?.servers.filter { $0.state == .failed }.map(\.id) == [1, 2])
    }

    /// Servers 1 and 2 killed together and started again within the grace period, 0 online:
    /// each waits for the other, so the one that left last takes its place unrepaired; the
    /// other is repaired; then the unrepaired one is walked again, and all are online.
    @Test func twoServersBackAtOnceEndTheirWaitOneAtATime() throws {
        var d = FailureDetector(grace: .seconds(5))
        let notedStep = d.step(map: map, present: present([0, 1, 2]), now: start, wallNow: 1)
        let noted = try #require(notedStep)
        // Server 1 restarts first (version 3), server 2 a step later (version 4).
        var back = present([0, 1, 2])
        back[1] = FailureDetector.Present(session: 301, stoppedCleanly: false)
        let oneStep = d.step(map: noted, present: back, now: start + .seconds(1), wallNow: 2)
        let one = try #require(oneStep)
        #expect(one.server(1)?.state == .repairing && one.server(1)?.leftIn == 3)
        back[2] = FailureDetector.Present(session: 302, stoppedCleanly: false)
        let twoStep = d.step(map: one, present: back, now: start + .seconds(2), wallNow: 3)
        let two = try #require(twoStep)
        // Both would be repairing: server 2 left last, so it takes its place, unrepaired.
        #expect(two.version == 4)
        #expect(two.server(1)?.state == .repairing)
        #expect(two.server(2)?.state == .online && two.server(2)?.unrepaired == true && two.server(2)?.session == 302)
        // Unrepaired, it ranks after every other online replica and serves no reads as a tail;
        // alone with a repairing one it heads and serves.
        let both = two.chain(replicas: [2, 0])
        #expect(both.head == 0 && both.tail == 2 && both.serving == 0)
        let alone = two.chain(replicas: [1, 2])
        #expect(alone.head == 2 && alone.tail == 1 && alone.serving == 2)
        #expect(d.step(map: two, present: back, now: start + .seconds(3), wallNow: 4) == nil)
        // Server 1 repaired: every other server is online, so server 2 is walked again.
        let repaired = try #require(FailureDetector.repaired(two, server: 1, session: 301, wallNow: 5))
        let againStep = d.step(map: repaired, present: back, now: start + .seconds(4), wallNow: 6)
        let again = try #require(againStep)
        #expect(again.server(1)?.state == .online && again.server(2)?.state == .repairing && again.server(2)?.session == 302)
        #expect(again.chain(replicas: [1, 2]).head == 1)
        let done = try #require(FailureDetector.repaired(again, server: 2, session: 302, wallNow: 7))
        #expect(done.servers.allSatisfy { $0.state == .online && $0.unrepaired == nil })
        #expect(d.step(map: done, present: back, now: start + .seconds(5), wallNow: 8) == nil)
    }

    /// The wait is not ended while a server is failed (the data may be on it only), and a
    /// replaced server (blank) is never the one chosen.
    @Test func theWaitEndsOnlyWithEveryServerBackAndNeverThroughABlankOne() throws {
        var d = FailureDetector(grace: .seconds(1))
        let notedStep = d.step(map: map, present: present([0, 1, 2]), now: start, wallNow: 1)
        let noted = try #require(notedStep)
        var back = present([0, 1])
        back[1] = FailureDetector.Present(session: 301, stoppedCleanly: false)
        let oneStep = d.step(map: noted, present: back, now: start + .seconds(1), wallNow: 2)
        let one = try #require(oneStep)
        #expect(one.server(1)?.state == .repairing && one.server(2)?.state == .online)
        let failedStep = d.step(map: one, present: back, now: start + .seconds(3), wallNow: 3)
        let failed = try #require(failedStep)
        #expect(failed.server(1)?.state == .repairing && failed.server(2)?.state == .failed)
        // Server 2 replaced: blank, it comes back repairing; server 1 left first but holds
        // something, so it is the one that takes its place.
        let replacing = try #require(FailureDetector.replacing(failed, server: 2, wallNow: 4))
        back[2] = FailureDetector.Present(session: 402, stoppedCleanly: false)
        let blankStep = d.step(map: replacing, present: back, now: start + .seconds(4), wallNow: 5)
        let blank = try #require(blankStep)
        #expect(blank.server(2)?.state == .repairing && blank.server(2)?.replaced == true)
        #expect(blank.server(1)?.state == .online && blank.server(1)?.unrepaired == true)
    }
}
