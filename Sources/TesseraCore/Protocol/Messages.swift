// The requests a server serves and their responses: CAS, IOS and SYNC (docs/WIRE.md).
//
// Request body:  u16 opcode, then the fields of that request, in the order listed below.
// Response body: u16 kind, then the fields of that response.
// Encodings of fields: see WireWriter (integers little-endian; byte strings u32-length
// prefixed; arrays u32-count prefixed; optionals a u8 0/1 then the value).

/// A key and its value.
public struct Record: Sendable, Equatable {
    public var key: [UInt8]
    public var value: [UInt8]
    public init(key: [UInt8], value: [UInt8]) {
        self.key = key
        self.value = value
    }
}

/// The outcome of one record, or of a whole request, on the wire.
public enum Status: UInt16, Sendable, Equatable {
    case ok = 0, notFound, exists, invalidArgument, noSpace, io, corrupt, tooLarge
    case unsupportedVersion, closed, checksum, timedOut, notEmpty, busy, internalError, unauthorized
    case conflict, staleMap

    public init(_ code: TesseraError.Code) {
        switch code {
        case .notFound: self = .notFound
        case .exists: self = .exists
        case .invalidArgument: self = .invalidArgument
        case .noSpace: self = .noSpace
        case .io: self = .io
        case .corrupt: self = .corrupt
        case .tooLarge: self = .tooLarge
        case .unsupportedVersion: self = .unsupportedVersion
        case .closed: self = .closed
        case .checksum: self = .checksum
        case .timedOut: self = .timedOut
        case .notEmpty: self = .notEmpty
        case .busy: self = .busy
        case .internalError: self = .internalError
        case .permissionDenied: self = .unauthorized
        case .conflict: self = .conflict
        case .staleMap: self = .staleMap
        }
    }

    /// The error code of a failed status (nil for `.ok`).
    public var code: TesseraError.Code? {
        switch self {
        case .ok: return nil
        case .notFound: return .notFound
        case .exists: return .exists
        case .invalidArgument: return .invalidArgument
        case .noSpace: return .noSpace
        case .io: return .io
        case .corrupt: return .corrupt
        case .tooLarge: return .tooLarge
        case .unsupportedVersion: return .unsupportedVersion
        case .closed: return .closed
        case .checksum: return .checksum
        case .timedOut: return .timedOut
        case .notEmpty: return .notEmpty
        case .busy: return .busy
        case .internalError: return .internalError
        case .unauthorized: return .permissionDenied
        case .conflict: return .conflict
        case .staleMap: return .staleMap
        }
    }
}

