// CAS: the catalogue service, GET/PUT/DEL/NEXT on vectors of records and index create, drop
// and list, over the engine's catalogues.
import Crypto
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
        if needsWait(request) {
            if case .statuses(_, let tx) = response { try await engine.waitLogged(TxId(group: tx)) }
            if case .cas(_, _, let tx) = response { try await engine.waitLogged(TxId(group: tx)) }
        }
        return response
    }

    private func needsWait(_ request: Request) -> Bool {
        switch request {
        case .createIndexes, .dropIndexes: return true
        case .put(_, _, _, let syncWait), .delete(_, _, let syncWait), .update(_, _, _, let syncWait), .cas(_, _, _, _, _, let syncWait): return syncWait
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
        case .cas:
            let (operations, payload) = Self.size(of: request)
            let (decided, tx) = try engine.write(credit: engine.credit(operations: operations, payloadBytes: payload)) { t in try decide(request, t).response }
            return decided.with(transaction: tx.group)
        case .next(let index, let starts, let limit, let excludeStart):
            let n = min(Int(limit), CatalogueService.maxNext)
            return .records(try starts.map { start in
                try engine.scan(index, from: start, inclusive: !excludeStart || start == nil, limit: n).map { Record(key: $0.key, value: $0.value) }
            })
        default:
            throw TesseraError(.invalidArgument, "not a catalogue request: \(request.opcode)")
        }
    }

    /// Records and payload bytes of a PUT, DEL, UPDATE or CAS.
    static func size(of request: Request) -> (operations: Int, payload: Int) {
        switch request {
        case .cas(_, let key, _, let value, let also, _): return (1 + also.count, key.count + (value?.count ?? 0) + also.reduce(0) { $0 + $1.key.count + $1.value.count })
        case .createIndexes(let f), .dropIndexes(let f): return (f.count, 0)
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

    // MARK: Replication (docs/REPLICATION.md)

    /// Decides the change `request` against `t` and makes it there: the answer (its
    /// transaction still 0) and the effect the other members of the chain apply as it is.
    func decide(_ request: Request, _ t: Transaction) throws -> (response: Response, effect: StreamEntry) {
        try refuseReserved(request)
        let limits = engine.limits
        switch request {
        case .createIndexes(let fids) where fids.count == 1:
            return (.statuses([try t.createCatalogue(fids[0]) ? .ok : .exists], transaction: 0), .createIndex(fids[0]))
        case .dropIndexes(let fids) where fids.count == 1:
            return (.statuses([try t.dropCatalogue(fids[0]) ? .ok : .notFound], transaction: 0), .dropIndex(fids[0]))
        case .put(let index, let records, _, _), .update(let index, _, let records, _):
            var deletes: [[UInt8]] = []
            if case .update(_, let d, _, _) = request { deletes = d }
            let statuses = try apply(request, t)
            let deleted = zip(deletes, statuses).filter { $0.1 == .ok }.map(\.0)
            let put = zip(records, statuses.dropFirst(deletes.count)).filter { $0.1 == .ok }.map(\.0)
            return (.statuses(statuses, transaction: 0), .change(index: index, deletes: deleted, puts: put))
        case .delete(let index, let keys, _):
            let statuses = try apply(request, t)
            return (.statuses(statuses, transaction: 0), .change(index: index, deletes: zip(keys, statuses).filter { $0.1 == .ok }.map(\.0), puts: []))
        case .cas(let index, let key, let expected, let value, let also, _):
            guard key.count <= limits.maxKey, (value?.count ?? 0) <= limits.maxValue,
                also.allSatisfy({ $0.key.count <= limits.maxKey && $0.value.count <= limits.maxValue })
            else {
                return (.cas(.tooLarge, current: nil, transaction: 0), .change(index: index, deletes: [], puts: []))
            }
            guard also.allSatisfy({ $0.key != key }) else { throw TesseraError(.invalidArgument, "a compare-and-put also puts its own key") }
            let current = try t.get(index, key)
            guard current == expected else { return (.cas(.conflict, current: current, transaction: 0), .change(index: index, deletes: [], puts: [])) }
            for r in also { _ = try t.put(index, r.key, r.value) }
            if let value {
                _ = try t.put(index, key, value)
                return (.cas(.ok, current: nil, transaction: 0), .change(index: index, deletes: [], puts: also + [Record(key: key, value: value)]))
            }
            _ = try t.delete(index, key)
            return (.cas(.ok, current: nil, transaction: 0), .change(index: index, deletes: current == nil ? [] : [key], puts: also))
        default:
            throw TesseraError(.invalidArgument, "not an index change: \(request.opcode)")
        }
    }

    /// Applies stream entries as they are, in order, each in one transaction with as many of
    /// the following ones as fit (REPLICATION.md, "The stream"). A change to an index this
    /// replica lacks makes it (a repair has not reached it yet). Statuses: `.ok` per entry,
    /// or for a `compare`, `.ok` (same) or `.conflict` (differs).
    func applyEntries(_ entries: [StreamEntry]) throws -> ([Status], TxId) {
        var statuses: [Status] = []
        var last = TxId(group: 0)
        var i = 0
        while i < entries.count {
            var end = i
            var operations = 0
            var payload = 0
            while end < entries.count {
                let (n, b) = Self.size(of: entries[end])
                guard end == i || operations + n <= Engine.maxOperationsPerTransaction else { break }
                operations += n
                payload += b
                end += 1
            }
            let (s, tx) = try engine.write(credit: engine.credit(operations: min(operations, Engine.maxOperationsPerTransaction), payloadBytes: payload)) { t in
                try entries[i..<end].map { try self.apply($0, t) }
            }
            statuses += s
            last = tx
            i = end
        }
        return (statuses, last)
    }

    private static func size(of entry: StreamEntry) -> (operations: Int, payload: Int) {
        switch entry {
        case .change(_, let deletes, let puts): return (deletes.count + puts.count + 1, puts.reduce(0) { $0 + $1.key.count + $1.value.count })
        case .createIndex, .dropIndex, .compare: return (1, 0)
        case .replace(_, _, _, let records): return (2 * records.count + 1, records.reduce(0) { $0 + $1.key.count + $1.value.count })
        }
    }

    private func apply(_ entry: StreamEntry, _ t: Transaction) throws -> Status {
        switch entry {
        case .change(let index, let deletes, let puts):
            try t.createCatalogue(index)
            for k in deletes { try t.delete(index, k) }
            for r in puts { try t.put(index, r.key, r.value) }
            return .ok
        case .createIndex(let index):
            try t.createCatalogue(index)
            return .ok
        case .dropIndex(let index):
            try t.dropCatalogue(index)
            return .ok
        case .compare(let index, let from, let to, let count, let digest):
            let (n, d) = Self.digest(of: try Self.range(index, from, to, t))
            return n == count && d == digest ? .ok : .conflict
        case .replace(let index, let from, let to, let records):
            try t.createCatalogue(index)
            for r in try Self.range(index, from, to, t) { try t.delete(index, r.key) }
            for r in records { try t.put(index, r.key, r.value) }
            return .ok
        }
    }

    /// The records of `index` from `from` to `to` (nil: the last), both included; none if the
    /// index does not exist.
    static func range(_ index: Fid, _ from: [UInt8], _ to: [UInt8]?, _ t: Transaction) throws -> [Record] {
        var out: [Record] = []
        var start: [UInt8]? = from
        var inclusive = true
        while true {
            let batch: [(key: [UInt8], value: [UInt8])]
            do { batch = try t.scan(index, from: start, inclusive: inclusive, limit: 1024) } catch let e as TesseraError where e.code == .notFound {
                return []
            }
            for r in batch {
                if let to, !r.key.lexicographicallyPrecedes(to) && r.key != to { return out }
                out.append(Record(key: r.key, value: r.value))
            }
            guard batch.count == 1024 else { return out }
            start = batch.last!.key
            inclusive = false
        }
    }

    /// The count and digest of records, as a repair walk compares them: SHA-256 over each
    /// record's u32 key length, key, u32 value length and value (lengths little-endian).
    static func digest(of records: [Record]) -> (UInt32, [UInt8]) {
        var h = SHA256()
        for r in records {
            withUnsafeBytes(of: UInt32(r.key.count).littleEndian) { h.update(bufferPointer: $0) }
            h.update(data: r.key)
            withUnsafeBytes(of: UInt32(r.value.count).littleEndian) { h.update(bufferPointer: $0) }
            h.update(data: r.value)
        }
        return (UInt32(records.count), Array(h.finalize()))
    }

    private func refuseReserved(_ request: Request) throws {
        let fids: [Fid]
        switch request {
        case .createIndexes(let f), .dropIndexes(let f): fids = f
        case .get(let index, _), .put(let index, _, _, _), .delete(let index, _, _), .next(let index, _, _, _), .update(let index, _, _, _), .cas(let index, _, _, _, _, _): fids = [index]
        default: fids = []
        }
        if let f = fids.first(where: { $0.hi == CatalogueService.reservedHi }) {
            throw TesseraError(.invalidArgument, "index \(f) is in the range reserved for the server's own catalogues")
        }
    }

    /// Answers requests that need no wait for LOGGED without suspending; nil for the others.
    public func handleImmediately(_ request: Request) -> Response? {
        switch request {
        case .put(_, _, _, true), .delete(_, _, true), .update(_, _, _, true), .cas(_, _, _, _, _, true), .createIndexes, .dropIndexes: return nil
        case .get, .put, .delete, .update, .next, .listIndexes, .cas:
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
