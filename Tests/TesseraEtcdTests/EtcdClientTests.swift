// Keys, prefixes, transactions and leases against a real etcd.
import TesseraCore
import XCTest

@testable import TesseraEtcd

final class EtcdClientTests: EtcdTestCase {
    func testVersionAndEndpoints() async throws {
        let version = try await client.version()
        XCTAssertTrue(version.hasPrefix("3."), version)
        let other = try EtcdClient(endpoints: ["http://127.0.0.1:\(etcd.clientPort)/"])
        XCTAssertEqual(other.endpoints, [etcd.endpoint])
    }

    func testPutGetRangeDelete() async throws {
        let r1 = try await client.put("a/1", b("one"))
        let r2 = try await client.put("a/2", b("two"))
        try await client.put("a/1", b("uno"))
        try await client.put("b", b("other"))
        XCTAssertEqual(r2, r1 + 1)

        let kv = try await client.get("a/1")
        XCTAssertEqual(kv?.value, b("uno"))
        XCTAssertEqual(kv?.createRevision, r1)
        XCTAssertEqual(kv?.modRevision, r2 + 1)
        XCTAssertEqual(kv?.version, 2)
        XCTAssertEqual(kv?.lease, 0)
        let missing = try await client.get("a/3")
        XCTAssertNil(missing)

        let (kvs, revision) = try await client.range(prefix: "a/")
        XCTAssertEqual(kvs.map(\.key), ["a/1", "a/2"])
        XCTAssertEqual(kvs.map(\.value), [b("uno"), b("two")])
        XCTAssertEqual(revision, r2 + 2)

        let gone = try await client.delete("a/1")
        let again = try await client.delete("a/1")
        XCTAssertEqual([gone, again], [1, 0])
        let afterDelete = try await client.get("a/1")
        XCTAssertNil(afterDelete)
    }

    func testPrefixDeleteAndOddKeysAndValues() async throws {
        let binary = (0...255).map { UInt8($0) }
        try await client.put("p/é/ü", binary)
        try await client.put("p/empty", [])
        try await client.put("p/x", b("x"))
        try await client.put("q", b("kept"))
        let odd = try await client.get("p/é/ü")
        XCTAssertEqual(odd?.value, binary)
        let empty = try await client.get("p/empty")
        XCTAssertEqual(empty?.value, [])
        XCTAssertNotNil(empty)

        let deleted = try await client.delete(prefix: "p/")
        XCTAssertEqual(deleted, 3)
        let left = try await client.range(prefix: "")
        XCTAssertEqual(left.kvs.map(\.key), ["q"])
    }

    func testTxnCreateRevision() async throws {
        let first = try await client.txn(if: [.createRevision("k", equals: 0)], then: [.put("k", b("mine")), .get("k")], else: [.get("k")])
        XCTAssertTrue(first.succeeded)
        XCTAssertEqual(first.gets.map { $0.map(\.value) }, [[b("mine")]])
        XCTAssertEqual(first.revision, first.gets[0][0].modRevision)

        let second = try await client.txn(if: [.createRevision("k", equals: 0)], then: [.put("k", b("theirs"))], else: [.get("k"), .get("absent")])
        XCTAssertFalse(second.succeeded)
        XCTAssertEqual(second.gets.count, 2)
        XCTAssertEqual(second.gets[0].first?.value, b("mine"))
        XCTAssertEqual(second.gets[1], [])

        let created = first.gets[0][0].createRevision
        let third = try await client.txn(if: [.createRevision("k", equals: created)], then: [.delete("k")])
        XCTAssertTrue(third.succeeded)
        XCTAssertEqual(third.gets.count, 0)
        let gone = try await client.get("k")
        XCTAssertNil(gone)
    }

    func testTxnModRevision() async throws {
        let rev = try await client.put("m", b("1"))
        let stale = try await client.txn(if: [.modRevision("m", equals: rev - 1)], then: [.put("m", b("lost"))], else: [.get("m")])
        XCTAssertFalse(stale.succeeded)
        XCTAssertEqual(stale.gets[0].first?.value, b("1"))
        let fresh = try await client.txn(if: [.modRevision("m", equals: rev)], then: [.put("m", b("2"))], else: [.get("m")])
        XCTAssertTrue(fresh.succeeded)
        XCTAssertEqual(fresh.gets.count, 0)
        let now = try await client.get("m")
        XCTAssertEqual(now?.value, b("2"))
    }