/// A request to one server.
public enum Request: Sendable, Equatable {
    // CAS
    case createIndexes([Fid])
    case dropIndexes([Fid])
    case listIndexes(after: Fid?, limit: UInt32)
    case get(index: Fid, keys: [[UInt8]])
    case put(index: Fid, records: [Record], mode: PutMode, syncWait: Bool)
    case delete(index: Fid, keys: [[UInt8]], syncWait: Bool)
    /// Up to `limit` records after each start key (nil: from the first key).
    case next(index: Fid, starts: [[UInt8]?], limit: UInt32, excludeStart: Bool)
    /// Deletes `deletes`, then puts `puts` (overwriting), in one transaction: a rename of
    /// many keys is all or nothing.
    case update(index: Fid, deletes: [[UInt8]], puts: [Record], syncWait: Bool)
    /// Compare-and-put: if `key`'s value is `expected` (nil: absent), makes it `value` (nil:
    /// deletes it) and puts `also` (other keys, overwritten) in the same transaction.
    /// Answered `.cas(.ok)`, or `.cas(.conflict, current:)` with what is stored, nothing
    /// changed.
    case cas(index: Fid, key: [UInt8], expected: [UInt8]?, value: [UInt8]?, also: [Record], syncWait: Bool)
    // Replication (docs/REPLICATION.md)
    /// An index request a client routed by map version `mapVersion`: the server serves it
    /// only if its own map agrees that it is the head (changes) or the serving replica
    /// (reads) of the index.
    indirect case routed(mapVersion: UInt64, request: Request)
    /// Entries of the stream from server `source`, the head of their indexes' chains, to
    /// another member: numbered `seq`, `seq + 1`, … within `epoch`, applied in that order.
    case replicate(source: Int, epoch: UInt64, seq: UInt64, mapVersion: UInt64, entries: [StreamEntry])
    /// From the repair leader to a head: walk, in fid order after `after`, up to `limit` of
    /// the indexes this server heads with server `target` as its other member, making
    /// `target`'s replicas equal to this one's (REPLICATION.md, "Repair"), under map
    /// `mapVersion` (refused `staleMap` if this server's map is not that one). Answered
    /// `.repaired` with what was walked and where to go on.
    case repair(target: Int, mapVersion: UInt64, after: Fid?, limit: Int)
    // IOS
    /// `lock`: the owner of a LOCK that covers the range, which a server being repaired
    /// requires (REPLICATION.md, "Object data"); 0 for none.
    case write(cob: Fid, offset: UInt64, data: [UInt8], syncWait: Bool, lock: UInt64 = 0)
    case read(cob: Fid, offset: UInt64, length: UInt32)
    /// A FREE of the whole range [0, 2^60) deletes the cob (a READ of it then fails
    /// `notFound`); a smaller one keeps it, its range reading as a hole. `lock` as for WRITE.
    case free(cob: Fid, offset: UInt64, length: UInt64, syncWait: Bool, lock: UInt64 = 0)
    /// Makes each cob exist (a READ of it reads holes as zeros, not `notFound`); one that
    /// exists stays as it is. Statuses: one per cob, `.ok` (made) or `.exists`.
    case create(cobs: [Fid], syncWait: Bool)
    /// Takes, for `owner` (a number its sender chose at random), the lock of bytes
    /// [offset, offset + length) of `cob` at this server, waiting while another owner holds
    /// an overlapping range; answered `.done` once held (held until UNLOCK, or for 90 s),
    /// `busy` if not granted within 30 s.
    case lock(cob: Fid, offset: UInt64, length: UInt64, owner: UInt64)
    /// Gives back every range of `cob` that `owner` holds. `.done`.
    case unlock(cob: Fid, owner: UInt64)
    /// Up to `limit` cobs that exist here, in fid order after `after`. `.fids`.
    case cobs(after: Fid?, limit: UInt32)
    /// Up to `limit` mapped ranges of `cob` that start at or after `from`, in offset order.
    /// `.ranges`; a cob that does not exist fails `notFound`.
    case extents(cob: Fid, from: UInt64, limit: UInt32)
    /// The CRC32C of each block of bytes [offset, offset + length) of `cob` (block-aligned),
    /// a hole's being that of a zero block: as stored in the extent map, or with `verify`
    /// computed over the bytes read from the data image (a block gone bad shows there).
    /// `.checksums`.
    case checksums(cob: Fid, offset: UInt64, length: UInt32, verify: Bool)
    // STATISTICS: image and log usage, for `tessera status`
    case statistics
    // SYNC
    case sync(transactions: [UInt64])

    /// Opcodes on the wire.
    public enum Opcode: UInt16, Sendable, CaseIterable {
        case createIndexes = 1, dropIndexes, listIndexes, get, put, delete, next, update, cas
        case routed = 50, replicate, repair
        case write = 20, read, free, create, lock, unlock, cobs, extents, checksums
        case sync = 30
        case statistics = 40
    }

    /// The request asks for its reply to wait until its transaction is LOGGED.
    public var waitsLogged: Bool {
        switch self {
        case .put(_, _, _, let w), .delete(_, _, let w), .update(_, _, _, let w), .write(_, _, _, let w, _), .free(_, _, _, let w, _), .create(_, let w),
            .cas(_, _, _, _, _, let w):
            return w
        case .routed(_, let inner): return inner.waitsLogged
        default: return false
        }
    }

    public var opcode: Opcode {
        switch self {
        case .createIndexes: return .createIndexes
        case .dropIndexes: return .dropIndexes
        case .listIndexes: return .listIndexes
        case .get: return .get
        case .put: return .put
        case .delete: return .delete
        case .next: return .next
        case .update: return .update
        case .cas: return .cas
        case .routed: return .routed
        case .replicate: return .replicate
        case .repair: return .repair
        case .write: return .write
        case .read: return .read
        case .free: return .free
        case .create: return .create
        case .lock: return .lock
        case .unlock: return .unlock
        case .cobs: return .cobs
        case .extents: return .extents
        case .checksums: return .checksums
        case .sync: return .sync
        case .statistics: return .statistics
        }
    }
}

