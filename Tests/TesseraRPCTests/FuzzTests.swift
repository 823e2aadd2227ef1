// 100,000+ random and mutated frames thrown at a live server: it never crashes, closes what
// it cannot parse, answers what it can, keeps serving a well-behaved client throughout, and
// holds no connection afterwards.
import Foundation
import Testing
import TesseraCore
@testable import TesseraRPC

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

    static func mutate(_ bytes: [UInt8], _ rng: inout SeededRandom) -> [UInt8] {
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
        // One printed seed; each fuzzing task and the unauthenticated loop draw theirs from it.
        var seeds = SeededRandom.forRun("FuzzTests.hundredThousandBadFrames")
        let taskSeeds = (0..<4).map { _ in seeds.next() }

        // Authenticated connections: whole frames whose bodies are mutated or random. Each is
        // answered, so the connection stays open; the good client checks in between.
        let fuzzers = try await withThrowingTaskGroup(of: Int.self) { group in
            for seed in taskSeeds {
                group.addTask {
                    let c = try await live.client()
                    var rng = SeededRandom(seed: seed)
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
        var rng = seeds
        let goodFrame = Frame(kind: .request, requestID: 1, body: valid[0]).encode()
        let hello = Frame(kind: .hello, body: [UInt8](repeating: 1, count: 32)).encode()
        var connections = 0
        while thrown < 102_000 {
            guard let s = try? RawPeer(port: live.port) else { Issue.record("server stopped accepting"); break }
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
