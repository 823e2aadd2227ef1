// One server's services behind one RequestHandler: CAS, IOS and SYNC.
import Dispatch
import TesseraCore
import TesseraEngine

/// Dispatches each request to the service that owns it.
public struct ServerNode: RequestHandler {
    public let catalogues: CatalogueService
    public let io: IOService?
    /// Range locks of writers and of this server's repair (REPLICATION.md, "Object data").
    public let locks = UnitLocks()
    /// The largest READ: its reply must fit in one frame.
    public static let maxRead = Frame.maxBody - 64

    public init(engine: Engine, io: IOService? = nil) {
        catalogues = CatalogueService(engine: engine)
        self.io = io
    }

    /// Opens a server's images: the data image first, so the engine can flush it before it
    /// logs a group that maps new blocks, or releases log space that holds journaled blocks,
    /// and can write journaled blocks back at recovery.
    /// `server` is its number in the cluster, named in errors.
    public static func open(metaPath: String, dataPath: String, options: EngineOptions, faults: FaultInjector? = nil, server: Int? = nil) throws -> ServerNode {
        let data = try DataFile(path: dataPath, faults: faults)
        var options = options
        options.faults = options.faults ?? faults
        data.hook(into: &options)
        let engine = try Engine.open(path: metaPath, options: options)
        do {
            return ServerNode(engine: engine, io: try IOService(engine: engine, data: data, server: server))
        } catch {
            try? engine.close()
            throw error
        }
    }

    /// Closes the engine (logging and placing the last group), then the data image.
    public func close() throws {
        try catalogues.engine.close()
        io?.data.close()
    }

    /// IOS writes up to this size that reply at close are made on the network thread, like
    /// catalogue changes: copying them to the data image's page cache and noting their
    /// blocks costs less than the four thread hand-offs of the IO queue. Larger ones (a
    /// streaming writer's units) still go to the IO queue.
    static let immediateWriteLimit = 128 << 10

    public func handleImmediately(_ request: Request) -> Response? {
        catalogues.handleImmediately(request) ?? handleIOImmediately(request)
    }

    public func handleImmediately(_ requests: ArraySlice<Request>) -> [Response] {
        var out: [Response] = []
        var i = requests.startIndex
        while i < requests.endIndex {
            let answered = catalogues.handleImmediately(requests[i...])
            out += answered
            i += answered.count
            guard i < requests.endIndex, let r = handleIOImmediately(requests[i]) else { break }
            out.append(r)
            i += 1
        }
        return out
    }

    /// A small IOS write, a FREE or a CREATE that replies at close, made at once; nil for
    /// other requests. A CREATE answered here is made before anything the connection sent
    /// after it runs, so a client need not wait for it before its first WRITE or READ.
    private func handleIOImmediately(_ request: Request) -> Response? {
        do {
            switch request {
            case .write(let cob, let offset, let bytes, false, _) where bytes.count <= Self.immediateWriteLimit:
                let tx = try ios().write(cob: cob, offset: offset, bytes: bytes)
                return .statuses([.ok], transaction: tx.group)
            case .free(let cob, let offset, let length, false, _):
                let tx = try ios().free(cob: cob, offset: offset, length: length)
                return .statuses([.ok], transaction: tx.group)
            case .create(let cobs, false):
                return try create(cobs)
            case .lock(let cob, let offset, let length, let owner):
                return locks.tryLock(cob, try Self.range(offset, length), owner: owner) ? .done : nil
            case .unlock(let cob, let owner):
                locks.unlock(cob, owner: owner)
                return .done
            default:
                return nil
            }
        } catch {
            return Response(error)
        }
    }

    public func read(_ request: Request, into destination: UnsafeMutableRawBufferPointer) async -> Response? {
        guard case .read(let cob, let offset, let length) = request else { return .failure(.invalidArgument, "not a READ: \(request.opcode)") }
        guard Int(length) <= ServerNode.maxRead else {
            return .failure(.tooLarge, "read of \(length) bytes exceeds the \(ServerNode.maxRead)-byte limit")
        }
        guard Int(length) == destination.count else {
            return .failure(.internalError, "READ of \(length) bytes into a \(destination.count)-byte buffer")
        }
        do {
            let io = try ios()
            let target = Destination(buffer: destination)
            try await ServerNode.offload { try io.read(cob: cob, offset: offset, into: target.buffer) }
            return nil
        } catch {
            return Response(error)
        }
    }

