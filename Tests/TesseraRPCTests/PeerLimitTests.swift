// Peers that do not play along cannot exhaust a server: before the handshake a frame larger
// than a handshake step is refused at its header, a connection that does not finish the
// handshake in time is dropped, idle connections past the limit are closed as they come
// while authenticated clients go on, and a peer that never reads its replies stops having
// its requests read instead of making the server buffer them.
import Foundation
import Glibc
import NIOCore
import Testing
import TesseraCore
@testable import TesseraRPC

/// Resident bytes of process `pid`.
func residentBytes(_ pid: pid_t) -> Int {
    guard let statm = try? String(contentsOfFile: "/proc/\(pid)/statm", encoding: .utf8) else { return 0 }
    let pages = statm.split(separator: " ").dropFirst().first.flatMap { Int($0) } ?? 0
    return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
}

@Suite struct PeerLimitTests {
    /// The attack that grew a server from 69 MB to 781 MB: 60 connections, each a `hello`
    /// header declaring the largest body, then 15 MiB of it. Now each is refused at its
    /// header, and the server's memory stays where it was.
    @Test func aLargeFrameBeforeTheHandshakeIsRefusedAtItsHeader() async throws {
        let cluster = try ProcessCluster()
        try cluster.start(0)
        let probe = try await cluster.connect(0)
        let pid = try #require(cluster.processes[0]).pid
        let before = residentBytes(pid)
        let chunk = [UInt8](repeating: 0x55, count: 1 << 20)
        var peers: [RawPeer] = []
        var cut = 0
        for _ in 0..<60 {
            let p = try RawPeer(port: cluster.ports[0])
            peers.append(p)
            var sent = 0
            if p.send(RawPeer.frame(.hello, declaring: Frame.maxBody, body: [])) {
                while sent < 15 << 20 && p.send(chunk) { sent += chunk.count }
            }
            if sent < 15 << 20 { cut += 1 }
            #expect(p.closedByPeer(within: 5), "the server kept a connection that declared a \(Frame.maxBody)-byte hello")
        }
        #expect(cut == 60, "\(60 - cut) connections took 15 MiB of a hello body")
        let after = residentBytes(pid)
        #expect(after - before < 8 << 20, "resident memory grew from \(before >> 20) MiB to \(after >> 20) MiB")
        // Whoever knows the secret is still answered.
        #expect(await probe.handle(.listIndexes(after: nil, limit: 1)).isSuccess)
        await probe.close()
    }

    /// 2,000 connections that never send a byte: past the limit of connections in the
    /// handshake they are closed as they are accepted, and a client that proved the secret
    /// goes on being answered throughout.
    @Test func idleConnectionsPastTheLimitAreClosed() async throws {
        let cluster = try ProcessCluster()
        try cluster.start(0)
        let client = try await cluster.connect(0)
        var peers: [RawPeer] = []
        for i in 0..<2000 {
            peers.append(try RawPeer(port: cluster.ports[0]))
            if i % 250 == 0 { #expect(await client.handle(.listIndexes(after: nil, limit: 1)).isSuccess, "after \(i) idle connections") }
        }
        try await Task.sleep(for: .milliseconds(500))
        let open = peers.filter { !$0.closedByPeer(within: 0) }.count
        #expect(open <= RPCLimits().maxHandshaking, "\(open) idle connections still open; the limit is \(RPCLimits().maxHandshaking)")
        #expect(await client.handle(.listIndexes(after: nil, limit: 1)).isSuccess)
        await client.close()
    }

    /// A connection that sends nothing, or half a header, is dropped at the handshake
    /// deadline; one that proves the secret in time is not.
    @Test func aConnectionThatDoesNotFinishTheHandshakeIsDropped() async throws {
        var limits = RPCLimits()
        limits.handshakeDeadline = .milliseconds(300)
        let live = try await LiveServer(limits: limits)
        let silent = try RawPeer(port: live.port)
        let partial = try RawPeer(port: live.port)
        #expect(partial.send(Array(RawPeer.frame(.hello, body: Proof.nonce())[0..<10])))
        let good = try RawPeer(port: live.port)
        try good.handshake(secret: LiveServer.secret)
        #expect(silent.closedByPeer(within: 5), "a silent connection was kept past the deadline")
        #expect(partial.closedByPeer(within: 5), "a connection that sent half a header was kept past the deadline")
        #expect(!good.closedByPeer(within: 0.5), "an authenticated connection was dropped")
        #expect(live.server.handshakingCount == 0)
        await live.stop()
    }

    /// A peer that sends GETs of large values and never reads the replies: the server stops
    /// reading its requests once the replies waiting to be sent pass a quarter of the
    /// budget, and what it holds for the peer stays there.
    @Test func aPeerThatNeverReadsItsRepliesStopsBeingRead() async throws {
        var limits = RPCLimits()
        limits.maxReplyBytes = 4 << 20
        let live = try await LiveServer(limits: limits)
        let index = Fid(hi: 77, lo: 1)
        let c = try await live.client()
        #expect(await c.handle(.createIndexes([index])).statuses == [.ok])
        let keys = (0..<128).map { [UInt8($0)] }
        let value = [UInt8](repeating: 7, count: 500)
        let put = await c.handle(.put(index: index, records: keys.map { Record(key: $0, value: value) }, mode: .overwrite, syncWait: false))
        #expect(put.statuses == [Status](repeating: .ok, count: keys.count), "\(put)")
        await c.close()
        let peer = try RawPeer(port: live.port)
        try peer.handshake(secret: LiveServer.secret)
        // Each GET is ~1 KB and is answered with 64 KB.
        var w = WireWriter()
        Request.get(index: index, keys: keys).encode(into: &w)
        let request = RawPeer.frame(.request, id: 1, body: w.bytes)
        #expect(peer.send(request))
        let h = try #require(peer.read(Frame.headerSize))
        let header = try h.withUnsafeBytes { try Frame.parseHeader($0) }
        #expect(header.kind == .response && header.bodyLength > 64_000, "the first reply: \(header.kind) of \(header.bodyLength) bytes")
        _ = peer.read(header.bodyLength)
        // 5,000 of them ask for 320 MB of replies; most wait in the sockets' buffers.
        var sent = 0
        while sent < 5000 && peer.send(request, within: 1) { sent += 1 }
        // Time for the server to work through what it reads.
        try await Task.sleep(for: .seconds(1))
        let unsent = await live.server.unsentReplyBytes()
        #expect(unsent.count == 1, "the peer's connection is not listed: \(unsent)")
        #expect(unsent.allSatisfy { $0 <= limits.maxReplyBytes / 4 + (1 << 20) }, "after \(sent) requests, reply bytes waiting per connection: \(unsent)")
        // Others are still answered.
        let other = try await live.client()
        #expect(await other.handle(.get(index: index, keys: [[0]])).isSuccess)
        await other.close()
        await live.stop()
    }
}

extension Response {
    var isSuccess: Bool {
        if case .failure = self { return false }
        return true
    }
}
