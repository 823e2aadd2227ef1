// A minimal S3 client over one keep-alive HTTP/1.1 connection, for `tessera bench s3`:
// signed PUT (UNSIGNED-PAYLOAD, as clients send over TLS), GET and bucket creation. It
// sends bodies from the caller's buffer and counts response bytes without keeping them,
// so the load generator costs little beside the server it measures.
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix

public final class S3HTTPClient {
    private typealias Connection = (
        channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>,
        inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
        outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>
    )
    private var connection: Connection?
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

    private func connect() async throws -> Connection {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: hostName, port: port) { ch in
                ch.eventLoop.makeCompletedFuture {
                    try ch.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: ch)
                }
            }
        return (channel, channel.inbound.makeAsyncIterator(), channel.outbound)
    }

    public func close() async {
        guard let c = connection else { return }
        connection = nil
        c.outbound.finish()
        try? await c.channel.channel.close()
    }

    /// Sends a request and returns the status and the number of body bytes that came back.
    /// A server that closes after each response (`Connection: close`) gets a new
    /// connection for the next request.
    @discardableResult
    public func request(_ method: HTTPMethod, _ path: String, body: ByteBuffer? = nil) async throws -> (status: Int, bytes: Int) {
        var c: Connection
        if let existing = connection { c = existing } else { c = try await connect() }
        connection = nil
        var headers = [("host", host), ("content-length", String(body?.readableBytes ?? 0))]
        headers += SigV4.sign(method: method.rawValue, path: path, headers: headers, accessKey: accessKey, secret: secret, region: region)
        let uri = SigV4.encode(path, keepSlash: true)
        try await c.outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: uri, headers: HTTPHeaders(headers))))
        if let body, body.readableBytes > 0 { try await c.outbound.write(.body(.byteBuffer(body))) }
        try await c.outbound.write(.end(nil))
        var status = 0
        var bytes = 0
        var keepAlive = true
        while let part = try await c.inbound.next() {
            switch part {
            case .head(let h):
                status = Int(h.status.code)
                keepAlive = h.isKeepAlive
            case .body(let b): bytes += b.readableBytes
            case .end:
                if keepAlive {
                    connection = c
                } else {
                    c.outbound.finish()
                    try? await c.channel.channel.close()
                }
                return (status, bytes)
            }
        }
        try? await c.channel.channel.close()
        throw Failure(description: "connection closed before the response ended")
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
