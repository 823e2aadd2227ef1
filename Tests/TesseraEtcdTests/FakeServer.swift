// Loopback servers that are not etcd, for the error tests: one that accepts and never
// answers, and one that answers every request with fixed bytes and closes.
import NIOCore
import NIOPosix

final class FakeServer: Sendable {
    enum Mode: Sendable {
        case silent
        case reply([UInt8])
    }

    private let channel: Channel
    var port: Int { channel.localAddress?.port ?? 0 }
    var endpoint: String { "127.0.0.1:\(port)" }

    private init(_ channel: Channel) { self.channel = channel }

    static func start(_ mode: Mode) async throws -> FakeServer {
        let channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { ch in
                ch.eventLoop.makeCompletedFuture { try ch.pipeline.syncOperations.addHandler(Responder(mode: mode)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
        return FakeServer(channel)
    }

    /// An HTTP server that answers 404 with an HTML page, like a web server on a wrong port.
    static func plainHTTP() async throws -> FakeServer {
        let body = "<html><body>Not Found</body></html>"
        return try await start(.reply(Array("HTTP/1.1 404 Not Found\r\nContent-Type: text/html\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)))
    }

    /// An HTTP server that answers 200 with a JSON object that is not etcd's.
    static func otherJSON() async throws -> FakeServer {
        let body = #"{"status":"ok"}"#
        return try await start(.reply(Array("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)))
    }

    func close() async { try? await channel.close() }

    private final class Responder: ChannelInboundHandler {
        typealias InboundIn = ByteBuffer
        typealias OutboundOut = ByteBuffer
        let mode: Mode
        private var answered = false

        init(mode: Mode) { self.mode = mode }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard case .reply(let bytes) = mode, !answered else { return }
            answered = true
            // Answers once the request has begun to arrive, then hangs up.
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: bytes))).whenComplete { _ in
                channel.close(promise: nil)
            }
        }
    }
}
