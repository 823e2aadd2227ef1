// 100,000+ random and mutated frames thrown at a live server: it never crashes, closes what
// it cannot parse, answers what it can, keeps serving a well-behaved client throughout, and
// holds no connection afterwards.
import Foundation
import Testing
import TesseraCore
@testable import TesseraRPC

/// A blocking loopback TCP socket for throwing raw bytes.
struct RawSocket {
    let fd: Int32

    init?(port: Int) {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let ok = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        if ok != 0 {
            Glibc.close(fd)
            return nil
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    /// Sends all bytes; false once the peer has closed.
    func send(_ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + done, bytes.count - done, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            done += n
        }
        return true
    }

    /// Reads whatever is waiting without blocking.
    func drain() {
        var buf = [UInt8](repeating: 0, count: 65536)
        while recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT)) > 0 {}
    }

    func close() { Glibc.close(fd) }
}

@Suite struct FuzzTests {
    static func validRequests() -> [[UInt8]] {
        let fid = Fid(hi: 77, lo: 1)
        let requests: [Request] = [
            .createIndexes([fid]), .put(index: fid, records: [Record(key: [1, 2], value: [3])], mode: .overwrite, syncWait: false),
            .get(index: fid, keys: [[1, 2]]), .next(index: fid, starts: [nil], limit: 5, excludeStart: false),
            .delete(index: fid, keys: [[1, 2]], syncWait: false), .listIndexes(after: nil, limit: 3), .sync(transactions: [1]),
            .create(cobs: [fid, Fid(hi: 77, lo: 2)], syncWait: false),
        ]
        return requests.map { r in
            var w = WireWriter()
            r.encode(into: &w)
            return w.bytes
        }
    }

    static func mutate(_ bytes: [UInt8], _ rng: inout SystemRandomNumberGenerator) -> [UInt8] {
        var b = bytes
        switch Int.random(in: 0..<4, using: &rng) {
        case 0 where !b.isEmpty:
            for _ in 0..<Int.random(in: 1...4, using: &rng) { b[Int.random(in: 0..<b.count, using: &rng)] ^= UInt8.random(in: 1...255, using: &rng) }
        case 1 where !b.isEmpty: b = Array(b[..<Int.random(in: 0..<b.count, using: &rng)])
        case 2: b += (0..<Int.random(in: 1...16, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        default: b = (0..<Int.random(in: 0...80, using: &rng)).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }
        return b
    }

    @Test func hundredThousandBadFrames() async throws {
        let live = try await LiveServer()
        let good = try await live.client()
        let fid = Fid(hi: 5, lo: 5)
        _ = await good.handle(.createIndexes([fid]))
        let valid = Self.validRequests()
        var thrown = 0

        // Authenticated connections: whole frames whose bodies are mutated or random. Each is
        // answered, so the connection stays open; the good client checks in between.
        let fuzzers = try await withThrowingTaskGroup(of: Int.self) { group in
            for _ in 0..<4 {
                group.addTask {
                    let c = try await live.client()
                    var rng = SystemRandomNumberGenerator()
                    var n = 0
                    for _ in 0..<22_500 {
                        _ = await c.rawCall(body: Self.mutate(valid.randomElement(using: &rng)!, &rng))
                        n += 1
                    }
                    await c.close()
                    return n
                }
            }
            group.addTask {
                for i in 0..<200 {
                    let k = Array("good-\(i)".utf8)
                    #expect(await good.handle(.put(index: fid, records: [Record(key: k, value: k)], mode: .overwrite, syncWait: false)).statuses == [.ok])
                    #expect(await good.handle(.get(index: fid, keys: [k])) == .values([k]))
                    try await Task.sleep(for: .milliseconds(5))
                }
                return 0
            }
            return try await group.reduce(0, +)
        }
        thrown += fuzzers

        // Unauthenticated connections: garbage headers, mutated frames and handshakes. The server
        // answers with `refused` and closes; it must never stop accepting.
        var rng = SystemRandomNumberGenerator()
        let goodFrame = Frame(kind: .request, requestID: 1, body: valid[0]).encode()
        let hello = Frame(kind: .hello, body: [UInt8](repeating: 1, count: 32)).encode()
        var connections = 0
        while thrown < 102_000 {
            guard let s = RawSocket(port: live.port) else { Issue.record("server stopped accepting"); break }
            connections += 1
            for _ in 0..<Int.random(in: 1...8, using: &rng) {
                let base = [goodFrame, hello, Frame(kind: .proof, body: [1]).encode()].randomElement(using: &rng)!
                guard s.send(Self.mutate(base, &rng)) else { break }
                thrown += 1
            }
            s.drain()
            s.close()
        }
        #expect(thrown >= 100_000)
        #expect(connections > 100)

        // Still serving, and every fuzzing connection is gone.
        #expect(await good.handle(.get(index: fid, keys: [Array("good-7".utf8)])) == .values([Array("good-7".utf8)]))
        let deadline = Date().addingTimeInterval(10)
        while live.server.connectionCount > 1 && Date() < deadline { try await Task.sleep(for: .milliseconds(20)) }
        #expect(live.server.connectionCount == 1)
        #expect(try live.engine.audit().isClean)
        await good.close()
        await live.stop()
    }
}
