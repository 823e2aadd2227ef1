// The file-system core (layer 7): POSIX semantics over one bucket of the S3 layer. It
// knows nothing of libfuse: the adapter turns kernel requests into these calls, and the
// property tests call them directly.
//
// The namespace is the bucket's object list (ARCHITECTURE.md, "Decisions"): a file is the
// entry whose key is its path, a directory is the entry `path/` (or, for keys written
// through S3 without one, is implied by the keys under it), the root directory is the
// entry with the empty key. Entries carry the POSIX attributes (Posix.swift). A hard-linked
// file's entries all point at one inode record in the bucket's file-system index. Changes
// that touch several keys (create with the parent's times, rename, unlink) go to the object
// list in one CAS UPDATE, so each is all or nothing.
//
// Concurrency: namespace changes and every store of a record run under one async lock
// (`namespace`); data calls run under their inode's lock (`fileLocks`). Lock order: an
// inode's lock, then the namespace lock, never the other way round. The in-memory tables
// (inodes, handles) sit behind a lock (`state`) and are only touched in short synchronous
// sections.
//
// This file holds the class, its state, the inode table, the finding of entries and the
// storing of records; each kind of call has a file of its own, with the state it touches
// and its locks at the top: FileSystem+Create (making entries), +Remove (unlink, rmdir, the
// freeing of removed data), +Rename (rename and link), +Attributes (setattr, xattrs and
// ACLs), +Data (open files), +Directories (readdir, statfs).
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

public struct FileSystemOptions: Sendable {
    /// Shown as every entry's owner instead of the stored one (mount options uid=, gid=).
    public var uid: UInt32?
    public var gid: UInt32?
    /// Cleared from every mode shown (mount option umask=).
    public var umask: UInt32 = 0
    public var readOnly = false
    /// Bytes of file pages (write-back and read-ahead) all open files share.
    public var memoryBudget = 256 << 20
    /// Owner of new entries when the caller is unknown, and of entries written through S3.
    public var defaultUid: UInt32 = 0
    public var defaultGid: UInt32 = 0
    /// How long the names this mount knows are trusted before the bucket's change stamps
    /// are read again (NameCache.swift); zero: every lookup reads the store.
    public var nameCacheWindow: Duration = .milliseconds(100)
    /// Files up to this many bytes keep their data in their entry, not in an object
    /// (FileData.swift; mount option inline=); 0: never. Also bounded by the largest record
    /// the catalogues accept.
    public var inlineLimit = 4096

    public init() {}
}

/// One entry of a directory listing.
public struct DirectoryEntry: Sendable {
    public var name: [UInt8]
    public var attributes: Attributes
}

final class Inode: @unchecked Sendable {
    // SAFETY: every field is read and written under FileSystem.state's lock, except what
    // `data` holds, which is used under the inode's own async lock once set (but for its
    // `published` size and inline bytes, which have a lock of their own).
    let ino: UInt64
    /// The entry's key: a file's path, a directory's path with its `/` ("" for the root).
    var key: [UInt8]
    /// The stored record (a hard link's inode record), with `size` and `modified` as the
    /// mount sees them.
    var record: ObjectRecord
    var posix: Posix
    /// Its record is in the file-system index (a hard-linked file).
    var linked: Bool
    /// A directory with no entry of its own, implied by the keys under it.
    var implied: Bool
    var lookups: UInt64 = 0
    var opens = 0
    /// No entry names it any more; its data goes at the last close.
    var unlinked = false
    /// Attributes changed while open, to be stored with the data at the next flush.
    var attributesChanged = false
    var data: FileData?
    /// The object and size this inode's entry named when this mount last stored it (nil:
    /// not stored by this mount, or with its data inline). fdatasync stores no entry that
    /// already names the file's data.
    var storedData: (fid: Fid, size: UInt64)?

    init(ino: UInt64, key: [UInt8], record: ObjectRecord, posix: Posix, linked: Bool, implied: Bool) {
        self.ino = ino
        self.key = key
        self.record = record
        self.posix = posix
        self.linked = linked
        self.implied = implied
    }

    var type: FileType { posix.type }
}

public final class FileSystem: Sendable {
    public let store: S3Store
    public let bucketName: String
    let bucket: BucketRecord
    let fsIndex: Fid
    public let options: FileSystemOptions
    public let budget: MemoryBudget
    let logger: Logger
    public var cluster: Cluster { store.cluster }
    /// The largest record value every catalogue server accepts (0: unknown, and no file keeps
    /// its data in its entry), and the largest file that does (FileData.swift).
    let maxRecord: Int
    let inlineLimit: Int

