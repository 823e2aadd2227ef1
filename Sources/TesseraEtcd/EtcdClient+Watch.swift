// Watches: a stream of the changes under a prefix that survives broken connections,
// resuming after the last revision it delivered.
import Logging
import NIOHTTP1
import TesseraCore

extension EtcdClient {
    /// Events on keys with `prefix`, from `revision` (0: from now), one array per etcd
    /// message (the changes of one or more revisions, in order). After a broken stream it
    /// reconnects by itself (to the next endpoint too), resuming after the last revision
    /// seen; if that revision was compacted it finishes with a `.notFound` error saying so.
    /// Ends when the consuming task is cancelled (closing its connection), or at `close()`.
    public func watch(prefix: String, fromRevision: Int64 = 0) -> AsyncThrowingStream<[EtcdWatchEvent], Error> {
        let (stream, continuation) = AsyncThrowingStream.makeStream(of: [EtcdWatchEvent].self)
        let watcher = EtcdWatcher(client: self, prefix: prefix, continuation: continuation)
        let task = Task { await watcher.run(from: fromRevision) }
        guard let id = register(watch: task) else {
            task.cancel()
            continuation.finish(throwing: TesseraError(.closed, "the etcd client is closed"))
            return stream
        }
        continuation.onTermination = { [weak self] _ in
            task.cancel()
            self?.unregister(watch: id)
        }
        return stream
    }
}

/// One watch's loop: connect, create the watch, deliver events, and start again after a
/// broken stream.
struct EtcdWatcher: Sendable {
    let client: EtcdClient
    let prefix: String
    let continuation: AsyncThrowingStream<[EtcdWatchEvent], Error>.Continuation

    /// An error that ends the watch (the others only break one stream).
    struct Final: Error { var error: TesseraError }

    func run(from revision: Int64) async {
        var next = revision
        var failures = 0
        while !Task.isCancelled {
            do {
                try await stream(&next, failures: &failures)
            } catch let final as Final {
                continuation.finish(throwing: final.error)
                return
            } catch {
                guard !Task.isCancelled else { break }
                failures += 1
                let level: Logger.Level = failures == 1 ? .warning : .debug
                client.logger.log(level: level, "etcd watch broken, reconnecting", metadata: ["prefix": "\(prefix)", "error": "\(error)"])
            }
            // Back off 50 ms, 100 ms, … up to 0.8 s; a stream that was created resets it.
            try? await Task.sleep(for: .milliseconds(50 << min(max(failures - 1, 0), 4)))
        }
        continuation.finish()
    }

    /// Runs one watch stream, on the first endpoint that takes a connection, until it
    /// breaks. `next` is the first revision still to deliver (0 until the first stream is
    /// created from now); `failures` is reset once the watch is created.
    private func stream(_ next: inout Int64, failures: inout Int) async throws {
        try client.checkOpen()
        var unreachable: [TesseraError] = []
        for i in client.endpointSet.ordered() {
            do {
                try await HTTPConnection.open(client.endpointSet.all[i], timeout: client.connectTimeout) { connection in
                    try await follow(connection, &next, &failures)
                }
            } catch let failure as EndpointFailure {
                client.endpointSet.failed(i)
                unreachable.append(failure.error)
                continue
            } catch {
                // A broken stream: the next attempt tries the other endpoints first.
                if !Task.isCancelled { client.endpointSet.failed(i) }
                throw error
            }
        }
        throw EtcdClient.combined(unreachable)
    }

    /// Creates the watch on `connection` and delivers its events until the stream breaks.
    private func follow(_ connection: HTTPConnection, _ next: inout Int64, _ failures: inout Int) async throws {
        let closer = connection.closer
        do {
            try await withTaskCancellationHandler {
                try await createAndFollow(connection, &next, &failures)
            } onCancel: {
                closer.close()
            }
        } catch let final as Final {
            throw final
        } catch {
            throw connection.failure(error, "/v3/watch", timeout: client.requestTimeout)
        }
    }

    private func createAndFollow(_ connection: HTTPConnection, _ next: inout Int64, _ failures: inout Int) async throws {
        var request: [String: Any] = EtcdWire.range(prefix, prefix: true)
        if next > 0 { request["start_revision"] = String(next) }
        // Until the watch is created the request timeout applies; after that the stream
        // may stay quiet as long as nothing changes.
        connection.setDeadline(.now + client.requestTimeout)
        try await connection.send(.POST, "/v3/watch", body: JSONObject.encode(["create_request": request]))
        let head = try await connection.head()
        guard head.status == .ok else {
            throw TesseraError(.unsupportedVersion, "\(connection.endpoint) is not an etcd v3 endpoint: /v3/watch answered HTTP \(head.status.code)")
        }
        var splitter = JSONStreamSplitter()
        while var piece = try await connection.nextBodyPart() {
            for message in try splitter.append(piece.readBytes(length: piece.readableBytes) ?? []) {
                if try handle(message, connection, &next) { failures = 0 }
            }
        }
        throw TesseraError(.io, "etcd at \(connection.endpoint) ended the watch stream")
    }

    /// Handles one message of the stream; true when it is the one saying the watch is created.
    private func handle(_ message: ArraySlice<UInt8>, _ connection: HTTPConnection, _ next: inout Int64) throws -> Bool {
        let object = try JSONObject(parsing: message)
        if let error = try object.object("error") {
            throw TesseraError(.io, "etcd at \(connection.endpoint): the watch stream failed: \((try? error.string("message")) ?? nil ?? "no message")")
        }
        guard let result = try object.object("result") else {
            throw TesseraError(.corrupt, "etcd at \(connection.endpoint): a watch message without a result: \(JSONObject.preview(message))")
        }
        if try result.bool("canceled") { throw Final(error: canceled(result, next, connection.endpoint)) }
        let events = try result.objects("events").map(Self.event)
        if let last = events.last {
            continuation.yield(events)
            next = last.kv.modRevision + 1
        }
        guard try result.bool("created") else { return false }
        connection.setDeadline(nil)
        if next == 0 { next = try EtcdWire.revision(result) + 1 }
        return true
    }

    private func canceled(_ result: JSONObject, _ next: Int64, _ endpoint: EtcdEndpoint) -> TesseraError {
        let compacted = (try? result.int64("compact_revision")) ?? 0
        if compacted > 0 {
            return TesseraError(.notFound, "the watch of \"\(prefix)\" cannot resume from revision \(next): etcd at \(endpoint) has compacted its history up to revision \(compacted)")
        }
        let reason = ((try? result.string("cancel_reason")) ?? nil) ?? "no reason given"
        return TesseraError(.io, "etcd at \(endpoint) canceled the watch of \"\(prefix)\": \(reason)")
    }

    static func event(_ o: JSONObject) throws -> EtcdWatchEvent {
        let kind: EtcdWatchEvent.Kind
        switch try o.string("type") {
        case nil, "PUT": kind = .put
        case "DELETE": kind = .delete
        case let other?: throw TesseraError(.corrupt, "a watch event of unknown type \(other)")
        }
        guard let kv = try o.object("kv") else { throw TesseraError(.corrupt, "a watch event without a kv") }
        return EtcdWatchEvent(kind: kind, kv: try EtcdWire.keyValue(kv))
    }
}
