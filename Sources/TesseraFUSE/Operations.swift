// The fuse_lowlevel_ops table: one closure per request kind, each converting arguments,
// calling the core and replying. Closures capture nothing (libfuse calls them through C
// function pointers); the session comes from the request's userdata.
import CFuse
import Glibc
import TesseraFS

/// Pointers the kernel lent for the length of one callback, carried into its task while
/// the callback's thread waits for it.
struct Lent: @unchecked Sendable {
    let read: UnsafeRawBufferPointer
}
struct LentMutable: @unchecked Sendable {
    let buffer: UnsafeMutableRawBufferPointer
}

func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()

    ops.`init` = { userdata, conn in
        guard let conn else { return }
        // 1 MiB writes (never more on libfuse 3.14), and the kernel's own read-ahead up to a
        // group's worth.
        conn.pointee.max_write = 1 << 20
        conn.pointee.max_readahead = 1 << 20
        let wanted = UInt32(FUSE_CAP_ASYNC_READ) | UInt32(FUSE_CAP_ATOMIC_O_TRUNC) | UInt32(FUSE_CAP_READDIRPLUS)
            | UInt32(FUSE_CAP_READDIRPLUS_AUTO) | UInt32(FUSE_CAP_PARALLEL_DIROPS) | UInt32(FUSE_CAP_HANDLE_KILLPRIV) | UInt32(FUSE_CAP_EXPORT_SUPPORT)
        conn.pointee.want |= wanted & conn.pointee.capable
        // The file system keeps its own write-back buffers; the kernel's would reorder writes
        // and hide close-to-open from S3.
        conn.pointee.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
        // Cached pages stay until the next open (which drops them: opens do not ask to keep
        // the cache) or a change this mount sees at open (`invalidate`). With automatic
        // invalidation the kernel dropped them whenever a stat showed a new mtime, which is
        // after every write of this mount's own: each read after a write went to the daemon.
        conn.pointee.want &= ~UInt32(FUSE_CAP_AUTO_INVAL_DATA)
        _ = userdata
    }

    ops.lookup = { req, parent, name in
        let s = FUSESession.of(req)
        let n = bytes(name)
        s.serve(req, now: { try s.fs.lookupNow(parent, n) }, { try await s.fs.lookup(parent, n) }) { s.replyEntry(req, $0) }
    }

    ops.forget = { req, ino, n in
        FUSESession.of(req).fs.forget(ino, n)
        fuse_reply_none(req)
    }

    ops.forget_multi = { req, count, forgets in
        let fs = FUSESession.of(req).fs
        for k in 0..<count {
            if let f = forgets?[k] { fs.forget(f.ino, f.nlookup) }
        }
        fuse_reply_none(req)
    }

    ops.getattr = { req, ino, _ in
        let s = FUSESession.of(req)
        s.serveSync(req, { try s.fs.getattr(ino) }) { s.replyAttr(req, $0) }
    }

    ops.setattr = { req, ino, attr, toSet, _ in
        let s = FUSESession.of(req)
        guard let attr else { _ = fuse_reply_err(req, EINVAL); return }
        var c = AttributeChanges()
        if toSet & FUSE_SET_ATTR_MODE != 0 { c.mode = tessera_stat_mode(attr) }
        if toSet & FUSE_SET_ATTR_UID != 0 { c.uid = tessera_stat_uid(attr) }
        if toSet & FUSE_SET_ATTR_GID != 0 { c.gid = tessera_stat_gid(attr) }
        if toSet & FUSE_SET_ATTR_SIZE != 0 { c.size = tessera_stat_size(attr) }
        if toSet & FUSE_SET_ATTR_ATIME_NOW != 0 {
            c.atime = .now
        } else if toSet & FUSE_SET_ATTR_ATIME != 0 {
            c.atime = .at(tessera_stat_atime_ns(attr))
        }
        if toSet & FUSE_SET_ATTR_MTIME_NOW != 0 {
            c.mtime = .now
        } else if toSet & FUSE_SET_ATTR_MTIME != 0 {
            c.mtime = .at(tessera_stat_mtime_ns(attr))
        }
        let changes = c
        let caller = FUSESession.caller(req)
        s.serve(req, now: { try s.fs.setattrNow(ino, changes, caller: caller) }, { try await s.fs.setattr(ino, changes, caller: caller) }) { s.replyAttr(req, $0) }
    }

    ops.readlink = { req, ino in
        let s = FUSESession.of(req)
        s.serveSync(req, { try s.fs.readlink(ino) }) { target in
            var t = target.map { CChar(bitPattern: $0) }
            t.append(0)
            fuse_reply_readlink(req, t)
        }
    }

    ops.mknod = { req, parent, name, mode, rdev in
        let s = FUSESession.of(req)
        let n = bytes(name)
        let caller = FUSESession.caller(req)
        s.serve(req, { try await s.fs.mknod(parent, n, mode: UInt32(mode), rdev: UInt64(rdev), caller: caller) }) { s.replyEntry(req, $0) }
    }

    ops.mkdir = { req, parent, name, mode in
        let s = FUSESession.of(req)
        let n = bytes(name)
        let caller = FUSESession.caller(req)
        s.serve(req, now: { try s.fs.mkdirNow(parent, n, mode: UInt32(mode), caller: caller) }, { try await s.fs.mkdir(parent, n, mode: UInt32(mode), caller: caller) }) {
            s.replyEntry(req, $0)
        }
    }

    ops.unlink = { req, parent, name in
        let s = FUSESession.of(req)
        let n = bytes(name)
        s.serve(req, now: { try s.fs.unlinkNow(parent, n) ? () : nil }, { try await s.fs.unlink(parent, n) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.rmdir = { req, parent, name in
        let s = FUSESession.of(req)
        let n = bytes(name)
        s.serve(req, { try await s.fs.rmdir(parent, n) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.symlink = { req, link, parent, name in
        let s = FUSESession.of(req)
        let target = bytes(link)
        let n = bytes(name)
        let caller = FUSESession.caller(req)
        s.serve(req, { try await s.fs.symlink(target, parent, n, caller: caller) }) { s.replyEntry(req, $0) }
    }

    ops.rename = { req, parent, name, newParent, newName, flags in
        let s = FUSESession.of(req)
        let (a, b) = (bytes(name), bytes(newName))
        var f: UInt32 = 0
        if flags & UInt32(TESSERA_RENAME_NOREPLACE) != 0 { f |= FileSystem.renameNoReplace }
        if flags & UInt32(TESSERA_RENAME_EXCHANGE) != 0 { f |= FileSystem.renameExchange }
        if flags & ~UInt32(TESSERA_RENAME_NOREPLACE | TESSERA_RENAME_EXCHANGE) != 0 { _ = fuse_reply_err(req, EINVAL); return }
        let fl = f
        s.serve(req, { try await s.fs.rename(parent, a, newParent, b, flags: fl) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.link = { req, ino, newParent, newName in
        let s = FUSESession.of(req)
        let n = bytes(newName)
        s.serve(req, { try await s.fs.link(ino, newParent, n) }) { s.replyEntry(req, $0) }
    }

    ops.open = { req, ino, fi in
        let s = FUSESession.of(req)
        guard let fi else { _ = fuse_reply_err(req, EINVAL); return }
        let flags = fi.pointee.flags
        s.serve(req, { try await s.fs.open(ino, flags: flags) }) { opened in
            fi.pointee.fh = opened.handle
            // Changed behind the kernel's back: drop its cached attributes and pages.
            if opened.changed { s.invalidate(ino) }
            _ = fuse_reply_open(req, fi)
        }
    }

    ops.create = { req, parent, name, mode, fi in
        let s = FUSESession.of(req)
        guard let fi else { _ = fuse_reply_err(req, EINVAL); return }
        let n = bytes(name)
        let flags = fi.pointee.flags
        let caller = FUSESession.caller(req)
        s.serve(req, now: { try s.fs.createNow(parent, n, mode: UInt32(mode), flags: flags, caller: caller) }, { try await s.fs.create(parent, n, mode: UInt32(mode), flags: flags, caller: caller) }) { (a, h) in
            fi.pointee.fh = h
            var e = s.entry(a)
            fuse_reply_create(req, &e, fi)
        }
    }

    ops.read = { req, _, size, off, fi in
        let s = FUSESession.of(req)
        guard let fi, off >= 0 else { _ = fuse_reply_err(req, EINVAL); return }
        let h = fi.pointee.fh
        do {
            // Straight from the page, while the file's lock holds it there.
            if try s.fs.readNow(h, at: UInt64(off), count: size, reply: { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), $0.count) }) { return }
        } catch {
            fuse_reply_err(req, FSError.errno(of: error))
            return
        }
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(size, 1), alignment: 4096)
        defer { buffer.deallocate() }
        let lent = LentMutable(buffer: UnsafeMutableRawBufferPointer(rebasing: buffer[0..<size]))
        s.serve(req, pool: true, { try await s.fs.read(h, at: UInt64(off), into: lent.buffer) }) { n in
            fuse_reply_buf(req, buffer.baseAddress?.assumingMemoryBound(to: CChar.self), n)
        }
    }

    ops.write = { req, _, buf, size, off, fi in
        let s = FUSESession.of(req)
        guard let fi, off >= 0 else { _ = fuse_reply_err(req, EINVAL); return }
        let h = fi.pointee.fh
        let lent = Lent(read: UnsafeRawBufferPointer(start: buf, count: size))
        let caller = FUSESession.caller(req)
        s.serve(req, pool: true, now: { try s.fs.writeNow(h, at: UInt64(off), lent.read, caller: caller) }, { try await s.fs.write(h, at: UInt64(off), lent.read, caller: caller) }) { n in
            _ = fuse_reply_write(req, n)
        }
    }

    ops.flush = { req, _, fi in
        let s = FUSESession.of(req)
        guard let h = fi?.pointee.fh else { _ = fuse_reply_err(req, EINVAL); return }
        s.serve(req, now: { try s.fs.flushNow(h) ? () : nil }, { try await s.fs.flush(h) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.release = { req, _, fi in
        let s = FUSESession.of(req)
        guard let h = fi?.pointee.fh else { _ = fuse_reply_err(req, EINVAL); return }
        s.serve(req, now: { try s.fs.releaseNow(h) ? () : nil }, { try await s.fs.release(h) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.fsync = { req, _, datasync, fi in
        let s = FUSESession.of(req)
        guard let h = fi?.pointee.fh else { _ = fuse_reply_err(req, EINVAL); return }
        s.serve(req, { try await s.fs.fsync(h, dataOnly: datasync != 0) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.opendir = { req, ino, fi in
        let s = FUSESession.of(req)
        guard let fi else { _ = fuse_reply_err(req, EINVAL); return }
        s.serveSync(req, { try s.fs.opendir(ino) }) { h in
            fi.pointee.fh = h
            fuse_reply_open(req, fi)
        }
    }

    ops.readdir = { req, _, size, off, fi in
        readdir(req, size, off, fi, plus: false)
    }

    ops.readdirplus = { req, _, size, off, fi in
        readdir(req, size, off, fi, plus: true)
    }

    ops.releasedir = { req, _, fi in
        let s = FUSESession.of(req)
        if let h = fi?.pointee.fh { s.fs.releasedir(h) }
        fuse_reply_err(req, 0)
    }

    ops.fsyncdir = { req, _, _, _ in
        let s = FUSESession.of(req)
        s.serve(req, { try await s.fs.syncEverything() }) { _ = fuse_reply_err(req, 0) }
    }

    ops.statfs = { req, _ in
        let s = FUSESession.of(req)
        s.serve(req, { try await s.fs.statfs() }) { st in
            var v = statvfs()
            v.f_bsize = UInt(st.blockSize)
            v.f_frsize = UInt(st.blockSize)
            v.f_blocks = fsblkcnt_t(st.blocks)
            v.f_bfree = fsblkcnt_t(st.freeBlocks)
            v.f_bavail = fsblkcnt_t(st.freeBlocks)
            v.f_files = fsfilcnt_t(st.files)
            v.f_ffree = fsfilcnt_t(st.freeFiles)
            v.f_favail = fsfilcnt_t(st.freeFiles)
            v.f_namemax = UInt(st.nameMax)
            fuse_reply_statfs(req, &v)
        }
    }

    ops.setxattr = { req, ino, name, value, size, flags in
        let s = FUSESession.of(req)
        let n = bytes(name)
        let v = Array(UnsafeRawBufferPointer(start: value, count: size))
        if n == FileSystem.accessACL {
            do {
                let caller = FUSESession.caller(req)
                if let c = try s.fs.accessACLChanges(ino, v, caller: caller) {
                    s.serve(req, now: { try s.fs.setattrNow(ino, c, caller: caller) }, { try await s.fs.setattr(ino, c, caller: caller) }) { _ in _ = fuse_reply_err(req, 0) }
                    return
                }
            } catch {
                fuse_reply_err(req, FSError.errno(of: error))
                return
            }
        }
        var f: Int32 = 0
        if Int(flags) & Int(XATTR_CREATE) != 0 { f |= FileSystem.xattrCreate }
        if Int(flags) & Int(XATTR_REPLACE) != 0 { f |= FileSystem.xattrReplace }
        let fl = f
        let refused: () throws -> Void? = {
            try s.fs.checkSetxattr(n, v)
            return nil
        }
        s.serve(req, now: refused, { try await s.fs.setxattr(ino, n, v, flags: fl) }) { _ = fuse_reply_err(req, 0) }
    }

    ops.getxattr = { req, ino, name, size in
        let s = FUSESession.of(req)
        s.serveSync(req, { try s.fs.getxattr(ino, bytes(name)) }) { v in
            replySized(req, v, size)
        }
    }

    ops.listxattr = { req, ino, size in
        let s = FUSESession.of(req)
        s.serveSync(req, { try s.fs.listxattr(ino) }) { names in
            replySized(req, names.flatMap { $0 + [0] }, size)
        }
    }

    ops.removexattr = { req, ino, name in
        let s = FUSESession.of(req)
        let n = bytes(name)
        s.serve(req, { try await s.fs.removexattr(ino, n) }) { _ = fuse_reply_err(req, 0) }
    }

    return ops
}

/// An xattr reply: the size when asked for 0 bytes, ERANGE when the buffer is too small.
private func replySized(_ req: fuse_req_t?, _ v: [UInt8], _ size: Int) {
    if size == 0 {
        fuse_reply_xattr(req, v.count)
    } else if size < v.count {
        fuse_reply_err(req, ERANGE)
    } else {
        _ = v.withUnsafeBytes { fuse_reply_buf(req, $0.baseAddress?.assumingMemoryBound(to: CChar.self), v.count) }
    }
}

/// Fills up to `size` bytes of entries from index `off` on; with `plus`, each entry given
/// to the kernel (other than . and ..) counts as a lookup.
private func readdir(_ req: fuse_req_t?, _ size: Int, _ off: off_t, _ fi: UnsafeMutablePointer<fuse_file_info>?, plus: Bool) {
    let s = FUSESession.of(req)
    guard let h = fi?.pointee.fh, off >= 0 else { _ = fuse_reply_err(req, EINVAL); return }
    s.serve(req, { try await s.fs.readdir(h, from: Int(off)) }) { entries in
        let buf = UnsafeMutablePointer<CChar>.allocate(capacity: max(size, 1))
        defer { buf.deallocate() }
        var used = 0
        var index = Int(off)
        for e in entries {
            index += 1
            var name = e.name.map { CChar(bitPattern: $0) }
            name.append(0)
            let n: Int
            if plus {
                var param = s.entry(e.attributes)
                n = fuse_add_direntry_plus(req, buf + used, size - used, name, &param, off_t(index))
            } else {
                var st = stat()
                fill(&st, e.attributes)
                n = fuse_add_direntry(req, buf + used, size - used, name, &st, off_t(index))
            }
            if n > size - used { break }
            used += n
            if plus && e.name != [0x2E] && e.name != [0x2E, 0x2E] { s.fs.noteLookup(e.attributes.ino) }
        }
        fuse_reply_buf(req, buf, used)
    }
}
