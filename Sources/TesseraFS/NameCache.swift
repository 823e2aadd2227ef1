// The mount's memory of names: which keys of the bucket are files, directories or absent,
// so a lookup (every `stat`, every `open` by path, the lookup before each create) is
// answered without a CAS round trip.
//
// What it holds is only ever trusted while it can be true:
// - a name known present is an inode number; it is used only if that inode is still in the
//   table, under that key, not unlinked and not a hard link (whose attributes live in the
//   file-system index), so the inode table, which every change in this mount keeps right,
//   is what answers;
// - a name known absent, and every name in a directory known complete (one this mount
//   made: every entry under it since went through this mount), answers ENOENT. Changes in
//   this mount set them when made (their UPDATE answered, or queued behind: every later
//   read of the store waits for the queue), and bump `generation`, so a lookup that read
//   the store before the change cannot put back what it read;
// - someone else's change (the gateway, another mount) is noticed through the bucket's
//   change stamps (ChangeStamps.swift): before the cache answers, the stamps are read if
//   the last read is older than `nameCacheWindow` (100 ms, at most the kernel's entry
//   timeout), and any change but ours empties the cache. So a name changed elsewhere is
//   seen here at most that long after the change was answered, as the kernel's own entry
//   cache already allows for a second.
import TesseraClient
import TesseraCore
import TesseraS3

extension FileSystem {
    enum CachedName {
        case absent
        case file(UInt64)
        case directory(UInt64)
    }

    struct Names {
        /// By lookup key (a directory's without its `/`).
        var entries: [[UInt8]: CachedName] = [:]
        /// Directory keys (with `/`, "" for the root) whose every entry is in `entries`.
        var complete: Set<[UInt8]> = []
        /// One more with each change this mount makes to the names.
        var generation: UInt64 = 0
        /// Start of the last stamp read, and what it found (others' stamps only).
        var checked: ContinuousClock.Instant?
        var seen: [[UInt8]: [UInt8]] = [:]

        static let limit = 200_000

        mutating func clear() {
            entries = [:]
            complete = []
            generation &+= 1
        }

        /// Key `key` is now `value`, by a change of this mount.
        mutating func set(_ key: [UInt8], _ value: CachedName) {
            note(key, value)
            generation &+= 1
        }

        /// Key `key` was found to be `value` (by a read of the store, or a change).
        mutating func note(_ key: [UInt8], _ value: CachedName) {
            if entries.count >= Self.limit { clear() }
            entries[key] = value
        }

    }

    /// The directory key a key lies in: `a/b/` for `a/b/c`, "" for `c`.
    static func parentKey(of key: [UInt8]) -> [UInt8] {
        guard let slash = key.lastIndex(of: 0x2F) else { return [] }
        return Array(key[...slash])
    }

    var cacheNames: Bool { options.nameCacheWindow > .zero }

    enum Known {
        case absent
        case inode(Inode)
    }

    /// What the cache knows of `key` if the stamps were read within the window (this never
    /// waits); nil if it does not know.
    func known(_ key: [UInt8]) -> Known? {
        guard cacheNames else { return nil }
        let known: CachedName? = names.withLock { n in
            guard let c = n.checked, ContinuousClock.now - c < options.nameCacheWindow else { return nil }
            return n.entries[key] ?? (n.complete.contains(Self.parentKey(of: key)) ? .absent : nil)
        }
        switch known {
        case nil: return nil
        case .absent: return .absent
        case .file(let ino):
            return state.withLock { s in
                guard let i = s.inodes[ino] ?? s.retired[ino], i.key == key, !i.linked, !i.unlinked, i.type != .directory else { return nil }
                return .inode(i)
            }
        case .directory(let ino):
            return state.withLock { s in
                guard let i = s.inodes[ino] ?? s.retired[ino], i.key == key + [0x2F], !i.implied, !i.unlinked else { return nil }
                return .inode(i)
            }
        }
    }

    /// `find` from the cache, reading the stamps first if they are older than the window.
    func cachedFind(_ key: [UInt8]) async -> Found? {
        guard cacheNames, await stampsChecked(), let k = known(key) else { return nil }
        guard case .inode(let i) = k else { return Found.none }
        return state.withLock { _ in
            var r = i.record
            r.posix = i.posix.encode()
            if i.type == .directory { return .directory(key: i.key, record: r) }
            if let d = i.data { r.size = d.size }
            return .file(key: i.key, entry: r, record: r)
        }
    }

    /// Notes that a read of the store found no `key`, unless this mount changed a name
    /// since the read began (`generation` is the value before it).
    func rememberAbsent(_ key: [UInt8], readAt generation: UInt64) {
        guard cacheNames else { return }
        names.withLock { n in
            guard n.generation == generation else { return }
            n.note(key, .absent)
        }
    }

    /// Notes inode `i`, just found at lookup key `key`. Never wrong for long: a hit is
    /// checked against the inode (its key, not unlinked), so no generation is needed.
    func rememberPresent(_ key: [UInt8], _ i: Inode, directory: Bool) {
        guard cacheNames else { return }
        names.withLock { $0.note(key, directory ? .directory(i.ino) : .file(i.ino)) }
    }

    /// Reads the bucket's change stamps if the last read is older than the window; empties
    /// the cache if anyone else changed the bucket. False if the stamps cannot be read.
    func stampsChecked() async -> Bool {
        let start = ContinuousClock.now
        if let c = names.withLock({ $0.checked }), start - c < options.nameCacheWindow { return true }
        guard let stamps = try? await ChangeStamp.read(cluster, bucket.objects) else { return false }
        let wall = S3Store.now()
        var others: [[UInt8]: [UInt8]] = [:]
        var stale: [[UInt8]] = []
        for r in stamps where r.key != stamp.key {
            if let t = ChangeStamp.time(of: r.value), wall > t, wall - t > ChangeStamp.staleAfter {
                stale.append(r.key)
            } else {
                others[r.key] = r.value
            }
        }
        names.withLock { n in
            // A slower read that began earlier must not undo a later one.
            if let c = n.checked, c >= start { return }
            if others != n.seen { n.clear() }
            n.seen = others
            n.checked = start
        }
        if !stale.isEmpty { _ = try? await cluster.delete(bucket.objects, stale) }
        return true
    }

    /// The generation a store read starting now compares against.
    var namesGeneration: UInt64 { names.withLock { $0.generation } }
}
