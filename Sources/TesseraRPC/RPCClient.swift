// The RPC client: one connection to one server, many requests in flight, answered in any
// order; each request has a deadline. It is a RequestHandler, like the services it reaches.
import NIOCore
import NIOPosix
import TesseraCore

public final class RPCClient: RequestHandler, PeerConnection {
    private let channel: Channel
    private let connection: NIOLoopBound<ClientConnectionHandler>
    /// Deadline of requests sent through `handle`.
    public let defaultDeadline: Duration

    /// Connects on the process's shared event loops; layers above the RPC see no NIO types.
    public static func connect(
        host: String, port: Int, secret: String, connectTimeout: Duration = .seconds(5), defaultDeadline: Duration = .seconds(30)
    ) async throws -> RPCClient {
        try await connect(host: host, port: port, secret: secret, group: MultiThreadedEventLoopGroup.singleton, connectTimeout: connectTimeout, defaultDeadline: defaultDeadline)
    }

    /// Connects on `loop`'s thread (see `RPCLoop`).
    public static func connect(
        host: String, port: Int, secret: String, on loop: RPCLoop, connectTimeout: Duration = .seconds(5), defaultDeadline: Duration = .seconds(30)
    ) async throws -> RPCClient {
        try await connect(host: host, port: port, secret: secret, group: loop.loop, connectTimeout: connectTimeout, defaultDeadline: defaultDeadline)
    }

    /// The connection is open (false once the server or the network closed it).
    public var isActive: Bool { channel.isActive }

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
                        try channel.pipeline.syncOperations.addHandler(ClientConnectionHandler(secret: secret, ready: ready))
                    }
                }
                .connect(host: host, port: port).get()
        } catch {
            ready.fail(error)
            // Refused, unreachable, timed out: the server is not there (`closed`, which
            // callers wait out or route around), not a failed request.
            throw TesseraError(.closed, "cannot connect to \(host):\(port): \(error)")
        }
        do { try await ready.futureResult.get() } catch {
            try? await channel.close()
            // A socket error during the handshake (a reset: the server died just after it
            // accepted) is a server not there, as a refused connect is: `closed`, which
            // callers wait out, not an I/O error they would report (a mount's EIO).
            throw error as? TesseraError ?? TesseraError(.closed, "\(host):\(port): the connection broke during the handshake: \(error)")
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
        executor = LoopExecutor(channel.eventLoop)
    }

    /// Runs tasks on this connection's event-loop thread. A caller that sends one request
    /// after another can prefer it (`withTaskExecutorPreference(client.executor)`): replies
    /// then resume it on the thread they arrive on, and its next request is written from
    /// there, with no hop to the cooperative pool and back (two thread wake-ups per round
    /// trip). Only for code that awaits and never blocks: it shares the thread with I/O.
    public let executor: LoopExecutor

    public func handle(_ request: Request) async -> Response {
        await call(request, deadline: defaultDeadline)
    }

    /// Sends `request`; a reply that has not come within `deadline` is a `.timedOut` failure.
    public func call(_ request: Request, deadline: Duration) async -> Response {
        await withCheckedContinuation { submit(Bodies([request]), Self.millis(deadline), .single($0)) }
    }

    /// Sends every request at once, each in its own frame (all in flight together, written
    /// with one flush), and returns their responses in request order. This is pipelining:
    /// one hop to the event loop and one wake-up for the whole batch instead of one per request.
    public func pipeline(_ requests: [Request], deadline: Duration? = nil) async -> [Response] {
        guard !requests.isEmpty else { return [] }
        let millis = Self.millis(deadline ?? defaultDeadline)
        return await withCheckedContinuation { submit(Bodies(requests), millis, .batch($0)) }
    }

    func sendRaw(body: [UInt8], deadline: Duration) async -> Response {
        await withCheckedContinuation { submit(Bodies(raw: body), Self.millis(deadline), .single($0)) }
    }

    /// Sends a READ whose data goes from the connection's buffer straight into
    /// `destination`, which must stay valid until this returns and must be the length the
    /// request asks for. Returns `.done` once it is filled, or the failure the server (or
    /// the connection) answered; a reply of any other length is a failure.
    public func call(_ request: Request, deadline: Duration? = nil, dataInto destination: UnsafeMutableRawBufferPointer) async -> Response {
        let target = Destination(buffer: destination)
        let millis = Self.millis(deadline ?? defaultDeadline)
        return await withCheckedContinuation { submit(Bodies([request]), millis, .single($0), into: target) }
    }

    /// Hands the frames to the connection's handler: directly when already on its event
    /// loop (a caller on `executor`), else through the loop's queue.
    private func submit(_ bodies: Bodies, _ millis: UInt32, _ waiter: Waiter, into destination: Destination? = nil) {
        let connection = self.connection
        if connection.eventLoop.inEventLoop {
            connection.value.send(bodies: bodies, deadlineMillis: millis, waiter: waiter, into: destination)
        } else {
            connection.eventLoop.execute { connection.value.send(bodies: bodies, deadlineMillis: millis, waiter: waiter, into: destination) }
        }
    }

    private static func millis(_ d: Duration) -> UInt32 {
        UInt32(clamping: d.components.seconds * 1000 + d.components.attoseconds / 1_000_000_000_000_000)
    }

    /// Closes the connection; requests still waiting fail with `.closed`.
    public func close() async {
        try? await channel.close()
    }
}

