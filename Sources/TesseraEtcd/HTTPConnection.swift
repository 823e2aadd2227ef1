// A minimal HTTP/1.1 client on SwiftNIO: one connection per exchange, a connect timeout,
// and a deadline that closes the connection, so no call waits on a silent server forever.
// Futures stay in this file; the client above sees async/await.
import Foundation
import NIOConcurrencyHelpers
import NIOCore
import NIOHTTP1
import NIOPosix
import TesseraCore

/// A failure at one endpoint. `retryable` failures left etcd untouched (nothing was sent,
/// or what answered is not etcd), so the same call may go to the next endpoint.
struct EndpointFailure: Error {
    var error: TesseraError
    var retryable: Bool
}

/// One HTTP/1.1 connection to one endpoint, used by one task for one exchange: a request,
/// then its response head and body pieces (a streamed body: as long as the server sends).
/// It lives only inside `HTTPConnection.open`, which closes it.
final class HTTPConnection {
    private typealias AsyncChannel = NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
    let endpoint: EtcdEndpoint
    private var inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator
    private let outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>
    /// What closes the connection from another task or thread (a cancellation handler).
    let closer: Closer

    private init(_ endpoint: EtcdEndpoint, _ channel: AsyncChannel, _ inbound: NIOAsyncChannelInboundStream<HTTPClientResponsePart>, _ outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>) {
        self.endpoint = endpoint
        self.inbound = inbound.makeAsyncIterator()
        self.outbound = outbound
        closer = Closer(channel: channel.channel, state: NIOLockedValueBox(Closer.State()))
    }

    /// Connects within `timeout` (a failure is retryable: nothing was sent), runs `body`
    /// with the connection, and closes it.
    static func open<T: Sendable>(_ endpoint: EtcdEndpoint, timeout: Duration, _ body: (HTTPConnection) async throws -> T) async throws -> T {
        let channel = try await connect(to: endpoint, timeout: timeout)
        return try await channel.executeThenClose { inbound, outbound in
            let connection = HTTPConnection(endpoint, channel, inbound, outbound)
            defer { connection.closer.close() }
            return try await body(connection)
        }
    }

    private static func connect(to endpoint: EtcdEndpoint, timeout: Duration) async throws(EndpointFailure) -> AsyncChannel {
        guard timeout > .zero else { throw unreachable(endpoint, "no time left to connect") }
        do {
            return try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .connectTimeout(.nanoseconds(timeout.nanoseconds))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .connect(host: endpoint.host, port: endpoint.port) { ch in
                    ch.eventLoop.makeCompletedFuture {
                        try ch.pipeline.syncOperations.addHTTPClientHandlers()
                        return try AsyncChannel(wrappingChannelSynchronously: ch)
                    }
                }
        } catch {
            throw unreachable(endpoint, describe(connectError: error, timeout: timeout))
        }
    }

    private static func unreachable(_ endpoint: EtcdEndpoint, _ why: String) -> EndpointFailure {
        EndpointFailure(error: TesseraError(.io, "etcd at \(endpoint) cannot be reached: \(why)"), retryable: true)
    }

    /// Closes the connection at `deadline` (nil: never), replacing an earlier deadline. A
    /// read waiting then ends, and `deadlinePassed` tells why.
    func setDeadline(_ deadline: ContinuousClock.Instant?) { closer.setDeadline(deadline) }

    var deadlinePassed: Bool { closer.state.withLockedValue { $0.expired } }

    /// Closes the channel, now or at a deadline; safe from any thread, more than once.
    struct Closer: Sendable {
        let channel: NIOCore.Channel
        let state: NIOLockedValueBox<State>
        struct State {
            var timer: Scheduled<Void>?
            var expired = false
        }

        func close() {
            state.withLockedValue { $0.timer?.cancel() }
            channel.close(promise: nil)
        }

        func setDeadline(_ deadline: ContinuousClock.Instant?) {
            let expire: @Sendable () -> Void = { [state, channel] in
                state.withLockedValue { $0.expired = true }
                channel.close(promise: nil)
            }
            let loop = channel.eventLoop
            state.withLockedValue { s in
                s.timer?.cancel()
                s.timer = deadline.map { loop.scheduleTask(in: .nanoseconds(max(0, ContinuousClock.now.duration(to: $0).nanoseconds)), expire) }
            }
        }
    }

