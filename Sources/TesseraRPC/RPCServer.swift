// The RPC server: accepts connections, runs the handshake, decodes requests, hands them to
// a RequestHandler, and writes responses as they complete (out of order).
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TesseraCore

/// One listening RPC endpoint.
public final class RPCServer: Sendable {
    private let serverChannel: Channel
    private let connections: ConnectionSet
    public let port: Int

    /// Binds `host:port` (port 0 picks a free one) and starts serving `handler`.
    public static func start(
        host: String, port: Int, secret: String, handler: RequestHandler, group: EventLoopGroup,
        logger: Logger = Logger(label: "tessera.rpc")
    ) async throws -> RPCServer {
        let connections = ConnectionSet()
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                connections.insert(channel)
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ServerConnectionHandler(secret: secret, handler: handler, connections: connections, logger: logger))
                }
            }
            .bind(host: host, port: port).get()
        return RPCServer(channel: channel, connections: connections)
    }

    private init(channel: Channel, connections: ConnectionSet) {
        serverChannel = channel
        self.connections = connections
        port = channel.localAddress?.port ?? 0
    }

    /// Connections open now.
    public var connectionCount: Int { connections.all.count }

    /// Stops accepting, lets requests in progress finish (up to `drain`), then closes every
    /// connection.
    public func shutdown(drain: Duration = .seconds(10)) async {
        try? await serverChannel.close()
        let deadline = ContinuousClock.now + drain
        while connections.inFlight > 0 && ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        for c in connections.all { try? await c.close() }
    }
}

/// The open connections of a server and their requests in progress.
final class ConnectionSet: @unchecked Sendable {
    // SAFETY: all state is touched only under `lock`.
    private let lock = NIOLock()
    private var channels: [ObjectIdentifier: Channel] = [:]
    private var running = 0

    func insert(_ c: Channel) {
        lock.withLock { channels[ObjectIdentifier(c)] = c }
        c.closeFuture.whenComplete { [self] _ in lock.withLock { _ = channels.removeValue(forKey: ObjectIdentifier(c)) } }
    }

    var all: [Channel] { lock.withLock { Array(channels.values) } }
    var inFlight: Int { lock.withLock { running } }
    func started() { lock.withLock { running += 1 } }
    func finished() { lock.withLock { running -= 1 } }
}

/// Per connection: the handshake, then requests. Lives on its channel's event loop, and
/// takes the socket's bytes as they come (`FrameAccumulator`).
final class ServerConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var handshake: ServerHandshake
    private var frames = FrameAccumulator()
    /// The connection was refused: what it still sends is dropped.
    private var refused = false
    /// Storage for encoding replies, kept from one to the next.
    private var scratch = WireWriter(capacity: 256)
    private let handler: RequestHandler
    private let connections: ConnectionSet
    private let logger: Logger
    /// Requests of this connection whose replies are not yet written. Past `pauseAt`, the
    /// connection stops reading until it is back under `resumeAt`: a peer that sends without
    /// reading cannot make the server buffer without bound.
    private var unanswered = 0
    /// Replies answered on the event loop during this read burst, written together in
    /// `channelReadComplete`.
    private var burst: ByteBuffer?
    /// Requests decoded during this read burst, not yet answered or started.
    private var queued: [Queued] = []
    struct Queued {
        let id: UInt64
        let request: Request
        let deadlineMillis: UInt32
    }
    private static let pauseAt = 256
    private static let resumeAt = 128

    init(secret: String, handler: RequestHandler, connections: ConnectionSet, logger: Logger) {
        handshake = ServerHandshake(secret: secret)
        self.handler = handler
        self.connections = connections
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        do {
            try frames.receive(unwrapInboundIn(data)) { header, body in
                received(context, header, body)
                return !refused
            }
        } catch {
            // Undecodable bytes: the frame boundary is lost. Say why, then close this connection.
            let e = error as? TesseraError ?? TesseraError(.io, "\(error)")
            logger.debug("closing connection from \(context.remoteAddress?.description ?? "?"): \(e.message)")
            refuse(context, Status(e.code), e.message)
        }
    }

    /// One whole frame: a handshake step, or a request queued for `answerQueued`.
    private func received(_ context: ChannelHandlerContext, _ header: Frame.Header, _ body: ByteBuffer) {
        guard handshake.isReady else {
            switch handshake.receive(Frame(header, body)) {
            case .send(let reply), .ready(let reply):
                _ = context.writeFrameAndFlush(reply)
            case .refuse(let status, let message):
                refuse(context, status, message)
            }
            return
        }
        guard header.kind == .request else {
            refuse(context, .invalidArgument, "expected a request frame, got \(header.kind)")
            return
        }
        let request: Request
        do { request = try body.withUnsafeReadableBytes { try Request.decode($0) } } catch {
            // The frame was whole, so the connection stays usable: answer this one with an error.
            reply(context, Response(error), id: header.requestID)
            return
        }
        queued.append(Queued(id: header.requestID, request: request, deadlineMillis: header.deadlineMillis))
        if queued.count >= Self.pauseAt { answerQueued(context) }
    }

    /// Answers the requests of this read burst in arrival order: runs that need no waiting
    /// go to the handler together (`handleImmediately`), and each request that must wait
    /// starts its own task once everything before it is answered.
    private func answerQueued(_ context: ChannelHandlerContext) {
        guard !queued.isEmpty else { return }
        let requests = queued.map(\.request)
        var i = 0
        while i < requests.count {
            let answered = handler.handleImmediately(requests[i...])
            for (k, response) in answered.enumerated() { reply(context, response, id: queued[i + k].id) }
            i += answered.count
            if i < requests.count {
                start(context, queued[i])
                i += 1
            }
        }
        queued.removeAll(keepingCapacity: true)
    }

    /// Runs a request that must wait (a sync-wait change, IO, SYNC) in a task of its own.
    private func start(_ context: ChannelHandlerContext, _ q: Queued) {
        let deadline = q.deadlineMillis == 0 ? nil : ContinuousClock.now + .milliseconds(Int(q.deadlineMillis))
        let channel = context.channel
        let handler = self.handler
        let connections = self.connections
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        unanswered += 1
        if unanswered == Self.pauseAt { _ = channel.setOption(.autoRead, value: false) }
        connections.started()
        Task {
            defer { connections.finished() }
            let out = await WaitedReply.frame(to: q.request, id: q.id, handler, deadline: deadline, allocator: channel.allocator)
            channel.writeAndFlush(out).whenComplete { _ in
                this.value.answered(channel)
            }
        }
    }

    private func answered(_ channel: Channel) {
        unanswered -= 1
        if unanswered == Self.resumeAt - 1 {
            _ = channel.setOption(.autoRead, value: true)
            channel.read()
        }
    }

    /// Answers on this thread: the reply joins the burst, written once the read burst ends.
    private func reply(_ context: ChannelHandlerContext, _ response: Response, id: UInt64) {
        if burst == nil { burst = context.channel.allocator.buffer(capacity: 4096) }
        burst!.writeResponse(response, requestID: id, scratch: &scratch)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        answerQueued(context)
        if let out = burst {
            burst = nil
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
        }
        context.fireChannelReadComplete()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        logger.debug("connection from \(context.remoteAddress?.description ?? "?") failed: \(error)")
        context.close(promise: nil)
    }

    private func refuse(_ context: ChannelHandlerContext, _ status: Status, _ message: String) {
        let channel = context.channel
        refused = true
        queued.removeAll()
        if let out = burst {
            burst = nil
            context.write(wrapOutboundOut(out), promise: nil)
        }
        context.writeFrameAndFlush(.refused(status, message)).whenComplete { _ in channel.close(promise: nil) }
    }
}

