// A minimal S3 client over one keep-alive HTTP/1.1 connection, for `tessera bench s3`:
// signed PUT (UNSIGNED-PAYLOAD, as clients send over TLS), GET and bucket creation. It
// sends bodies from the caller's buffer and counts response bytes without keeping them,
// so the load generator costs little beside the server it measures.
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

public final class S3HTTPClient {
    private var connection: Channel?
    private let hostName: String
    private let port: Int
    private let host: String
    private let accessKey: String
    private let secret: String
    private let region: String

    public struct Failure: Error, CustomStringConvertible {
        public var description: String
    }

    public init(host: String, port: Int, accessKey: String, secret: String, region: String = "us-east-1") async throws {
        hostName = host
        self.port = port
        self.host = "\(host):\(port)"
        self.accessKey = accessKey
        self.secret = secret
        self.region = region
        connection = try await connect()
    }

    private func connect() async throws -> Channel {
        try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    try ch.pipeline.syncOperations.addHandler(ResponseCounter())
                }
            }
            .connect(host: hostName, port: port).get()
    }

    public func close() async {
        guard let c = connection else { return }
        connection = nil
        try? await c.close()
    }

    /// Sends a request and returns the status and the number of body bytes that came back.
    /// A server that closes after each response (`Connection: close`) gets a new
    /// connection for the next request.
    @discardableResult
    public func request(_ method: HTTPMethod, _ path: String, body: ByteBuffer? = nil) async throws -> (status: Int, bytes: Int) {
        let c: Channel
        if let existing = connection { c = existing } else { c = try await connect() }
        connection = nil
        var headers = [("host", host), ("content-length", String(body?.readableBytes ?? 0))]
        headers += SigV4.sign(method: method.rawValue, path: path, headers: headers, accessKey: accessKey, secret: secret, region: region)
        let uri = SigV4.encode(path, keepSlash: true)
        let response = c.eventLoop.makePromise(of: ResponseCounter.Response.self)
        let head = HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))
        c.eventLoop.execute {
            // The promise goes first, so the handler holds it before any byte of the answer.
            c.pipeline.fireUserInboundEventTriggered(ResponseCounter.Expect(promise: response))
            c.write(HTTPClientRequestPart.head(head), promise: nil)
            if let body, body.readableBytes > 0 { c.write(HTTPClientRequestPart.body(.byteBuffer(body)), promise: nil) }
            c.writeAndFlush(HTTPClientRequestPart.end(nil)).whenFailure { response.fail($0) }
        }
        let r: ResponseCounter.Response
        do {
            r = try await response.futureResult.get()
        } catch {
            try? await c.close()
            throw error
        }
        if r.keepAlive { connection = c } else { try? await c.close() }
        return (r.status, r.bytes)
    }

    /// PUT that must answer 200.
    public func put(_ path: String, _ body: ByteBuffer) async throws {
        let r = try await request(.PUT, path, body: body)
        guard r.status == 200 else { throw Failure(description: "PUT \(path): HTTP \(r.status)") }
    }

    /// GET that must answer 200 with `expect` bytes.
    public func get(_ path: String, expect: Int) async throws {
        let r = try await request(.GET, path)
        guard r.status == 200, r.bytes == expect else { throw Failure(description: "GET \(path): HTTP \(r.status), \(r.bytes) bytes (expected \(expect))") }
    }
}

/// Counts one response at a time: its status, body bytes and whether the connection stays
/// open; fails the waiting request if the connection closes first. Event loop only.
private final class ResponseCounter: ChannelInboundHandler, @unchecked Sendable {
    // SAFETY: every member is touched on the channel's event loop only.
    typealias InboundIn = HTTPClientResponsePart
    struct Response: Sendable {
        var status = 0
        var bytes = 0
        var keepAlive = true
    }
    struct Expect { let promise: EventLoopPromise<Response> }

    private var waiting: EventLoopPromise<Response>?
    private var response = Response()

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if let expect = event as? Expect {
            waiting = expect.promise
            response = Response()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            response.status = Int(h.status.code)
            response.keepAlive = h.isKeepAlive
        case .body(let b): response.bytes += b.readableBytes
        case .end:
            let done = waiting
            waiting = nil
            done?.succeed(response)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        fail(S3HTTPClient.Failure(description: "connection closed before the response ended"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(error)
        context.close(promise: nil)
    }

    private func fail(_ error: Error) {
        let done = waiting
        waiting = nil
        done?.fail(error)
    }
}
