// The connection handshake: protocol version (in every frame header) and mutual proof of the
// cluster secret by HMAC-SHA256 over fresh nonces; the secret never crosses the wire.
//
//   client → hello(client nonce, 32 bytes)
//   server → challenge(server nonce, 32 bytes)
//   client → proof(HMAC(secret, "client" ++ client nonce ++ server nonce))
//   server → welcome(HMAC(secret, "server" ++ server nonce ++ client nonce))   or refused
//
// Both sides are pure state machines: an event in, an action out.
import Crypto
import TesseraCore

enum Proof {
    static func make(secret: String, role: String, _ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        let key = SymmetricKey(data: Array(secret.utf8))
        return Array(HMAC<SHA256>.authenticationCode(for: Array(role.utf8) + a + b, using: key))
    }

    /// Constant-time comparison.
    static func matches(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var diff: UInt8 = 0
        for i in a.indices { diff |= a[i] ^ b[i] }
        return diff == 0
    }

    static func nonce() -> [UInt8] {
        var rng = SystemRandomNumberGenerator()
        return (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }
}

/// The server side of the handshake.
struct ServerHandshake {
    enum State { case awaitingHello, awaitingProof(client: [UInt8], server: [UInt8]), ready, refused }
    enum Action: Equatable {
        case send(Frame)
        case refuse(Status, String)
        case ready(Frame)
    }

    let secret: String
    private(set) var state = State.awaitingHello
    /// The largest body of a handshake step (a nonce, a proof): a peer that has not proven
    /// the secret may send no larger frame.
    static let maxStep = 32

    init(secret: String) { self.secret = secret }

    var isReady: Bool { if case .ready = state { return true } else { return false } }

    mutating func receive(_ frame: Frame) -> Action {
        switch (state, frame.kind) {
        case (.awaitingHello, .hello) where frame.body.count == 32:
            let server = Proof.nonce()
            state = .awaitingProof(client: frame.body, server: server)
            return .send(Frame(kind: .challenge, body: server))
        case (.awaitingProof(let client, let server), .proof):
            guard Proof.matches(frame.body, Proof.make(secret: secret, role: "client", client, server)) else {
                state = .refused
                return .refuse(.unauthorized, "the peer does not know the cluster secret")
            }
            state = .ready
            return .ready(Frame(kind: .welcome, body: Proof.make(secret: secret, role: "server", server, client)))
        default:
            state = .refused
            return .refuse(.invalidArgument, "unexpected \(frame.kind) frame during the handshake")
        }
    }
}

/// The client side of the handshake.
struct ClientHandshake {
    enum Action: Equatable {
        case send(Frame)
        case ready
        case fail(String)
    }

    let secret: String
    let client = Proof.nonce()
    private var server: [UInt8]?

    init(secret: String) { self.secret = secret }

    var hello: Frame { Frame(kind: .hello, body: client) }

    mutating func receive(_ frame: Frame) -> Action {
        switch frame.kind {
        case .challenge where server == nil && frame.body.count == 32:
            server = frame.body
            return .send(Frame(kind: .proof, body: Proof.make(secret: secret, role: "client", client, frame.body)))
        case .welcome where server != nil:
            guard Proof.matches(frame.body, Proof.make(secret: secret, role: "server", server!, client)) else {
                return .fail("the server does not know the cluster secret")
            }
            return .ready
        case .refused:
            return .fail("the server refused the connection: \(frame.refusalMessage)")
        default:
            return .fail("unexpected \(frame.kind) frame during the handshake")
        }
    }
}

extension Frame {
    /// The message of a `refused` frame ("refused" if it has none that decodes).
    var refusalMessage: String {
        WireReader.read(body) { r in (try? r.u16()).flatMap { _ in try? r.string() } } ?? "refused"
    }

    /// A `refused` frame: u16 status, then the message.
    static func refused(_ status: Status, _ message: String) -> Frame {
        var w = WireWriter()
        w.u16(status.rawValue)
        w.string(message)
        return Frame(kind: .refused, body: w.bytes)
    }
}
