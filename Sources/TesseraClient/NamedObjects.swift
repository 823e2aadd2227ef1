// Objects by name for `tessera object`: one index maps a name to an object's fid and size.
// Replacing a name writes the new object first, makes it durable, switches the entry with
// sync-wait, and only then deletes the old object, so a crash leaves the old or the new.
//
// Index fid 0x54534f42:0x1 ("TSOB"). Record: key = name (UTF-8), value = object fid hi
// (u64 LE), lo (u64 LE), size (u64 LE).
import TesseraCore

public struct NamedObjects: Sendable {
    public static let index = Fid(hi: 0x5453_4F42, lo: 1)
    public let cluster: Cluster

    public init(cluster: Cluster) { self.cluster = cluster }

    public struct Entry: Sendable, Equatable {
        public var fid: Fid
        public var size: UInt64
    }

    /// The entry of `name`, or nil.
    public func lookup(_ name: String) async throws -> Entry? {
        let found: [UInt8]?
        do { found = try await cluster.get(Self.index, [Array(name.utf8)])[0] } catch let e as TesseraError where e.code == .notFound {
            return nil  // the index is made by the first put
        }
        guard let v = found else { return nil }
        guard v.count == 24 else { throw TesseraError(.corrupt, "object entry of '\(name)' has \(v.count) bytes, not 24") }
        return Entry(fid: Fid(hi: v.loadLE(at: 0, as: UInt64.self), lo: v.loadLE(at: 8, as: UInt64.self)), size: v.loadLE(at: 16, as: UInt64.self))
    }

    /// Stores what `next` yields (chunks, nil at the end) as object `name`, replacing any
    /// object of that name. `progress` gets the bytes written so far.
    public func put(_ name: String, progress: (UInt64) -> Void = { _ in }, next: () throws -> [UInt8]?) async throws -> Entry {
        let key = Array(name.utf8)
        guard !key.isEmpty, key.count <= 1024 else { throw TesseraError(.invalidArgument, "an object name has 1 to 1024 bytes") }
        try await ensureIndex()
        var rng = SystemRandomNumberGenerator()
        let fid = Fid(hi: 0x5453_4F42_0000_0000 | UInt64.random(in: 0...0xFFFF_FFFF, using: &rng), lo: UInt64.random(in: 1...UInt64.max, using: &rng))
        var size: UInt64 = 0
        do {
            try await cluster.create(fid)
            while let chunk = try next() {
                try await cluster.write(fid, at: size, chunk)
                size += UInt64(chunk.count)
                progress(size)
            }
            try await cluster.sync()
        } catch {
            try? await cluster.delete(fid)
            throw error
        }
        let old = try await lookup(name)
        var value: [UInt8] = []
        value.appendLE(fid.hi)
        value.appendLE(fid.lo)
        value.appendLE(size)
        try await cluster.put(Self.index, [Record(key: key, value: value)], sync: true)
        if let old { try await cluster.delete(old.fid) }
        return Entry(fid: fid, size: size)
    }

    /// Calls `sink` with the object's bytes in order, `chunk` bytes at a time.
    public func get(_ name: String, chunk: Int, progress: (UInt64, UInt64) -> Void = { _, _ in }, sink: ([UInt8]) throws -> Void) async throws {
        guard let e = try await lookup(name) else { throw TesseraError(.notFound, "no object named '\(name)'") }
        var at: UInt64 = 0
        while at < e.size {
            let n = Int(min(UInt64(chunk), e.size - at))
            try sink(try await cluster.read(e.fid, at: at, length: n))
            at += UInt64(n)
            progress(at, e.size)
        }
    }

    /// Removes `name` and frees its object; false if there was none.
    public func remove(_ name: String) async throws -> Bool {
        guard let e = try await lookup(name) else { return false }
        try await cluster.delete(Self.index, [Array(name.utf8)], sync: true)
        try await cluster.delete(e.fid)
        return true
    }

    /// Names in order after `after`.
    public func list(after: String? = nil, limit: Int = 1000) async throws -> [(String, Entry)] {
        let records: [Record]
        do {
            records = try await cluster.next(Self.index, from: [after.map { Array($0.utf8) }], limit: limit, excludeStart: after != nil)[0]
        } catch let e as TesseraError where e.code == .notFound { return [] }
        return records.compactMap { r in
            guard r.value.count == 24 else { return nil }
            return (String(decoding: r.key, as: UTF8.self),
                    Entry(fid: Fid(hi: r.value.loadLE(at: 0, as: UInt64.self), lo: r.value.loadLE(at: 8, as: UInt64.self)), size: r.value.loadLE(at: 16, as: UInt64.self)))
        }
    }

    private func ensureIndex() async throws {
        try await cluster.createIndex(Self.index)
    }
}
