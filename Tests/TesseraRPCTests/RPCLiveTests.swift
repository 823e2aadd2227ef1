// A live server on loopback: handshake, CAS requests, many in flight, deadlines, refusals.
import Foundation
import NIOCore
import NIOPosix
import Testing
import TesseraCore
import TesseraEngine
import TesseraServices
@testable import TesseraRPC

/// A temporary engine served over RPC on a free loopback port.
final class LiveServer: @unchecked Sendable {
    // SAFETY: every stored property is a constant set in init.
    static let secret = "test-secret-0123456789"
    let dir: String
    let engine: Engine
    let server: RPCServer
    var port: Int { server.port }

    init(handler: ((Engine) -> RequestHandler)? = nil) async throws {
        var template = Array((NSTemporaryDirectory() + "/tessera-rpc-XXXXXX").utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        _ = try Engine.format(path: dir + "/meta.img", size: 64 << 20, pageSize: 4096, logSize: 4 << 20)
        var o = EngineOptions()
        o.logger.logLevel = .warning
        engine = try Engine.open(path: dir + "/meta.img", options: o)
        let h = handler?(engine) ?? ServerNode(engine: engine)
        server = try await RPCServer.start(host: "127.0.0.1", port: 0, secret: LiveServer.secret, handler: h, group: MultiThreadedEventLoopGroup.singleton)
    }

    func client(secret: String = LiveServer.secret, deadline: Duration = .seconds(30)) async throws -> RPCClient {
        try await RPCClient.connect(host: "127.0.0.1", port: port, secret: secret, group: MultiThreadedEventLoopGroup.singleton, defaultDeadline: deadline)
    }

    func stop() async {
        await server.shutdown(drain: .seconds(2))
        try? engine.close()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

@Suite struct RPCLiveTests {
    let fid = Fid(hi: 10, lo: 1)

    @Test func catalogueRequestsOverTheWire() async throws {
        let live = try await LiveServer()
        let c = try await live.client()
        #expect(await c.handle(.createIndexes([fid])).statuses == [.ok])
        #expect(await c.handle(.createIndexes([fid])).statuses == [.exists])
        let put = await c.handle(.put(index: fid, records: [Record(key: [1], value: [10]), Record(key: [2], value: [20])], mode: .overwrite, syncWait: true))
        guard case .statuses(let st, let tx) = put else { Issue.record("\(put)"); return }
        #expect(st == [.ok, .ok] && tx > 0)
        #expect(await c.handle(.put(index: fid, records: [Record(key: [1], value: [11])], mode: .createOnly, syncWait: false)).statuses == [.exists])
        #expect(await c.handle(.get(index: fid, keys: [[1], [3]])) == .values([[10], nil]))
        #expect(await c.handle(.next(index: fid, starts: [nil, [1]], limit: 10, excludeStart: true)) == .records([
            [Record(key: [1], value: [10]), Record(key: [2], value: [20])], [Record(key: [2], value: [20])],
        ]))
        #expect(await c.handle(.delete(index: fid, keys: [[1], [9]], syncWait: true)).statuses == [.ok, .notFound])
        #expect(await c.handle(.listIndexes(after: nil, limit: 10)) == .fids([fid]))
        #expect(await c.handle(.sync(transactions: [tx, 1 << 60])) == .done)
        if case .failure(let s, _) = await c.handle(.get(index: Fid(hi: 99, lo: 99), keys: [[1]])) { #expect(s == .notFound) } else { Issue.record("missing index answered") }
        await c.close()
        await live.stop()
    }

    @Test func wrongSecretIsRefused() async throws {
        let live = try await LiveServer()
        await #expect { _ = try await live.client(secret: "not-the-secret-at-all") } throws: {
            ($0 as? TesseraError)?.code == .permissionDenied
        }
        let good = try await live.client()
        #expect(await good.handle(.listIndexes(after: nil, limit: 1)) == .fids([]))
        await good.close()
        await live.stop()
    }

    @Test func manyRequestsInFlightOnOneConnection() async throws {
        let live = try await LiveServer()
        let c = try await live.client()
        _ = await c.handle(.createIndexes([fid]))
        await withTaskGroup(of: Void.self) { group in
            for i in 0..<500 {
                group.addTask {
                    let k = Array("key-\(i)".utf8)
                    let r = await c.handle(.put(index: fid, records: [Record(key: k, value: k)], mode: .overwrite, syncWait: i % 5 == 0))
                    #expect(r.statuses == [.ok])
                    #expect(await c.handle(.get(index: fid, keys: [k])) == .values([k]))
                }
            }
        }
        guard case .records(let lists) = await c.handle(.next(index: fid, starts: [nil], limit: 1000, excludeStart: false)) else { Issue.record("next"); return }
        #expect(lists[0].count == 500)
        await c.close()
        await live.stop()
    }

    struct Slow: RequestHandler {
        func handle(_ request: Request) async -> Response {
            try? await Task.sleep(for: .milliseconds(400))
            return .done
        }
    }

    @Test func deadlinesTimeOut() async throws {
        let live = try await LiveServer { _ in Slow() }
        let c = try await live.client()
        let r = await c.call(.sync(transactions: []), deadline: .milliseconds(50))
        if case .failure(let s, _) = r { #expect(s == .timedOut) } else { Issue.record("\(r)") }
        #expect(await c.call(.sync(transactions: []), deadline: .seconds(5)) == .done)
        await c.close()
        await live.stop()
    }

    @Test func malformedRequestBodyGetsAnErrorAndTheConnectionLives() async throws {
        let live = try await LiveServer()
        let c = try await live.client()
        let garbage = await c.rawCall(body: [0xFF, 0xFF, 1, 2, 3])
        if case .failure(let s, _) = garbage { #expect(s == .invalidArgument) } else { Issue.record("\(garbage)") }
        #expect(await c.handle(.listIndexes(after: nil, limit: 1)) == .fids([]))
        await c.close()
        await live.stop()
    }
}

extension Response {
    var statuses: [Status]? { if case .statuses(let s, _) = self { return s } else { return nil } }
}

extension RPCClient {
    /// Sends an arbitrary request body (tests only).
    func rawCall(body: [UInt8]) async -> Response {
        await sendRaw(body: body, deadline: .seconds(5))
    }
}
