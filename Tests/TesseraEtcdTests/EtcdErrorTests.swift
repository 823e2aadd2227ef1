// Clear, timely errors when what the client reaches is not a working etcd: nothing
// listening, a listener that never answers, HTTP servers that are not etcd, bad endpoints.
import Logging
import TesseraCore
import XCTest

@testable import TesseraEtcd

final class EtcdErrorTests: XCTestCase {
    let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func client(_ endpoints: [String], timeout: Duration = .seconds(1)) throws -> EtcdClient {
        try EtcdClient(endpoints: endpoints, requestTimeout: timeout, logger: quiet)
    }

    /// The TesseraError `body` throws, and how long it took.
    func failure(_ body: () async throws -> Void, file: StaticString = #filePath, line: UInt = #line) async -> (TesseraError?, Duration) {
        let start = ContinuousClock.now
        do {
            try await body()
            XCTFail("no error was thrown", file: file, line: line)
        } catch let e as TesseraError {
            return (e, ContinuousClock.now - start)
        } catch {
            XCTFail("not a TesseraError: \(error)", file: file, line: line)
        }
        return (nil, ContinuousClock.now - start)
    }

    func testNothingListening() async throws {
        let endpoint = "127.0.0.1:\(try freePort())"
        let c = try client([endpoint])
        for call in [{ _ = try await c.version() }, { _ = try await c.get("k") }, { try await c.put("k", []) }] {
            let (error, took) = await failure(call)
            XCTAssertEqual(error?.message, "etcd at \(endpoint) cannot be reached: connection refused")
            XCTAssertEqual(error?.code, .io)
            XCTAssertLessThan(took, .seconds(1))
        }
    }

    func testEveryEndpointTriedIsNamed() async throws {
        let (a, b) = ("127.0.0.1:\(try freePort())", "127.0.0.1:\(try freePort())")
        let (error, _) = await failure { _ = try await self.client([a, b]).get("k") }
        XCTAssertEqual(error?.message, "no etcd endpoint answered: etcd at \(a) cannot be reached: connection refused; etcd at \(b) cannot be reached: connection refused")
    }

    func testAListenerThatNeverAnswersTimesOut() async throws {
        let server = try await FakeServer.start(.silent)
        let c = try client([server.endpoint], timeout: .milliseconds(500))
        for call in [{ _ = try await c.version() }, { _ = try await c.keepAlive(1) }, { _ = try await c.txn(if: [], then: []) }] {
            let (error, took) = await failure(call)
            XCTAssertEqual(error?.code, .timedOut)
            XCTAssertTrue(error?.message.contains("etcd at \(server.endpoint) did not answer") == true, error?.message ?? "")
            XCTAssertTrue(error?.message.contains("within 0.5 s") == true, error?.message ?? "")
            XCTAssertGreaterThanOrEqual(took, .milliseconds(450))
            XCTAssertLessThan(took, .milliseconds(1500))
        }
        await server.close()
    }

    func testAPlainHTTPServerIsNotEtcd() async throws {
        let server = try await FakeServer.plainHTTP()
        let c = try client([server.endpoint])
        let (version, _) = await failure { _ = try await c.version() }
        XCTAssertEqual(version?.message, "\(server.endpoint) is not an etcd v3 endpoint: /version answered HTTP 404 with \"<html><body>Not Found</body></html>\"")
        let (get, _) = await failure { _ = try await c.get("k") }
        XCTAssertTrue(get?.message.hasPrefix("\(server.endpoint) is not an etcd v3 endpoint: /v3/kv/range answered HTTP 404") == true, get?.message ?? "")
        await server.close()
    }

    func testAJSONServerThatIsNotEtcd() async throws {
        let server = try await FakeServer.otherJSON()
        let c = try client([server.endpoint])
        let (version, _) = await failure { _ = try await c.version() }
        XCTAssertEqual(version?.message, "\(server.endpoint) is not an etcd v3 endpoint: /version answered JSON without an etcd version")
        let (put, _) = await failure { try await c.put("k", []) }
        XCTAssertEqual(put?.message, "\(server.endpoint) is not an etcd v3 endpoint: /v3/kv/put answered HTTP 200 with \"{\"status\":\"ok\"}\"")
        await server.close()
    }

    func testBytesThatAreNotHTTP() async throws {
        let server = try await FakeServer.start(.reply(Array("SSH-2.0-OpenSSH_9.2\r\n".utf8)))
        let (error, _) = await failure { _ = try await self.client([server.endpoint]).version() }
        XCTAssertTrue(error?.message.hasPrefix("\(server.endpoint) is not an etcd v3 endpoint: its reply to /version is not HTTP") == true, error?.message ?? "")
        await server.close()
    }

    func testEndpointParsing() throws {
        XCTAssertEqual(try client(["127.0.0.1:2379", "http://10.0.0.1:2380/", "etcd.local", "[::1]:2379"]).endpoints,
                       ["127.0.0.1:2379", "10.0.0.1:2380", "etcd.local:2379", "[::1]:2379"])
        XCTAssertThrowsError(try client(["https://127.0.0.1:2379"])) { error in
            XCTAssertTrue("\(error)".contains("https is not supported"), "\(error)")
        }
        XCTAssertThrowsError(try client(["127.0.0.1:notaport"]))
        XCTAssertThrowsError(try client(["http://h:1/v3"]))
        XCTAssertThrowsError(try client([]))
    }
}