/// A server's answer to one request.
public enum Response: Sendable, Equatable {
    /// Per record (or per index) statuses, and the transaction that holds the changes (0: none).
    case statuses([Status], transaction: UInt64)
    /// GET: per key, the value or nil.
    case values([[UInt8]?])
    /// NEXT: per start key, the records found.
    case records([[Record]])
    case fids([Fid])
    /// READ: the bytes (holes read as zeros).
    case data([UInt8])
    case done
    /// STATISTICS: how full the server's images are.
    case statistics(ServerStatistics)
    /// CAS: `.ok`, or `.conflict` with the value stored (nil: absent).
    case cas(Status, current: [UInt8]?, transaction: UInt64)
    /// REPAIR: one step of a repair walk.
    case repaired(RepairStep)
    /// EXTENTS: mapped byte ranges.
    case ranges([ByteRange])
    /// CHECKSUMS: whether the cob exists, and one CRC32C per block.
    case checksums(exists: Bool, crcs: [UInt32])
    /// The whole request failed.
    case failure(Status, String)

    enum Kind: UInt16 {
        case statuses = 1, values, records, fids, data, done, failure, statistics, cas, repaired, ranges, checksums
    }
}

extension Request {
    public func encode(into w: inout WireWriter) {
        w.u16(opcode.rawValue)
        switch self {
        case .createIndexes(let fids), .dropIndexes(let fids):
            w.array(fids) { $0.fid($1) }
        case .listIndexes(let after, let limit):
            w.bool(after != nil)
            if let after { w.fid(after) }
            w.u32(limit)
        case .get(let index, let keys):
            w.fid(index)
            w.array(keys) { $0.blob($1) }
        case .put(let index, let records, let mode, let syncWait):
            w.fid(index)
            w.array(records) {
                $0.blob($1.key)
                $0.blob($1.value)
            }
            w.u8(mode.rawValue)
            w.bool(syncWait)
        case .delete(let index, let keys, let syncWait):
            w.fid(index)
            w.array(keys) { $0.blob($1) }
            w.bool(syncWait)
        case .next(let index, let starts, let limit, let excludeStart):
            w.fid(index)
            w.array(starts) { $0.optionalBlob($1) }
            w.u32(limit)
            w.bool(excludeStart)
        case .update(let index, let deletes, let puts, let syncWait):
            w.fid(index)
            w.array(deletes) { $0.blob($1) }
            w.array(puts) {
                $0.blob($1.key)
                $0.blob($1.value)
            }
            w.bool(syncWait)
        case .cas(let index, let key, let expected, let value, let also, let syncWait):
            w.fid(index)
            w.blob(key)
            w.optionalBlob(expected)
            w.optionalBlob(value)
            w.array(also) {
                $0.blob($1.key)
                $0.blob($1.value)
            }
            w.bool(syncWait)
        case .routed(let version, let inner):
            w.u64(version)
            inner.encode(into: &w)
        case .replicate(let source, let epoch, let seq, let version, let entries):
            w.u32(UInt32(truncatingIfNeeded: source))
            w.u64(epoch)
            w.u64(seq)
            w.u64(version)
            w.array(entries) { $1.encode(into: &$0) }
        case .repair(let target, let version, let after, let limit):
            w.u32(UInt32(truncatingIfNeeded: target))
            w.u64(version)
            w.bool(after != nil)
            if let after { w.fid(after) }
            w.u32(UInt32(clamping: limit))
        case .write(let cob, let offset, let data, let syncWait, let lock):
            w.fid(cob)
            w.u64(offset)
            w.blob(data)
            w.bool(syncWait)
            w.u64(lock)
        case .read(let cob, let offset, let length):
            w.fid(cob)
            w.u64(offset)
            w.u32(length)
        case .free(let cob, let offset, let length, let syncWait, let lock):
            w.fid(cob)
            w.u64(offset)
            w.u64(length)
            w.bool(syncWait)
            w.u64(lock)
        case .create(let cobs, let syncWait):
            w.array(cobs) { $0.fid($1) }
            w.bool(syncWait)
        case .lock(let cob, let offset, let length, let owner):
            w.fid(cob)
            w.u64(offset)
            w.u64(length)
            w.u64(owner)
        case .unlock(let cob, let owner):
            w.fid(cob)
            w.u64(owner)
        case .cobs(let after, let limit):
            w.bool(after != nil)
            if let after { w.fid(after) }
            w.u32(limit)
        case .extents(let cob, let from, let limit):
            w.fid(cob)
            w.u64(from)
            w.u32(limit)
        case .checksums(let cob, let offset, let length, let verify):
            w.fid(cob)
            w.u64(offset)
            w.u32(length)
            w.bool(verify)
        case .sync(let transactions):
            w.array(transactions) { $0.u64($1) }
        case .statistics:
            break
        }
    }