extension Request {
    /// The bytes a READ asks for; nil for every other request.
    var readLength: Int? {
        if case .read(_, _, let length) = self { return Int(length) }
        return nil
    }
}

/// Replies to requests that ran in a task of their own.
enum WaitedReply {
    /// The reply frame to a request that had to wait.
    static func frame(to request: Request, id: UInt64, _ handler: RequestHandler, deadline: ContinuousClock.Instant?, allocator: ByteBufferAllocator) async -> ByteBuffer {
        var out = allocator.buffer(capacity: 64)
        if let deadline, ContinuousClock.now >= deadline {
            out.writeResponse(.failure(.timedOut, "the request's deadline passed before it ran"), requestID: id)
            return out
        }
        if let length = request.readLength, length <= Frame.maxBody {
            return await readFrame(handler, request, id: id, length: length, allocator: allocator)
        }
        out.writeResponse(await handler.handle(request), requestID: id)
        return out
    }

    /// The reply to a READ, with the data read straight into the frame's body: a `data`
    /// frame, or a failure response. The body starts on a 4096-byte boundary of memory, so
    /// the server can read large units into it with O_DIRECT.
    private static func readFrame(_ handler: RequestHandler, _ request: Request, id: UInt64, length: Int, allocator: ByteBufferAllocator) async -> ByteBuffer {
        let align = 4096
        var out = allocator.buffer(capacity: align + Frame.headerSize + length)
        // SAFETY: `out` is this task's alone and is not resized until the body is written,
        // so its storage stays where it is while the handler fills it.
        let storage = out.withUnsafeMutableWritableBytes { $0.baseAddress! }
        let bodyAt = (Int(bitPattern: storage) + Frame.headerSize + align - 1) / align * align - Int(bitPattern: storage)
        let base = storage + (bodyAt - Frame.headerSize)
        if let failure = await handler.read(request, into: UnsafeMutableRawBufferPointer(start: base + Frame.headerSize, count: length)) {
            out.writeResponse(failure, requestID: id)
            return out
        }
        Frame.writeHeader(kind: .data, requestID: id, deadlineMillis: 0, bodyLength: length, to: base)
        out.moveWriterIndex(forwardBy: bodyAt + length)
        out.moveReaderIndex(forwardBy: bodyAt - Frame.headerSize)
        return out
    }
}