    func testTxnValue() async throws {
        try await client.put("v", b("old"))
        let wrong = try await client.txn(if: [.value("v", equals: b("other"))], then: [.put("v", b("bad"))], else: [.get("v")])
        XCTAssertFalse(wrong.succeeded)
        let right = try await client.txn(if: [.value("v", equals: b("old"))], then: [.put("v", b("new")), .get("v")])
        XCTAssertTrue(right.succeeded)
        XCTAssertEqual(right.gets[0].first?.value, b("new"))
        let absent = try await client.txn(if: [.value("nope", equals: [])], then: [.put("nope", b("x"))])
        XCTAssertFalse(absent.succeeded, "a value compare on an absent key fails")
    }

    func testTxnLeaseAndDeletePrefix() async throws {
        let (lease, _) = try await client.grantLease(ttl: 30)
        try await client.put("l/held", b("h"), lease: lease)
        try await client.put("l/other", b("o"))
        let notOurs = try await client.txn(if: [.leaseOf("l/held", equals: lease + 1)], then: [.deletePrefix("l/")], else: [.get("l/held")])
        XCTAssertFalse(notOurs.succeeded)
        XCTAssertEqual(notOurs.gets[0].first?.lease, lease)
        let ours = try await client.txn(if: [.leaseOf("l/held", equals: lease), .leaseOf("l/other", equals: 0)], then: [.deletePrefix("l/"), .get("l/held")])
        XCTAssertTrue(ours.succeeded)
        XCTAssertEqual(ours.gets, [[]])
        let left = try await client.range(prefix: "l/")
        XCTAssertEqual(left.kvs.count, 0)
    }

    func testLeaseGrantKeepAliveRevoke() async throws {
        let (lease, ttl) = try await client.grantLease(ttl: 10)
        XCTAssertNotEqual(lease, 0)
        XCTAssertEqual(ttl, 10)
        try await client.put("lease/k", b("v"), lease: lease)
        let kv = try await client.get("lease/k")
        XCTAssertEqual(kv?.lease, lease)
        let remaining = try await client.keepAlive(lease)
        XCTAssertEqual(remaining, 10)

        try await client.revokeLease(lease)
        let gone = try await client.get("lease/k")
        XCTAssertNil(gone, "revoking a lease deletes its keys")
        let afterRevoke = try await client.keepAlive(lease)
        XCTAssertEqual(afterRevoke, 0)
        let error = await tesseraError { try await self.client.revokeLease(lease) }
        XCTAssertEqual(error?.code, .notFound)
        XCTAssertTrue(error?.message.contains(etcd.endpoint) == true, error?.message ?? "")
        XCTAssertTrue(error?.message.contains("lease not found") == true, error?.message ?? "")
    }

    func testLeaseExpiryRemovesKeys() async throws {
        let (lease, ttl) = try await client.grantLease(ttl: 1)
        XCTAssertEqual(ttl, 1)
        try await client.put("expiring", b("v"), lease: lease)
        let start = ContinuousClock.now
        let expired = try await eventually(.seconds(5)) { try await self.client.get("expiring") == nil }
        XCTAssertTrue(expired)
        XCTAssertGreaterThan(ContinuousClock.now - start, .milliseconds(800), "the key went before its TTL")
        let remaining = try await client.keepAlive(lease)
        XCTAssertEqual(remaining, 0)
    }

    func testFailsOverToTheNextEndpoint() async throws {
        let dead = try freePort()
        let both = try EtcdClient(endpoints: ["127.0.0.1:\(dead)", etcd.endpoint], requestTimeout: .seconds(2), logger: logs.logger)
        try await both.put("failover", b("ok"))
        let kv = try await both.get("failover")
        XCTAssertEqual(kv?.value, b("ok"))
        // The dead endpoint is now tried last: no warning for the second call.
        let warnings = logs.messages(at: .warning).count
        _ = try await both.get("failover")
        XCTAssertEqual(logs.messages(at: .warning).count, warnings)
        await both.close()
        let closed = await tesseraError { _ = try await both.get("failover") }
        XCTAssertEqual(closed?.code, .closed)
    }

    func testEtcdErrorRepliesAreClearErrors() async throws {
        let rev = try await client.put("e", b("1"))
        _ = try await client.call("/v3/kv/compaction", ["revision": String(rev)]) { _ in }
        let error = await tesseraError {
            _ = try await self.client.call("/v3/kv/range", ["key": b("e").base64, "revision": String(rev + 100)]) { _ in }
        }
        XCTAssertEqual(error?.code, .invalidArgument)
        XCTAssertTrue(error?.message.contains("future revision") == true, error?.message ?? "")
        XCTAssertTrue(error?.message.contains(etcd.endpoint) == true, error?.message ?? "")
    }
}
