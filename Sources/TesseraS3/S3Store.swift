// Buckets and objects over the client's replicated indexes and striped objects, following
// the seed's PUT: fetch the bucket's metadata, fetch the object's, write the data, switch
// the object list entry with sync-wait, free the old data.
//
// Nothing is ever freed or replaced without a durable pending-free record first, so a
// process that dies at any step leaves the old or the new object readable in full. Each
// record names the session of the process that noted it; the cluster's one sweeper frees
// what no entry refers to once that session is gone (docs/S3.md, "Pending frees").
import Foundation
import Logging
import TesseraClient
import TesseraCore

public final class S3Store: Sendable {
    public let cluster: Cluster
    /// Whose sessions are alive; this process's own session owns what it notes pending.
    public let sessions: any SessionRegistry
    let logger: Logger
    /// What this process noted pending in the pending-free index and has not dropped: on a
    /// new session it is noted again under it, before the old session's lease is let go.
    private let owned = Locked<[Fid: Owned]>([:])
    private struct Owned {
        var owner: PendingFree.Owner
        var session: UInt64
        /// The session it was noted under before the last renewal: if that one turns out to
        /// have ended first, the object may have been freed meanwhile.
        var previous: UInt64?
    }
    /// Notes being written: a renewal waits for them, so none lands under the old session
    /// after the renewal has read what to note again.
    private let notesInFlight = Locked(0)
    /// Switches of one object name (or one part of an upload) go one at a time.
    private let switchLocks = KeyedLocks<String>()
    /// Objects being read in this process: a free waits until their readers are done.
    private let readers = Locked<[Fid: Int]>([:])
    /// Set once the global indexes (buckets, pending frees, parts) exist: they are made
    /// on first use, once per process, not on every request.
    private let globalIndexesReady = Locked(false)
    /// This process's change stamp, written with each object list change (ChangeStamps.swift).
    public let stamp = ChangeStamp()

    /// PUT bodies up to this size are kept in the object's entry (`ObjectRecord.inline`),
    /// as the mount keeps small files: no data object to write, note pending or free.
    public static let inlineLimit = 4096

    /// The servers' largest record value, asked once (0: unknown, nothing is inlined).
    private let maxRecord = Locked<Int?>(nil)

    /// Whether `record` fits in a record of every server of this cluster.
    public func fitsInRecord(_ record: ObjectRecord) async throws -> Bool {
        let known = maxRecord.withLock { $0 }
        let limit: Int
        if let known {
            limit = known
        } else {
            limit = await cluster.maxRecordValue()
            if limit > 0 { maxRecord.withLock { $0 = limit } }
        }
        return record.encode().count + 64 <= limit
    }

    /// The smallest part of a multipart upload other than the last (S3's limit).
    public static let minimumPartSize: UInt64 = 5 << 20
    public static let maxPartNumber = 10_000

    public init(cluster: Cluster, sessions: any SessionRegistry, logger: Logger = Logger(label: "tessera.s3")) {
        self.cluster = cluster
        self.sessions = sessions
        self.logger = logger
        sessions.onRenewal { [weak self] old, new in await self?.renoteOwned(from: old, to: new) ?? true }
        sessions.onOwnershipLost { [weak self] old in self?.disown(session: old) }
    }

    /// Nanoseconds since 1970.
    public static func now() -> UInt64 { wallClockNanoseconds() }

    // MARK: Buckets

    /// S3's bucket naming rules: 3 to 63 lower-case letters, digits, dots and hyphens,
    /// starting and ending with a letter or digit, not shaped like an IP address.
    public static func validBucketName(_ name: String) -> Bool {
        let b = Array(name.utf8)
        guard (3...63).contains(b.count) else { return false }
        func alnum(_ c: UInt8) -> Bool { (c >= 97 && c <= 122) || (c >= 48 && c <= 57) }
        guard alnum(b.first!), alnum(b.last!) else { return false }
        guard b.allSatisfy({ alnum($0) || $0 == 45 || $0 == 46 }) else { return false }
        guard !name.contains(".."), !name.contains(".-"), !name.contains("-.") else { return false }
        let parts = name.split(separator: ".")
        if parts.count == 4 && parts.allSatisfy({ UInt8($0) != nil }) { return false }
        return true
    }

    private func ensureIndex(_ fid: Fid) async throws {
        _ = try await cluster.createIndex(fid)
    }

    /// Creates the global indexes the first time this process needs them.
    private func ensureGlobalIndexes() async throws {
        guard !globalIndexesReady.withLock({ $0 }) else { return }
        for fid in [S3Indexes.buckets, S3Indexes.pendingFrees, S3Indexes.parts] { try await ensureIndex(fid) }
        globalIndexesReady.withLock { $0 = true }
    }

    /// The bucket's record, or nil.
    public func bucket(_ name: String) async throws -> BucketRecord? {
        let v: [UInt8]?
        do { v = try await cluster.get(S3Indexes.buckets, [Array(name.utf8)])[0] } catch let e as TesseraError where e.code == .notFound {
            return nil  // no bucket was ever made
        }
        return try v.map(BucketRecord.decode)
    }

