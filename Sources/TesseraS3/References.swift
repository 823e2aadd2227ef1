// Every data object the records name (`tessera fsck`): object-list entries of every bucket
// (S3 objects and the mount's files), hard-linked files' inode records, uploads in
// progress and the parts under them and under multipart objects, `tessera object`'s
// names, and pending frees (in the pending-free index and as free markers in object
// lists). A cob that none of them names
// is data nothing owns; an entry that names an object no server holds has lost its data.
import TesseraClient
import TesseraCore

/// What the records of a cluster name.
public struct References: Sendable {
    /// Each data object named, with who names it (for messages).
    public var owners: [Fid: String] = [:]
    /// Those whose owner says they hold data: some server must hold them.
    public var holdingData: Set<Fid> = []
    /// Pending frees: the object, its record, and where it was found.
    public var pending: [(fid: Fid, record: PendingFree, at: String)] = []
    /// Records that cannot be read, and parts nothing names.
    public var problems: [String] = []
    /// Records read.
    public var records = 0

    public init() {}
}

extension References {
    /// Walks every record of the cluster `cluster`.
    public static func read(_ cluster: Cluster) async throws -> References {
        var refs = References()
        var partOwners: [Fid: String] = [:]
        for r in try await all(cluster, S3Indexes.buckets) {
            refs.records += 1
            let name = String(decoding: r.key, as: UTF8.self)
            let bucket: BucketRecord
            do { bucket = try BucketRecord.decode(r.value) } catch {
                refs.problems.append("bucket \(name): record unreadable: \(error)")
                continue
            }
            for e in try await all(cluster, bucket.objects) {
                refs.records += 1
                let key = String(decoding: e.key, as: UTF8.self)
                if e.key.starts(with: S3Store.freeMarkerPrefix) {
                    guard let fid = S3Indexes.fid(fromKey: Array(e.key.dropFirst(S3Store.freeMarkerPrefix.count))) else {
                        refs.problems.append("bucket \(name): free marker with a \(e.key.count)-byte key")
                        continue
                    }
                    do { refs.pending.append((fid, try PendingFree.decode(e.value), "bucket \(name)")) } catch {
                        refs.problems.append("bucket \(name): free marker of \(fid) unreadable: \(error)")
                    }
                    continue
                }
                // Other keys that start with 0x00 are not entries (change stamps,
                // ChangeStamps.swift): S3 keys hold no NUL.
                if e.key.first == 0 { continue }
                do { refs.note(try ObjectRecord.decode(e.value), "\(name)/\(key)", &partOwners) } catch {
                    refs.problems.append("bucket \(name) entry \(key): record unreadable: \(error)")
                }
            }
            for u in try await all(cluster, bucket.uploads) {
                refs.records += 1
                do { partOwners[try UploadRecord.decode(u.value).fid] = "upload of \(name)/\(String(decoding: u.key.prefix { $0 != 0 }, as: UTF8.self))" } catch {
                    refs.problems.append("bucket \(name): upload record unreadable: \(error)")
                }
            }
            for i in try await all(cluster, S3Indexes.fileSystemIndex(of: bucket)) where i.key.count == 8 {
                refs.records += 1
                let ino = i.key.reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
                do { refs.note(try ObjectRecord.decode(i.value), "\(name) inode \(ino)", &partOwners) } catch {
                    refs.problems.append("bucket \(name) inode \(ino): record unreadable: \(error)")
                }
            }
        }
        for p in try await all(cluster, S3Indexes.parts) {
            refs.records += 1
            guard p.key.count == 20, let owner = S3Indexes.fid(fromKey: p.key) else {
                refs.problems.append("parts index: a \(p.key.count)-byte key")
                continue
            }
            let number = p.key[16...].reduce(0) { $0 << 8 | Int($1) }
            let part: PartRecord
            do { part = try PartRecord.decode(p.value, number: number) } catch {
                refs.problems.append("part \(number) of \(owner): record unreadable: \(error)")
                continue
            }
            guard let who = partOwners[owner] else {
                refs.problems.append("part \(number) of \(owner) (object \(part.fid)): no object or upload names \(owner)")
                refs.owners[part.fid] = "orphan part \(number) of \(owner)"
                continue
            }
            refs.owners[part.fid] = "part \(number) of \(who)"
            if part.size > 0 { refs.holdingData.insert(part.fid) }
        }
        // `tessera object`'s names (NamedObjects.swift: fid hi, lo and size, little-endian).
        for r in try await all(cluster, NamedObjects.index) {
            refs.records += 1
            let name = String(decoding: r.key, as: UTF8.self)
            guard r.value.count == 24 else {
                refs.problems.append("object name \(name): a \(r.value.count)-byte entry, not 24")
                continue
            }
            let fid = Fid(hi: r.value.loadLE(at: 0, as: UInt64.self), lo: r.value.loadLE(at: 8, as: UInt64.self))
            refs.owners[fid] = "object name \(name)"
            if r.value.loadLE(at: 16, as: UInt64.self) > 0 { refs.holdingData.insert(fid) }
        }
        for r in try await all(cluster, S3Indexes.pendingFrees) {
            refs.records += 1
            guard let fid = S3Indexes.fid(fromKey: r.key) else {
                refs.problems.append("pending-free index: a \(r.key.count)-byte key")
                continue
            }
            do { refs.pending.append((fid, try PendingFree.decode(r.value), "the pending-free index")) } catch {
                refs.problems.append("pending free of \(fid): record unreadable: \(error)")
            }
        }
        return refs
    }

    private mutating func note(_ o: ObjectRecord, _ who: String, _ partOwners: inout [Fid: String]) {
        if o.multipart {
            partOwners[o.fid] = who
            return
        }
        owners[o.fid] = owners[o.fid] ?? who
        if o.objectHoldsData && o.inode == nil { holdingData.insert(o.fid) }
    }

    /// Every record of `index`; none if it does not exist.
    private static func all(_ cluster: Cluster, _ index: Fid) async throws -> [Record] {
        do { return try await cluster.records(index, from: nil, limit: .max) } catch let e as TesseraError where e.code == .notFound {
            return []
        }
    }
}
