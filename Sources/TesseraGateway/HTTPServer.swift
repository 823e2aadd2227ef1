// HTTP/1.1 on SwiftNIO for the gateway: one task per connection reads requests in order
// through NIOAsyncChannel, whose inbound side applies back-pressure, so a body is pulled
// from the socket only as fast as the store takes it; responses stream the same way.
//
// Connection limits (`[s3]` in the cluster file, ClusterConfig.GatewayLimits). Nothing
// about a connection is proven until a request's signature is checked, and that needs its
// whole head, so what a peer can hold before then is bounded:
// - at most `max_connections` open, and of them at most `max_new_connections` that have
//   not sent a complete request head; a connection past either is closed as it is accepted;
// - a request head is at most 64 KiB (request line and headers), else 400 and the close;
// - a new connection's first head must be complete within `head_timeout`, a kept-alive
//   connection's next one within `idle_timeout` of the last response's end; else the
//   connection is closed (ConnectionGuard);
// - the body of a request answered without reading it is drained only if it is at most
//   1 MiB and arrives within `head_timeout`; else the answer says `Connection: close`, and
//   the client has 5 s to read it and go. Bodies are never buffered whole: back-pressure
//   stops reading the socket when the handler does not take them.
// A request being served has no deadline: a large upload or download takes what it takes.
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import TesseraConfig

/// A request as the S3 handler sees it: path decoded, query split, header names lower-cased.
struct HTTPRequest {
    var method: HTTPMethod
    var rawPath: String
    var path: String
    var query: [(String, String)]
    var headers: [(String, String)]
    var keepAlive: Bool

    func header(_ name: String) -> String? { headers.first { $0.0 == name }?.1 }
    func query(_ name: String) -> String? { query.first { $0.0 == name }?.1 }
    func has(_ name: String) -> Bool { query.contains { $0.0 == name } }
}

/// The body of the request being served, read from the connection on demand.
final class RequestBody {
    private let inbound: InboundParts
    private(set) var ended = false

    init(inbound: InboundParts) { self.inbound = inbound }

    /// The next piece of the body, or nil at its end.
    func next() async throws -> ByteBuffer? {
        guard !ended else { return nil }
        while let part = try await inbound.next() {
            switch part {
            case .body(let b): return b
            case .end:
                ended = true
                return nil
            case .head: throw S3Error.incompleteBody("a request head inside a body")
            }
        }
        ended = true
        throw S3Error.incompleteBody("the connection closed in the middle of the body")
    }

    /// Reads the whole body, refusing more than `limit` bytes.
    func collect(limit: Int) async throws -> [UInt8] {
        var out: [UInt8] = []
        while var b = try await next() {
            guard out.count + b.readableBytes <= limit else { throw S3Error(.badRequest, "MaxMessageLengthExceeded", "The request body is too large") }
            out += b.readBytes(length: b.readableBytes)!
        }
        return out
    }
}

final class InboundParts {
    private var iterator: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator
    init(_ i: NIOAsyncChannelInboundStream<HTTPServerRequestPart>.AsyncIterator) { iterator = i }
    func next() async throws -> HTTPServerRequestPart? { try await iterator.next() }
}

struct HTTPResponse {
    enum Body {
        case none
        case bytes([UInt8])
        /// `length` bytes produced by `produce`, which calls `write` with each piece.
        case stream(length: UInt64, produce: (_ write: (ByteBuffer) async throws -> Void) async throws -> Void)
    }
    var status: HTTPResponseStatus
    var headers: [(String, String)] = []
    var body: Body = .none

    init(_ status: HTTPResponseStatus, headers: [(String, String)] = [], body: Body = .none) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    static func xml(_ status: HTTPResponseStatus = .ok, _ w: XMLWriter, headers: [(String, String)] = []) -> HTTPResponse {
        HTTPResponse(status, headers: headers + [("Content-Type", "application/xml")], body: .bytes(Array(w.text.utf8)))
    }
}

protocol HTTPHandler: Sendable {
    func handle(_ request: HTTPRequest, body: RequestBody, continueBody: @escaping () async throws -> Void) async -> HTTPResponse
}