    /// Decodes a request body; malformed bytes throw `.invalidArgument`.
    public static func decode(_ bytes: [UInt8]) throws -> Request {
        try bytes.withUnsafeBytes { try decode($0) }
    }

    /// Decodes a body from borrowed bytes (a connection's receive buffer).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> Request {
        var r = WireReader(unsafeBytes: bytes)
        let request = try decode(&r, routed: false)
        try r.finish("\(request.opcode) request")
        return request
    }

    /// Decodes one request from `r`; a routed request holds one that is not routed.
    private static func decode(_ r: inout WireReader, routed: Bool) throws -> Request {
        let raw = try r.u16("opcode")
        guard let op = Opcode(rawValue: raw) else { throw TesseraError(.invalidArgument, "unknown opcode \(raw)") }
        let request: Request
        switch op {
        case .createIndexes: request = .createIndexes(try r.array("fids", minimumSize: 16) { try $0.fid() })
        case .dropIndexes: request = .dropIndexes(try r.array("fids", minimumSize: 16) { try $0.fid() })
        case .listIndexes:
            let after: Fid? = try r.bool("after presence") ? try r.fid() : nil
            request = .listIndexes(after: after, limit: try r.u32("limit"))
        case .get:
            request = .get(index: try r.fid(), keys: try r.array("keys", minimumSize: 4) { try $0.blob("key") })
        case .put:
            let index = try r.fid()
            let records = try r.array("records", minimumSize: 8) { Record(key: try $0.blob("key"), value: try $0.blob("value")) }
            let m = try r.u8("mode")
            guard let mode = PutMode(rawValue: m) else { throw TesseraError(.invalidArgument, "unknown put mode \(m)") }
            request = .put(index: index, records: records, mode: mode, syncWait: try r.bool("sync-wait"))
        case .delete:
            let index = try r.fid()
            let keys = try r.array("keys", minimumSize: 4) { try $0.blob("key") }
            request = .delete(index: index, keys: keys, syncWait: try r.bool("sync-wait"))
        case .next:
            let index = try r.fid()
            let starts = try r.array("start keys", minimumSize: 1) { try $0.optionalBlob("start key") }
            request = .next(index: index, starts: starts, limit: try r.u32("limit"), excludeStart: try r.bool("exclude-start"))
        case .update:
            let index = try r.fid()
            let deletes = try r.array("keys", minimumSize: 4) { try $0.blob("key") }
            let puts = try r.array("records", minimumSize: 8) { Record(key: try $0.blob("key"), value: try $0.blob("value")) }
            request = .update(index: index, deletes: deletes, puts: puts, syncWait: try r.bool("sync-wait"))
        case .write:
            request = .write(cob: try r.fid(), offset: try r.u64("offset"), data: try r.blob("data"), syncWait: try r.bool("sync-wait"), lock: try r.u64("lock owner"))
        case .read:
            request = .read(cob: try r.fid(), offset: try r.u64("offset"), length: try r.u32("length"))
        case .free:
            request = .free(cob: try r.fid(), offset: try r.u64("offset"), length: try r.u64("length"), syncWait: try r.bool("sync-wait"), lock: try r.u64("lock owner"))
        case .create:
            request = .create(cobs: try r.array("cobs", minimumSize: 16) { try $0.fid() }, syncWait: try r.bool("sync-wait"))
        case .lock:
            request = .lock(cob: try r.fid(), offset: try r.u64("offset"), length: try r.u64("length"), owner: try r.u64("lock owner"))
        case .unlock:
            request = .unlock(cob: try r.fid(), owner: try r.u64("lock owner"))
        case .cobs:
            let after: Fid? = try r.bool("after presence") ? try r.fid("cob to list after") : nil
            request = .cobs(after: after, limit: try r.u32("limit"))
        case .extents:
            request = .extents(cob: try r.fid(), from: try r.u64("offset"), limit: try r.u32("limit"))
        case .checksums:
            request = .checksums(cob: try r.fid(), offset: try r.u64("offset"), length: try r.u32("length"), verify: try r.bool("verify"))
        case .sync:
            request = .sync(transactions: try r.array("transactions", minimumSize: 8) { try $0.u64() })
        case .cas:
            request = .cas(
                index: try r.fid(), key: try r.blob("key"), expected: try r.optionalBlob("expected value"), value: try r.optionalBlob("value"),
                also: try r.array("records", minimumSize: 8) { Record(key: try $0.blob("key"), value: try $0.blob("value")) },
                syncWait: try r.bool("sync-wait"))
        case .routed:
            guard !routed else { throw TesseraError(.invalidArgument, "a routed request inside a routed request") }
            let version = try r.u64("map version")
            request = .routed(mapVersion: version, request: try decode(&r, routed: true))
        case .replicate:
            request = .replicate(
                source: Int(try r.u32("source server")), epoch: try r.u64("epoch"), seq: try r.u64("sequence number"), mapVersion: try r.u64("map version"),
                entries: try r.array("entries", minimumSize: 2) { try StreamEntry.decode(&$0) })
        case .repair:
            let target = Int(try r.u32("target server"))
            let version = try r.u64("map version")
            let after: Fid? = try r.bool("after presence") ? try r.fid("index to walk after") : nil
            request = .repair(target: target, mapVersion: version, after: after, limit: Int(try r.u32("index limit")))
        case .statistics:
            request = .statistics
        }
        return request
    }
}