    /// Creates a bucket owned by `owner`. Throws `.exists` if it is there (the caller tells
    /// its owner from anyone else by `bucket(_:)`).
    @discardableResult
    public func createBucket(_ name: String, owner: String, publicRead: Bool = false) async throws -> BucketRecord {
        guard Self.validBucketName(name) else { throw TesseraError(.invalidArgument, "'\(name)' is not a valid bucket name") }
        try await ensureGlobalIndexes()
        let record = BucketRecord(
            objects: S3Indexes.random(tag: S3Indexes.objectIndexTag), uploads: S3Indexes.random(tag: S3Indexes.uploadIndexTag),
            created: Self.now(), owner: owner, publicRead: publicRead)
        // The indexes first: a bucket entry always has its indexes. A crash before the entry
        // leaves two empty indexes, which hold no data.
        try await ensureIndex(record.objects)
        try await ensureIndex(record.uploads)
        let st = try await cluster.put(S3Indexes.buckets, [Record(key: Array(name.utf8), value: record.encode())], mode: .createOnly, sync: true)
        if st[0] == .exists {
            _ = try? await cluster.dropIndex(record.objects)
            _ = try? await cluster.dropIndex(record.uploads)
            throw TesseraError(.exists, "bucket '\(name)' exists")
        }
        return record
    }

    /// The owner a mount gives the buckets it makes when the cluster file has no access
    /// key (a cluster made by hand, or by `tessera up` before it always made one).
    public static let keylessOwner = "tessera"

    /// Gives every bucket owned by `old` to `new` (by a compare-and-put each); returns
    /// their names.
    public func transferBuckets(from old: String, to new: String) async throws -> [String] {
        var moved: [String] = []
        for b in try await listBuckets() where b.record.owner == old {
            if try await updateBucket(b.name, { if $0.owner == old { $0.owner = new } })?.owner == new { moved.append(b.name) }
        }
        return moved
    }

    public func listBuckets() async throws -> [(name: String, record: BucketRecord)] {
        do {
            return try await cluster.records(S3Indexes.buckets, from: nil, limit: .max).map { (String(decoding: $0.key, as: UTF8.self), try BucketRecord.decode($0.value)) }
        } catch let e as TesseraError where e.code == .notFound {
            return []
        }
    }

    /// Deletes bucket `name`, whose record the caller looked up, if it has no objects; its
    /// uploads in progress are aborted (their parts freed) first, as S3 does. Throws
    /// `.notEmpty`.
    public func deleteBucket(_ name: String, _ b: BucketRecord) async throws {
        func empty() async throws -> Bool { try await cluster.next(b.objects, from: [[0x01]], limit: 1)[0].isEmpty }
        guard try await empty() else { throw TesseraError(.notEmpty, "bucket '\(name)' is not empty") }
        while true {
            let (uploads, _) = try await listUploads(b, prefix: "", keyMarker: nil, idMarker: nil, limit: 1000)
            if uploads.isEmpty { break }
            for u in uploads { try await abortUpload(name, b, u.key, u.id, u.record) }
        }
        // An object put while the uploads went keeps the bucket.
        guard try await empty() else { throw TesseraError(.notEmpty, "bucket '\(name)' is not empty") }
        try await cluster.delete(S3Indexes.buckets, [Array(name.utf8)], sync: true)
        _ = try? await cluster.dropIndex(b.objects)
        _ = try? await cluster.dropIndex(b.uploads)
        _ = try? await cluster.dropIndex(S3Indexes.fileSystemIndex(of: b))
    }

    /// Changes bucket `name`'s record by `change`, by a compare-and-put on the record as
    /// read (so a change made meanwhile by another gateway is kept). Nil: no such bucket.
    public func updateBucket(_ name: String, _ change: (inout BucketRecord) throws -> Void) async throws -> BucketRecord? {
        try await update(S3Indexes.buckets, Array(name.utf8), decode: BucketRecord.decode, encode: { $0.encode() }, change)
    }

    /// Changes object `key`'s record by `change` (the inode's record for a hard link), by a
    /// compare-and-put on the record as read. Nil: no such object.
    public func updateObject(_ bucket: BucketRecord, _ key: String, _ change: (inout ObjectRecord) throws -> Void) async throws -> ObjectRecord? {
        guard let entry = try await entry(bucket, key) else { return nil }
        if let ino = entry.inode {
            return try await update(S3Indexes.fileSystemIndex(of: bucket), S3Indexes.inodeKey(ino), decode: ObjectRecord.decode, encode: { $0.encode() }, change)
        }
        return try await update(bucket.objects, Array(key.utf8), decode: ObjectRecord.decode, encode: { $0.encode() }, change)
    }

    /// A compare-and-put loop: reads the record, changes it, and puts it if it is still what
    /// was read, else goes again from what is there. `change` is the same however often it
    /// runs, so one of unknown outcome is simply made again.
    private func update<T>(_ index: Fid, _ key: [UInt8], decode: ([UInt8]) throws -> T, encode: (T) -> [UInt8], _ change: (inout T) throws -> Void)
        async throws -> T?
    {
        var stored = try await cluster.get(index, [key])[0]
        while let v = stored {
            var record = try decode(v)
            try change(&record)
            let bytes = encode(record)
            if bytes == v { return record }
            switch try await cluster.compareAndPut(index, key: key, expected: v, value: bytes, sync: true) {
            case .done: return record
            case .conflict(let current), .unknown(let current): stored = current
            }
        }
        return nil
    }

    // MARK: Objects

