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

    init(handler: ((Engine) -> RequestHandler)? = nil, limits: RPCLimits = RPCLimits()) async throws {
        var template = Array((NSTemporaryDirectory() + "/tessera-rpc-XXXXXX").utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        _ = try Engine.format(path: dir + "/meta.img", size: 64 << 20, pageSize: 4096, logSize: 4 << 20)
        var o = EngineOptions()
        o.logger.logLevel = .warning
        engine = try Engine.open(path: dir + "/meta.img", options: o)
        let h = handler?(engine) ?? ServerNode(engine: engine)
        server = try await RPCServer.start(host: "127.0.0.1", port: 0, secret: LiveServer.secret, handler: h, group: MultiThreadedEventLoopGroup.singleton, limits: limits)
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

    /// Answers READ(cob, offset, length) with bytes numbered from `offset` (xor cob.lo),
    /// one byte short when cob.hi is 1.
    struct Pattern: RequestHandler {
        static func byte(_ cob: Fid, _ at: UInt64) -> UInt8 { UInt8(truncatingIfNeeded: at ^ (at >> 8) ^ cob.lo) }
        func handle(_ request: Request) async -> Response {
            guard case .read(let cob, let offset, let length) = request else { return .failure(.invalidArgument, "not a READ") }
            let n = Int(length) - (cob.hi == 1 ? 1 : 0)
            return .data((0..<UInt64(n)).map { Self.byte(cob, offset + $0) })
        }
    }

    @Test func readDataGoesStraightToTheCallersMemory() async throws {
        let live = try await LiveServer { _ in Pattern() }
        let c = try await live.client()
        func read(_ cob: Fid, _ offset: UInt64, _ length: Int) async -> (Response, [UInt8]) {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: 4096)
            defer { buffer.deallocate() }
            buffer.initializeMemory(as: UInt8.self, repeating: 0xEE)
            let r = await c.call(.read(cob: cob, offset: offset, length: UInt32(length)), dataInto: buffer)
            return (r, Array(buffer))
        }
        func expected(_ cob: Fid, _ offset: UInt64, _ length: Int) -> [UInt8] { (0..<UInt64(length)).map { Pattern.byte(cob, offset + $0) } }
        // Bodies of many socket reads, several in flight at once, each where its caller wants it.
        try await withThrowingTaskGroup(of: Void.self) { group in
            for k in 0..<6 {
                group.addTask {
                    let cob = Fid(hi: 0, lo: UInt64(k))
                    let length = [1, 4096, 65_537, 1 << 20, 3 << 20, 8 << 20][k]
                    let (r, got) = await read(cob, UInt64(k) * 7, length)
                    #expect(r == .done)
                    #expect(got == expected(cob, UInt64(k) * 7, length), "READ of \(length) bytes")
                }
            }
            try await group.waitForAll()
        }
        // Data of the wrong length is a failure (the server finds it), and the memory is left alone.
        let (short, untouched) = await read(Fid(hi: 1, lo: 0), 0, 1 << 20)
        if case .failure = short {} else { Issue.record("\(short)") }
        #expect(untouched.allSatisfy { $0 == 0xEE })
        // Deadlines that pass before or while the data arrives: each READ is either whole or
        // timed out, and the connection keeps its frames in step.
        for i in 0..<20 {
            let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: 8 << 20, alignment: 4096)
            let r = await c.call(.read(cob: Fid(hi: 0, lo: 9), offset: UInt64(i), length: 8 << 20), deadline: .milliseconds(i + 1), dataInto: buffer)
            switch r {
            case .done: #expect(Array(buffer) == expected(Fid(hi: 0, lo: 9), UInt64(i), 8 << 20))
            case .failure(let s, _): #expect(s == .timedOut)
            default: Issue.record("\(r)")
            }
            // Memory a timed-out READ lent may be reused at once.
            buffer.initializeMemory(as: UInt8.self, repeating: 0)
            buffer.deallocate()
        }
        let (after, bytes) = await read(Fid(hi: 0, lo: 3), 5, 2 << 20)
        #expect(after == .done && bytes == expected(Fid(hi: 0, lo: 3), 5, 2 << 20))
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
