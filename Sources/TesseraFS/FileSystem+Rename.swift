// Renames (plain, RENAME_NOREPLACE, RENAME_EXCHANGE) and hard links. A rename is one UPDATE
// of the object list: every key under the old name deleted and put under the new one, the
// replaced target deleted. A hard-linked file's entries all point at one inode record in the
// file-system index.
//
// State: the inode table and every inode's key (FileSystem.state's lock; `rekey` moves the
// keys of a renamed tree); all of it under the namespace lock (`changingNames`).
import Glibc
import Crypto
import Logging
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
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
}