    /// Object `key`; a hard link made in the mount reads as its inode's record.
    public func object(_ bucket: BucketRecord, _ key: String) async throws -> ObjectRecord? {
        guard let entry = try await entry(bucket, key) else { return nil }
        return try await resolve(bucket, entry)
    }

    /// The object list entry of `key` as stored (a hard link is not followed).
    public func entry(_ bucket: BucketRecord, _ key: String) async throws -> ObjectRecord? {
        try await cluster.get(bucket.objects, [Array(key.utf8)])[0].map(ObjectRecord.decode)
    }

    /// The record an entry stands for: itself, or for a hard link its inode's record.
    public func resolve(_ bucket: BucketRecord, _ entry: ObjectRecord) async throws -> ObjectRecord {
        guard let ino = entry.inode else { return entry }
        let v = try await cluster.get(S3Indexes.fileSystemIndex(of: bucket), [S3Indexes.inodeKey(ino)])[0]
        guard let v else { throw TesseraError(.corrupt, "hard link to inode \(ino), which has no record") }
        return try ObjectRecord.decode(v)
    }

    /// Removes one link to inode `ino` (whose entry the caller has just deleted): the
    /// inode record's link count drops, and at zero the record goes and the data is freed.
    /// `owner` names the entry, for the pending-free record.
    public func dropLink(_ bucketName: String, _ bucket: BucketRecord, inode ino: UInt64, owner key: String) async throws {
        let index = S3Indexes.fileSystemIndex(of: bucket)
        let inodeKey = S3Indexes.inodeKey(ino)
        let freed: ObjectRecord? = try await switchLocks.withLock(bucketName + "\u{0}inode\u{0}\(ino)") {
            // Compare-and-put on the record as read: another process dropping a link of the
            // same inode at the same time is seen, and no drop is lost.
            // One of unknown outcome is not made again (a second drop could free data a link
            // still names): at worst the count stays one too high and the data outlives it.
            var stored = try await cluster.get(index, [inodeKey])[0]
            while let v = stored {
                var r = try ObjectRecord.decode(v)
                let left = (r.links ?? 1) - 1
                if left > 0 { r.links = left } else { try await notePending([(r.fid, .object(bucket: bucketName, key: key))]) }
                switch try await cluster.compareAndPut(index, key: inodeKey, expected: v, value: left > 0 ? r.encode() : nil, sync: true) {
                case .done: return left > 0 ? nil : r
                case .conflict(let current): stored = current
                case .unknown: return nil
                }
            }
            return nil
        }
        if let freed {
            try await free(freed.fid)
            await dropPending([freed.fid])
        }
    }

    /// Starts a new object whose data will belong to `owner`: its pending-free record is
    /// durable before any of its data is written. The writer makes the object on the
    /// servers its writes do not reach when it finishes (ObjectWriter.swift).
    public func newObject(for owner: PendingFree.Owner) async throws -> ObjectWriter {
        let fid = S3Indexes.random(tag: S3Indexes.dataTag)
        try await notePending([(fid, owner)])
        return ObjectWriter(cluster: cluster, fid: fid)
    }

    /// Notes `items` pending-free under this process's session (waiting for one if it was
    /// lost), durably: the sweeper leaves them alone while the session lives.
    public func notePending(_ items: [(Fid, PendingFree.Owner)]) async throws {
        guard !items.isEmpty else { return }
        try await ensureGlobalIndexes()
        // Counted in flight before the session is read: a renewal (during which `current`
        // is nil) either sees this note in `owned` or makes it wait for the new session.
        var session: UInt64
        while true {
            notesInFlight.withLock { $0 += 1 }
            if let s = sessions.current {
                session = s
                break
            }
            notesInFlight.withLock { $0 -= 1 }
            _ = try await sessions.owner()
        }
        defer { notesInFlight.withLock { $0 -= 1 } }
        try await putPending(items, session: session)
        owned.withLock { o in for (fid, owner) in items { o[fid] = Owned(owner: owner, session: session) } }
    }

    private func putPending(_ items: [(Fid, PendingFree.Owner)], session: UInt64) async throws {
        let t = Self.now()
        try await cluster.put(
            S3Indexes.pendingFrees,
            items.map { Record(key: S3Indexes.fidKey($0.0), value: PendingFree(owner: $0.1, noted: t, session: session).encode()) }, sync: true)
    }

    /// Notes again under `new` what this process noted under `old` (called before the old
    /// lease is let go, so no sweeper can see these records ownerless in between); false if
    /// it could not, and the renewal asks again.
    private func renoteOwned(from old: UInt64, to new: UInt64) async -> Bool {
        while notesInFlight.withLock({ $0 }) > 0 { try? await Task.sleep(for: .milliseconds(2)) }
        let items = owned.withLock { o in o.filter { $0.value.session == old }.map { ($0.key, $0.value.owner) } }
        guard !items.isEmpty else { return true }
        do {
            for start in stride(from: 0, to: items.count, by: 500) {
                try await putPending(Array(items[start..<min(items.count, start + 500)]), session: new)
            }
            owned.withLock { o in
                for (fid, _) in items where o[fid]?.session == old {
                    o[fid]?.session = new
                    o[fid]?.previous = old
                }
            }
            logger.notice("noted \(items.count) pending object(s) again under the new session")
            return true
        } catch {
            logger.error("could not note \(items.count) pending object(s) under the new session, keeping the old one alive and trying again: \(error)")
            return false
        }
    }

