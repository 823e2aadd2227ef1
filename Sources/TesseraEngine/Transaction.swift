// The handle a transaction body uses to read and change catalogues.
import TesseraCore

/// Valid only inside the `Engine.write` body it was given to.
public final class Transaction {
    var store: Store?
    let limits: Limits
    private var operations = 0
    var dropped = false

    init(store: Store, limits: Limits) {
        self.store = store
        self.limits = limits
    }

    private func open() throws -> Store {
        guard let store else { throw TesseraError(.invalidArgument, "transaction used after it closed") }
        return store
    }

    private func count() throws -> Store {
        operations += 1
        guard operations <= Engine.maxOperationsPerTransaction else {
            throw TesseraError(.tooLarge, "a transaction may carry at most \(Engine.maxOperationsPerTransaction) operations")
        }
        return try open()
    }

    private func check(key: [UInt8]) throws {
        guard key.count <= limits.maxKey else {
            throw TesseraError(.tooLarge, "key of \(key.count) bytes exceeds the \(limits.maxKey)-byte limit")
        }
    }

    /// Creates catalogue `fid`; false if it exists already.
    @discardableResult
    public func createCatalogue(_ fid: Fid) throws -> Bool { try count().createCatalogue(fid) }

    /// Drops catalogue `fid` with all its records; false if it does not exist. Its pages are
    /// freed after the transaction closes.
    @discardableResult
    public func dropCatalogue(_ fid: Fid) throws -> Bool {
        let done = try count().dropCatalogue(fid)
        dropped = dropped || done
        return done
    }

    /// Puts `key` = `value` into catalogue `fid`.
    @discardableResult
    public func put(_ fid: Fid, _ key: [UInt8], _ value: [UInt8], mode: PutMode = .overwrite) throws -> PutOutcome {
        try check(key: key)
        guard value.count <= limits.maxValue else {
            throw TesseraError(.tooLarge, "value of \(value.count) bytes exceeds the \(limits.maxValue)-byte limit")
        }
        let s = try count()
        return try s.put(root: s.catalogueRoot(fid), key: key, value: value, mode: mode)
    }

    /// Deletes `key` from catalogue `fid`; false if it was absent.
    @discardableResult
    public func delete(_ fid: Fid, _ key: [UInt8]) throws -> Bool {
        try check(key: key)
        let s = try count()
        return try s.delete(root: s.catalogueRoot(fid), key: key)
    }

    /// Logs `bytes` for offset `offset` of another image (a server's data image) in this
    /// transaction's commit group, so they are durable when the group is LOGGED. The caller
    /// has written them there itself; the engine hands them back only at recovery, to the
    /// `EngineOptions.replayData` hook, and runs `CommitOptions.beforeRelease` before the
    /// log space that holds them is reused.
    public func journal(_ bytes: UnsafeRawBufferPointer, at offset: UInt64) throws {
        guard offset < LogRecord.dataRegion, bytes.count <= Int(UInt32.max) else {
            throw TesseraError(.invalidArgument, "journal of \(bytes.count) bytes at \(offset) is out of range")
        }
        _ = try count()
        store!.tx.journal(bytes, at: offset)
    }

    public func get(_ fid: Fid, _ key: [UInt8]) throws -> [UInt8]? {
        let s = try open()
        return try key.withUnsafeBytes { try s.get(root: s.catalogueRoot(fid), key: $0) }
    }

    /// Up to `limit` records in `direction` from `start` (nil: from the first or last key),
    /// starting at `start` when present and `inclusive`, else at the key that follows it.
    public func scan(
        _ fid: Fid, from start: [UInt8]?, direction: ScanDirection = .forward, inclusive: Bool = true, limit: Int
    ) throws -> [(key: [UInt8], value: [UInt8])] {
        try Transaction.collect(try open(), fid, start, direction, inclusive, limit)
    }

    static func collect(
        _ s: Store, _ fid: Fid, _ start: [UInt8]?, _ direction: ScanDirection, _ inclusive: Bool, _ limit: Int
    ) throws -> [(key: [UInt8], value: [UInt8])] {
        var out: [(key: [UInt8], value: [UInt8])] = []
        guard limit > 0 else { return out }
        try s.scan(root: s.catalogueRoot(fid), from: start, direction: direction, inclusive: inclusive) { k, v in
            out.append((Array(k), Array(v)))
            return out.count < limit
        }
        return out
    }
}
