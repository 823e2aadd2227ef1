// CAS: the catalogue service, GET/PUT/DEL/NEXT on vectors of records and index create, drop
// and list, over the engine's catalogues.
import TesseraCore
import TesseraEngine

/// Serves the CAS requests of one server from its engine.
///
/// Engine calls are synchronous and short (a lock and, on a cache miss, one page read); only
/// the wait for LOGGED, which can take milliseconds, is awaited without blocking a thread.
public struct CatalogueService: Sendable {
    public let engine: Engine
    /// The most records one NEXT returns per start key.
    public static let maxNext = 10_000

    public init(engine: Engine) { self.engine = engine }

    /// Fids with this `hi` belong to the server's own catalogues (the IO service's).
    public static let reservedHi = UInt64.max

    public func handle(_ request: Request) async throws -> Response {
        try refuseReserved(request)
        let response = try answer(request)
        if case .statuses(_, let tx) = response, needsWait(request) { try await engine.waitLogged(TxId(group: tx)) }
        return response
    }

    private func needsWait(_ request: Request) -> Bool {
        switch request {
        case .createIndexes, .dropIndexes: return true
        case .put(_, _, _, let syncWait), .delete(_, _, let syncWait), .update(_, _, _, let syncWait): return syncWait
        default: return false
        }
    }

    /// Runs the request against the engine; the caller waits for LOGGED if it must.
    private func answer(_ request: Request) throws -> Response {
        switch request {
        case .createIndexes(let fids):
            return try commit(fids.count) { t in try fids.map { try t.createCatalogue($0) ? .ok : .exists } }
        case .dropIndexes(let fids):
            return try commit(fids.count) { t in try fids.map { try t.dropCatalogue($0) ? .ok : .notFound } }
        case .listIndexes(let after, let limit):
            let all = try engine.catalogues().filter { $0.hi != CatalogueService.reservedHi }
            return .fids(Array(all.filter { after == nil || $0 > after! }.prefix(Int(limit))))
        case .get(let index, let keys):
            return .values(try keys.map { try engine.get(index, $0) })
        case .put, .delete, .update:
            let (operations, payload) = Self.size(of: request)
            return try commit(operations, payload: payload) { t in try apply(request, t) }
        case .next(let index, let starts, let limit, let excludeStart):
            let n = min(Int(limit), CatalogueService.maxNext)
            return .records(try starts.map { start in
                try engine.scan(index, from: start, inclusive: !excludeStart || start == nil, limit: n).map { Record(key: $0.key, value: $0.value) }
            })
        default:
            throw TesseraError(.invalidArgument, "not a catalogue request: \(request.opcode)")
        }
    }

    /// Records and payload bytes of a PUT, DEL or UPDATE.
    private static func size(of request: Request) -> (operations: Int, payload: Int) {
        switch request {
        case .put(_, let records, _, _): return (records.count, records.reduce(0) { $0 + $1.key.count + $1.value.count })
        case .delete(_, let keys, _): return (keys.count, 0)
        case .update(_, let deletes, let puts, _): return (deletes.count + puts.count, puts.reduce(0) { $0 + $1.key.count + $1.value.count })
        default: return (0, 0)
        }
    }

    /// Makes the changes of a PUT, DEL or UPDATE in `t`: a status per record.
    private func apply(_ request: Request, _ t: Transaction) throws -> [Status] {
        let limits = engine.limits
        func put(_ index: Fid, _ r: Record, _ mode: PutMode) throws -> Status {
            guard r.key.count <= limits.maxKey, r.value.count <= limits.maxValue else { return .tooLarge }
            return try t.put(index, r.key, r.value, mode: mode) == .exists ? .exists : .ok
        }
        func delete(_ index: Fid, _ k: [UInt8]) throws -> Status {
            guard k.count <= limits.maxKey else { return .notFound }
            return try t.delete(index, k) ? .ok : .notFound
        }
        switch request {
        case .put(let index, let records, let mode, _): return try records.map { try put(index, $0, mode) }
        case .delete(let index, let keys, _): return try keys.map { try delete(index, $0) }
        case .update(let index, let deletes, let puts, _):
            return try deletes.map { try delete(index, $0) } + puts.map { try put(index, $0, .overwrite) }
        default: throw TesseraError(.invalidArgument, "not a change: \(request.opcode)")
        }
    }