    /// Forgets that this process owns anything it noted under `session` (its lease ended
    /// before it could be renewed: the sweeper may have freed that data). Commits of those
    /// objects then fail instead of making an entry refer to freed data.
    public func disown(session: UInt64) {
        let lost = owned.withLock { o -> [Fid] in
            let l = o.filter { $0.value.session == session || $0.value.previous == session }.map(\.key)
            for f in l {
                o[f]?.session = 0
                o[f]?.previous = nil
            }
            return l
        }
        if !lost.isEmpty { logger.error("session \(String(session, radix: 16)) ended before it was renewed: \(lost.count) object(s) it owned may have been freed: \(lost.prefix(8))") }
    }

    /// Throws unless this process still owns `fid` under its valid session: an entry must
    /// not come to refer to data the sweeper may have freed. Called once the object's writer
    /// is done and before any entry names it, so an object that fails the check is no one's:
    /// it is freed here, with its pending-free record. (The sweeper may have freed it while
    /// the writer still wrote, and the units written after that would be left behind.)
    public func checkOwned(_ fid: Fid) async throws {
        guard let o = owned.withLock({ $0[fid] }) else { return }  // not noted here: not ours to fence
        do { try sessions.checkOwner(o.session) } catch {
            do {
                try await free(fid)
                await dropPending([fid])
            } catch let freeing {
                // The record stays (noted again under the next session if it was not lost),
                // and the sweeper frees the object.
                logger.warning("object \(fid), written under a lost session, could not be freed now: \(freeing)")
            }
            throw error
        }
    }

    /// A free marker: the pending-free record of `fid` kept in the bucket's own object list,
    /// so it can go in the same UPDATE as the entry change that lets go of the data, with no
    /// sync-wait in between (docs/S3.md). It names this process's session if it has one;
    /// the data it marks is unreferenced already, so any sweeper may free it.
    public func freeMarker(_ fid: Fid, owner key: String, bucket bucketName: String) -> Record {
        let pending = PendingFree(owner: .object(bucket: bucketName, key: key), noted: Self.now(), session: sessions.current ?? 0)
        return Record(key: Self.freeMarkerKey(fid), value: pending.encode())
    }

    public static func freeMarkerKey(_ fid: Fid) -> [UInt8] { freeMarkerPrefix + S3Indexes.fidKey(fid) }
    static let freeMarkerPrefix: [UInt8] = [0x00, 0x46]

    public func dropPending(_ fids: [Fid]) async {
        guard !fids.isEmpty else { return }
        owned.withLock { o in for f in fids { o[f] = nil } }
        // Not synced: a record that comes back after a crash is only looked at again.
        _ = try? await cluster.delete(S3Indexes.pendingFrees, fids.map(S3Indexes.fidKey))
    }

    /// Makes `record` (whose data `newObject(for: .object(bucket, key))` wrote) the object
    /// `key`, then frees the object it replaces. A file's POSIX attributes (owner, mode,
    /// inode number, xattrs) stay with the key.
    public func commit(_ bucketName: String, _ bucket: BucketRecord, _ key: String, _ record: ObjectRecord, condition: WriteCondition = .none) async throws {
        try await replace(bucketName, bucket, key, record, condition: condition) {}
    }

    /// A condition on the object a write replaces (S3's conditional writes), checked on the
    /// entry the compare-and-put replaces, so it holds across gateways and mounts.
    public enum WriteCondition: Sendable, Equatable {
        case none
        /// `If-None-Match: *`: only if there is no object.
        case absent
        /// `If-Match`: only if the object's ETag is this one (without quotes).
        case etag(String)

        /// Whether checking it needs the entry read first (an absent one cannot be assumed).
        var needsEntry: Bool {
            if case .etag = self { return true }
            return false
        }

        func check(_ current: ObjectRecord?) throws(ConditionFailure) {
            switch self {
            case .none: return
            case .absent: if current != nil { throw .preconditionFailed }
            case .etag(let tag):
                guard let current else { throw .noSuchKey }
                if current.etag != tag { throw .preconditionFailed }
            }
        }
    }

    public enum ConditionFailure: Error, Sendable, Equatable {
        /// The object is not as the condition asks.
        case preconditionFailed
        /// `If-Match` on a key with no object.
        case noSuchKey
        /// The write was sent again after a lost answer and refused: whether it was made is
        /// not known, and it may have been replaced since.
        case conflict
    }