/// One event-loop thread for every connection of a client that sends one request after
/// another (the mount): tasks that prefer its `executor` write their requests and are
/// resumed by the replies on that thread, whichever server they talk to, with no hop to the
/// cooperative pool and back (two thread wake-ups per round trip; a replicated change
/// talks to two servers).
public final class RPCLoop: Sendable {
    let loop: EventLoop
    public let executor: LoopExecutor

    /// One of the process's shared event loops.
    public init() {
        loop = MultiThreadedEventLoopGroup.singleton.next()
        executor = LoopExecutor(loop)
    }
}

/// A task executor that runs jobs on one event loop (see `RPCClient.executor`).
public final class LoopExecutor: TaskExecutor {
    private let loop: EventLoop

    init(_ loop: EventLoop) { self.loop = loop }

    public func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        loop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}

/// Per connection, on its event loop: the handshake, then matching responses to requests.
/// It takes the socket's bytes as they come (`FrameAccumulator`). The body of a READ's data
/// frame whose caller lent the memory for it is copied there piece by piece as the socket
/// delivers it (`Streaming`), not gathered into a whole frame first: one copy of each
/// byte read, not two (during a cold `dd` read the two copies were 15% of the mount's CPU).
final class ClientConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private var handshake: ClientHandshake
    private var frames = FrameAccumulator()
    private var ready: EventLoopPromise<Void>?
    private var pending: [UInt64: Pending] = [:]
    private var nextID: UInt64 = 1
    private var context: ChannelHandlerContext?
    private var closed = false
    private var flushScheduled = false
    /// The data frame whose body is being copied into its caller's memory as it arrives.
    private var streaming: Streaming?
    private struct Streaming {
        let id: UInt64
        var filled: Int
        var remaining: Int
    }

    init(secret: String, ready: EventLoopPromise<Void>) {
        handshake = ClientHandshake(secret: secret)
        self.ready = ready
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        _ = context.writeFrameAndFlush(handshake.hello)
        context.fireChannelActive()
    }

    /// Sends one frame per body; `waiter` is resumed once every one has its response (or
    /// failed: deadline passed, connection lost).
    func send(bodies: Bodies, deadlineMillis: UInt32, waiter: Waiter, into destination: Destination? = nil) {
        let batch = Batch(count: bodies.count, waiter: waiter)
        guard let context, !closed else {
            for i in bodies.indices { batch.complete(i, .failure(.closed, "the connection is closed")) }
            return
        }
        let first = nextID
        nextID += UInt64(bodies.count)
        var timer: Scheduled<Void>?
        if deadlineMillis > 0 {
            timer = context.eventLoop.assumeIsolated().scheduleTask(in: .milliseconds(Int64(deadlineMillis))) { [self] in
                for i in bodies.indices {
                    if let p = pending.removeValue(forKey: first + UInt64(i)) {
                        p.batch.complete(p.slot, .failure(.timedOut, "no reply within \(deadlineMillis) ms"))
                    }
                }
            }
        }
        batch.timer = timer
        var out = context.channel.allocator.buffer(capacity: bodies.count * Frame.headerSize + bodies.bytes.count)
        for i in bodies.indices {
            let id = first + UInt64(i)
            pending[id] = Pending(batch: batch, slot: i, destination: destination)
            bodies.bytes.withUnsafeBytes { all in
                out.writeFrame(kind: .request, requestID: id, deadlineMillis: deadlineMillis, body: UnsafeRawBufferPointer(rebasing: all[bodies.range(i)]))
            }
        }
        context.write(wrapOutboundOut(out), promise: nil)
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
        guard !closed else { return }
        var incoming = unwrapInboundIn(data)
        if streaming != nil {
            stream(&incoming)
            guard incoming.readableBytes > 0 else { return }
        }
        do {
            try frames.receive(incoming) { header, body in
                received(context, header, body)
                return !closed
            }
        } catch {
            // Undecodable bytes: the frame boundary is lost.
            fail(context, .io, "connection error: \(error)")
            return
        }
        startStreaming()
    }

    /// If the frame begun and held is a READ's data whose caller lent memory of its length,
    /// its body goes there from now on, as it arrives.
    private func startStreaming() {
        guard !closed, ready == nil, let header = frames.heldHeader, header.kind == .data,
            let d = pending[header.requestID]?.destination, d.buffer.count == header.bodyLength
        else { return }
        var body = frames.takeHeldBody()
        streaming = Streaming(id: header.requestID, filled: 0, remaining: header.bodyLength)
        stream(&body)
    }

    /// Copies the next bytes of the streaming body from `incoming` (as many as it has, up to
    /// the body's end) to the caller's memory, and answers the READ once they are all there.
    /// A READ answered meanwhile (its deadline passed) lent memory it may have freed: the rest
    /// of its body is dropped.
    private func stream(_ incoming: inout ByteBuffer) {
        guard var s = streaming else { return }
        let n = min(s.remaining, incoming.readableBytes)
        if let d = pending[s.id]?.destination {
            incoming.withUnsafeReadableBytes { src in
                UnsafeMutableRawBufferPointer(rebasing: d.buffer[s.filled..<(s.filled + n)]).copyMemory(from: UnsafeRawBufferPointer(rebasing: src[0..<n]))
            }
        }
        incoming.moveReaderIndex(forwardBy: n)
        s.filled += n
        s.remaining -= n
        guard s.remaining == 0 else {
            streaming = s
            return
        }
        streaming = nil
        if let p = pending.removeValue(forKey: s.id) { p.batch.complete(p.slot, .done) }
    }

    /// Fails everything waiting and closes the connection.
    private func fail(_ context: ChannelHandlerContext, _ status: Status, _ message: String) {
        closed = true
        failAll(.failure(status, message))
        if let promise = ready {
            ready = nil
            promise.fail(TesseraError(status.code ?? .io, message))
        }
        context.close(promise: nil)
    }

    /// One whole frame from the server.
    private func received(_ context: ChannelHandlerContext, _ header: Frame.Header, _ body: ByteBuffer) {
        if header.kind == .data {
            guard ready == nil else {
                fail(context, .invalidArgument, "a data frame during the handshake")
                return
            }
            guard let p = pending.removeValue(forKey: header.requestID) else { return }
            p.batch.complete(p.slot, body.withUnsafeReadableBytes { p.deliver($0) })
            return
        }
        if let promise = ready {
            switch handshake.receive(Frame(header, body)) {
            case .send(let reply): _ = context.writeFrameAndFlush(reply)
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
        switch header.kind {
        case .response:
            guard let p = pending.removeValue(forKey: header.requestID) else { return }  // late reply after a timeout
            let response = (try? body.withUnsafeReadableBytes { try Response.decode($0) }) ?? .failure(.invalidArgument, "malformed response")
            if case .data(let bytes) = response, p.destination != nil {
                p.batch.complete(p.slot, bytes.withUnsafeBytes { p.deliver($0) })
            } else {
                p.batch.complete(p.slot, response)
            }
        case .refused:
            fail(context, .io, "the server closed the connection: \(Frame(header, body).refusalMessage)")
        default:
            fail(context, .invalidArgument, "unexpected \(header.kind) frame from the server")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        closed = true
        ready?.fail(TesseraError(.closed, "the server closed the connection during the handshake"))
        ready = nil
        failAll(.failure(.closed, "the connection closed"))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        // A socket error (reset, broken pipe): the connection is gone, and with it the
        // answers of what was sent on it, as when it closes.
        failAll(.failure(.closed, "connection error: \(error)"))
        ready?.fail(error)
        ready = nil
        context.close(promise: nil)
    }

    private func failAll(_ response: Response) {
        let all = pending
        pending.removeAll()
        for (_, p) in all { p.batch.complete(p.slot, response) }
    }
}

/// The bodies of the frames of one send, encoded one after another in one array.
struct Bodies: Sendable {
    private(set) var bytes: [UInt8]
    /// Where each body ends in `bytes`.
    private var ends: [Int]

    init(_ requests: [Request]) {
        var w = WireWriter(capacity: 64 * requests.count)
        ends = []
        ends.reserveCapacity(requests.count)
        for r in requests {
            r.encode(into: &w)
            ends.append(w.bytes.count)
        }
        bytes = w.bytes
    }

    init(raw body: [UInt8]) {
        bytes = body
        ends = [body.count]
    }

    var count: Int { ends.count }
    var indices: Range<Int> { ends.indices }
    func range(_ i: Int) -> Range<Int> { (i == 0 ? 0 : ends[i - 1])..<ends[i] }
}

/// Who waits for a send: one caller for one request, or one for a pipelined batch.
enum Waiter {
    case single(CheckedContinuation<Response, Never>)
    case batch(CheckedContinuation<[Response], Never>)
}

/// A request waiting for its response: its batch and its place in it, and for a READ sent
/// with `RPCClient.call(_:dataInto:)`, where its data goes.
struct Pending {
    let batch: Batch
    let slot: Int
    let destination: Destination?

    /// The response for READ data `bytes`: copied into the destination (`.done`), or as is.
    func deliver(_ bytes: UnsafeRawBufferPointer) -> Response {
        guard let destination else { return .data(Array(bytes)) }
        guard bytes.count == destination.buffer.count else {
            return .failure(.io, "READ answered \(bytes.count) bytes, \(destination.buffer.count) asked")
        }
        destination.buffer.copyMemory(from: bytes)
        return .done
    }
}

/// Memory a caller lends for a READ's data until its call returns.
struct Destination: @unchecked Sendable {
    // SAFETY: written only by the connection's event loop, before the caller, who waits
    // for the reply, reads it.
    let buffer: UnsafeMutableRawBufferPointer
}

/// The responses of one send, filled in as they arrive; the waiter resumes when the last
/// one is in. Touched only on the connection's event loop.
final class Batch {
    private var responses: [Response?]
    private var missing: Int
    private let waiter: Waiter
    var timer: Scheduled<Void>?

    init(count: Int, waiter: Waiter) {
        responses = Array(repeating: nil, count: count)
        missing = count
        self.waiter = waiter
    }

    func complete(_ slot: Int, _ response: Response) {
        guard responses[slot] == nil else { return }
        responses[slot] = response
        missing -= 1
        guard missing == 0 else { return }
        timer?.cancel()
        switch waiter {
        case .single(let c): c.resume(returning: response)
        case .batch(let c): c.resume(returning: responses.map { $0! })
        }
    }
}
