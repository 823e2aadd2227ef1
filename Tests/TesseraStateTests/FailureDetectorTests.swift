// The HA role's decision without etcd: a server missing for the grace period is failed,
// one that comes back is online, and each change bumps the version once.
import Testing
import TesseraClient
import TesseraState

@Suite struct FailureDetectorTests {
    let start = ContinuousClock.now
    let map = FailureDetector.initialMap(servers: [(0, "a:1"), (1, "b:1"), (2, "c:1")], wallNow: 7)

    @Test func aServerGoneForTheGracePeriodIsFailed() {
        var d = FailureDetector(grace: .seconds(5))
        #expect(map.version == 1 && map.servers.allSatisfy { $0.state == .online })
        #expect(d.step(map: map, present: [0, 1, 2], now: start, wallNow: 8) == nil)
        // Missing, but not for the whole grace period yet.
        #expect(d.step(map: map, present: [0, 2], now: start + .seconds(1), wallNow: 9) == nil)
        #expect(d.step(map: map, present: [0, 2], now: start + .milliseconds(5900), wallNow: 10) == nil)
        let failed = d.step(map: map, present: [0, 2], now: start + .seconds(6), wallNow: 11)
        #expect(failed?.version == 2)
        #expect(failed?.server(1)?.state == .failed && failed?.server(1)?.since == 11)
        #expect(failed?.server(0)?.state == .online && failed?.server(2)?.state == .online)
        // Written: nothing more to change while it stays away.
        #expect(d.step(map: failed!, present: [0, 2], now: start + .seconds(60), wallNow: 12) == nil)
        // Back: online, version bumped again.
        let back = d.step(map: failed!, present: [0, 1, 2], now: start + .seconds(61), wallNow: 13)
        #expect(back?.version == 3 && back?.server(1)?.state == .online)
    }

    @Test func aServerThatComesBackWithinTheGraceIsNeverFailed() {
        var d = FailureDetector(grace: .seconds(5))
        #expect(d.step(map: map, present: [0, 2], now: start, wallNow: 1) == nil)
        #expect(d.step(map: map, present: [0, 1, 2], now: start + .seconds(4), wallNow: 2) == nil)
        // Gone again: the grace period starts over.
        #expect(d.step(map: map, present: [0, 2], now: start + .seconds(6), wallNow: 3) == nil)
        #expect(d.step(map: map, present: [0, 2], now: start + .seconds(10), wallNow: 4) == nil)
        #expect(d.step(map: map, present: [0, 2], now: start + .seconds(11), wallNow: 5)?.server(1)?.state == .failed)
    }

    @Test func twoServersAtOnceAreOneVersion() {
        var d = FailureDetector(grace: .seconds(1))
        _ = d.step(map: map, present: [0], now: start, wallNow: 1)
        let next = d.step(map: map, present: [0], now: start + .seconds(2), wallNow: 2)
        #expect(next?.version == 2)
        #expect(next?.servers.filter { $0.state == .failed }.map(\.id) == [1, 2])
    }
}