    /// Switches entry `key` to `record` under the key's lock, running `alsoUnderLock` after
    /// the switch, then lets go of the old data: freed, or one link fewer for a hard link.
    /// The switch is a compare-and-put on the entry as read, so a gateway or mount that
    /// switched it meanwhile (the lock is this process's only) is seen, and its object is
    /// the one let go of: no two writers both free one object and leak the other's.
    private func replace(
        _ bucketName: String, _ bucket: BucketRecord, _ key: String, _ record: ObjectRecord, condition: WriteCondition = .none,
        alsoUnderLock: () async throws -> Void
    ) async throws {
        let keyBytes = Array(key.utf8)
        let switched: Switched = try await switchLocks.withLock(bucketName + "/" + key) {
            try await checkOwned(record.fid)
            // Most PUTs make a new key: the first compare-and-put expects none, and one that
            // finds an entry gets it back to go again from, as a read would have.
            var stored = condition.needsEntry ? try await cluster.get(bucket.objects, [keyBytes])[0] : nil
            // Whether `stored` was read (from a GET or a conflict) rather than guessed absent.
            var read = condition.needsEntry
            while true {
                let old = try stored.map(ObjectRecord.decode)
                var current = old
                if let old { current = try await resolve(bucket, old) }
                try condition.check(current)
                var record = record
                if record.posix == nil, let current { record.posix = current.posix }
                // A note for an entry someone else then replaced stays for the sweeper,
                // which frees only what no entry refers to.
                if let old, old.inode == nil, old.objectHoldsData, old.fid != record.fid { try await notePending([(old.fid, .object(bucket: bucketName, key: key))]) }
                switch try await cluster.compareAndPut(bucket.objects, key: keyBytes, expected: stored, value: record.encode(), also: [stamp.next()], sync: true) {
                case .done:
                    try await alsoUnderLock()
                    return .switched(from: old)
                case .conflict(let current):
                    (stored, read) = (current, true)
                case .unknown(let now):
                    // Made, if the entry holds this object now: it replaced `old`.
                    if let now, (try? ObjectRecord.decode(now))?.fid == record.fid {
                        try await alsoUnderLock()
                        return .switched(from: old)
                    }
                    if condition != .none { throw ConditionFailure.conflict }
                    // Expecting an entry read after this write began, made or not it is
                    // ordered before the writer who changed that entry since: done. Expecting
                    // none on a guess, the entry there now may be one from before this write,
                    // never replaced: not made, and it must not be answered as made.
                    guard read else {
                        throw TesseraError(.closed, "object \(key): the answer to its switch was lost and the entry is another's: whether it was made is not known")
                    }
                    try await alsoUnderLock()
                    return .uncertain
                }
            }
        }
        // Maybe made and then replaced by another writer (who freed it), maybe never made:
        // both objects stay noted, for the sweeper to free whichever no entry refers to.
        guard case .switched(let old) = switched else { return }
        var done = record.objectHoldsData ? [record.fid] : []
        if let old, old.fid != record.fid {
            if let ino = old.inode {
                try await dropLink(bucketName, bucket, inode: ino, owner: key)
            } else if old.objectHoldsData {
                try await free(old.fid)
                done.append(old.fid)
            }
        }
        await dropPending(done)
    }

    /// Removes object `key`; false if there was none.
    @discardableResult
    public func deleteObject(_ bucketName: String, _ bucket: BucketRecord, _ key: String) async throws -> Bool {
        let keyBytes = Array(key.utf8)
        let switched: Switched = try await switchLocks.withLock(bucketName + "/" + key) {
            // A compare-and-delete, as `replace` does: what is let go of is what was there.
            var stored = try await cluster.get(bucket.objects, [keyBytes])[0]
            while let bytes = stored {
                let old = try ObjectRecord.decode(bytes)
                if old.inode == nil && old.objectHoldsData { try await notePending([(old.fid, .object(bucket: bucketName, key: key))]) }
                switch try await cluster.compareAndPut(bucket.objects, key: keyBytes, expected: bytes, value: nil, also: [stamp.next()], sync: true) {
                case .done: return .switched(from: old)
                case .conflict(let current): stored = current
                case .unknown: return .uncertain  // the note stays, for the sweeper
                }
            }
            return .switched(from: nil)
        }
        guard case .switched(let old) = switched else { return true }
        guard let old else { return false }
        if let ino = old.inode {
            try await dropLink(bucketName, bucket, inode: ino, owner: key)
            return true
        }
        guard old.objectHoldsData else { return true }  // its bytes were in the entry
        try await free(old.fid)
        await dropPending([old.fid])
        return true
    }

    /// Frees an object's data, and the parts of a multipart one, once no reader in this
    /// process is using it.
    public func free(_ fid: Fid) async throws {
        try await readersDone(fid)
        try await cluster.delete(fid)
        while true {
            let parts = try await partRecords(fid, after: 0, limit: 1000)
            if parts.isEmpty { break }
            for p in parts { try await cluster.delete(p.fid) }
            try await cluster.delete(S3Indexes.parts, parts.map { S3Indexes.partKey(fid, $0.number) })
        }
    }

    /// Frees the data of objects no entry refers to, all at once (`Cluster.delete(_:)`),
    /// once no reader in this process is using them; a multipart one's parts too.
    public func free(_ objects: [(fid: Fid, multipart: Bool)]) async throws {
        for o in objects { try await readersDone(o.fid) }
        try await cluster.delete(objects.map(\.fid))
        for o in objects where o.multipart { try await free(o.fid) }
    }

    /// Stops `writer` and frees what it wrote; its pending-free record goes too once the free
    /// is done (else it stays for the sweeper).
    public func abandon(_ writer: ObjectWriter) async {
        if await writer.abandon() { await dropPending([writer.fid]) }
    }

    /// Returns once no reader in this process is using object `fid`.
    private func readersDone(_ fid: Fid) async throws {
        while readers.withLock({ $0[fid] != nil }) { try await Task.sleep(for: .milliseconds(5)) }
    }

    /// Runs `body` with the object's data kept from being freed by this process.
    public func reading<R>(_ record: ObjectRecord, _ body: (ObjectReader) async throws -> R) async throws -> R {
        readers.withLock { $0[record.fid, default: 0] += 1 }
        defer {
            readers.withLock {
                let n = $0[record.fid, default: 1] - 1
                $0[record.fid] = n == 0 ? nil : n
            }
        }
        let parts = record.multipart ? try await allParts(record.fid) : []
        return try await body(ObjectReader(cluster: cluster, record: record, parts: parts))
    }

