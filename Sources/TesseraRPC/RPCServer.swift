// The RPC server: accepts connections, runs the handshake, decodes requests, hands them to
// a RequestHandler, and writes responses as they complete (out of order).
//
// Bounded against peers that do not play along (RPCLimits): before a connection has proven
// the cluster secret it may send nothing larger than a handshake step, must finish within
// the handshake deadline, and counts against a small limit of connections in the
// handshake; a connection past the limits is closed as it is accepted. A connection whose
// replies are not being read stops having its requests read.
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import TesseraCore

/// What an RPC endpoint admits.
public struct RPCLimits: Sendable {
    /// Time a new connection has to prove the cluster secret before it is dropped.
    public var handshakeDeadline: Duration = .seconds(10)
    /// Connections still in the handshake at once; more are closed as they are accepted.
    public var maxHandshaking = 64
    /// Connections at once; more are closed as they are accepted.
    public var maxConnections = 4096
    /// Reply bytes a connection may have queued for sending, or promised to READs in
    /// progress, before its requests stop being read (until half of it is left).
    public var maxReplyBytes = 64 << 20

    /// Reply bytes waiting to be sent past which a connection is unwritable, and stops
    /// being read: a quarter of the budget.
    var replyHighWater: Int { max(maxReplyBytes / 4, 64 << 10) }

    public init() {}
}

/// One listening RPC endpoint.
public final class RPCServer: Sendable {
    private let serverChannel: Channel
    private let connections: ConnectionSet
    public let port: Int

