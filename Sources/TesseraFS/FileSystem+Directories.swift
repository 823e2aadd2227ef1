// Directories (opendir, readdir, releasedir: a listing of the object list under the
// directory's key, merged with what this mount knows) and the file system as a whole
// (statfs, flushAll).
//
// State: the handle table (FileSystem.state's lock); listings read the store after the
// change queue has drained.
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
    // MARK: Directories

    public func opendir(_ ino: UInt64) throws -> UInt64 {
        let i = try inode(ino)
        guard i.type == .directory else { throw FSError(ENOTDIR) }
        return newHandle(.directory(ino: ino, entries: nil))
    }

    func newHandle(_ handle: Handle) -> UInt64 {
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