    // MARK: Listing

    public struct Listing: Sendable {
        public var entries: [(key: String, value: [UInt8])] = []
        public var commonPrefixes: [String] = []
        public var truncated = false
        /// The last key or common prefix returned: where the next page starts after.
        public var last: String?
    }

    /// Keys of `index` beginning with `prefix`, after `after` (exclusive), grouped at the
    /// first `delimiter` after the prefix, at most `limit` keys and prefixes in all.
    public func list(_ index: Fid, prefix: String, delimiter: String?, after: String?, limit: Int) async throws -> Listing {
        var out = Listing()
        guard limit > 0 else { return out }
        let p = Array(prefix.utf8)
        let d = delimiter.flatMap { $0.isEmpty ? nil : Array($0.utf8) }
        var start: [UInt8] = p
        var exclusive = false
        if let a = after.map({ Array($0.utf8) }), a.lexicographicallyPrecedes(p) == false {
            start = a
            exclusive = true
            // After a common prefix, skip every key under it.
            if let d, a.count > p.count, a.starts(with: p), a.suffix(d.count).elementsEqual(d), let s = Self.successor(of: a) {
                start = s
                exclusive = false
            }
        }
        // NEXT has no end key: what a batch holds past the prefix, or under a common prefix
        // it meets, is read for nothing (and entries may hold a small file's data). Batches
        // start small and grow while every record in them is listed.
        var batchSize = 64
        while true {
            let want = min(batchSize, limit - out.entries.count - out.commonPrefixes.count + 1)
            let batch = try await cluster.next(index, from: [start], limit: want, excludeStart: exclusive)[0]
            var skipTo: [UInt8]? = nil
            for r in batch {
                guard r.key.starts(with: p) else { return out }
                // The empty key (the mounted file system's root directory) and keys that start
                // with 0x00 (its free markers) are never objects: S3 keys hold no NUL.
                if r.key.first ?? 0 == 0 { continue }
                if out.entries.count + out.commonPrefixes.count == limit {
                    out.truncated = true
                    return out
                }
                if let d, let cut = Self.find(d, in: r.key, from: p.count) {
                    let cp = Array(r.key[..<(cut + d.count)])
                    let s = String(decoding: cp, as: UTF8.self)
                    out.commonPrefixes.append(s)
                    out.last = s
                    guard let next = Self.successor(of: cp) else { return out }
                    skipTo = next
                    break
                }
                out.entries.append((String(decoding: r.key, as: UTF8.self), r.value))
                out.last = out.entries.last!.key
            }
            if let s = skipTo {
                start = s
                exclusive = false
            } else {
                guard batch.count == want, let last = batch.last else { return out }
                start = last.key
                exclusive = true
                batchSize = min(batchSize * 4, 1000)
            }
        }
    }

    /// The smallest key greater than every key that starts with `k` (nil: none).
    public static func successor(of k: [UInt8]) -> [UInt8]? {
        var s = k
        while let last = s.last {
            if last < 0xFF {
                s[s.count - 1] = last + 1
                return s
            }
            s.removeLast()
        }
        return nil
    }

    static func find(_ needle: [UInt8], in hay: [UInt8], from: Int) -> Int? {
        guard needle.count > 0, hay.count >= needle.count, from <= hay.count - needle.count else { return nil }
        for i in from...(hay.count - needle.count) where hay[i] == needle[0] {
            if hay[i..<(i + needle.count)].elementsEqual(needle) { return i }
        }
        return nil
    }

    // MARK: Multipart uploads

    static func uploadKey(_ key: String, _ id: String) -> [UInt8] { Array(key.utf8) + [0] + Array(id.utf8) }

    public static func uploadID(_ fid: Fid) -> String {
        hex(withUnsafeBytes(of: fid.hi.bigEndian, Array.init) + withUnsafeBytes(of: fid.lo.bigEndian, Array.init))
    }

    /// Starts a multipart upload of `key`; returns its upload id.
    public func createUpload(_ bucketName: String, _ bucket: BucketRecord, _ key: String, attributes: [Attribute]) async throws -> String {
        let fid = S3Indexes.random(tag: S3Indexes.dataTag)
        try await notePending([(fid, .object(bucket: bucketName, key: key))])
        let id = Self.uploadID(fid)
        try await cluster.put(bucket.uploads, [Record(key: Self.uploadKey(key, id), value: UploadRecord(fid: fid, created: Self.now(), attributes: attributes).encode())], sync: true)
        // The upload record refers to the fid from now on: it lives until completed or
        // aborted, whatever becomes of this process.
        await dropPending([fid])
        return id
    }

    public func upload(_ bucket: BucketRecord, _ key: String, _ id: String) async throws -> UploadRecord? {
        guard id.utf8.count == 32, id.utf8.allSatisfy({ ($0 >= 48 && $0 <= 57) || ($0 >= 97 && $0 <= 102) }) else { return nil }
        return try await cluster.get(bucket.uploads, [Self.uploadKey(key, id)])[0].map(UploadRecord.decode)
    }

