// Sessions and elections against a real etcd: the key lives with the session, a paused
// etcd costs the session its lease (noticed on time, renewed after), and one leader at a
// time, replaced when its session ends.
import NIOConcurrencyHelpers
import TesseraCore
import XCTest

@testable import TesseraEtcd

final class EtcdSessionTests: EtcdTestCase {
    func session(_ name: String, ttl: Int = 2) -> EtcdSession {
        EtcdSession(client: client, key: { "members/\(name)/\($0)" }, value: b(name), ttl: ttl, logger: logs.logger)
    }

    func testKeyPresentWhileAliveGoneAfterClose() async throws {
        let s = session("a", ttl: 1)
        XCTAssertNil(s.current)
        try await s.start()
        let lease = try XCTUnwrap(s.current)
        let valid = await s.valid()
        XCTAssertEqual(valid, lease)
        // Past several TTLs the keep-alive holds the lease and the key.
        try await Task.sleep(for: .milliseconds(2500))
        XCTAssertEqual(s.current, lease)
        let kv = try await client.get("members/a/\(lease)")
        XCTAssertEqual(kv?.value, b("a"))
        XCTAssertEqual(kv?.lease, lease)

        await s.close()
        XCTAssertNil(s.current)
        let gone = try await client.get("members/a/\(lease)")
        XCTAssertNil(gone)
        let afterClose = await s.valid()
        XCTAssertEqual(afterClose, 0, "no lease once closed")
    }

    func testStartFailsClearlyWithoutEtcd() async throws {
        let endpoint = "127.0.0.1:\(try freePort())"
        let dead = try EtcdClient(endpoints: [endpoint], requestTimeout: .milliseconds(500), logger: logs.logger)
        let s = EtcdSession(client: dead, key: { "k/\($0)" }, value: [], ttl: 2, logger: logs.logger)
        do {
            try await s.start()
            XCTFail("started without etcd")
        } catch {
            XCTAssertTrue("\(error)".contains("cannot start an etcd session (endpoints \(endpoint))"), "\(error)")
            XCTAssertTrue("\(error)".contains("connection refused"), "\(error)")
        }
        XCTAssertNil(s.current)
    }

    func testSessionLostWhileEtcdIsPausedThenRenewed() async throws {
        let s = session("p", ttl: 2)
        let changes = NIOLockedValueBox<[(Int64, Int64?)]>([])
        s.onChange { lost, new in changes.withLockedValue { $0.append((lost, new)) } }
        try await s.start()
        let first = try XCTUnwrap(s.current)

        etcd.pause()
        let paused = ContinuousClock.now
        // Valid for the TTL less a sixth after the last keep-alive sent: gone within 2 s.
        let lapsed = await eventually(.seconds(3)) { s.current == nil }
        XCTAssertTrue(lapsed, "the session stayed valid while etcd was paused")
        XCTAssertLessThanOrEqual(ContinuousClock.now - paused, .milliseconds(2100))
        let noticed = await eventually(.seconds(1)) { changes.withLockedValue { $0.count } >= 1 }
        XCTAssertTrue(noticed)
        XCTAssertTrue(changes.withLockedValue { $0.first?.0 == first && $0.first?.1 == nil })
        try await Task.sleep(for: .milliseconds(1000))  // past the TTL: etcd will expire it

        etcd.resume()
        let second = try await within(.seconds(5)) { await s.valid() }
        XCTAssertNotEqual(second, first)
        XCTAssertNotEqual(second, 0)
        XCTAssertEqual(s.current, second)
        XCTAssertTrue(changes.withLockedValue { $0.last?.0 == first && $0.last?.1 == second })
        let key = try await client.get("members/p/\(second)")
        XCTAssertEqual(key?.lease, second)
        let oldKey = try await eventually(.seconds(3)) { try await self.client.get("members/p/\(first)") == nil }
        XCTAssertTrue(oldKey, "the lost lease's key went")
        XCTAssertTrue(logs.messages(at: .error).contains { $0.hasPrefix("session lost: lease \(EtcdSession.hex(first)) expired") }, "\(logs.messages(at: .error))")
        await s.close()
    }

    func testOneLeaderAndTakeOverWhenItsSessionEnds() async throws {
        let (sa, sb) = (session("a"), session("b"))
        try await sa.start()
        try await sb.start()
        let ea = EtcdElection(client: client, session: sa, key: "leader", value: b("a"), logger: logs.logger)
        let eb = EtcdElection(client: client, session: sb, key: "leader", value: b("b"), logger: logs.logger)
        ea.start()
        let aLeads = await eventually(.seconds(2)) { ea.isLeader }
        XCTAssertTrue(aLeads)
        eb.start()
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertTrue(ea.isLeader)
        XCTAssertFalse(eb.isLeader)
        let holder = try await eb.holder()
        XCTAssertEqual(holder, b("a"))

        let closed = ContinuousClock.now
        await sa.close()
        XCTAssertFalse(ea.isLeader)
        let bLeads = await eventually(.seconds(3)) { eb.isLeader }
        XCTAssertTrue(bLeads, "b did not take over")
        XCTAssertLessThan(ContinuousClock.now - closed, .seconds(2))
        let newHolder = try await ea.holder()
        XCTAssertEqual(newHolder, b("b"))
        await ea.stop()
        await eb.stop()
        let none = try await ea.holder()
        XCTAssertNil(none, "stop resigns")
        await sb.close()
        let watchesEnded = await eventually(.seconds(2)) { self.client.watchCount == 0 }
        XCTAssertTrue(watchesEnded, "the elections left \(client.watchCount) watches running")
    }

    func testStopResignsAndTheOtherTakesOver() async throws {
        let (sa, sb) = (session("a", ttl: 5), session("b", ttl: 5))
        try await sa.start()
        try await sb.start()
        let ea = EtcdElection(client: client, session: sa, key: "role", value: b("a"), logger: logs.logger)
        let eb = EtcdElection(client: client, session: sb, key: "role", value: b("b"), logger: logs.logger)
        ea.start()
        _ = await eventually(.seconds(2)) { ea.isLeader }
        eb.start()
        try await Task.sleep(for: .milliseconds(200))
        XCTAssertEqual([ea.isLeader, eb.isLeader], [true, false])
        await ea.stop()
        XCTAssertFalse(ea.isLeader)
        // Well before the 5 s TTL: the resignation deleted the key.
        let bLeads = await eventually(.seconds(2)) { eb.isLeader }
        XCTAssertTrue(bLeads)
        await eb.stop()
        await sa.close()
        await sb.close()
    }
}
