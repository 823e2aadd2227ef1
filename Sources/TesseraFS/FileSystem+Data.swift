// Open files: open, read, write, flush, fsync, release, and the write-back of a file's data
// and entry (FileData.swift holds its pages).
//
// State: each file's FileData, used only under its inode's lock (`fileLocks`); the handle
// table and the inode's open count (FileSystem.state's lock). Lock order: the inode's lock,
// then the namespace lock, never the other way round.
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
    // MARK: Open files

    /// Runs `body` on the inode's data, opening it for the call if no handle has it open.
    /// Called under the inode's lock.
    func withData<R>(_ i: Inode, _ body: (FileData) async throws -> R) async throws -> R {
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
    func writeBack(_ i: Inode, _ d: FileData, sync: Bool) async throws {
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

    func open(_ ino: UInt64, flags: Int32, fresh: Bool) async throws -> (handle: UInt64, changed: Bool) {
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
    func dataError(_ error: Error, _ i: Inode, _ d: FileData) -> Error {
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
}
