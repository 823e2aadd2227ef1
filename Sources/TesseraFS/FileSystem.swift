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
// (inodes, handles) sit behind a mutex and are only touched in short synchronous sections.
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

    private func synthesizedPosix(_ key: [UInt8], _ record: ObjectRecord?, directory: Bool) -> Posix {
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
    private func storedRecord(_ i: Inode) -> ObjectRecord {
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
    private func touch(_ dir: Inode, _ t: UInt64) {
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

    private func checkWritable() throws {
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
    private func takeIno() -> UInt64? {
        state.withLock { s -> UInt64? in
            guard let n = s.freeInos.first else { return nil }
            s.freeInos = (n + 1)..<s.freeInos.upperBound
            return n
        }
    }

    // MARK: Making entries

    /// A new inode for `key` in `p`, made now by `caller` (set-group-ID directories pass
    /// their group on), and the parent's times changed; for the caller to store.
    private func makeInode(_ p: Inode, _ key: [UInt8], _ type: FileType, mode: UInt32, rdev: UInt64, target: [UInt8], caller: Caller, ino: UInt64) -> Inode {
        let t = now()
        var gid = caller.gid
        var perms = mode & 0o7777
        let parentPosix = state.withLock { _ in p.posix }
        if parentPosix.mode & 0o2000 != 0 {
            gid = parentPosix.gid
            if type == .directory { perms |= 0o2000 }
        }
        let posix = Posix(ino: ino, mode: type.rawValue | perms, uid: caller.uid, gid: gid, atime: t, ctime: t, rdev: rdev, target: target)
        let i = Inode(ino: ino, key: type == .directory ? key + [0x2F] : key, record: Self.emptyRecord(modified: t), posix: posix, linked: false, implied: false)
        touch(p, t)
        return i
    }

    /// Puts a new inode in the table (one lookup, the kernel's) and its name in the cache.
    private func register(_ i: Inode, _ key: [UInt8]) {
        state.withLock { s in
            i.lookups = 1
            s.inodes[i.ino] = i
        }
        names.withLock { n in
            n.set(key, i.type == .directory ? .directory(i.ino) : .file(i.ino))
            // Nothing is under a new directory: all that comes will come through here.
            if i.type == .directory { n.complete.insert(key + [0x2F]) }
        }
    }

    /// `newEntry` of a name the cache knows absent, done at once on the caller's thread (no
    /// task, no round trip), its entry written behind; with `opening`, also opened with
    /// those flags (a create). Nil, with nothing changed, if it cannot be done so: the cache
    /// does not know the name, another namespace change is running, or no inode number is
    /// at hand.
    private func newEntryNow(
        parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt64 = 0, target: [UInt8] = [], caller: Caller, opening flags: Int32? = nil
    ) throws -> (Inode, handle: UInt64?)? {
        try checkWritable()
        let p = try inode(parent)
        let key = try childKey(p, name)
        let type = FileType(mode: mode) ?? .regular
        if type == .directory && key.count + 1 >= Self.keyMax { throw FSError(ENAMETOOLONG) }
        let made = try namespace.withLockIfFree(0) { () throws -> (Inode, UInt64?)? in
            guard let k = known(key) else { return nil }
            guard case .absent = k else { throw FSError(EEXIST) }
            guard let ino = takeIno() else { return nil }
            let i = makeInode(p, key, type, mode: mode, rdev: rdev, target: target, caller: caller, ino: ino)
            var handle: UInt64? = nil
            if type == .regular {
                i.attributesChanged = true
                if let flags {
                    // Opened before anyone can find it, so no lock is needed.
                    i.data = FileData(cluster: cluster, budget: budget, fid: i.record.fid, size: 0, inlineLimit: inlineLimit)
                    i.opens = 1
                    let acc = flags & O_ACCMODE
                    handle = newHandle(.file(ino: ino, append: flags & O_APPEND != 0, write: acc == O_WRONLY || acc == O_RDWR))
                }
            }
            storeRecordsBehind([i, p], deleting: [], putting: [], then: nil)
            register(i, key)
            return (i, handle)
        }
        return made ?? nil
    }

    /// With `exclusive` (O_EXCL) a regular file is always made by a create-only put, even
    /// when the cache knows the name absent: someone else may have made it since.
    private func newEntry(
        parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt64 = 0, target: [UInt8] = [], caller: Caller, exclusive: Bool = false
    ) async throws -> Inode {
        try checkWritable()
        let p = try inode(parent)
        let key = try childKey(p, name)
        let type = FileType(mode: mode) ?? .regular
        if type == .directory && key.count + 1 >= Self.keyMax { throw FSError(ENAMETOOLONG) }
        return try await changingNames {
            // A name the cache knows absent is made at once, its entry written behind (with
            // the parent's times, in the next UPDATE). Else a regular file is made with a
            // create-only put, checked against a directory of the same name at the same
            // time; other types look first.
            let known = await cachedFind(key)
            if let known { guard case .none = known else { throw FSError(EEXIST) } }
            let behind = known != nil && !(exclusive && type == .regular)
            // O_EXCL of a name known absent waits only for this mount's queued changes of
            // that name (a removal must land before the create-only put), not the whole queue.
            let settleName = known != nil && !behind
            async let found = behind ? Found.none : findStored(key, settlingOnly: settleName)
            if type != .regular && !behind {
                guard case .none = try await found else { throw FSError(EEXIST) }
            }
            let ino = try await allocateIno()
            let i = makeInode(p, key, type, mode: mode, rdev: rdev, target: target, caller: caller, ino: ino)
            if behind {
                _ = try await found
                // The first close stores the entry again and so waits for this change:
                // a file closed is in the store, even one never written.
                if type == .regular { i.attributesChanged = true }
                storeRecordsBehind([i, p], deleting: [], putting: [], then: nil)
            } else if type == .regular {
                // A removal of this key still queued goes first.
                if settleName { await changes.settled(key) } else { await changes.drained() }
                let st = try await cluster.put(bucket.objects, [Record(key: key, value: storedRecord(i).encode())], mode: .createOnly)
                let existing = try await found
                if st[0] == .exists {
                    // Made elsewhere since the cache learnt it absent, or since a lookup.
                    names.withLock { $0.clear() }
                    throw FSError(EEXIST)
                }
                if case .directory = existing {
                    try await cluster.delete(bucket.objects, [key])
                    throw FSError(EEXIST)
                }
                // The parent's times are written behind, as for any create the cache answers.
                storeRecordsBehind([p], deleting: [], putting: [], then: nil)
            } else {
                try await storeRecords([i, p])
            }
            register(i, key)
            return i
        }
    }

    public func mkdir(_ parent: UInt64, _ name: [UInt8], mode: UInt32, caller: Caller) async throws -> Attributes {
        attributes(try await newEntry(parent: parent, name: name, mode: FileType.directory.rawValue | (mode & 0o7777), caller: caller))
    }

    /// `mkdir` done at once when the cache knows the name absent, else nil.
    public func mkdirNow(_ parent: UInt64, _ name: [UInt8], mode: UInt32, caller: Caller) throws -> Attributes? {
        try newEntryNow(parent: parent, name: name, mode: FileType.directory.rawValue | (mode & 0o7777), caller: caller).map { attributes($0.0) }
    }

    /// `create` done at once when the cache knows the name absent, else nil. Never for
    /// O_EXCL: only the index's create-only put can say no one else made the name
    /// meanwhile (another mount, a gateway).
    public func createNow(_ parent: UInt64, _ name: [UInt8], mode: UInt32, flags: Int32, caller: Caller) throws -> (Attributes, UInt64)? {
        guard flags & O_EXCL == 0, let (i, h) = try newEntryNow(parent: parent, name: name, mode: FileType.regular.rawValue | (mode & 0o7777), caller: caller, opening: flags), let h else { return nil }
        return (attributes(i), h)
    }

    public func mknod(_ parent: UInt64, _ name: [UInt8], mode: UInt32, rdev: UInt64, caller: Caller) async throws -> Attributes {
        guard FileType(mode: mode) != nil, FileType(mode: mode) != .directory, FileType(mode: mode) != .symlink else { throw FSError(EINVAL, "mknod of mode \(String(mode, radix: 8))") }
        return attributes(try await newEntry(parent: parent, name: name, mode: mode, rdev: rdev, caller: caller))
    }

    public func symlink(_ target: [UInt8], _ parent: UInt64, _ name: [UInt8], caller: Caller) async throws -> Attributes {
        guard !target.isEmpty, target.count < 4096 else { throw FSError(target.isEmpty ? ENOENT : ENAMETOOLONG) }
        return attributes(try await newEntry(parent: parent, name: name, mode: FileType.symlink.rawValue | 0o777, target: target, caller: caller))
    }

    public func readlink(_ ino: UInt64) throws -> [UInt8] {
        let i = try inode(ino)
        return try state.withLock { _ in
            guard i.type == .symlink else { throw FSError(EINVAL) }
            return i.posix.target
        }
    }

    /// Creates and opens a regular file. Returns its attributes and a handle.
    public func create(_ parent: UInt64, _ name: [UInt8], mode: UInt32, flags: Int32, caller: Caller) async throws -> (Attributes, UInt64) {
        let i = try await newEntry(parent: parent, name: name, mode: FileType.regular.rawValue | (mode & 0o7777), caller: caller, exclusive: flags & O_EXCL != 0)
        let (h, _) = try await open(i.ino, flags: flags & ~O_TRUNC, fresh: true)
        return (attributes(i), h)
    }

    // MARK: Removing entries

    public func unlink(_ parent: UInt64, _ name: [UInt8]) async throws {
        try checkWritable()
        let p = try inode(parent)
        let key = try childKey(p, name)
        try await changingNames {
            let found = try await find(key)
            guard case .file(_, let entry, let record) = found, let i = try inode(for: found) else {
                if case .directory = found { throw FSError(EISDIR) }
                throw FSError(ENOENT)
            }
            let t = now()
            touch(p, t)
            let (puts, after) = try await letGo(key, entry: entry, record: record, i, at: t)
            switch after {
            case .dropLink:
                try await storeRecords([p], deleting: [key], putting: puts)
                names.withLock { $0.set(key, .absent) }
                try await finish(after, owner: key)
            case .nothing, .free:
                removeBehind(key, from: p, putting: puts, then: after)
            }
        }
    }

    /// `unlink` done at once on the caller's thread when the cache knows the name and the
    /// file is closed and not a hard link: the removal (and its free marker) is written
    /// behind, the data freed once it is in the store. False, with nothing changed, if it
    /// cannot be done so.
    public func unlinkNow(_ parent: UInt64, _ name: [UInt8]) throws -> Bool {
        try checkWritable()
        let p = try inode(parent)
        let key = try childKey(p, name)
        let done = try namespace.withLockIfFree(0) { () throws -> Bool in
            guard let k = known(key) else { return false }
            guard case .inode(let i) = k else { throw FSError(ENOENT) }
            if i.type == .directory { throw FSError(EISDIR) }
            let t = now()
            let record: ObjectRecord? = state.withLock { _ in
                guard i.opens == 0, i.data == nil, !i.linked, !i.unlinked else { return nil }
                i.unlinked = true
                i.posix.ctime = t
                return i.record
            }
            guard let record else { return false }
            touch(p, t)
            let (marker, after) = freeing(record, owner: key)
            removeBehind(key, from: p, putting: marker, then: after)
            return true
        }
        return done ?? false
    }

    /// What is left to do once a file's entry is gone (see `letGo`).
    private enum AfterRemoval {
        case nothing
        /// Free the data, then the free marker that went in the UPDATE.
        case free(Fid, multipart: Bool)
        /// Drop one link of the hard-linked inode (the S3 store frees it with the last).
        case dropLink(UInt64)
    }

    /// What removing file entry `key` (stored as `entry`, standing for `record`, cached as
    /// `i`) takes besides deleting the key: records for the same UPDATE, and what to do
    /// after it. An open file keeps its data until its last close: a hard link's inode
    /// record stays (with no links), a plain file's data is noted pending-free, so a crash
    /// before the close leaves it to the sweeper.
    private func letGo(_ key: [UInt8], entry: ObjectRecord, record: ObjectRecord, _ i: Inode, at t: UInt64) async throws -> ([Record], AfterRemoval) {
        let owner = String(decoding: key, as: UTF8.self)
        if let ino = entry.inode {
            let left = (record.links ?? 1) - 1
            let open = state.withLock { _ in
                i.record.links = left
                i.posix.ctime = t
                if left == 0 { i.unlinked = true }
                return i.opens > 0
            }
            if left == 0 && open {
                try await storeRecords([i])
                return ([], .nothing)
            }
            return ([], .dropLink(ino))
        }
        let open = state.withLock { _ in
            i.unlinked = true
            i.posix.ctime = t
            return i.opens > 0
        }
        if open {
            try await store.notePending([(record.fid, .object(bucket: bucketName, key: owner))])
            return ([], .nothing)
        }
        // The free marker goes in the same UPDATE as the entry's removal.
        return freeing(record, owner: key)
    }

    /// The free marker for the data of a closed file's removed entry `key`, to go in the
    /// removal's UPDATE, and the free to do once it is in the store; nothing for a file
    /// whose object holds no data.
    private func freeing(_ record: ObjectRecord, owner key: [UInt8]) -> ([Record], AfterRemoval) {
        guard record.objectHoldsData else { return ([], .nothing) }
        let marker = store.freeMarker(record.fid, owner: String(decoding: key, as: UTF8.self), bucket: bucketName)
        return ([marker], .free(record.fid, multipart: record.multipart))
    }

    /// Removes entry `key` of directory `p` written behind (answered now): the removal,
    /// with `puts` (the data's free marker) and the parent's times, goes in the next UPDATE,
    /// and the data is freed once that is in the store.
    private func removeBehind(_ key: [UInt8], from p: Inode, putting puts: [Record], then after: AfterRemoval) {
        storeRecordsBehind([p], deleting: [key], putting: puts) { [weak self] in
            if case .free(let fid, let multipart) = after { self?.reclaimLater(fid, multipart: multipart) }
        }
        names.withLock { $0.set(key, .absent) }
    }

    private func finish(_ after: AfterRemoval, owner key: [UInt8]) async throws {
        switch after {
        case .nothing: break
        case .free(let fid, let multipart):
            reclaimLater(fid, multipart: multipart)
        case .dropLink(let ino):
            try await store.dropLink(bucketName, bucket, inode: ino, owner: String(decoding: key, as: UTF8.self))
        }
    }

    // MARK: Freeing removed data

    /// Frees the data of a removed file after the removal is answered. The free marker that
    /// went in the removal's UPDATE keeps a crash from leaking it (a starting mount and the
    /// gateway's sweeper free what a dead process left), so nothing needs to wait for it.
    private func reclaimLater(_ fid: Fid, multipart: Bool) {
        let start = reclaims.withLock { r -> Bool in
            r.queue.append((fid, multipart))
            let idle = !r.running
            r.running = true
            return idle
        }
        if start { Task { await self.reclaimQueued() } }
    }

    /// Frees queued data, up to 64 objects at a time in one pipeline per server, then drops
    /// their free markers in one DEL. If the batch fails, each is tried alone; a free that
    /// fails leaves its marker for the sweepers.
    private func reclaimQueued() async {
        while true {
            let batch = reclaims.withLock { r -> [(fid: Fid, multipart: Bool)] in
                let b = Array(r.queue.prefix(64))
                r.queue.removeFirst(b.count)
                if b.isEmpty { r.running = false }
                return b
            }
            if batch.isEmpty { return }
            var freed: [Fid] = []
            do {
                try await store.free(batch)
                freed = batch.map(\.fid)
            } catch {
                for o in batch {
                    do {
                        try await store.free(o.fid)
                        freed.append(o.fid)
                    } catch {
                        logger.warning("freeing the data \(o.fid) of a removed file: \(error); its free marker stays for the sweeper")
                    }
                }
            }
            if !freed.isEmpty { _ = try? await cluster.delete(bucket.objects, freed.map(S3Store.freeMarkerKey)) }
        }
    }

    /// Returns once every queued free is done.
    func reclaimsDone() async {
        while reclaims.withLock({ $0.running }) { try? await Task.sleep(for: .milliseconds(2)) }
    }

    public func rmdir(_ parent: UInt64, _ name: [UInt8]) async throws {
        try checkWritable()
        let p = try inode(parent)
        let key = try childKey(p, name)
        try await changingNames {
            let found = try await find(key)
            guard case .directory(let dirKey, _) = found, let i = try inode(for: found) else {
                if case .file = found { throw FSError(ENOTDIR) }
                throw FSError(ENOENT)
            }
            if try await hasEntries(under: dirKey) { throw FSError(ENOTEMPTY) }
            let t = now()
            touch(p, t)
            try await storeRecords([p], deleting: [dirKey])
            state.withLock { _ in i.unlinked = true }
            names.withLock { n in
                n.set(key, .absent)
                n.complete.remove(dirKey)
            }
        }
    }

    // MARK: Rename and link

    public static let renameNoReplace: UInt32 = 1
    public static let renameExchange: UInt32 = 2

    public func rename(_ parent: UInt64, _ name: [UInt8], _ newParent: UInt64, _ newName: [UInt8], flags: UInt32) async throws {
        try checkWritable()
        guard flags & ~(Self.renameNoReplace | Self.renameExchange) == 0, flags != Self.renameNoReplace | Self.renameExchange else { throw FSError(EINVAL) }
        let p = try inode(parent)
        let q = try inode(newParent)
        let from = try childKey(p, name)
        let to = try childKey(q, newName)
        try await changingNames {
            let source = try await find(from)
            let target = try await find(to)
            guard let s = try inode(for: source) else { throw FSError(ENOENT) }
            let tgt = try inode(for: target)
            let sourceIsDir: Bool
            if case .directory = source { sourceIsDir = true } else { sourceIsDir = false }
            let targetIsDir: Bool
            if case .directory = target { targetIsDir = true } else { targetIsDir = false }
            if from == to || (tgt != nil && tgt === s) { return }
            // A directory cannot move under itself.
            if sourceIsDir && (to + [0x2F]).starts(with: from + [0x2F]) { throw FSError(EINVAL) }
            if targetIsDir && !(sourceIsDir) && flags & Self.renameExchange == 0 { throw FSError(EISDIR) }
            if sourceIsDir && (tgt != nil && !targetIsDir) && flags & Self.renameExchange == 0 { throw FSError(ENOTDIR) }
            if flags & Self.renameNoReplace != 0 && tgt != nil { throw FSError(EEXIST) }
            if flags & Self.renameExchange != 0 {
                guard let tgt else { throw FSError(ENOENT) }
                if (from + [0x2F]).starts(with: to + [0x2F]) { throw FSError(EINVAL) }
                try await exchange(s, source, from, tgt, target, to, p, q)
                return
            }
            var replaced: (Inode, Found)? = nil
            if let tgt {
                if targetIsDir, try await hasEntries(under: to + [0x2F]) { throw FSError(ENOTEMPTY) }
                replaced = (tgt, target)
            }
            try await move(s, source, from, to, p, q, replacing: replaced)
        }
    }

    /// Every entry under a name, as moves to another name: for a file its entry, for a
    /// directory its own entry and every key below it. Entries without POSIX attributes get
    /// them now, keeping the inode numbers they had under their old keys.
    private func moves(_ found: Found, _ from: [UInt8], _ to: [UInt8], _ t: UInt64) async throws -> (deletes: [[UInt8]], puts: [Record]) {
        switch found {
        case .none: return ([], [])
        case .file(let key, let entry, _):
            var e = entry
            if e.posix == nil { e.posix = synthesizedPosix(key, e, directory: false).encode() }
            if e.inode == nil, var px = try e.posix.map(Posix.decode) {
                px.ctime = t
                e.posix = px.encode()
            }
            return ([key], [Record(key: to, value: e.encode())])
        case .directory(let dirKey, let record):
            let newDir = to + [0x2F]
            var deletes: [[UInt8]] = []
            var puts: [Record] = []
            var r = record ?? Self.emptyRecord(modified: t)
            var px = try record?.posix.map(Posix.decode) ?? synthesizedPosix(dirKey, record, directory: true)
            px.ctime = t
            r.posix = px.encode()
            if record != nil { deletes.append(dirKey) }
            puts.append(Record(key: newDir, value: r.encode()))
            await changes.drained()
            var start = dirKey
            while true {
                let batch = try await cluster.next(bucket.objects, from: [start], limit: 1000, excludeStart: true)[0]
                for rec in batch {
                    guard rec.key.starts(with: dirKey) else { return (deletes, puts) }
                    var e = try ObjectRecord.decode(rec.value)
                    if e.posix == nil && e.inode == nil {
                        e.posix = synthesizedPosix(rec.key, e, directory: rec.key.last == 0x2F).encode()
                    }
                    let newKey = newDir + rec.key[dirKey.count...]
                    guard newKey.count < Self.keyMax else { throw FSError(ENAMETOOLONG, "a path under the new name would pass \(Self.keyMax - 1) bytes") }
                    deletes.append(rec.key)
                    puts.append(Record(key: newKey, value: e.encode()))
                }
                guard batch.count == 1000 else { return (deletes, puts) }
                start = batch.last!.key
            }
        }
    }

    /// Cached inodes whose keys start with `old` take `new` instead.
    private func rekey(_ old: [UInt8], _ new: [UInt8], exact: Bool) {
        state.withLock { s in
            for table in [s.inodes, s.retired] {
                for i in table.values where exact ? i.key == old : i.key.starts(with: old) { i.key = new + i.key[old.count...] }
            }
        }
    }

    private func move(_ s: Inode, _ source: Found, _ from: [UInt8], _ to: [UInt8], _ p: Inode, _ q: Inode, replacing: (Inode, Found)?) async throws {
        let t = now()
        var (deletes, puts) = try await moves(source, from, to, t)
        var after = AfterRemoval.nothing
        if let (old, found) = replacing {
            switch found {
            case .directory(let dirKey, let record):
                if record != nil { deletes.append(dirKey) }
                state.withLock { _ in old.unlinked = true }
            case .file(let key, let entry, let record):
                deletes.append(key)
                let (extra, then) = try await letGo(key, entry: entry, record: record, old, at: t)
                puts += extra
                after = then
            case .none: break
            }
        }
        // The deletes run first in the UPDATE: a key both deleted and put ends up put.
        touch(p, t)
        touch(q, t)
        let parents = p === q ? [p] : [p, q]
        let outside = state.withLock { _ in parents.filter { !$0.key.starts(with: from + [0x2F]) } }
        try await storeRecords(outside, deleting: deletes, putting: puts)
        if case .directory(let dirKey, _) = source {
            rekey(dirKey, to + [0x2F], exact: false)
            // Every name under both changed: start again.
            names.withLock { $0.clear() }
        } else {
            rekey(from, to, exact: true)
            names.withLock { n in
                n.set(from, .absent)
                n.set(to, .file(s.ino))
            }
        }
        state.withLock { _ in
            s.implied = false
            s.posix.ctime = t
        }
        try await finish(after, owner: to)
    }

    private func exchange(_ a: Inode, _ fa: Found, _ ka: [UInt8], _ b: Inode, _ fb: Found, _ kb: [UInt8], _ p: Inode, _ q: Inode) async throws {
        let t = now()
        let (da, pa) = try await moves(fa, ka, kb, t)
        let (db, pb) = try await moves(fb, kb, ka, t)
        touch(p, t)
        touch(q, t)
        let parents = p === q ? [p] : [p, q]
        try await storeRecords(parents, deleting: da + db, putting: pa + pb)
        // Swap the cached keys through a marker no key contains.
        let marker: [UInt8] = [0x00, 0xFF, 0x00]
        let aKey = state.withLock { _ in a.key }
        let bKey = state.withLock { _ in b.key }
        let aDir = a.type == .directory
        let bDir = b.type == .directory
        rekey(aKey, marker, exact: !aDir)
        rekey(bKey, aDir ? ka + [0x2F] : ka, exact: !bDir)
        if bDir && !aDir { rekey(ka + [0x2F], ka, exact: true) }
        rekey(marker, bDir ? kb + [0x2F] : kb, exact: !aDir)
        if aDir && !bDir { rekey(kb + [0x2F], kb, exact: true) }
        names.withLock { $0.clear() }
        state.withLock { _ in
            a.posix.ctime = t
            b.posix.ctime = t
        }
    }

    public func link(_ ino: UInt64, _ newParent: UInt64, _ newName: [UInt8]) async throws -> Attributes {
        try checkWritable()
        let i = try inode(ino)
        let q = try inode(newParent)
        let key = try childKey(q, newName)
        guard state.withLock({ _ in i.type }) != .directory else { throw FSError(EPERM, "hard links to directories") }
        return try await changingNames {
            if case .none = try await find(key) {} else { throw FSError(EEXIST) }
            let t = now()
            let (wasLinked, oldKey, unlinked) = state.withLock { _ in (i.linked, i.key, i.unlinked) }
            if unlinked { throw FSError(ENOENT) }
            state.withLock { _ in
                i.record.links = (i.record.links ?? 1) + 1
                i.posix.ctime = t
                i.linked = true
                i.storedData = nil  // its entries are put below, not by storeRecords
            }
            let r = storedRecord(i)
            var entry = r
            entry.links = nil
            entry.inode = ino
            entry.posix = nil
            try await cluster.put(fsIndex, [Record(key: S3Indexes.inodeKey(ino), value: r.encode())], sync: !wasLinked)
            touch(q, t)
            var puts = [Record(key: key, value: entry.encode())]
            if !wasLinked { puts.append(Record(key: oldKey, value: entry.encode())) }
            try await storeRecords([q], putting: puts)
            // A hard link is never answered from the cache: this sends the next lookup to
            // the store while the directory stays complete.
            names.withLock { $0.set(key, .file(ino)) }
            state.withLock { _ in i.lookups += 1 }
            return attributes(i)
        }
    }

    // MARK: Attributes

    public func setattr(_ ino: UInt64, _ c: AttributeChanges, caller: Caller) async throws -> Attributes {
        try checkWritable()
        let i = try inode(ino)
        return try await fileLocks.withLock(ino) {
            let t = now()
            if let size = c.size {
                guard i.type == .regular else { throw FSError(i.type == .directory ? EISDIR : EINVAL) }
                try await withData(i) { d in
                    do { try await d.truncate(to: size) } catch { throw dataError(error, i, d) }
                }
                resized(i, at: t, caller: caller)
            }
            try await namespace.withLock(0) {
                // Else written behind, unless a hard link (its record is in another index).
                if try change(i, c, at: t) { try await storeRecords([i]) }
            }
            return attributes(i)
        }
    }

    /// `setattr` done at once on the caller's thread when it needs no round trip (the file
    /// open, or closed and not a hard link; a size only to grow an open file, which
    /// `FileData.growResident` does in memory) and no lock is held; else nil.
    public func setattrNow(_ ino: UInt64, _ c: AttributeChanges, caller: Caller) throws -> Attributes? {
        try checkWritable()
        let i = try inode(ino)
        let done = try fileLocks.withLockIfFree(ino) { () throws -> Bool? in
            try namespace.withLockIfFree(0) { () throws -> Bool in
                let (waits, data) = state.withLock { _ in (i.linked && i.data == nil && !i.unlinked, i.data) }
                if waits { return false }
                let t = now()
                if let size = c.size {
                    guard i.type == .regular, let data, data.growResident(to: size) else { return false }
                    resized(i, at: t, caller: caller)
                }
                _ = try change(i, c, at: t)
                return true
            }
        }
        return done == true ? attributes(i) : nil
    }

    /// What a size change does beyond the data: mtime and ctime, and set-user-ID dropped
    /// unless root changed it.
    private func resized(_ i: Inode, at t: UInt64, caller: Caller) {
        state.withLock { _ in
            i.record.modified = t
            i.posix.ctime = t
            if caller.uid != 0 { i.posix.mode &= ~0o4000 }
        }
    }

    /// Applies mode, owner and time changes to `i` (ctime now) and sees that they are
    /// stored: an open file's with its data at the next flush or close, a closed file's
    /// entry written behind. True if the caller must store it (a closed hard link).
    /// Called under the inode's lock and the namespace lock.
    private func change(_ i: Inode, _ c: AttributeChanges, at t: UInt64) throws -> Bool {
        state.withLock { _ in
            if let m = c.mode { i.posix.mode = (i.posix.mode & 0o170000) | (m & 0o7777) }
            if c.uid != nil || c.gid != nil {
                if let u = c.uid { i.posix.uid = u }
                if let g = c.gid { i.posix.gid = g }
                if i.type != .directory && c.mode == nil { i.posix.dropSetIDs() }
            }
            switch c.atime {
            case .now: i.posix.atime = t
            case .at(let v): i.posix.atime = v
            case nil: break
            }
            switch c.mtime {
            case .now: i.record.modified = t
            case .at(let v): i.record.modified = v
            case nil: break
            }
            i.posix.ctime = t
        }
        let (gone, open, linked) = state.withLock { _ in
            if i.data != nil { i.attributesChanged = true }
            return (i.unlinked, i.data != nil, i.linked)
        }
        guard !gone && !open else { return false }
        if linked { return true }
        storeRecordsBehind([i], deleting: [], putting: [], then: nil)
        return false
    }

    // MARK: Extended attributes

    public static let xattrCreate: Int32 = 1
    public static let xattrReplace: Int32 = 2
    static let xattrValueMax = 64 << 10

    /// The errors `setxattr` gives before it changes anything: cheap, so the FUSE adapter
    /// answers them on its own thread (cp -a tries an ACL on every file).
    public func checkSetxattr(_ name: [UInt8], _ value: [UInt8]) throws {
        try checkWritable()
        guard !name.isEmpty, name.count <= 255 else { throw FSError(name.isEmpty ? EINVAL : ERANGE) }
        guard value.count <= Self.xattrValueMax else { throw FSError(E2BIG) }
        // POSIX ACLs are not kept: refusing them makes cp -a and friends fall back to chmod,
        // instead of storing an ACL that nothing would enforce. (A minimal access ACL is a
        // chmod: the FUSE adapter asks `accessACLChanges` first.)
        if name.starts(with: Array("system.posix_acl_".utf8)) { throw FSError(EOPNOTSUPP, "POSIX ACLs") }
    }

    /// `system.posix_acl_access`, as the kernel passes it to `setxattr`.
    public static let accessACL = Array("system.posix_acl_access".utf8)

    /// The mode change a POSIX access ACL stands for, if it is a minimal one: entries for the
    /// owner, the owning group and others only, which say exactly what the mode's permission
    /// bits say. Nil for any other ACL (refused: an ACL this mount would not enforce is not
    /// kept). cp -a sets one on every file it copies; taking it as the chmod it is saves the
    /// refusal and the chmod that follows.
    ///
    /// Format (little-endian): u32 version 2, then per entry u16 tag, u16 permissions (rwx =
    /// 4, 2, 1), u32 id. Tags: 0x01 owner, 0x04 owning group, 0x20 other (0x02 user, 0x08
    /// group and 0x10 mask make an ACL more than minimal).
    ///
    /// As when the kernel sets an ACL, set-group-ID is dropped unless the caller is root or
    /// in the file's group (its primary group: the request does not carry the others).
    public func accessACLChanges(_ ino: UInt64, _ value: [UInt8], caller: Caller) throws -> AttributeChanges? {
        guard value.count == 4 + 3 * 8, value.loadLE(at: 0, as: UInt32.self) == 2 else { return nil }
        var bits: [UInt16: UInt32] = [:]
        for k in 0..<3 {
            let tag = value.loadLE(at: 4 + 8 * k, as: UInt16.self)
            let perm = value.loadLE(at: 6 + 8 * k, as: UInt16.self)
            guard perm & ~7 == 0, bits[tag] == nil else { return nil }
            bits[tag] = UInt32(perm)
        }
        guard let owner = bits[0x01], let group = bits[0x04], let other = bits[0x20] else { return nil }
        let i = try inode(ino)
        let (mode, gid) = state.withLock { _ in (i.posix.mode, i.posix.gid) }
        let special = mode & (caller.uid == 0 || caller.gid == gid ? 0o7000 : 0o5000)
        return AttributeChanges(mode: special | owner << 6 | group << 3 | other)
    }

    public func setxattr(_ ino: UInt64, _ name: [UInt8], _ value: [UInt8], flags: Int32) async throws {
        try checkSetxattr(name, value)
        let i = try inode(ino)
        try await namespace.withLock(0) {
            try state.withLock { _ in
                let at = i.posix.xattrs.firstIndex { $0.name == name }
                if flags & Self.xattrCreate != 0 && at != nil { throw FSError(EEXIST) }
                if flags & Self.xattrReplace != 0 && at == nil { throw FSError(ENODATA) }
                if let at { i.posix.xattrs[at].value = value } else { i.posix.xattrs.append((name, value)) }
                i.posix.ctime = now()
            }
            try await storeRecords([i])
        }
    }

    public func getxattr(_ ino: UInt64, _ name: [UInt8]) throws -> [UInt8] {
        let i = try inode(ino)
        return try state.withLock { _ in
            guard let x = i.posix.xattrs.first(where: { $0.name == name }) else { throw FSError(ENODATA) }
            return x.value
        }
    }

    public func listxattr(_ ino: UInt64) throws -> [[UInt8]] {
        let i = try inode(ino)
        return state.withLock { _ in i.posix.xattrs.map(\.name) }
    }

    public func removexattr(_ ino: UInt64, _ name: [UInt8]) async throws {
        try checkWritable()
        let i = try inode(ino)
        try await namespace.withLock(0) {
            try state.withLock { _ in
                guard let at = i.posix.xattrs.firstIndex(where: { $0.name == name }) else { throw FSError(ENODATA) }
                i.posix.xattrs.remove(at: at)
                i.posix.ctime = now()
            }
            try await storeRecords([i])
        }
    }

    // MARK: Open files

    /// Runs `body` on the inode's data, opening it for the call if no handle has it open.
    /// Called under the inode's lock.
    private func withData<R>(_ i: Inode, _ body: (FileData) async throws -> R) async throws -> R {
        if let d = state.withLock({ _ in i.data }) { return try await body(d) }
        let d = try await openData(i)
        defer { state.withLock { _ in i.data = nil } }
        let r = try await body(d)
        try await writeBack(i, d, sync: false)
        await d.drop()
        return r
    }

    /// Makes the inode's FileData, and a multipart object (from S3) into a single one first.
    private func openData(_ i: Inode) async throws -> FileData {
        var record = state.withLock { _ in i.record }
        if record.multipart {
            record = try await flatten(i, record)
        }
        let d = FileData(cluster: cluster, budget: budget, fid: record.fid, size: record.size, inline: record.inline, inlineLimit: inlineLimit)
        state.withLock { _ in i.data = d }
        return d
    }

    /// Copies a multipart object into one object the mount can write in place.
    private func flatten(_ i: Inode, _ record: ObjectRecord) async throws -> ObjectRecord {
        let key = state.withLock { _ in i.key }
        let writer = try await store.newObject(for: .object(bucket: bucketName, key: String(decoding: key, as: UTF8.self)))
        try await store.reading(record) { reader in
            var at: UInt64 = 0
            while at < record.size {
                let n = Int(min(UInt64(reader.chunkSize), record.size - at))
                try await writer.write(try await reader.read(at: at, length: n))
                at += UInt64(n)
            }
        }
        _ = try await writer.finish()
        var r = record
        r.fid = writer.fid
        r.parts = 0
        try await store.checkOwned(writer.fid)
        try await namespace.withLock(0) {
            state.withLock { _ in i.record = r }
            try await storeRecords([i], sync: true)
        }
        try await store.free(record.fid)
        await store.dropPending([record.fid, writer.fid])
        return r
    }

    /// Writes the file's pages to its object, then stores its entry. A close keeps them in
    /// that order, so a reader never finds an entry whose data is still on its way.
    ///
    /// So does fsync, and the order makes it cheaper too. The data writes go without
    /// sync-wait: a server closes their transactions before it answers. The entry's UPDATE
    /// then goes with sync-wait, so on its replicas it lands in the same log group as the
    /// data they hold and as every earlier change there: one log write each, where a
    /// sync-wait write beside the UPDATE took two, one after the other. Beside the UPDATE,
    /// every other server this mount wrote to gets a SYNC. If there is no UPDATE to send,
    /// the queue is drained and everything SYNCed.
    private func writeBack(_ i: Inode, _ d: FileData, sync: Bool) async throws {
        do { try await writeBackData(i, d, sync: sync) } catch { throw dataError(error, i, d) }
    }

    private func writeBackData(_ i: Inode, _ d: FileData, sync: Bool) async throws {
        // Data kept in the entry goes to the object if the entry would be too big to store.
        if let bytes = d.inline, !bytes.isEmpty, storedRecord(i).encode().count > maxRecord { try await d.spill() }
        try await d.flush()
        guard sync else {
            try await storeData(i, d, sync: false)
            return
        }
        // The UPDATE goes to the replicas of the object list (ChangeQueue), not of fsIndex.
        async let others: Void = cluster.sync(skipping: cluster.replicas(of: bucket.objects))
        let entry: Result<Bool, Error>
        do { entry = .success(try await storeData(i, d, sync: true)) } catch { entry = .failure(error) }
        try await others
        if try !entry.get() { await changes.drained() }
        if let e = changes.takeFailure() { throw e }
        // What the UPDATE did not cover: no UPDATE, or a change queued since.
        try await cluster.sync()
    }

    /// Stores the record after data changes: size, mtime, ETag (with sync-wait if `sync`).
    /// False if there was nothing to store.
    @discardableResult
    private func storeData(_ i: Inode, _ d: FileData, sync: Bool) async throws -> Bool {
        let attributesChanged = state.withLock { _ in
            defer { i.attributesChanged = false }
            return i.attributesChanged
        }
        guard d.changed || attributesChanged else { return false }
        let dataChanged = d.changed
        d.changed = false
        return try await namespace.withLock(0) {
            let gone = state.withLock { _ in
                i.record.size = d.size
                i.record.fid = d.fid
                i.record.inline = d.inline
                if dataChanged {
                    // Not an MD5 (hashing every byte written would cost a quarter of the
                    // write speed on two cores): a tag of this version of the data, shaped
                    // like a multipart ETag so S3 clients do not check the data against it.
                    var tag = WireWriter(capacity: 24)
                    tag.fid(d.fid)
                    tag.u64(i.record.modified)
                    tag.u64(d.size)
                    i.record.etag = hex(Insecure.MD5.hash(data: tag.bytes)) + "-1"
                    // Checksums a PUT stored (x-amz-checksum-*) were of the old data.
                    i.record.attributes.removeAll { $0.name.hasPrefix("x-amz-checksum-") }
                }
                return i.unlinked
            }
            if !gone { try await storeRecords([i], sync: sync) }
            return !gone
        }
    }

    /// Opens a file; returns the handle, and whether the file changed (through S3, or
    /// another mount) since the kernel last saw it, so its cached pages and attributes must go.
    public func open(_ ino: UInt64, flags: Int32) async throws -> (handle: UInt64, changed: Bool) {
        try await open(ino, flags: flags, fresh: false)
    }

    private func open(_ ino: UInt64, flags: Int32, fresh: Bool) async throws -> (handle: UInt64, changed: Bool) {
        let i = try inode(ino)
        let acc = flags & O_ACCMODE
        let write = acc == O_WRONLY || acc == O_RDWR
        if write || flags & O_TRUNC != 0 { try checkWritable() }
        guard i.type != .directory || !write else { throw FSError(EISDIR) }
        return try await fileLocks.withLock(ino) {
            // Close-to-open: a file no one has open is read again from its entry, so an
            // object PUT through S3 since is what this open sees.
            let (first, key) = state.withLock { _ in (i.opens == 0 && !i.unlinked, i.key) }
            var changed = false
            if first && !fresh && i.type == .regular {
                let (record, closed) = state.withLock { _ in (i.record, i.data == nil) }
                // A reader's first group is read meanwhile, from the object the entry named
                // last time: kept if the entry still names it (diff -r, cat: one round
                // trip per file, not two).
                var early: FileData? = nil
                if closed && acc != O_WRONLY && flags & O_TRUNC == 0 && !record.multipart {
                    early = FileData(cluster: cluster, budget: budget, fid: record.fid, size: record.size, inline: record.inline, inlineLimit: inlineLimit)
                    early!.prefetch()
                }
                do {
                    _ = try inode(for: try await findStored(key))
                } catch {
                    await early?.drop()
                    throw error
                }
                changed = state.withLock { _ in (i.record.fid, i.record.size, i.record.modified) != (record.fid, record.size, record.modified) }
                if let early {
                    let same = !changed && state.withLock { _ in i.record.inline == record.inline }
                    if same { state.withLock { _ in i.data = early } } else { await early.drop() }
                }
            }
            if i.type == .regular && state.withLock({ _ in i.data == nil }) { _ = try await openData(i) }
            state.withLock { _ in i.opens += 1 }
            let h = newHandle(.file(ino: ino, append: flags & O_APPEND != 0, write: write))
            if flags & O_TRUNC != 0 && i.type == .regular, let d = state.withLock({ _ in i.data }), d.size > 0 {
                try await d.truncate(to: 0)
                let t = now()
                state.withLock { _ in
                    i.record.modified = t
                    i.posix.ctime = t
                }
            }
            return (h, changed)
        }
    }

    private func fileHandle(_ h: UInt64) throws -> (Inode, append: Bool, write: Bool) {
        guard case .file(let ino, let append, let write)? = state.withLock({ $0.handles[h] }) else { throw FSError(EBADF) }
        return (try inode(ino), append, write)
    }

    public func read(_ h: UInt64, at offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) async throws -> Int {
        let (i, _, _) = try fileHandle(h)
        return try await fileLocks.withLock(i.ino) {
            guard let d = state.withLock({ _ in i.data }) else { throw FSError(EBADF) }
            do { return try await d.read(at: offset, into: buffer) } catch { throw dataError(error, i, d) }
        }
    }

    /// An error of a data read or write: one that found the file's object gone (freed, or
    /// never made) is EIO naming the file and the object, which the FUSE adapter logs at
    /// error level; `notFound` as such would reach the caller as ENOENT, a missing name.
    private func dataError(_ error: Error, _ i: Inode, _ d: FileData) -> Error {
        guard let e = error as? TesseraError, e.code == .notFound else { return error }
        let key = state.withLock { _ in String(decoding: i.key, as: UTF8.self) }
        return FSError(EIO, "'\(key)': its data object \(d.fid) is gone: \(e.message)")
    }

    /// `read` done at once, without suspending, when the file's lock is free and the bytes
    /// are in a page in memory (`FileData.readResident`): `reply` gets them in place, under
    /// the file's lock. False when the caller must take the async `read`. The FUSE adapter
    /// tries this first: it saves two thread hand-offs and a copy.
    public func readNow(_ h: UInt64, at offset: UInt64, count: Int, reply: (UnsafeRawBufferPointer) -> Void) throws -> Bool {
        let (i, _, _) = try fileHandle(h)
        return try fileLocks.withLockIfFree(i.ino) { () throws -> Bool in
            guard let d = state.withLock({ _ in i.data }) else { throw FSError(EBADF) }
            return d.readResident(at: offset, count: count, reply: reply)
        } ?? false
    }

    public func write(_ h: UInt64, at offset: UInt64, _ bytes: UnsafeRawBufferPointer, caller: Caller? = nil) async throws -> Int {
        let (i, append, write) = try fileHandle(h)
        guard write else { throw FSError(EBADF) }
        return try await fileLocks.withLock(i.ino) {
            let (d, at) = try writable(i, at: offset, append: append, count: bytes.count)
            do { try await d.write(bytes, at: at) } catch { throw dataError(error, i, d) }
            wrote(i, caller)
            return bytes.count
        }
    }

    /// `write` done at once, without suspending, when the file's lock is free and the bytes
    /// land in memory (`FileData.writeResident`); nil when the caller must take the async
    /// `write`.
    public func writeNow(_ h: UInt64, at offset: UInt64, _ bytes: UnsafeRawBufferPointer, caller: Caller? = nil) throws -> Int? {
        let (i, append, write) = try fileHandle(h)
        guard write else { throw FSError(EBADF) }
        return try fileLocks.withLockIfFree(i.ino) { () throws -> Int? in
            let (d, at) = try writable(i, at: offset, append: append, count: bytes.count)
            guard d.writeResident(bytes, at: at) else { return nil }
            wrote(i, caller)
            return bytes.count
        } ?? nil
    }

    /// The open file's data and where a write of `count` bytes goes (its end with O_APPEND).
    /// Called under the inode's lock.
    private func writable(_ i: Inode, at offset: UInt64, append: Bool, count: Int) throws -> (FileData, UInt64) {
        guard let d = state.withLock({ _ in i.data }) else { throw FSError(EBADF) }
        let at = append ? d.size : offset
        guard at.addingReportingOverflow(UInt64(count)).overflow == false, at + UInt64(count) <= 1 << 50 else { throw FSError(EFBIG) }
        return (d, at)
    }

    /// After a write: mtime and ctime now; a write by anyone but root drops set-ID bits.
    private func wrote(_ i: Inode, _ caller: Caller?) {
        let t = now()
        state.withLock { _ in
            i.record.modified = t
            i.posix.ctime = t
            if (caller?.uid ?? 0) != 0 { i.posix.dropSetIDs() }
        }
    }

    /// `write` of an array (tests and tools; the adapter passes the kernel's buffer).
    public func write(_ h: UInt64, at offset: UInt64, bytes: [UInt8], caller: Caller? = nil) async throws -> Int {
        let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: max(bytes.count, 1), alignment: 16)
        defer { copy.deallocate() }
        copy.copyBytes(from: bytes)
        return try await write(h, at: offset, UnsafeRawBufferPointer(rebasing: copy[0..<bytes.count]), caller: caller)
    }

    /// `read` into a new array of at most `count` bytes.
    public func read(_ h: UInt64, at offset: UInt64, count: Int) async throws -> [UInt8] {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 16)
        defer { buffer.deallocate() }
        let n = try await read(h, at: offset, into: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count]))
        return Array(buffer[0..<n])
    }

    /// close(2) of one descriptor: the data goes to the object and the entry is updated, so
    /// S3 GETs read the whole file; not yet durable.
    public func flush(_ h: UInt64) async throws {
        let (i, _, write) = try fileHandle(h)
        guard write || state.withLock({ _ in i.attributesChanged }) else { return }
        try await fileLocks.withLock(i.ino) {
            guard let d = state.withLock({ _ in i.data }) else { return }
            try await writeBack(i, d, sync: false)
        }
    }

    /// `flush` when it has nothing to do (a descriptor that never wrote, or a file with
    /// nothing changed since it was last stored), answered at once; false otherwise.
    public func flushNow(_ h: UInt64) throws -> Bool {
        let (i, _, write) = try fileHandle(h)
        return fileLocks.withLockIfFree(i.ino) { () -> Bool in
            state.withLock { _ in
                guard !i.attributesChanged else { return false }
                return !write || (i.data?.isClean ?? true)
            }
        } ?? false
    }

    /// Makes the file's data and entry durable on every server they touched. With
    /// `dataOnly` (fdatasync, msync), an entry that already names the file's object and size
    /// is not stored again: what changed in it (times, the ETag, attributes) is not needed
    /// to read the data back, and goes with the next close or fsync.
    public func fsync(_ h: UInt64, dataOnly: Bool = false) async throws {
        let (i, _, _) = try fileHandle(h)
        try await fileLocks.withLock(i.ino) {
            guard let d = state.withLock({ _ in i.data }) else { return }
            let entryHoldsData = state.withLock { _ in
                d.inline == nil && i.storedData.map { $0.fid == d.fid && $0.size == d.size } == true && !i.unlinked
            }
            guard dataOnly && entryHoldsData else { return try await writeBack(i, d, sync: true) }
            // The data writes wait for LOGGED themselves: one round trip. The entry as last
            // stored (or queued) is made durable too, as it names the object.
            try await d.flush(syncWait: true)
            try await syncEverything()
        }
    }

    /// `release` when it needs no I/O (another handle still has the file open, or its data
    /// is clean and it is not unlinked), done at once; false, with nothing changed, otherwise.
    public func releaseNow(_ h: UInt64) throws -> Bool {
        let (i, _, _) = try fileHandle(h)
        return fileLocks.withLockIfFree(i.ino) { () -> Bool in
            state.withLock { s in
                let last = i.opens == 1
                if last {
                    guard !i.unlinked, !i.attributesChanged, i.data?.isClean ?? true else { return false }
                    i.data?.dropNow()
                    i.data = nil
                }
                s.handles[h] = nil
                i.opens -= 1
                if last && i.lookups == 0 { s.retire(i) }
                return true
            }
        } ?? false
    }

    /// The last close of a handle.
    public func release(_ h: UInt64) async throws {
        let (i, _, _) = try fileHandle(h)
        state.withLock { s in s.handles[h] = nil }
        try await fileLocks.withLock(i.ino) {
            let (last, d) = state.withLock { _ in
                i.opens -= 1
                return (i.opens == 0, i.data)
            }
            guard last, let d else { return }
            defer {
                state.withLock { s in
                    i.data = nil
                    if i.lookups == 0 && i.opens == 0 { s.retire(i) }
                }
            }
            if state.withLock({ _ in i.unlinked }) {
                await d.drop()
                try await store.free(d.fid)
                await store.dropPending([d.fid])
                if state.withLock({ _ in i.linked }) { _ = try? await cluster.delete(fsIndex, [S3Indexes.inodeKey(i.ino)], sync: true) }
                return
            }
            do { try await writeBack(i, d, sync: false) } catch {
                await d.drop()
                throw error
            }
            await d.drop()
        }
    }

    // MARK: Directories

    public func opendir(_ ino: UInt64) throws -> UInt64 {
        let i = try inode(ino)
        guard i.type == .directory else { throw FSError(ENOTDIR) }
        return newHandle(.directory(ino: ino, entries: nil))
    }

    private func newHandle(_ handle: Handle) -> UInt64 {
        state.withLock { s in
            let h = s.nextHandle
            s.nextHandle += 1
            s.handles[h] = handle
            return h
        }
    }

    /// The entries of the directory from index `offset` on ("." and ".." first). The list
    /// is read at offset 0 and kept in the handle, so a listing is one consistent snapshot.
    public func readdir(_ h: UInt64, from offset: Int) async throws -> ArraySlice<DirectoryEntry> {
        guard case .directory(let ino, var entries)? = state.withLock({ $0.handles[h] }) else { throw FSError(EBADF) }
        if entries == nil || offset == 0 {
            let dir = try inode(ino)
            entries = try await list(dir)
            state.withLock { $0.handles[h] = .directory(ino: ino, entries: entries) }
        }
        return entries![min(offset, entries!.count)...]
    }

    public func releasedir(_ h: UInt64) {
        state.withLock { s in
            if case .directory(_, let entries)? = s.handles[h] {
                for e in entries ?? [] {
                    if let i = s.inodes[e.attributes.ino], i.lookups == 0, i.opens == 0, i.ino != Self.rootIno { s.retire(i) }
                }
            }
            s.handles[h] = nil
        }
    }

    private func list(_ dir: Inode) async throws -> [DirectoryEntry] {
        let prefix = state.withLock { _ in dir.key }
        let own = attributes(dir)
        var out = [DirectoryEntry(name: [0x2E], attributes: own), DirectoryEntry(name: [0x2E, 0x2E], attributes: own)]
        await changes.drained()
        var start = prefix
        var exclusive = true
        // NEXT has no end key: what a batch holds past the directory's end, or inside a
        // subdirectory it meets, is read for nothing. Batches start small and grow while
        // they hold only this directory's own entries.
        var limit = 64
        while true {
            let batch = try await cluster.next(bucket.objects, from: [start], limit: limit, excludeStart: exclusive)[0]
            var skipTo: [UInt8]? = nil
            for r in batch {
                guard r.key.starts(with: prefix) else { return out }
                let rest = r.key[prefix.count...]
                // The directory's own entry, and the free markers (0x00 …) under the root.
                if rest.isEmpty || rest.first == 0 { continue }
                if let slash = rest.firstIndex(of: 0x2F) {
                    let name = Array(rest[..<slash])
                    let dirKey = prefix + name + [0x2F]
                    skipTo = S3Store.successor(of: dirKey) ?? []
                    guard Self.isName(name) else { break }
                    let record = slash == rest.index(before: rest.endIndex) ? try? ObjectRecord.decode(r.value) : nil
                    if let i = try? inode(for: .directory(key: dirKey, record: record)) {
                        // A directory hides a file of the same name.
                        if out.last?.name == name { out.removeLast() }
                        out.append(DirectoryEntry(name: name, attributes: attributes(i)))
                    }
                    break
                }
                let name = Array(rest)
                guard Self.isName(name) else { continue }
                do {
                    let entry = try ObjectRecord.decode(r.value)
                    let record = try await store.resolve(bucket, entry)
                    if let i = try inode(for: .file(key: r.key, entry: entry, record: record)) {
                        out.append(DirectoryEntry(name: name, attributes: attributes(i)))
                    }
                } catch {
                    logger.warning("entry '\(String(decoding: r.key, as: UTF8.self))' unreadable, not listed: \(error)")
                }
            }
            if let s = skipTo {
                start = s
                exclusive = false
            } else {
                guard batch.count == limit, let last = batch.last else { return out }
                start = last.key
                exclusive = true
                limit = min(limit * 4, 1024)
            }
            if start.isEmpty { return out }
        }
    }

    // MARK: The file system as a whole

    public func statfs() async throws -> FileSystemStatistics {
        let stats = await cluster.statistics()
        var total: UInt64 = 0
        var free: UInt64 = 0
        for s in stats {
            guard let st = s.stats else { continue }
            total += st.dataBytes
            free += st.dataFreeBytes
        }
        // Data is stored with parity: N of every N+K bytes hold file data.
        let l = cluster.layout
        let usable = { (b: UInt64) in b / UInt64(l.dataUnits + l.parityUnits) * UInt64(l.dataUnits) }
        let bs: UInt64 = 4096
        return FileSystemStatistics(
            blockSize: bs, blocks: usable(total) / bs, freeBlocks: usable(free) / bs, files: 1 << 40, freeFiles: (1 << 40) - 1, nameMax: UInt64(Self.nameMax))
    }

    /// Flushes every open file and waits: for unmount.
    public func flushAll() async {
        let open = state.withLock { s in s.inodes.values.filter { $0.data != nil } }
        for i in open {
            await fileLocks.withLock(i.ino) {
                guard let d = state.withLock({ _ in i.data }) else { return }
                do { try await writeBack(i, d, sync: false) } catch {
                    logger.error("flushing inode \(i.ino) at unmount: \(error)")
                }
            }
        }
        await changes.drained()
        await reclaimsDone()
        _ = try? await cluster.sync()
    }
}