    struct State {
        var inodes: [UInt64: Inode] = [:]
        /// Inodes the kernel forgot, kept so the name cache can still answer for them (after
        /// the kernel drops its caches, a walk of a tree this mount knows costs no lookups);
        /// taken back into `inodes` when looked up again.
        var retired: [UInt64: Inode] = [:]
        var handles: [UInt64: Handle] = [:]
        var nextHandle: UInt64 = 1
        var freeInos: Range<UInt64> = 0..<0

        static let retiredLimit = 16_384

        /// Takes `i` out of the table: no lookup or open holds it any more.
        mutating func retire(_ i: Inode) {
            inodes[i.ino] = nil
            guard !i.unlinked else { return }
            if retired.count >= Self.retiredLimit { retired.removeAll(keepingCapacity: true) }
            retired[i.ino] = i
        }

        /// Inode `ino` from the table, or back from the retired ones.
        mutating func reinstated(_ ino: UInt64) -> Inode? {
            if let i = inodes[ino] { return i }
            guard let i = retired.removeValue(forKey: ino) else { return nil }
            inodes[ino] = i
            return i
        }
    }
    enum Handle {
        case file(ino: UInt64, append: Bool, write: Bool)
        case directory(ino: UInt64, entries: [DirectoryEntry]?)
    }
    let state = Locked(State())
    /// Data of removed files waiting to be freed (`reclaimLater`).
    let reclaims = Locked(Reclaims())
    struct Reclaims {
        var queue: [(fid: Fid, multipart: Bool)] = []
        var running = false
    }
    let namespace = KeyedLocks<Int>()
    /// Names known present or absent (NameCache.swift).
    let names = Locked(Names())
    /// This process's change stamp (the S3 store's), written with each change of the object
    /// list.
    var stamp: ChangeStamp { store.stamp }
    /// Every change of the object list, in order (ChangeQueue.swift).
    let changes: ChangeQueue
    let fileLocks = KeyedLocks<UInt64>()

    public static let rootIno: UInt64 = 1
    public static let nameMax = 255
    public static let keyMax = 1024
    static let inoBlock: UInt64 = 4096
    static let emptyMD5 = "d41d8cd98f00b204e9800998ecf8427e"

    /// The record of an entry with no data yet: a directory, a special file, a new file.
    static func emptyRecord(modified t: UInt64) -> ObjectRecord {
        ObjectRecord(fid: S3Indexes.newDataFid(), size: 0, modified: t, etag: emptyMD5, attributes: [])
    }

    /// Opens the file system of bucket `bucketName`, making the bucket (owned by `owner`)
    /// and its file-system index if they do not exist.
    public init(store: S3Store, bucket bucketName: String, owner: String, options: FileSystemOptions = FileSystemOptions(), logger: Logger = Logger(label: "tessera.fs"))
        async throws
    {
        self.store = store
        self.bucketName = bucketName
        self.options = options
        self.logger = logger
        budget = MemoryBudget(limit: options.memoryBudget)
        var b = try await store.bucket(bucketName)
        if b == nil {
            do { b = try await store.createBucket(bucketName, owner: owner) } catch let e as TesseraError where e.code == .exists {
                b = try await store.bucket(bucketName)
            }
        }
        guard let b else { throw TesseraError(.notFound, "bucket '\(bucketName)' vanished while being made") }
        bucket = b
        maxRecord = await store.cluster.maxRecordValue()
        inlineLimit = min(options.inlineLimit, max(0, maxRecord - 512))
        changes = ChangeQueue(cluster: store.cluster, index: b.objects)
        fsIndex = S3Indexes.fileSystemIndex(of: b)
        _ = try await store.cluster.createIndex(fsIndex)
        let root = try await loadRoot()
        state.withLock { $0.inodes[Self.rootIno] = root }
    }

    private func loadRoot() async throws -> Inode {
        if let v = try await cluster.get(bucket.objects, [[]])[0] {
            let r = try ObjectRecord.decode(v)
            if let p = r.posix { return Inode(ino: Self.rootIno, key: [], record: r, posix: try Posix.decode(p), linked: false, implied: false) }
        }
        let t = bucket.created
        let r = Self.emptyRecord(modified: t)
        let p = Posix(ino: Self.rootIno, mode: FileType.directory.rawValue | 0o755, uid: options.defaultUid, gid: options.defaultGid, atime: t, ctime: t)
        return Inode(ino: Self.rootIno, key: [], record: r, posix: p, linked: false, implied: true)
    }