enum HTTPServer {
    typealias Connection = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    /// Listens on `host:port` (0: any free port) and serves until the task is cancelled.
    /// `bound` gets the port actually bound.
    static func run(
        host: String, port: Int, handler: some HTTPHandler, limits: ClusterConfig.GatewayLimits, logger: Logger, bound: (Int) -> Void
    ) async throws {
        let counts = ConnectionCounts()
        var headLimits = NIOHTTPDecoderLimitConfiguration()
        headLimits.maxHeaderFieldSize = limits.maxHeadBytes
        headLimits.maxHeaderListSize = limits.maxHeadBytes
        headLimits.maxHeaderFieldCount = 1024
        let decoderLimits = headLimits
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel -> EventLoopFuture<(Connection, ConnectionGuard)?> in
                guard counts.admit(limits) else {
                    logger.debug("refused a connection from \(channel.remoteAddress?.description ?? "?"): at the connection limits")
                    return channel.close().map { nil }
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withErrorHandling: true, withEncoderConfiguration: .init(), withDecoderLimitConfiguration: decoderLimits)
                    let guarding = ConnectionGuard(limits: limits, counts: counts)
                    try channel.pipeline.syncOperations.addHandler(guarding)
                    let connection = try Connection(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8), isOutboundHalfClosureEnabled: true))
                    return (connection, guarding)
                }
            }
        bound(server.channel.localAddress?.port ?? port)
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { connections in
                for try await accepted in connections {
                    guard let (connection, guarding) = accepted else { continue }
                    group.addTask { await serve(connection, guarding, handler: handler, limits: limits, logger: logger) }
                }
            }
        }
    }

    private static func serve(_ connection: Connection, _ guarding: ConnectionGuard, handler: some HTTPHandler, limits: ClusterConfig.GatewayLimits, logger: Logger) async {
        do {
            try await connection.executeThenClose { inbound, outbound in
                let parts = InboundParts(inbound.makeAsyncIterator())
                while let part = try await parts.next() {
                    guard case .head(let head) = part else { continue }  // the rest of a body we gave up on
                    let request = parse(head)
                    let body = RequestBody(inbound: parts)
                    var continued = false
                    let wantsContinue = request.header("expect")?.lowercased() == "100-continue"
                    let response = await handler.handle(request, body: body) {
                        if wantsContinue && !continued {
                            continued = true
                            try await outbound.write(.head(HTTPResponseHead(version: head.version, status: .continue)))
                        }
                    }
                    // A body the handler did not read: drain a small one, else close.
                    var keepAlive = request.keepAlive
                    if !body.ended {
                        if wantsContinue && !continued {
                            keepAlive = false
                        } else if let n = request.header("content-length").flatMap(Int.init) ?? (request.header("transfer-encoding") == nil ? 0 : nil), n <= 1 << 20 {
                            // (A request with neither header has no body: its end is already here.)
                            if n > 0 { guarding.closeAfter(limits.headTimeout, on: connection.channel, ending: false) }
                            do { while try await body.next() != nil {} } catch { keepAlive = false }
                        } else {
                            keepAlive = false
                        }
                    }
                    try await write(response, version: head.version, method: request.method, keepAlive: keepAlive, to: outbound, logger: logger)
                    if !keepAlive {
                        // Close our side once everything queued is on the wire (a half-close
                        // waits for pending writes; a full close would drop them), then wait
                        // for the client to close its side, for as long as the limits allow.
                        // The rest of a body left unread is not read: back-pressure stops
                        // reading the socket, and the close at the deadline drops it.
                        guarding.closeAfter(limits.lingerTimeout, on: connection.channel, ending: true)
                        outbound.finish()
                        if body.ended {
                            while try await parts.next() != nil {}
                        } else {
                            try? await connection.channel.closeFuture.get()
                        }
                        return
                    }
                }
            }
        } catch {
            logger.debug("connection ended: \(error)")
        }
    }

    static func parse(_ head: HTTPRequestHead) -> HTTPRequest {
        var rawPath = head.uri
        var rawQuery = ""
        if let q = rawPath.firstIndex(of: "?") {
            rawQuery = String(rawPath[rawPath.index(after: q)...])
            rawPath = String(rawPath[..<q])
        }
        var query: [(String, String)] = []
        for item in rawQuery.split(separator: "&", omittingEmptySubsequences: true) {
            if let eq = item.firstIndex(of: "=") {
                query.append((percentDecode(item[..<eq], plusIsSpace: true), percentDecode(item[item.index(after: eq)...], plusIsSpace: true)))
            } else {
                query.append((percentDecode(item, plusIsSpace: true), ""))
            }
        }
        return HTTPRequest(
            method: head.method, rawPath: rawPath, path: percentDecode(Substring(rawPath), plusIsSpace: false), query: query,
            headers: head.headers.map { ($0.name.lowercased(), $0.value) }, keepAlive: head.isKeepAlive)
    }

    /// %XX decoding; invalid escapes stay as they are.
    static func percentDecode(_ s: Substring, plusIsSpace: Bool) -> String {
        let u = Array(s.utf8)
        guard u.contains(UInt8(ascii: "%")) || (plusIsSpace && u.contains(UInt8(ascii: "+"))) else { return String(s) }
        var out: [UInt8] = []
        out.reserveCapacity(u.count)
        var i = 0
        func hexv(_ c: UInt8) -> UInt8? {
            switch c {
            case 48...57: return c - 48
            case 65...70: return c - 55
            case 97...102: return c - 87
            default: return nil
            }
        }
        while i < u.count {
            if u[i] == UInt8(ascii: "%"), i + 2 < u.count, let a = hexv(u[i + 1]), let b = hexv(u[i + 2]) {
                out.append(a << 4 | b)
                i += 3
            } else {
                out.append(plusIsSpace && u[i] == UInt8(ascii: "+") ? 32 : u[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func write(
        _ response: HTTPResponse, version: HTTPVersion, method: HTTPMethod, keepAlive: Bool, to out: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, logger: Logger
    ) async throws {
        var headers = HTTPHeaders(response.headers)
        headers.replaceOrAdd(name: "Server", value: "Tessera")
        headers.replaceOrAdd(name: "Date", value: httpDate(Date()))
        if !keepAlive { headers.replaceOrAdd(name: "Connection", value: "close") }
        let length: UInt64
        switch response.body {
        case .none: length = 0
        case .bytes(let b): length = UInt64(b.count)
        case .stream(let n, _): length = n
        }
        if !headers.contains(name: "Content-Length") { headers.add(name: "Content-Length", value: String(length)) }
        try await out.write(.head(HTTPResponseHead(version: version, status: response.status, headers: headers)))
        if method != .HEAD {
            switch response.body {
            case .none: break
            case .bytes(let b): if !b.isEmpty { try await out.write(.body(.byteBuffer(ByteBuffer(bytes: b)))) }
            case .stream(let n, let produce):
                var sent: UInt64 = 0
                try await produce { buffer in
                    sent += UInt64(buffer.readableBytes)
                    try await out.write(.body(.byteBuffer(buffer)))
                }
                guard sent == n else {
                    logger.error("response body of \(sent) bytes, \(n) announced: closing the connection")
                    throw S3Error(.internalServerError, "InternalError", "short body")
                }
            }
        }
        try await out.write(.end(nil))
    }
}

/// The gateway's open connections, and of them those that have not sent a complete request
/// head yet, against the limits.
final class ConnectionCounts: Sendable {
    private struct Counts {
        var open = 0
        var new = 0
    }
    private let counts = NIOLockedValueBox(Counts())

    init() {}

    /// Counts a connection just accepted, if both limits allow it.
    func admit(_ limits: ClusterConfig.GatewayLimits) -> Bool {
        counts.withLockedValue { c in
            guard c.open < limits.maxConnections, c.new < limits.maxNewConnections else { return false }
            c.open += 1
            c.new += 1
            return true
        }
    }

    func sentHead() { counts.withLockedValue { $0.new -= 1 } }
    func closed(sentHead: Bool) { counts.withLockedValue { c in c.open -= 1; if !sentHead { c.new -= 1 } } }
}

/// Closes a connection whose next request head is not complete in time (the head timeout
/// for the first, the idle timeout after a response), and keeps the connection counts.
/// Event loop only, except `closeAfter`.
final class ConnectionGuard: ChannelDuplexHandler, @unchecked Sendable {
    // SAFETY: every stored property is touched on the channel's event loop only.
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let limits: ClusterConfig.GatewayLimits
    private let counts: ConnectionCounts
    private var sentHead = false
    /// The connection is ending: no later response arms a longer deadline.
    private var ending = false
    private var deadline: Scheduled<Void>?

    init(limits: ClusterConfig.GatewayLimits, counts: ConnectionCounts) {
        self.limits = limits
        self.counts = counts
    }

    func handlerAdded(context: ChannelHandlerContext) {
        arm(limits.headTimeout, context.channel)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head = unwrapInboundIn(data), !ending {
            if !sentHead {
                sentHead = true
                counts.sentHead()
            }
            deadline?.cancel()
            deadline = nil
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), !ending { arm(limits.idleTimeout, context.channel) }
        context.write(data, promise: promise)
    }

    func channelInactive(context: ChannelHandlerContext) {
        deadline?.cancel()
        deadline = nil
        counts.closed(sentHead: sentHead)
        context.fireChannelInactive()
    }

    /// From the serving task: the connection is closed `after` from now, unless the next
    /// response ends first (which arms the idle timeout); if `ending`, whatever comes.
    func closeAfter(_ after: Duration, on channel: Channel, ending: Bool) {
        channel.eventLoop.execute {
            if ending { self.ending = true }
            self.arm(after, channel)
        }
    }

    private func arm(_ after: Duration, _ channel: Channel) {
        deadline?.cancel()
        deadline = channel.eventLoop.scheduleTask(in: TimeAmount(after)) { channel.close(promise: nil) }
    }
}
