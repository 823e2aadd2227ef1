// A plain TCP client for tests that speak the wire by hand.
import Foundation
import Glibc
import TesseraCore
@testable import TesseraRPC

/// A plain TCP connection to a loopback port, speaking frames by hand: what an attacker
/// (or a broken client) opens.
final class RawPeer {
    private(set) var fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard r == 0 else {
            let e = errno
            Glibc.close(fd)
            throw TesseraError(.io, "connect to port \(port): errno \(e)")
        }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// Reads whatever is waiting without blocking.
    func drain() {
        var buf = [UInt8](repeating: 0, count: 65536)
        while recv(fd, &buf, buf.count, Int32(MSG_DONTWAIT)) > 0 {}
    }

    static func frame(_ kind: FrameKind, id: UInt64 = 0, declaring length: Int? = nil, body: [UInt8]) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: Frame.headerSize)
        out.withUnsafeMutableBytes { Frame.writeHeader(kind: kind, requestID: id, deadlineMillis: 0, bodyLength: length ?? body.count, to: $0.baseAddress!) }
        return out + body
    }

    /// Sends all of `bytes`, blocking; false once the peer has closed or reset.
    func send(_ bytes: [UInt8]) -> Bool {
        var at = 0
        while at < bytes.count {
            let n = bytes[at...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n <= 0 { return false }
            at += n
        }
        return true
    }

    /// Sends `bytes` if the socket takes them within `seconds`; false if it stays full (a
    /// frame may then be cut: the caller is done with the connection).
    func send(_ bytes: [UInt8], within seconds: Double) -> Bool {
        var at = 0
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while at < bytes.count {
            let n = bytes[at...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) }
            if n > 0 {
                at += n
                continue
            }
            guard errno == EAGAIN || errno == EWOULDBLOCK, ContinuousClock.now < deadline else { return false }
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            _ = poll(&p, 1, 50)
        }
        return true
    }

    /// Reads exactly `n` bytes (nil if the peer closes first).
    func read(_ n: Int) -> [UInt8]? {
        var out = [UInt8](repeating: 0, count: n)
        var at = 0
        while at < n {
            let r = out[at...].withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if r <= 0 { return nil }
            at += r
        }
        return out
    }

    /// Whether the peer has closed the connection (reads end or fail), waiting up to
    /// `seconds`; what it sent before (a `refused` frame) is read and dropped.
    func closedByPeer(within seconds: Double) -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
            if n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) { return true }
            if n > 0 { continue }
            let left = deadline - ContinuousClock.now
            guard left > .zero else { return false }
            var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, Int32(min(left, .milliseconds(100)) / .milliseconds(1)))
        }
    }

    /// Runs the client side of the handshake with `secret`.
    func handshake(secret: String) throws {
        let mine = Proof.nonce()
        guard send(Self.frame(.hello, body: mine)), let challenge = read(Frame.headerSize + 32) else { throw TesseraError(.io, "no challenge") }
        let theirs = Array(challenge[Frame.headerSize...])
        guard send(Self.frame(.proof, body: Proof.make(secret: secret, role: "client", mine, theirs))), read(Frame.headerSize + 32) != nil else {
            throw TesseraError(.io, "no welcome")
        }
    }
}