    // MARK: The inode table

    func inode(_ ino: UInt64) throws -> Inode {
        guard let i = state.withLock({ $0.inodes[ino] }) else { throw FSError(ESTALE, "inode \(ino) is not known") }
        return i
    }

    func attributes(_ i: Inode) -> Attributes {
        state.withLock { _ in attributesLocked(i) }
    }

    private func attributesLocked(_ i: Inode) -> Attributes {
        let p = i.posix
        let size: UInt64
        switch p.type {
        case .regular: size = i.data?.size ?? i.record.size
        case .symlink: size = UInt64(p.target.count)
        default: size = 0
        }
        let nlink: UInt32 = i.unlinked ? 0 : (p.type == .directory ? 1 : (i.record.links ?? 1))
        return Attributes(
            ino: i.ino, mode: p.mode & ~(options.umask & 0o7777), nlink: nlink, uid: options.uid ?? p.uid, gid: options.gid ?? p.gid, rdev: p.rdev, size: size,
            atime: p.atime, mtime: i.record.modified, ctime: p.ctime)
    }

    public func getattr(_ ino: UInt64) throws -> Attributes { attributes(try inode(ino)) }

    /// The kernel forgets `n` lookups of `ino`.
    public func forget(_ ino: UInt64, _ n: UInt64) {
        state.withLock { s in
            guard ino != Self.rootIno, let i = s.inodes[ino] else { return }
            i.lookups -= min(i.lookups, n)
            if i.lookups == 0 && i.opens == 0 { s.retire(i) }
        }
    }

    /// A readdirplus entry the kernel now holds: one lookup more.
    public func noteLookup(_ ino: UInt64) {
        state.withLock { s in s.inodes[ino]?.lookups += 1 }
    }

    // MARK: Finding entries

    enum Found {
        /// `entry` as stored; `record` what it stands for (a hard link's inode record).
        case file(key: [UInt8], entry: ObjectRecord, record: ObjectRecord)
        case directory(key: [UInt8], record: ObjectRecord?)
        case none
    }

    /// A name a directory can show: not empty, not `.` or `..`, at most 255 bytes.
    static func isName(_ name: [UInt8]) -> Bool {
        !name.isEmpty && name.count <= nameMax && name != [0x2E] && name != [0x2E, 0x2E]
    }

    func childKey(_ parent: Inode, _ name: [UInt8]) throws -> [UInt8] {
        guard name.count <= Self.nameMax else { throw FSError(ENAMETOOLONG, "names are at most \(Self.nameMax) bytes") }
        guard Self.isName(name), !name.contains(0x2F) else { throw FSError(EINVAL, "bad name") }
        // A rename may change the parent's key meanwhile (`rekey`, under the state lock).
        let (type, parentKey) = state.withLock { _ in (parent.type, parent.key) }
        guard type == .directory else { throw FSError(ENOTDIR) }
        let key = parentKey + name
        guard key.count < Self.keyMax else { throw FSError(ENAMETOOLONG, "paths are at most \(Self.keyMax - 1) bytes") }
        return key
    }

    /// True if some key lies below directory key `dirKey` (which ends in `/`).
    func hasEntries(under dirKey: [UInt8]) async throws -> Bool {
        await changes.drained()
        let below = try await cluster.next(bucket.objects, from: [dirKey], limit: 1, excludeStart: true)[0]
        return below.first?.key.starts(with: dirKey) ?? false
    }

    /// What the name `key` is: a directory (its own entry, or keys under it), a file, or
    /// nothing. A directory hides a file of the same name (S3 allows both).
    ///
    /// One NEXT answers all three: the first key at or after `key` is the file's entry if it
    /// is `key`; the first at or after `key/` is the directory's entry if it is `key/`, and a
    /// key below it implies the directory.
    func find(_ key: [UInt8]) async throws -> Found {
        if let known = await cachedFind(key) { return known }
        let generation = namesGeneration
        let found = try await findStored(key)
        if case .none = found { rememberAbsent(key, readAt: generation) }
        return found
    }

