// The RPC client: one connection to one server, many requests in flight, answered in any
// order; each request has a deadline. It is a RequestHandler, like the services it reaches.
import NIOCore
import NIOPosix
import TesseraCore

public final class RPCClient: RequestHandler {
    private let channel: Channel
    private let connection: NIOLoopBound<ClientConnectionHandler>
    /// Deadline of requests sent through `handle`.
    public let defaultDeadline: Duration

    /// Connects to `host:port` and completes the handshake, or throws saying why not.
    public static func connect(
        host: String, port: Int, secret: String, group: EventLoopGroup,
        connectTimeout: Duration = .seconds(5), defaultDeadline: Duration = .seconds(30)
    ) async throws -> RPCClient {
        let ready = group.next().makePromise(of: Void.self)
        let channel: Channel
        do {
            channel = try await ClientBootstrap(group: group)
                .connectTimeout(.milliseconds(Int64(connectTimeout.components.seconds * 1000)))
                .channelOption(.socketOption(.tcp_nodelay), value: 1)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandlers([
                            ByteToMessageHandler(FrameDecoder()),
                            MessageToByteHandler(FrameEncoder()),
                            ClientConnectionHandler(secret: secret, ready: ready),
                        ])
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            ready.fail(error)
            throw TesseraError(.io, "cannot connect to \(host):\(port): \(error)")
        }
        do { try await ready.futureResult.get() } catch {
            try? await channel.close()
            throw error as? TesseraError ?? TesseraError(.io, "\(host):\(port): \(error)")
        }
        let handler = try await channel.eventLoop.submit {
            NIOLoopBound(try channel.pipeline.syncOperations.handler(type: ClientConnectionHandler.self), eventLoop: channel.eventLoop)
        }.get()
        return RPCClient(channel: channel, connection: handler, defaultDeadline: defaultDeadline)
    }

    private init(channel: Channel, connection: NIOLoopBound<ClientConnectionHandler>, defaultDeadline: Duration) {
        self.channel = channel
        self.connection = connection
        self.defaultDeadline = defaultDeadline
    }

    public func handle(_ request: Request) async -> Response {
        await call(request, deadline: defaultDeadline)
    }

    /// Sends `request`; a reply that has not come within `deadline` is a `.timedOut` failure.
    public func call(_ request: Request, deadline: Duration) async -> Response {
        var w = WireWriter()
        request.encode(into: &w)
        return await sendRaw(body: w.bytes, deadline: deadline)
    }

    func sendRaw(body: [UInt8], deadline: Duration) async -> Response {
        let millis = UInt32(clamping: deadline.components.seconds * 1000 + deadline.components.attoseconds / 1_000_000_000_000_000)
        let connection = self.connection
        return await withCheckedContinuation { (c: CheckedContinuation<Response, Never>) in
            connection.eventLoop.execute {
                connection.value.send(body: body, deadlineMillis: millis, continuation: c)
            }
        }
    }

    /// Closes the connection; requests still waiting fail with `.closed`.
    public func close() async {
        try? await channel.close()
    }
}

/// Per connection, on its event loop: the handshake, then matching responses to requests.
final class ClientConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private var handshake: ClientHandshake
    private var ready: EventLoopPromise<Void>?
    private var pending: [UInt64: (CheckedContinuation<Response, Never>, Scheduled<Void>?)] = [:]
    private var nextID: UInt64 = 1
    private var context: ChannelHandlerContext?
    private var closed = false
    private var flushScheduled = false

    init(secret: String, ready: EventLoopPromise<Void>) {
        handshake = ClientHandshake(secret: secret)
        self.ready = ready
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        context.writeAndFlush(wrapOutboundOut(handshake.hello), promise: nil)
        context.fireChannelActive()
    }

    func send(body: [UInt8], deadlineMillis: UInt32, continuation: CheckedContinuation<Response, Never>) {
        guard let context, !closed else {
            continuation.resume(returning: .failure(.closed, "the connection is closed"))
            return
        }
        let id = nextID
        nextID += 1
        var timer: Scheduled<Void>?
        if deadlineMillis > 0 {
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(deadlineMillis))) { [self] in
                if let (c, _) = pending.removeValue(forKey: id) {
                    c.resume(returning: .failure(.timedOut, "no reply within \(deadlineMillis) ms"))
                }
            }
        }
        pending[id] = (continuation, timer)
        context.write(wrapOutboundOut(Frame(kind: .request, requestID: id, deadlineMillis: deadlineMillis, body: body)), promise: nil)
        // Requests sent in the same event-loop tick share one flush (one syscall).
        if !flushScheduled {
            flushScheduled = true
            context.eventLoop.assumeIsolated().execute { [self] in
                flushScheduled = false
                self.context?.flush()
            }
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        if let promise = ready {
            switch handshake.receive(frame) {
            case .send(let reply): context.writeAndFlush(wrapOutboundOut(reply), promise: nil)
            case .ready:
                ready = nil
                promise.succeed(())
            case .fail(let why):
                ready = nil
                promise.fail(TesseraError(.permissionDenied, why))
                context.close(promise: nil)
            }
            return
        }
        switch frame.kind {
        case .response:
            guard let (c, timer) = pending.removeValue(forKey: frame.requestID) else { return }  // late reply after a timeout
            timer?.cancel()
            c.resume(returning: (try? Response.decode(frame.body)) ?? .failure(.invalidArgument, "malformed response"))
        case .refused:
            failAll(.failure(.io, "the server closed the connection: \(frame.refusalMessage)"))
            context.close(promise: nil)
        default:
            failAll(.failure(.invalidArgument, "unexpected \(frame.kind) frame from the server"))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        ready?.fail(TesseraError(.io, "the server closed the connection during the handshake"))
        ready = nil
        failAll(.failure(.closed, "the connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        failAll(.failure(.io, "connection error: \(error)"))
        ready?.fail(error)
        ready = nil
        context.close(promise: nil)
    }

    private func failAll(_ response: Response) {
        let all = pending
        pending.removeAll()
        for (_, (c, timer)) in all {
            timer?.cancel()
            c.resume(returning: response)
        }
    }
}