    /// Sends a request with a JSON body (none for GET).
    func send(_ method: HTTPMethod, _ path: String, body: [UInt8]?) async throws {
        var headers = HTTPHeaders([("host", endpoint.description), ("user-agent", "tessera-etcd")])
        if let body {
            headers.add(name: "content-type", value: "application/json")
            headers.add(name: "content-length", value: String(body.count))
        }
        try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: method, uri: path, headers: headers)))
        if let body, !body.isEmpty { try await outbound.write(.body(.byteBuffer(ByteBuffer(bytes: body)))) }
        try await outbound.write(.end(nil))
    }

    /// The response head; throws if the connection ends first.
    func head() async throws -> HTTPResponseHead {
        guard let part = try await inbound.next() else { throw ConnectionEnded() }
        guard case .head(let head) = part else { throw ConnectionEnded() }
        return head
    }

    /// The next piece of the body, nil at its end; throws if the connection ends first.
    func nextBodyPart() async throws -> ByteBuffer? {
        while let part = try await inbound.next() {
            switch part {
            case .body(let piece): return piece
            case .end: return nil
            case .head: continue  // an interim 1xx head: the real one follows
            }
        }
        throw ConnectionEnded()
    }

    /// The connection closed (by the peer, the deadline, or `close`) before the response ended.
    struct ConnectionEnded: Error {}
}

extension HTTPConnection {
    /// Sends one request and reads its whole response, by `deadline`. Failures name the
    /// endpoint; only those where etcd cannot have seen the request are retryable.
    static func exchange(
        _ endpoint: EtcdEndpoint, _ method: HTTPMethod, _ path: String, body: [UInt8]?,
        connectTimeout: Duration, timeout: Duration, deadline: ContinuousClock.Instant, limit: Int = 64 << 20
    ) async throws -> (status: Int, body: [UInt8]) {
        let remaining = ContinuousClock.now.duration(to: deadline)
        return try await open(endpoint, timeout: min(connectTimeout, remaining)) { connection in
            connection.setDeadline(deadline)
            let closer = connection.closer
            do {
                return try await withTaskCancellationHandler {
                    // A server may answer and close before it has read the whole request
                    // (an error page, bytes that are not HTTP): its answer, if one came,
                    // says more than the failed write.
                    var unsent: Error?
                    do { try await connection.send(method, path, body: body) } catch { unsent = error }
                    do {
                        let status = Int(try await connection.head().status.code)
                        return (status, try await connection.body(limit: limit, path))
                    } catch let e as ConnectionEnded {
                        throw unsent ?? e
                    }
                } onCancel: {
                    closer.close()
                }
            } catch {
                throw connection.failure(error, path, timeout: timeout)
            }
        }
    }

    /// The rest of the body, up to `limit` bytes.
    private func body(limit: Int, _ path: String) async throws -> [UInt8] {
        var bytes: [UInt8] = []
        while var piece = try await nextBodyPart() {
            guard bytes.count + piece.readableBytes <= limit else {
                throw EndpointFailure(error: TesseraError(.tooLarge, "etcd at \(endpoint): \(path): the reply passed \(limit) bytes"), retryable: false)
            }
            bytes += piece.readBytes(length: piece.readableBytes) ?? []
        }
        return bytes
    }

    /// What an error during an exchange means, as a failure naming the endpoint.
    func failure(_ error: Error, _ path: String, timeout: Duration) -> Error {
        if let f = error as? EndpointFailure { return f }
        if deadlinePassed {
            return EndpointFailure(error: TesseraError(.timedOut, "etcd at \(endpoint) did not answer \(path) within \(timeout.secondsText)"), retryable: false)
        }
        if Task.isCancelled { return CancellationError() }
        if let e = error as? TesseraError { return EndpointFailure(error: e, retryable: false) }
        if error is HTTPParserError {
            return EndpointFailure(error: TesseraError(.unsupportedVersion, "\(endpoint) is not an etcd v3 endpoint: its reply to \(path) is not HTTP (\(error))"), retryable: true)
        }
        let why = error is ConnectionEnded ? "the connection closed before the reply ended" : "\(error)"
        return EndpointFailure(error: TesseraError(.io, "etcd at \(endpoint): \(path): \(why)"), retryable: false)
    }

    /// "connection refused", "no connection within 1 s", … for a failed connect.
    static func describe(connectError error: Error, timeout: Duration) -> String {
        if let e = error as? NIOConnectionError {
            if let dns = e.dnsAError ?? e.dnsAAAAError { return "cannot resolve \(e.host): \(dns)" }
            if let first = e.connectionErrors.first { return describe(connectError: first.error, timeout: timeout) }
            return "cannot resolve \(e.host)"
        }
        if let e = error as? IOError {
            return String(cString: strerror(e.errnoCode)).lowercased()
        }
        if case ChannelError.connectTimeout = error { return "no connection within \(timeout.secondsText)" }
        return "\(error)"
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (s, atto) = components
        return s.multipliedReportingOverflow(by: 1_000_000_000).overflow ? .max : s * 1_000_000_000 + atto / 1_000_000_000
    }

    /// "3 s", "0.5 s": for messages.
    var secondsText: String {
        let ms = nanoseconds / 1_000_000
        return ms % 1000 == 0 ? "\(ms / 1000) s" : "\(Double(ms) / 1000) s"
    }
}