    public func handle(_ request: Request) async -> Response {
        do {
            switch request {
            case .createIndexes, .dropIndexes, .listIndexes, .get, .put, .delete, .next, .update, .cas:
                return try await catalogues.handle(request)
            case .routed, .replicate, .repair:
                throw TesseraError(.invalidArgument, "this server does not replicate indexes (no ReplicatedNode): \(request.opcode)")
            case .write(let cob, let offset, let bytes, let syncWait, _):
                let io = try ios()
                let tx = try await ServerNode.offload { try io.write(cob: cob, offset: offset, bytes: bytes) }
                if syncWait { try await catalogues.engine.waitLogged(tx) }
                return .statuses([.ok], transaction: tx.group)
            case .read(let cob, let offset, let length):
                guard Int(length) <= ServerNode.maxRead else {
                    throw TesseraError(.tooLarge, "read of \(length) bytes exceeds the \(ServerNode.maxRead)-byte limit")
                }
                let io = try ios()
                return .data(try await ServerNode.offload { try io.read(cob: cob, offset: offset, length: Int(length)) })
            case .free(let cob, let offset, let length, let syncWait, _):
                let tx = try ios().free(cob: cob, offset: offset, length: length)
                if syncWait { try await catalogues.engine.waitLogged(tx) }
                return .statuses([.ok], transaction: tx.group)
            case .lock(let cob, let offset, let length, let owner):
                try await locks.lock(cob, try Self.range(offset, length), owner: owner)
                return .done
            case .unlock(let cob, let owner):
                locks.unlock(cob, owner: owner)
                return .done
            case .cobs(let after, let limit):
                return .fids(try ios().cobs(after: after, limit: min(Int(limit), Self.maxListed)))
            case .extents(let cob, let from, let limit):
                return .ranges(try ios().mappedRanges(cob: cob, from: from, limit: min(Int(limit), Self.maxListed)))
            case .checksums(let cob, let offset, let length, let verify):
                let io = try ios()
                let (exists, crcs) = try await ServerNode.offload { try io.blockChecksums(cob: cob, offset: offset, length: Int(length), verify: verify) }
                return .checksums(exists: exists, crcs: crcs)
            case .create(let cobs, let syncWait):
                let r = try create(cobs)
                if syncWait, case .statuses(_, let tx) = r { try await catalogues.engine.waitLogged(TxId(group: tx)) }
                return r
            case .statistics:
                let e = catalogues.engine.statistics
                let total = io.map { UInt64($0.header.blockCount) * UInt64($0.header.blockSize) } ?? 0
                var s = ServerStatistics(
                    dataBytes: total, dataFreeBytes: try io?.freeBytes() ?? 0, logBytes: e.logSize,
                    logUsedBytes: UInt64(e.logUsedBytes), groupsLogged: e.groupsLogged,
                    maxValue: UInt32(catalogues.engine.limits.maxValue))
                (s.metaImageBytes, s.metaAllocatedBytes) = catalogues.engine.diskUsage
                if let io { (s.dataImageBytes, s.dataAllocatedBytes) = io.data.file.diskUsage }
                return .statistics(s)
            case .sync(let transactions):
                // LOGGED implies the written blocks are durable: journaled in the group, or
                // flushed before it (the beforeLog hook). Flush again for unjournaled writes
                // whose groups were logged before they finished.
                try await catalogues.engine.waitLogged(TxId(group: transactions.max() ?? 0))
                try io?.data.flushUnjournaled()
                return .done
            }
        } catch {
            return Response(error)
        }
    }

    /// Cobs or ranges one COBS or EXTENTS request lists at most.
    static let maxListed = 10_000

    /// Bytes [offset, offset + length) of a cob, checked against the largest cob offset.
    static func range(_ offset: UInt64, _ length: UInt64) throws -> Range<UInt64> {
        guard offset <= IOService.maxOffset, length <= IOService.maxOffset - offset else {
            throw TesseraError(.invalidArgument, "bytes \(offset)+\(length) lie beyond the largest cob offset (2^60)")
        }
        return offset..<(offset + length)
    }

    private func create(_ cobs: [Fid]) throws -> Response {
        let (made, tx) = try ios().create(cobs: cobs)
        return .statuses(made.map { $0 ? .ok : .exists }, transaction: tx.group)
    }

    /// IOS reads and writes block on the data image (a cold read waits for the disk). They
    /// run on threads of their own, so the few threads of Swift's cooperative pool are never
    /// all asleep in `pread`, and many reads can be at the disk at once.
    private static let ioQueue = DispatchQueue(label: "tessera.ios", attributes: .concurrent)

    private static func offload<R: Sendable>(_ body: @escaping @Sendable () throws -> R) async throws -> R {
        try await withCheckedThrowingContinuation { c in
            ioQueue.async { c.resume(with: Result { try body() }) }
        }
    }

    /// A caller's buffer, lent to the IO queue's thread while the caller waits for it.
    private struct Destination: @unchecked Sendable {
        // SAFETY: the caller does not touch the buffer until the offloaded read returns.
        let buffer: UnsafeMutableRawBufferPointer
    }

    private func ios() throws -> IOService {
        guard let io else { throw TesseraError(.invalidArgument, "this server has no IO service") }
        return io
    }
}
