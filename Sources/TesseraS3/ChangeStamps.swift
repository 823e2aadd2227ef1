// Change stamps: how a mount learns that someone else changed its bucket, so it can answer
// lookups from memory and still see an S3 PUT within a bounded time.
//
// Every process that changes a bucket's object list (a gateway, a mount) is a writer with a
// stamp record in that object list, written in the same CAS request (one transaction) as
// each change it makes:
//
//   key   0x00 0x57 ("W") then 16 random bytes, the writer's id (drawn at process start)
//   value u8 version (1) · u64 count (little-endian; one more with each change) ·
//         u64 time of the change (ns since 1970, little-endian)
//
// Keys starting with 0x00 are never listed (S3 keys hold no NUL). A reader that cached what
// it read checks the stamps (one NEXT over the prefix): any stamp but its own that is new,
// changed or gone since its last check means a change it did not make. Stamps older than a
// day are deleted by the readers, so the stamps of dead processes do not pile up.
import Synchronization
import TesseraClient
import TesseraCore

public final class ChangeStamp: Sendable {
    public static let prefix: [UInt8] = [0x00, 0x57]
    /// Stamps whose last change is older than this are dropped by readers.
    public static let staleAfter: UInt64 = 86_400 * 1_000_000_000

    /// This writer's key.
    public let key: [UInt8]
    private let count = Atomic<UInt64>(0)

    public init() {
        var rng = SystemRandomNumberGenerator()
        key = Self.prefix + (0..<16).map { _ in UInt8.random(in: 0...255, using: &rng) }
    }

    /// The stamp record to go with the next change.
    public func next() -> Record {
        let n = count.add(1, ordering: .relaxed).newValue
        var w = WireWriter()
        w.u8(1)
        w.u64(n)
        w.u64(S3Store.now())
        return Record(key: key, value: w.bytes)
    }

    /// The time of a stamp's last change, nil if the value is not a stamp of version 1.
    public static func time(of value: [UInt8]) -> UInt64? {
        guard value.count == 17, value[0] == 1 else { return nil }
        return value.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 9, as: UInt64.self)) }
    }

    /// Every stamp record of object list `index`. NEXT has no end key, and the entries after
    /// the stamps can be large (a small file's data is in its entry): the first batch asks
    /// for a few records, as many as there are writers usually, and later ones for more.
    public static func read(_ cluster: Cluster, _ index: Fid) async throws -> [Record] {
        var out: [Record] = []
        var start = prefix
        var exclusive = false
        var limit = 8
        while true {
            let batch = try await cluster.next(index, from: [start], limit: limit, excludeStart: exclusive)[0]
            for r in batch {
                guard r.key.starts(with: prefix) else { return out }
                out.append(r)
            }
            guard batch.count == limit, let last = batch.last else { return out }
            (start, exclusive) = (last.key, true)
            limit = min(limit * 4, 256)
        }
    }
}