extension Response {
    public func encode(into w: inout WireWriter) {
        switch self {
        case .statuses(let statuses, let tx):
            w.u16(Kind.statuses.rawValue)
            w.array(statuses) { $0.u16($1.rawValue) }
            w.u64(tx)
        case .values(let values):
            w.u16(Kind.values.rawValue)
            w.array(values) { $0.optionalBlob($1) }
        case .records(let lists):
            w.u16(Kind.records.rawValue)
            w.array(lists) { w, list in
                w.array(list) {
                    $0.blob($1.key)
                    $0.blob($1.value)
                }
            }
        case .fids(let fids):
            w.u16(Kind.fids.rawValue)
            w.array(fids) { $0.fid($1) }
        case .data(let data):
            w.u16(Kind.data.rawValue)
            w.blob(data)
        case .done:
            w.u16(Kind.done.rawValue)
        case .statistics(let s):
            w.u16(Kind.statistics.rawValue)
            for v in [s.dataBytes, s.dataFreeBytes, s.logBytes, s.logUsedBytes, s.groupsLogged] { w.u64(v) }
            w.u32(s.maxValue)
            for v in [s.metaImageBytes, s.metaAllocatedBytes, s.dataImageBytes, s.dataAllocatedBytes] { w.u64(v) }
        case .repaired(let step):
            w.u16(Kind.repaired.rawValue)
            w.u32(UInt32(clamping: step.indexes))
            w.u64(step.records)
            w.u64(step.copied)
            w.bool(step.next != nil)
            if let next = step.next { w.fid(next) }
        case .ranges(let ranges):
            w.u16(Kind.ranges.rawValue)
            w.array(ranges) {
                $0.u64($1.offset)
                $0.u64($1.length)
            }
        case .checksums(let exists, let crcs):
            w.u16(Kind.checksums.rawValue)
            w.bool(exists)
            w.array(crcs) { $0.u32($1) }
        case .cas(let status, let current, let tx):
            w.u16(Kind.cas.rawValue)
            w.u16(status.rawValue)
            w.optionalBlob(current)
            w.u64(tx)
        case .failure(let status, let message):
            w.u16(Kind.failure.rawValue)
            w.u16(status.rawValue)
            w.string(message)
        }
    }

    public static func decode(_ bytes: [UInt8]) throws -> Response {
        try bytes.withUnsafeBytes { try decode($0) }
    }

