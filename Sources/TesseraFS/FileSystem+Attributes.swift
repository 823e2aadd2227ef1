// Attributes (setattr: mode, owner, size, times) and extended attributes, with the POSIX
// ACLs kept among them (the access ACL also sets the mode's group bits).
//
// State: the inode's record and POSIX attributes (FileSystem.state's lock); setattr runs
// under the inode's lock (`fileLocks`), as data calls do, since a size change reaches the
// file's data; stores go through the change queue.
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
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
}
