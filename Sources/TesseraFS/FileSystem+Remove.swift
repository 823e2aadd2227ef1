// Removing entries: unlink and rmdir (and `unlinkNow`), and the freeing of removed data. A
// closed file's object gets a free marker in the removal's UPDATE and is freed once that is
// stored (`reclaimLater`); an open file's is noted pending-free under this mount's session
// and freed at its last close, or by the sweeper if this mount dies first.
//
// State: the inode table (FileSystem.state's lock), the queue of objects to free
// (`reclaims`' lock); removals run under the namespace lock (`changingNames`).
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
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
    enum AfterRemoval {
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
    func letGo(_ key: [UInt8], entry: ObjectRecord, record: ObjectRecord, _ i: Inode, at t: UInt64) async throws -> ([Record], AfterRemoval) {
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

    func finish(_ after: AfterRemoval, owner key: [UInt8]) async throws {
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
}
