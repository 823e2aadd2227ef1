// Making entries: mkdir, mknod, symlink, create (and their `Now` forms, answered on the
// caller's thread from the name cache when the name is known absent), readlink.
//
// State: the inode table and the parent's times (FileSystem.state's lock); the new entry and
// the parent's record go to the object list in one UPDATE, under the namespace lock
// (`changingNames`), written behind where the name cache allows.
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
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
}
