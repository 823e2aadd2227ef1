// HTTP/1.1 on SwiftNIO for the gateway: one task per connection reads requests in order
// through NIOAsyncChannel, whose inbound side applies back-pressure, so a body is pulled
// from the socket only as fast as the store takes it; responses stream the same way.
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix

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
    /// Listens on `host:port` (0: any free port) and serves until the task is cancelled.
    /// `bound` gets the port actually bound.
    static func run(host: String, port: Int, handler: some HTTPHandler, logger: Logger, bound: (Int) -> Void) async throws {
        let server = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .bind(host: host, port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                    return try NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 8), isOutboundHalfClosureEnabled: true))
                }
            }
        bound(server.channel.localAddress?.port ?? port)
        try await withThrowingDiscardingTaskGroup { group in
            try await server.executeThenClose { connections in
                for try await connection in connections {
                    group.addTask { await serve(connection, handler: handler, logger: logger) }
                }
            }
        }
    }

    private static func serve(_ connection: NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>, handler: some HTTPHandler, logger: Logger) async {
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
                            do { while try await body.next() != nil {} } catch { keepAlive = false }
                        } else {
                            keepAlive = false
                        }
                    }
                    try await write(response, version: head.version, method: request.method, keepAlive: keepAlive, to: outbound, logger: logger)
                    if !keepAlive {
                        // Close our side once everything queued is on the wire (a half-close
                        // waits for pending writes; a full close would drop them), then wait
                        // for the client to close its side.
                        outbound.finish()
                        while try await parts.next() != nil {}
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

