// The base of the tests that need etcd: a fresh etcd per test (it starts in well under a
// second), a client of it, and both stopped and removed after the test.
import Logging
import TesseraCore
import XCTest

@testable import TesseraEtcd

class EtcdTestCase: XCTestCase {
    var etcd: EtcdProcess!
    var client: EtcdClient!
    let logs = CapturedLogs()

    override func setUp() async throws {
        etcd = try EtcdProcess()
        try await etcd.start()
        client = try EtcdClient(endpoints: [etcd.endpoint], requestTimeout: .seconds(2), logger: logs.logger)
    }

    override func tearDown() async throws {
        if (testRun?.failureCount ?? 0) > 0 {
            print("client log of \(name):\n" + logs.all().joined(separator: "\n"))
        }
        await client?.close()
        etcd?.destroy()
    }

    /// Bytes of a string, for values.
    func b(_ s: String) -> [UInt8] { Array(s.utf8) }

    /// Runs `body`, which must throw a TesseraError, and returns it.
    func tesseraError(_ body: () async throws -> Void, file: StaticString = #filePath, line: UInt = #line) async -> TesseraError? {
        do {
            try await body()
            XCTFail("no error was thrown", file: file, line: line)
        } catch let e as TesseraError {
            return e
        } catch {
            XCTFail("not a TesseraError: \(error)", file: file, line: line)
        }
        return nil
    }
}