    private func refuseReserved(_ request: Request) throws {
        let fids: [Fid]
        switch request {
        case .createIndexes(let f), .dropIndexes(let f): fids = f
        case .get(let index, _), .put(let index, _, _, _), .delete(let index, _, _), .next(let index, _, _, _), .update(let index, _, _, _): fids = [index]
        default: fids = []
        }
        if let f = fids.first(where: { $0.hi == CatalogueService.reservedHi }) {
            throw TesseraError(.invalidArgument, "index \(f) is in the range reserved for the server's own catalogues")
        }
    }

    /// Answers requests that need no wait for LOGGED without suspending; nil for the others.
    public func handleImmediately(_ request: Request) -> Response? {
        switch request {
        case .put(_, _, _, true), .delete(_, _, true), .update(_, _, _, true), .createIndexes, .dropIndexes: return nil
        case .get, .put, .delete, .update, .next, .listIndexes:
            do {
                try refuseReserved(request)
                return try answer(request)
            } catch { return Response(error) }
        default: return nil
        }
    }

    /// Answers the leading requests that need no wait. A run of two or more changes that
    /// reply at close (PUT, DEL, UPDATE without sync-wait) is made in one transaction: one
    /// commit and one log region per page instead of one per request. Each change is still
    /// atomic and each reply carries its own statuses; if the shared transaction fails as a
    /// whole, the run is made again one request at a time, so a request's failure is its own.
    public func handleImmediately(_ requests: ArraySlice<Request>) -> [Response] {
        var out: [Response] = []
        var i = requests.startIndex
        while i < requests.endIndex {
            var end = i
            var operations = 0
            var payload = 0
            while end < requests.endIndex, isSharable(requests[end]) {
                let (n, b) = Self.size(of: requests[end])
                guard operations + n <= Engine.maxOperationsPerTransaction else { break }
                operations += n
                payload += b
                end += 1
            }
            if end - i >= 2, let responses = try? commitRun(requests[i..<end], operations: operations, payload: payload) {
                out += responses
                i = end
                continue
            }
            // One request, not a change, or a run that must be made one by one.
            end = max(end, i + 1)
            for r in requests[i..<end] {
                guard let response = handleImmediately(r) else { return out }
                out.append(response)
            }
            i = end
        }
        return out
    }

    private func isSharable(_ request: Request) -> Bool {
        switch request {
        case .put(let index, _, _, false), .delete(let index, _, false), .update(let index, _, _, false):
            return index.hi != CatalogueService.reservedHi
        default: return false
        }
    }

    private func commitRun(_ run: ArraySlice<Request>, operations: Int, payload: Int) throws -> [Response] {
        let (statuses, tx) = try engine.write(credit: engine.credit(operations: operations, payloadBytes: payload)) { t in
            try run.map { try apply($0, t) }
        }
        return statuses.map { .statuses($0, transaction: tx.group) }
    }

    /// Runs one transaction of `count` records.
    private func commit(_ count: Int, payload: Int = 0, _ body: (Transaction) throws -> [Status]) throws -> Response {
        guard count <= Engine.maxOperationsPerTransaction else {
            throw TesseraError(.tooLarge, "\(count) records in one request; at most \(Engine.maxOperationsPerTransaction)")
        }
        let (statuses, tx) = try engine.write(credit: engine.credit(operations: count, payloadBytes: payload), body)
        return .statuses(statuses, transaction: tx.group)
    }
}