    /// Starts the data of part `number` of an upload.
    public func newPart(_ upload: UploadRecord, _ number: Int) async throws -> ObjectWriter {
        try await newObject(for: .part(upload: upload.fid, number: number))
    }

    /// Makes `part` (written by `newPart`) part `part.number` of the upload, freeing the
    /// part it replaces.
    public func commitPart(_ upload: UploadRecord, _ part: PartRecord) async throws {
        try await ensureGlobalIndexes()
        let key = S3Indexes.partKey(upload.fid, part.number)
        let old: PartRecord? = try await switchLocks.withLock("\(upload.fid)#\(part.number)") {
            let old = try await cluster.get(S3Indexes.parts, [key])[0].map { try PartRecord.decode($0, number: part.number) }
            if let old { try await notePending([(old.fid, .part(upload: upload.fid, number: part.number))]) }
            try await checkOwned(part.fid)
            try await cluster.put(S3Indexes.parts, [Record(key: key, value: part.encode())], sync: true)
            return old
        }
        if let old { try await cluster.delete(old.fid) }
        await dropPending([part.fid] + (old.map { [$0.fid] } ?? []))
    }

    /// Parts of upload (or multipart object) `fid` numbered above `after`, in order.
    public func partRecords(_ fid: Fid, after: Int, limit: Int) async throws -> [PartRecord] {
        let recs: [Record]
        do {
            recs = try await cluster.next(S3Indexes.parts, from: [S3Indexes.partKey(fid, after)], limit: limit, excludeStart: true)[0]
        } catch let e as TesseraError where e.code == .notFound {
            return []
        }
        let prefix = S3Indexes.fidKey(fid)
        var out: [PartRecord] = []
        for r in recs {
            guard r.key.count == 20, r.key.starts(with: prefix) else { break }
            let n = Int(r.key[16]) << 24 | Int(r.key[17]) << 16 | Int(r.key[18]) << 8 | Int(r.key[19])
            out.append(try PartRecord.decode(r.value, number: n))
        }
        return out
    }

    /// Every part of upload (or multipart object) `fid`, in order.
    public func allParts(_ fid: Fid) async throws -> [PartRecord] {
        var out: [PartRecord] = []
        while true {
            let batch = try await partRecords(fid, after: out.last?.number ?? 0, limit: 1000)
            out += batch
            if batch.count < 1000 { return out }
        }
    }

    public enum CompletionError: Error, Sendable {
        case invalidPart(Int)
        case invalidPartOrder
        case entityTooSmall(Int)
    }

    /// Completes an upload with the listed parts (number, ETag): they become object `key`,
    /// and the upload's other parts are freed.
    public func completeUpload(
        _ bucketName: String, _ bucket: BucketRecord, _ key: String, _ id: String, _ upload: UploadRecord, parts wanted: [(number: Int, etag: String)],
        condition: WriteCondition = .none, attributes extra: ([PartRecord]) throws -> [Attribute] = { _ in [] }
    ) async throws -> ObjectRecord {
        let stored = try await allParts(upload.fid)
        let byNumber = Dictionary(stored.map { ($0.number, $0) }, uniquingKeysWith: { a, _ in a })
        var chosen: [PartRecord] = []
        for (i, w) in wanted.enumerated() {
            if i > 0 && w.number <= wanted[i - 1].number { throw CompletionError.invalidPartOrder }
            let tag = w.etag.trimmingCharacters(in: CharacterSet(charactersIn: "\" "))
            guard let p = byNumber[w.number], p.etag == tag else { throw CompletionError.invalidPart(w.number) }
            chosen.append(p)
        }
        guard !chosen.isEmpty else { throw CompletionError.invalidPart(0) }
        for p in chosen.dropLast() where p.size < Self.minimumPartSize { throw CompletionError.entityTooSmall(p.number) }
        let more = try extra(chosen)
        // Checked now too, so a completion refused by its condition keeps every part (the
        // upload can be completed again); the switch checks it again on what it replaces.
        if condition != .none { try condition.check(try await object(bucket, key)) }
        // Parts not chosen go first, so the object never reads through them.
        let chosenNumbers = Set(chosen.map(\.number))
        let unchosen = stored.filter { !chosenNumbers.contains($0.number) }
        for p in unchosen { try await cluster.delete(p.fid) }
        if !unchosen.isEmpty { try await cluster.delete(S3Indexes.parts, unchosen.map { S3Indexes.partKey(upload.fid, $0.number) }, sync: true) }

        var md5s: [UInt8] = []
        for p in chosen { md5s += p.md5 }
        let record = ObjectRecord(
            fid: upload.fid, size: chosen.reduce(0) { $0 + $1.size }, modified: Self.now(), etag: hex(md5Digest(md5s)) + "-\(chosen.count)",
            parts: chosen.count, attributes: upload.attributes + more)
        try await replace(bucketName, bucket, key, record, condition: condition) {
            try await cluster.delete(bucket.uploads, [Self.uploadKey(key, id)], sync: true)
        }
        return record
    }

    /// Abandons an upload and frees its parts.
    public func abortUpload(_ bucketName: String, _ bucket: BucketRecord, _ key: String, _ id: String, _ upload: UploadRecord) async throws {
        // Noted before the upload record goes, so a crash before the parts are freed leaves
        // them to the sweeper (kind 0: the upload record no longer refers to them).
        try await notePending([(upload.fid, .object(bucket: bucketName, key: key))])
        try await cluster.delete(bucket.uploads, [Self.uploadKey(key, id)], sync: true)
        try await free(upload.fid)
        await dropPending([upload.fid])
    }