    /// Decodes a body from borrowed bytes (a connection's receive buffer).
    public static func decode(_ bytes: UnsafeRawBufferPointer) throws -> Response {
        var r = WireReader(unsafeBytes: bytes)
        let raw = try r.u16("response kind")
        guard let kind = Kind(rawValue: raw) else { throw TesseraError(.invalidArgument, "unknown response kind \(raw)") }
        func status(_ r: inout WireReader) throws -> Status {
            let v = try r.u16("status")
            guard let s = Status(rawValue: v) else { throw TesseraError(.invalidArgument, "unknown status \(v)") }
            return s
        }
        let response: Response
        switch kind {
        case .statuses: response = .statuses(try r.array("statuses", minimumSize: 2) { try status(&$0) }, transaction: try r.u64("transaction"))
        case .values: response = .values(try r.array("values", minimumSize: 1) { try $0.optionalBlob("value") })
        case .records:
            response = .records(try r.array("record lists", minimumSize: 4) {
                try $0.array("records", minimumSize: 8) { Record(key: try $0.blob("key"), value: try $0.blob("value")) }
            })
        case .fids: response = .fids(try r.array("fids", minimumSize: 16) { try $0.fid() })
        case .data: response = .data(try r.blob("data"))
        case .done: response = .done
        case .statistics:
            var s = ServerStatistics(
                dataBytes: try r.u64("data bytes"), dataFreeBytes: try r.u64("free data bytes"),
                logBytes: try r.u64("log bytes"), logUsedBytes: try r.u64("used log bytes"),
                groupsLogged: try r.u64("groups logged"),
                maxValue: r.remaining > 0 ? try r.u32("largest value") : 0)
            if r.remaining > 0 {
                (s.metaImageBytes, s.metaAllocatedBytes) = (try r.u64("metadata image bytes"), try r.u64("metadata image bytes on disk"))
                (s.dataImageBytes, s.dataAllocatedBytes) = (try r.u64("data image bytes"), try r.u64("data image bytes on disk"))
            }
            response = .statistics(s)
        case .failure: response = .failure(try status(&r), try r.string("message"))
        case .cas: response = .cas(try status(&r), current: try r.optionalBlob("current value"), transaction: try r.u64("transaction"))
        case .repaired:
            let (indexes, records, copied) = (Int(try r.u32("indexes walked")), try r.u64("records compared"), try r.u64("records copied"))
            let next: Fid? = try r.bool("next presence") ? try r.fid("index walked last") : nil
            response = .repaired(RepairStep(indexes: indexes, records: records, copied: copied, next: next))
        case .ranges:
            response = .ranges(try r.array("ranges", minimumSize: 16) { ByteRange(offset: try $0.u64("offset"), length: try $0.u64("length")) })
        case .checksums:
            response = .checksums(exists: try r.bool("existence"), crcs: try r.array("checksums", minimumSize: 4) { try $0.u32("checksum") })
        }
        try r.finish("response")
        return response
    }
}

/// Bytes [offset, offset + length) of a cob.
public struct ByteRange: Sendable, Equatable {
    public var offset: UInt64
    public var length: UInt64
    public init(offset: UInt64, length: UInt64) {
        self.offset = offset
        self.length = length
    }
    public var end: UInt64 { offset + length }
}

/// A server's usage, as STATISTICS reports it (docs/WIRE.md): five u64 in this order, then
/// a u32, the largest record value its catalogues accept (absent from older servers: 0).
/// What one REPAIR request walked.
public struct RepairStep: Sendable, Equatable {
    /// Indexes walked (each compared whole, and copied where it differed).
    public var indexes: Int
    /// Records compared, and records sent to the target because their chunk differed.
    public var records: UInt64
    public var copied: UInt64
    /// The last index walked when the step stopped at its limit (the next step goes on
    /// after it); nil when the walk is done.
    public var next: Fid?

    public init(indexes: Int = 0, records: UInt64 = 0, copied: UInt64 = 0, next: Fid? = nil) {
        self.indexes = indexes
        self.records = records
        self.copied = copied
        self.next = next
    }
}

public struct ServerStatistics: Sendable, Equatable {
    public var dataBytes: UInt64
    public var dataFreeBytes: UInt64
    public var logBytes: UInt64
    public var logUsedBytes: UInt64
    public var groupsLogged: UInt64
    /// The largest record value the server's catalogues accept; 0 if not told.
    public var maxValue: UInt32
    /// Each image's configured size and the bytes of disk it holds now (images grow as they
    /// are written); 0 if not told.
    public var metaImageBytes: UInt64 = 0
    public var metaAllocatedBytes: UInt64 = 0
    public var dataImageBytes: UInt64 = 0
    public var dataAllocatedBytes: UInt64 = 0