    /// `find` from the store, never from the name cache, once this mount's queued changes
    /// are in it: all of them, or with `settlingOnly` those of `key` and the names under it.
    func findStored(_ key: [UInt8], settlingOnly: Bool = false) async throws -> Found {
        if settlingOnly { await changes.settled(key) } else { await changes.drained() }
        let dirKey = key + [0x2F]
        let firsts = try await cluster.next(bucket.objects, from: [key, dirKey], limit: 1)
        if let d = firsts[1].first, d.key.starts(with: dirKey) {
            return .directory(key: dirKey, record: d.key == dirKey ? try ObjectRecord.decode(d.value) : nil)
        }
        if let f = firsts[0].first, f.key == key {
            let entry = try ObjectRecord.decode(f.value)
            return .file(key: key, entry: entry, record: try await store.resolve(bucket, entry))
        }
        return .none
    }

    func synthesizedPosix(_ key: [UInt8], _ record: ObjectRecord?, directory: Bool) -> Posix {
        let t = record?.modified ?? bucket.created
        return Posix(
            ino: hashedInode(key), mode: directory ? FileType.directory.rawValue | 0o755 : FileType.regular.rawValue | 0o644, uid: options.defaultUid,
            gid: options.defaultGid, atime: t, ctime: t)
    }

    /// The inode for what `find` found, from the table (refreshed unless open) or new.
    func inode(for found: Found) throws -> Inode? {
        let ino: UInt64, key: [UInt8], record: ObjectRecord, posix: Posix, linked: Bool, implied: Bool
        switch found {
        case .none: return nil
        case .file(let k, let entry, let r):
            posix = try r.posix.map(Posix.decode) ?? synthesizedPosix(k, r, directory: false)
            ino = entry.inode ?? posix.ino
            (key, record, linked, implied) = (k, r, entry.inode != nil, false)
        case .directory(let k, let r):
            posix = try r?.posix.map(Posix.decode) ?? synthesizedPosix(k, r, directory: true)
            ino = posix.ino
            key = k
            record = r ?? Self.emptyRecord(modified: posix.ctime)
            (linked, implied) = (false, r == nil)
        }
        let i = state.withLock { s in
            if let i = s.reinstated(ino) {
                i.key = key
                if i.data == nil && !i.unlinked {
                    (i.record, i.posix, i.linked, i.implied) = (record, posix, linked, implied)
                    i.storedData = nil
                }
                return i
            }
            let i = Inode(ino: ino, key: key, record: record, posix: posix, linked: linked, implied: implied)
            s.inodes[ino] = i
            return i
        }
        let directory = posix.type == .directory
        rememberPresent(directory ? Array(key.dropLast()) : key, i, directory: directory)
        return i
    }

    public func lookup(_ parent: UInt64, _ name: [UInt8]) async throws -> Attributes {
        let p = try inode(parent)
        let key = try childKey(p, name)
        guard let i = try inode(for: try await find(key)) else { throw FSError(ENOENT) }
        state.withLock { _ in i.lookups += 1 }
        return attributes(i)
    }

    /// `lookup` answered from the name cache without waiting, or nil.
    public func lookupNow(_ parent: UInt64, _ name: [UInt8]) throws -> Attributes? {
        let p = try inode(parent)
        let key = try childKey(p, name)
        switch known(key) {
        case nil: return nil
        case .absent: throw FSError(ENOENT)
        case .inode(let i):
            // Forgotten since known() looked: let the store answer.
            return state.withLock { s in
                guard s.reinstated(i.ino) === i else { return nil }
                i.lookups += 1
                return attributesLocked(i)
            }
        }
    }

    // MARK: Storing records

    /// The record of `i` as it is to be stored.
    func storedRecord(_ i: Inode) -> ObjectRecord {
        state.withLock { _ in
            var r = i.record
            if let d = i.data {
                (r.size, r.inline) = d.published.withLock { $0 }
            }
            r.posix = i.posix.encode()
            return r
        }
    }

    /// Puts the records of `inodes` (and deletes `deleting`) in one UPDATE of the object
    /// list (through the change queue); hard-linked inodes go to the file-system index first.
    func storeRecords(_ inodes: [Inode], deleting: [[UInt8]] = [], putting extra: [Record] = [], sync: Bool = false) async throws {
        let (puts, linkedPuts, data) = records(of: inodes, extra)
        if !linkedPuts.isEmpty { try await cluster.put(fsIndex, linkedPuts, sync: sync) }
        if !puts.isEmpty || !deleting.isEmpty {
            try await changes.submit(deleting: deleting, putting: puts + [stamp.next()], sync: sync)
        }
        stored(inodes, data)
    }