    /// Uploads in progress, in key then id order.
    public func listUploads(_ bucket: BucketRecord, prefix: String, keyMarker: String?, idMarker: String?, limit: Int) async throws
        -> (uploads: [(key: String, id: String, record: UploadRecord)], truncated: Bool)
    {
        var after: String? = nil
        if let k = keyMarker {
            after = idMarker.map { String(decoding: Self.uploadKey(k, $0), as: UTF8.self) } ?? String(decoding: Array(k.utf8) + [0, 0xFF], as: UTF8.self)
        }
        let l = try await list(bucket.uploads, prefix: prefix, delimiter: nil, after: after, limit: limit)
        var out: [(String, String, UploadRecord)] = []
        for e in l.entries {
            let b = Array(e.key.utf8)
            guard let z = b.lastIndex(of: 0) else { continue }
            out.append((String(decoding: b[..<z], as: UTF8.self), String(decoding: b[(z + 1)...], as: UTF8.self), try UploadRecord.decode(e.value)))
        }
        return (out, l.truncated)
    }

    // MARK: The sweeper

    /// Frees every object noted pending whose session is gone and that its owner does not
    /// refer to, and forgets the record: in the pending-free index, then in every bucket's
    /// free markers. Records of live sessions are left alone, however old. Returns how many
    /// objects it freed. Throws (freeing nothing more) when the state service cannot say
    /// which sessions are alive.
    @discardableResult
    public func sweep() async throws -> Int {
        var freed = 0
        do { freed = try await sweep(S3Indexes.pendingFrees, prefix: []) } catch let e as TesseraError where e.code == .notFound {
            freed = 0  // no pending free was ever noted
        }
        for (name, b) in try await listBuckets() { freed += try await sweepMarkers(name, b) }
        if freed > 0 { logger.info("sweeper freed \(freed) objects no entry refers to and no live session owns") }
        return freed
    }

    /// The same for the free markers in one bucket's object list.
    @discardableResult
    public func sweepMarkers(_ bucketName: String, _ bucket: BucketRecord) async throws -> Int {
        try await sweep(bucket.objects, prefix: Self.freeMarkerPrefix)
    }

    /// Sweeps the pending-free records of `index` whose keys are `prefix` then a fid.
    ///
    /// Per batch: the records are read first and the live sessions after, so a session that
    /// noted a record read here was taken before the read and shows as alive if it is. A
    /// record whose session is gone is read once more before anything is freed: its owner
    /// may have noted it again under a new session (`renoteOwned`), which it does before
    /// letting the old lease go.
    private func sweep(_ index: Fid, prefix: [UInt8]) async throws -> Int {
        var freed = 0
        var from = prefix
        var exclusive = false
        // NEXT has no end key: a bucket's few markers come before its entries, which the
        // batch would read for nothing (small files' data included). Batches start small and
        // grow while every record in them is a marker, as `list` does.
        var batchSize = 16
        while true {
            let batch = try await cluster.next(index, from: [from], limit: batchSize, excludeStart: exclusive)[0]
            let mine = batch.prefix { $0.key.starts(with: prefix) }
            guard !mine.isEmpty else { return freed }
            let live = try await sessions.alive()
            for r in mine {
                guard let fid = S3Indexes.fid(fromKey: Array(r.key.dropFirst(prefix.count))) else { continue }
                guard let pending = decodePending(r.value, fid, index), !live.contains(pending.session) else { continue }
                guard let again = try await cluster.get(index, [r.key])[0], decodePending(again, fid, index) == pending else { continue }
                if try await !referenced(fid, by: pending.owner) {
                    try await free(fid)
                    freed += 1
                }
                // Not synced: a record that comes back after a crash is only looked at again.
                _ = try? await cluster.delete(index, [r.key])
            }
            guard mine.count == batchSize, let last = mine.last else { return freed }
            from = last.key
            exclusive = true
            batchSize = min(batchSize * 4, 500)
        }
    }

    private func decodePending(_ value: [UInt8], _ fid: Fid, _ index: Fid) -> PendingFree? {
        do { return try PendingFree.decode(value) } catch {
            logger.warning("pending-free record of \(fid) in index \(index) unreadable, left alone: \(error)")
            return nil
        }
    }

    private func referenced(_ fid: Fid, by owner: PendingFree.Owner) async throws -> Bool {
        switch owner {
        case .object(let bucketName, let key):
            guard let b = try await bucket(bucketName) else { return false }
            if try await object(b, key)?.fid == fid { return true }
            return try await cluster.get(b.uploads, [Self.uploadKey(key, Self.uploadID(fid))])[0] != nil
        case .part(let upload, let number):
            let v: [UInt8]?
            do { v = try await cluster.get(S3Indexes.parts, [S3Indexes.partKey(upload, number)])[0] } catch let e as TesseraError where e.code == .notFound {
                return false
            }
            return try v.map { try PartRecord.decode($0, number: number).fid } == fid
        }
    }
}

/// How a compare-and-put loop on an object-list entry ended.
private enum Switched {
    /// Done: the entry was `from` before (nil: absent).
    case switched(from: ObjectRecord?)
    /// Sent again after a lost answer and refused: it may or may not have been made.
    case uncertain
}