    public init(dataBytes: UInt64, dataFreeBytes: UInt64, logBytes: UInt64, logUsedBytes: UInt64, groupsLogged: UInt64, maxValue: UInt32 = 0) {
        self.dataBytes = dataBytes
        self.dataFreeBytes = dataFreeBytes
        self.logBytes = logBytes
        self.logUsedBytes = logUsedBytes
        self.groupsLogged = groupsLogged
        self.maxValue = maxValue
    }
}

/// One entry of a replication stream (docs/REPLICATION.md): an effect a head decided, to be
/// applied as it is, or a step of a repair walk.
public enum StreamEntry: Sendable, Equatable {
    /// Deletes `deletes`, then puts `puts` (overwriting), in one transaction.
    case change(index: Fid, deletes: [[UInt8]], puts: [Record])
    case createIndex(Fid)
    case dropIndex(Fid)
    /// Repair: is the receiver's range `[from, to]` (to nil: to the last key) `count`
    /// records whose digest is `digest`? Answered `.ok` (same) or `.conflict` (differs).
    case compare(index: Fid, from: [UInt8], to: [UInt8]?, count: UInt32, digest: [UInt8])
    /// Repair: the receiver's range `[from, to]` becomes exactly `records`, in one
    /// transaction (the index is made if it is missing).
    case replace(index: Fid, from: [UInt8], to: [UInt8]?, records: [Record])

    enum Kind: UInt8 {
        case change = 1, createIndex, dropIndex, compare, replace
    }

    /// The index the entry is about.
    public var index: Fid {
        switch self {
        case .change(let f, _, _), .createIndex(let f), .dropIndex(let f), .compare(let f, _, _, _, _), .replace(let f, _, _, _): return f
        }
    }

    func encode(into w: inout WireWriter) {
        switch self {
        case .change(let index, let deletes, let puts):
            w.u8(Kind.change.rawValue)
            w.fid(index)
            w.array(deletes) { $0.blob($1) }
            w.array(puts) {
                $0.blob($1.key)
                $0.blob($1.value)
            }
        case .createIndex(let index):
            w.u8(Kind.createIndex.rawValue)
            w.fid(index)
        case .dropIndex(let index):
            w.u8(Kind.dropIndex.rawValue)
            w.fid(index)
        case .compare(let index, let from, let to, let count, let digest):
            w.u8(Kind.compare.rawValue)
            w.fid(index)
            w.blob(from)
            w.optionalBlob(to)
            w.u32(count)
            w.blob(digest)
        case .replace(let index, let from, let to, let records):
            w.u8(Kind.replace.rawValue)
            w.fid(index)
            w.blob(from)
            w.optionalBlob(to)
            w.array(records) {
                $0.blob($1.key)
                $0.blob($1.value)
            }
        }
    }

    static func decode(_ r: inout WireReader) throws -> StreamEntry {
        let raw = try r.u8("entry kind")
        guard let kind = Kind(rawValue: raw) else { throw TesseraError(.invalidArgument, "unknown stream entry kind \(raw)") }
        switch kind {
        case .change:
            let index = try r.fid()
            let deletes = try r.array("keys", minimumSize: 4) { try $0.blob("key") }
            let puts = try r.array("records", minimumSize: 8) { Record(key: try $0.blob("key"), value: try $0.blob("value")) }
            return .change(index: index, deletes: deletes, puts: puts)
        case .createIndex: return .createIndex(try r.fid())
        case .dropIndex: return .dropIndex(try r.fid())
        case .compare:
            return .compare(index: try r.fid(), from: try r.blob("from key"), to: try r.optionalBlob("to key"), count: try r.u32("count"), digest: try r.blob("digest"))
        case .replace:
            let index = try r.fid()
            let from = try r.blob("from key")
            let to = try r.optionalBlob("to key")
            return .replace(index: index, from: from, to: to, records: try r.array("records", minimumSize: 8) { Record(key: try $0.blob("key"), value: try $0.blob("value")) })
        }
    }
}