    /// Binds `host:port` (port 0 picks a free one), or takes `listening`, a socket already
    /// bound and listening that this process inherited, and starts serving `handler`.
    public static func start(
        host: String, port: Int, listening: CInt? = nil, secret: String, handler: RequestHandler, group: EventLoopGroup,
        limits: RPCLimits = RPCLimits(), logger: Logger = Logger(label: "tessera.rpc")
    ) async throws -> RPCServer {
        let connections = ConnectionSet()
        let high = limits.replyHighWater
        let bootstrap = ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.writeBufferWaterMark, value: .init(low: high / 2, high: high))
            .childChannelInitializer { channel in
                guard connections.admit(channel, limits) else {
                    logger.debug("refused a connection from \(channel.remoteAddress?.description ?? "?"): at the connection limits")
                    return channel.close()
                }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHandler(
                        ServerConnectionHandler(secret: secret, handler: handler, connections: connections, limits: limits, logger: logger))
                }
            }
        let channel = try await (listening.map { bootstrap.withBoundSocket($0) } ?? bootstrap.bind(host: host, port: port)).get()
        return RPCServer(channel: channel, connections: connections)
    }

    private init(channel: Channel, connections: ConnectionSet) {
        serverChannel = channel
        self.connections = connections
        port = channel.localAddress?.port ?? 0
    }

    /// Connections open now.
    public var connectionCount: Int { connections.all.count }

    /// Connections that have not finished the handshake.
    public var handshakingCount: Int { connections.handshakingCount }

    /// Per connection, the reply bytes waiting to be sent.
    public func unsentReplyBytes() async -> [Int] {
        var out: [Int] = []
        for c in connections.all {
            if let n = try? await c.getOption(.bufferedWritableBytes).get() { out.append(n) }
        }
        return out
    }

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
    /// Connections that have not finished the handshake.
    private var handshaking: Set<ObjectIdentifier> = []
    private var running = 0

    /// Takes `c` in, still in the handshake, unless that passes a limit (false: the caller
    /// closes it).
    func admit(_ c: Channel, _ limits: RPCLimits) -> Bool {
        let id = ObjectIdentifier(c)
        let admitted = lock.withLock { () -> Bool in
            guard channels.count < limits.maxConnections, handshaking.count < limits.maxHandshaking else { return false }
            channels[id] = c
            handshaking.insert(id)
            return true
        }
        guard admitted else { return false }
        c.closeFuture.whenComplete { [self] _ in
            lock.withLock {
                channels[id] = nil
                handshaking.remove(id)
            }
        }
        return true
    }

    /// `c` proved the cluster secret.
    func authenticated(_ c: Channel) { _ = lock.withLock { handshaking.remove(ObjectIdentifier(c)) } }

    /// Connections that have not finished the handshake.
    var handshakingCount: Int { lock.withLock { handshaking.count } }

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
    private let limits: RPCLimits
    private let logger: Logger
    /// Drops the connection if the handshake is not done by then.
    private var handshakeDeadline: Scheduled<Void>?
    /// Requests of this connection whose replies are not yet written, and the bytes their
    /// READs will reply with. Past `pauseAt` requests or the reply budget, the connection
    /// stops reading until it is back under `resumeAt` and half the budget: a peer that
    /// sends without reading cannot make the server buffer without bound. So does a channel
    /// holding more unsent bytes than its high water mark.
    private var unanswered = 0
    private var promised = 0
    private var pausedForReplies = false
    private var reading = true
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
    /// Requests answered on the event loop between two checks of the reply bounds.
    private static let answerChunk = 64
    /// Within `answerQueued` (which `updateReading` may otherwise enter again).
    private var answering = false
    /// The handler's context while it is in the pipeline: `updateReading` answers what
    /// waits once the bounds allow.
    private var context: ChannelHandlerContext?

    init(secret: String, handler: RequestHandler, connections: ConnectionSet, limits: RPCLimits, logger: Logger) {
        handshake = ServerHandshake(secret: secret)
        self.handler = handler
        self.connections = connections
        self.limits = limits
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        let channel = context.channel
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        let limit = limits.handshakeDeadline
        handshakeDeadline = context.eventLoop.scheduleTask(in: TimeAmount(limit)) {
            guard !this.value.handshake.isReady else { return }
            this.value.logger.debug("dropping connection from \(channel.remoteAddress?.description ?? "?"): no handshake within \(limit)")
            channel.close(promise: nil)
        }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        handshakeDeadline?.cancel()
        self.context = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        do {
            // Until the peer has proven the secret, nothing larger than a handshake step.
            try frames.receive(unwrapInboundIn(data), maxBody: { handshake.isReady ? Frame.maxBody : ServerHandshake.maxStep }) { header, body in
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
            case .send(let reply):
                _ = context.writeFrameAndFlush(reply)
            case .ready(let reply):
                handshakeDeadline?.cancel()
                handshakeDeadline = nil
                connections.authenticated(context.channel)
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

    /// Answers the requests decoded so far in arrival order: runs that need no waiting go
    /// to the handler together (`handleImmediately`, `answerChunk` at a time), and each
    /// request that must wait starts its own task once everything before it is answered.
    /// While the replies owed are past their bounds (`mayAnswer`) it stops, and the rest
    /// wait here, in arrival order, until `updateReading` finds them back within bounds.
    private func answerQueued(_ context: ChannelHandlerContext) {
        guard !queued.isEmpty, !answering else { return }
        answering = true
        defer { answering = false }
        var i = 0
        while i < queued.count {
            if !mayAnswer(context.channel) {
                // Replies of this burst past the bound: sent now, then look again (the
                // socket may take them all); else what stopped it resumes it.
                guard burst != nil else { break }
                flushBurst(context)
                continue
            }
            // Changes go to the handler in runs (one transaction for a run); a read goes
            // alone, so the replies owed are looked at again after each one: 64 large
            // replies in one run passed the bound by megabytes.
            var end = i + 1
            if !queued[i].request.isRead {
                while end < min(queued.count, i + Self.answerChunk), !queued[end].request.isRead { end += 1 }
            }
            let run = queued[i..<end].map(\.request)
            let answered = handler.handleImmediately(run[...])
            for (k, response) in answered.enumerated() { reply(context, response, id: queued[i + k].id) }
            i += answered.count
            if answered.count < run.count {
                start(context, queued[i])
                i += 1
            }
        }
        queued.removeFirst(i)
    }

    /// Whether more requests may be answered now: the replies owed, the bytes waiting to be
    /// sent and those answered during this burst are within bounds.
    private func mayAnswer(_ channel: Channel) -> Bool {
        !pausedForReplies && channel.isWritable && (burst?.readableBytes ?? 0) < limits.replyHighWater
    }

    private func flushBurst(_ context: ChannelHandlerContext) {
        guard let out = burst else { return }
        burst = nil
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    /// Runs a request that must wait (a sync-wait change, IO, SYNC) in a task of its own.
    private func start(_ context: ChannelHandlerContext, _ q: Queued) {
        let deadline = q.deadlineMillis == 0 ? nil : ContinuousClock.now + .milliseconds(Int(q.deadlineMillis))
        let channel = context.channel
        let handler = self.handler
        let connections = self.connections
        let this = NIOLoopBound(self, eventLoop: context.eventLoop)
        let bytes = q.request.readLength ?? 0
        unanswered += 1
        promised += bytes
        updateReading(channel)
        connections.started()
        Task {
            defer { connections.finished() }
            let out = await WaitedReply.frame(to: q.request, id: q.id, handler, deadline: deadline, allocator: channel.allocator)
            channel.writeAndFlush(out).whenComplete { _ in
                this.value.answered(channel, bytes)
            }
        }
    }

    private func answered(_ channel: Channel, _ bytes: Int) {
        unanswered -= 1
        promised -= bytes
        updateReading(channel)
    }

    /// Answers what waits and reads requests only while the replies owed and the bytes
    /// waiting to be sent are within bounds (see `unanswered`).
    private func updateReading(_ channel: Channel) {
        if unanswered >= Self.pauseAt || promised >= limits.maxReplyBytes {
            pausedForReplies = true
        } else if unanswered < Self.resumeAt && promised <= limits.maxReplyBytes / 2 {
            pausedForReplies = false
        }
        if !queued.isEmpty, !answering, mayAnswer(channel), let context {
            answerQueued(context)
            flushBurst(context)
        }
        let read = !pausedForReplies && channel.isWritable && queued.isEmpty
        guard read != reading else { return }
        reading = read
        _ = channel.setOption(.autoRead, value: read)
        if read { channel.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        updateReading(context.channel)
        context.fireChannelWritabilityChanged()
    }

    /// Answers on this thread: the reply joins the burst, written once the read burst ends.
    private func reply(_ context: ChannelHandlerContext, _ response: Response, id: UInt64) {
        if burst == nil { burst = context.channel.allocator.buffer(capacity: 4096) }
        burst!.writeResponse(response, requestID: id, scratch: &scratch)
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        answerQueued(context)
        flushBurst(context)
        updateReading(context.channel)
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

extension Request {
    /// A request whose reply carries what it read (its size unknown until it is made).
    fileprivate var isRead: Bool {
        switch self {
        case .get, .next, .listIndexes, .read: return true
        default: return false
        }
    }
}