    /// `storeRecords` of inodes that are not hard links, answered at once: the change is
    /// written behind (ChangeQueue.swift), and `then` runs once it is in the store.
    func storeRecordsBehind(_ inodes: [Inode], deleting: [[UInt8]], putting extra: [Record], then: (@Sendable () async -> Void)?) {
        let (puts, linked, data) = records(of: inodes, extra)
        precondition(linked.isEmpty, "a hard link's record is stored in the file-system index, never written behind")
        changes.submitBehind(deleting: deleting, putting: puts + [stamp.next()], after: then) { [weak self] error in
            self?.lostChange(error)
        }
        // A failure is reported by the next fsync's wait for the queue, fdatasync's too.
        stored(inodes, data)
    }

    /// The object list's records of `inodes` (after `extra`), the file-system index's, and
    /// the data each inode's record names.
    private func records(of inodes: [Inode], _ extra: [Record]) -> (puts: [Record], linked: [Record], data: [(fid: Fid, size: UInt64)?]) {
        var puts = extra
        var linkedPuts: [Record] = []
        var data: [(fid: Fid, size: UInt64)?] = []
        for i in inodes {
            let r = storedRecord(i)
            data.append(r.inline == nil ? (r.fid, r.size) : nil)
            let (linked, key, ino) = state.withLock { _ in (i.linked, i.key, i.ino) }
            if linked {
                linkedPuts.append(Record(key: S3Indexes.inodeKey(ino), value: r.encode()))
            } else {
                puts.append(Record(key: key, value: r.encode()))
            }
        }
        return (puts, linkedPuts, data)
    }

    private func stored(_ inodes: [Inode], _ data: [(fid: Fid, size: UInt64)?]) {
        state.withLock { _ in
            for (i, d) in zip(inodes, data) {
                if i.implied && i.type == .directory { i.implied = false }
                i.storedData = d
            }
        }
    }

    /// A change written behind could not be stored: what the names are is not known.
    private func lostChange(_ error: Error) {
        logger.error("a change written behind was not stored: \(error); the next fsync reports it")
        names.withLock { $0.clear() }
    }

    /// Waits for every queued change, reports one written behind that failed, then syncs
    /// every server: what `fsync` is after its file's own writes.
    public func syncEverything() async throws {
        await changes.drained()
        if let e = changes.takeFailure() { throw e }
        try await cluster.sync()
    }

    /// Marks `dir` changed now (mtime and ctime), for the caller to store.
    func touch(_ dir: Inode, _ t: UInt64) {
        state.withLock { _ in
            dir.record.modified = t
            dir.posix.ctime = t
        }
    }

    /// Runs a change of names under the namespace lock. If it fails, what it changed is not
    /// known (a store that did not answer, a name the cache thought absent): the name cache
    /// is emptied.
    func changingNames<R>(_ body: () async throws -> R) async throws -> R {
        try await namespace.withLock(0) {
            do { return try await body() } catch {
                names.withLock { $0.clear() }
                throw error
            }
        }
    }

    func checkWritable() throws {
        if options.readOnly { throw FSError(EROFS) }
    }

    // MARK: Inode numbers

    /// A new inode number. Numbers are claimed from the file-system index in blocks of
    /// 4096 with create-only puts, so two mounts of one bucket never hand out the same.
    func allocateIno() async throws -> UInt64 {
        if let n = takeIno() { return n }
        let hintKey: [UInt8] = [0xFE]
        var block: UInt64 = 0
        if let v = try await cluster.get(fsIndex, [hintKey])[0], v.count == 8 { block = v.withUnsafeBytes { UInt64(bigEndian: $0.loadUnaligned(as: UInt64.self)) } }
        while true {
            let claim = [0xFF] + S3Indexes.inodeKey(block)
            let st = try await cluster.put(fsIndex, [Record(key: claim, value: [])], mode: .createOnly, sync: true)
            if st[0] == .ok { break }
            block += 1
        }
        try await cluster.put(fsIndex, [Record(key: hintKey, value: S3Indexes.inodeKey(block + 1))])
        let first = max(2, block * Self.inoBlock)
        let range = first..<((block + 1) * Self.inoBlock)
        state.withLock { $0.freeInos = (range.lowerBound + 1)..<range.upperBound }
        return range.lowerBound
    }

    /// A number from the block this mount holds, if any is left.
    func takeIno() -> UInt64? {
        state.withLock { s -> UInt64? in
            guard let n = s.freeInos.first else { return nil }
            s.freeInos = (n + 1)..<s.freeInos.upperBound
            return n
        }
    }
}
