// The S3 metadata records, as they sit in the replicated indexes (docs/S3.md has the same
// tables). Every record starts with a version byte; integers are little-endian, strings and
// byte strings are a u32 length then the bytes (WireWriter's encoding), fids are hi then lo.
//
// Indexes and their keys:
//
//   buckets        0x54533342:0x1 ("TS3B")   key = bucket name          value = BucketRecord
//   pending frees  0x54533344:0x1 ("TS3D")   key = object fid (16 bytes, hi then lo, big-endian)
//                                                                       value = PendingFree
//   parts          0x54533350:0x1 ("TS3P")   key = upload fid (16 bytes BE) + part number (u32 BE)
//                                                                       value = PartRecord
//   objects of a bucket   BucketRecord.objects   key = object key (UTF-8)  value = ObjectRecord
//   uploads of a bucket   BucketRecord.uploads   key = object key, 0x00, upload id (32 hex digits)
//                                                                       value = UploadRecord
//   file system of a bucket  fileSystemIndex(of:)  key = inode number (u64 BE) value = ObjectRecord
//                                                  (or 0xFF + block, see docs/FILESYSTEM.md)
//
// Big-endian fid keys make NEXT walk one upload's parts in part-number order.
import TesseraCore

public enum S3Indexes {
    public static let buckets = Fid(hi: 0x5453_3342, lo: 1)
    public static let pendingFrees = Fid(hi: 0x5453_3344, lo: 1)
    public static let parts = Fid(hi: 0x5453_3350, lo: 1)

    /// A fid no other object or index has: a tag in the top 32 bits, 96 random bits.
    static func random(tag: UInt32) -> Fid {
        var rng = SystemRandomNumberGenerator()
        return Fid(hi: UInt64(tag) << 32 | UInt64.random(in: 0...0xFFFF_FFFF, using: &rng), lo: UInt64.random(in: 1...UInt64.max, using: &rng))
    }
    static let objectIndexTag: UInt32 = 0x5453_334F  // "TS3O"
    static let uploadIndexTag: UInt32 = 0x5453_3355  // "TS3U"
    static let dataTag: UInt32 = 0x5453_3341  // "TS3A"
    static let fileSystemIndexTag: UInt32 = 0x5453_3346  // "TS3F"

    /// A new data object's fid.
    public static func newDataFid() -> Fid { random(tag: dataTag) }

    /// The bucket's file-system index (inode records of hard-linked files, the root
    /// directory's attributes, inode number claims): the objects index's fid with the
    /// "TS3F" tag, so it needs no field in the bucket record. Made by the first mount.
    public static func fileSystemIndex(of bucket: BucketRecord) -> Fid {
        Fid(hi: UInt64(fileSystemIndexTag) << 32 | (bucket.objects.hi & 0xFFFF_FFFF), lo: bucket.objects.lo)
    }

    /// Key of inode `ino`'s record in the file-system index: 8 bytes big-endian.
    public static func inodeKey(_ ino: UInt64) -> [UInt8] { withUnsafeBytes(of: ino.bigEndian, Array.init) }

    static func fidKey(_ fid: Fid) -> [UInt8] {
        var k: [UInt8] = []
        k.reserveCapacity(20)
        withUnsafeBytes(of: fid.hi.bigEndian) { k.append(contentsOf: $0) }
        withUnsafeBytes(of: fid.lo.bigEndian) { k.append(contentsOf: $0) }
        return k
    }

    static func partKey(_ upload: Fid, _ part: Int) -> [UInt8] {
        var k = fidKey(upload)
        withUnsafeBytes(of: UInt32(part).bigEndian) { k.append(contentsOf: $0) }
        return k
    }

    static func fid(fromKey k: [UInt8]) -> Fid? {
        guard k.count >= 16 else { return nil }
        var hi: UInt64 = 0
        var lo: UInt64 = 0
        for i in 0..<8 { hi = hi << 8 | UInt64(k[i]) }
        for i in 8..<16 { lo = lo << 8 | UInt64(k[i]) }
        return Fid(hi: hi, lo: lo)
    }
}

/// A header-like name and value kept with an object: `content-type`, the other standard
/// headers, `x-amz-meta-*` (names lower-cased), stored checksums (`x-amz-checksum-crc32`, …),
/// and, for the file system, `posix:*` attributes.
public typealias Attribute = (name: String, value: String)

private func writeAttributes(_ w: inout WireWriter, _ attributes: [Attribute]) {
    w.array(attributes) { w, a in
        w.string(a.name)
        w.string(a.value)
    }
}

private func readAttributes(_ r: inout WireReader) throws -> [Attribute] {
    try r.array("attributes", minimumSize: 8) { r in (try r.string("attribute name"), try r.string("attribute value")) }
}

private func checkVersion(_ r: inout WireReader, _ what: String) throws {
    let v = try r.u8("\(what) version")
    guard v == 1 else { throw TesseraError(.unsupportedVersion, "\(what) record version \(v); this build reads version 1") }
}

/// Value of the buckets index.
///
///   u8 version = 1 · u8 flags (bit 0: public-read) · fid objects · fid uploads ·
///   u64 created (ns since 1970) · string owner (access key id)
public struct BucketRecord: Sendable, Equatable {
    public var objects: Fid
    public var uploads: Fid
    public var created: UInt64
    public var owner: String
    public var publicRead: Bool

    func encode() -> [UInt8] {
        var w = WireWriter()
        w.u8(1)
        w.u8(publicRead ? 1 : 0)
        w.fid(objects)
        w.fid(uploads)
        w.u64(created)
        w.string(owner)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> BucketRecord {
        return try WireReader.read(bytes) { r in
            try checkVersion(&r, "bucket")
            let flags = try r.u8("bucket flags")
            let b = BucketRecord(objects: try r.fid("objects index"), uploads: try r.fid("uploads index"), created: try r.u64("created"), owner: try r.string("owner"), publicRead: flags & 1 != 0)
            try r.finish("bucket record")
            return b
        }
    }
}

/// Value of a bucket's object list, and of the file-system index's inode records.
///
///   u8 version (1, or 2 when any of flag bits 1–3 is set) · u8 flags · fid data ·
///   u64 size · u64 modified (ns since 1970) · string etag (hex, "-N" for multipart, no
///   quotes) · u32 parts · attributes (u32 count, then name and value strings), then, in
///   version 2 and in this order, only the fields whose flag is set:
///   bit 1: bytes posix (the file system's attributes, docs/FILESYSTEM.md; opaque here) ·
///   bit 2: u64 inode (a hard link: the object is the inode record of that number in the
///   bucket's file-system index; this entry's other fields are a copy as of its last write) ·
///   bit 3: u32 links (an inode record: how many entries link to it) ·
///   bit 4: bytes data (the object's bytes, kept in the record: `size` is their count, and
///   the object under `fid` holds nothing; never with bit 0).
///   Flag bit 0: multipart, its data in the parts under `fid`.
public struct ObjectRecord: Sendable {
    public var fid: Fid
    public var size: UInt64
    public var modified: UInt64
    public var etag: String
    public var parts: Int
    public var attributes: [Attribute]
    public var posix: [UInt8]?
    public var inode: UInt64?
    public var links: UInt32?
    /// The data itself, when small enough to live in the record (a file the mount wrote):
    /// `size` bytes, and the object under `fid` holds nothing.
    public var inline: [UInt8]?

    public var multipart: Bool { parts > 0 }
    /// Whether there may be data under `fid` to free: not for an empty object, nor for one
    /// whose data is in the record.
    public var objectHoldsData: Bool { multipart || (size > 0 && inline == nil) }

    public init(
        fid: Fid, size: UInt64, modified: UInt64, etag: String, parts: Int = 0, attributes: [Attribute], posix: [UInt8]? = nil, inode: UInt64? = nil,
        links: UInt32? = nil, inline: [UInt8]? = nil
    ) {
        self.fid = fid
        self.size = size
        self.modified = modified
        self.etag = etag
        self.parts = parts
        self.attributes = attributes
        self.posix = posix
        self.inode = inode
        self.links = links
        self.inline = inline
    }

    public func attribute(_ name: String) -> String? { attributes.first { $0.name == name }?.value }

    public func encode() -> [UInt8] {
        var w = WireWriter(capacity: 128 + (posix?.count ?? 0) + (inline?.count ?? 0))
        let flags: UInt8 = (multipart ? 1 : 0) | (posix != nil ? 2 : 0) | (inode != nil ? 4 : 0) | (links != nil ? 8 : 0) | (inline != nil ? 16 : 0)
        w.u8(flags > 1 ? 2 : 1)
        w.u8(flags)
        w.fid(fid)
        w.u64(size)
        w.u64(modified)
        w.string(etag)
        w.u32(UInt32(parts))
        writeAttributes(&w, attributes)
        if let posix { w.blob(posix) }
        if let inode { w.u64(inode) }
        if let links { w.u32(links) }
        if let inline { w.blob(inline) }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8]) throws -> ObjectRecord {
        return try WireReader.read(bytes) { r in
            let version = try r.u8("object record version")
            guard version == 1 || version == 2 else { throw TesseraError(.unsupportedVersion, "object record version \(version); this build reads 1 and 2") }
            let flags = try r.u8("object flags")
            guard flags & 0xE0 == 0, version == 2 || flags & 0x1E == 0 else { throw TesseraError(.corrupt, "object record flags \(flags) in version \(version)") }
            var o = ObjectRecord(
                fid: try r.fid("object fid"), size: try r.u64("size"), modified: try r.u64("modified"), etag: try r.string("etag"),
                parts: Int(try r.u32("parts")), attributes: try readAttributes(&r))
            if flags & 2 != 0 { o.posix = try r.blob("posix attributes") }
            if flags & 4 != 0 { o.inode = try r.u64("inode") }
            if flags & 8 != 0 { o.links = try r.u32("links") }
            if flags & 16 != 0 {
                let data = try r.blob("inline data")
                guard data.count == o.size, !o.multipart else {
                    throw TesseraError(.corrupt, "object record with \(data.count) bytes of data in it, size \(o.size)\(o.multipart ? ", multipart" : "")")
                }
                o.inline = data
            }
            try r.finish("object record")
            return o
        }
    }
}

/// Value of a bucket's uploads index: a multipart upload in progress.
///
///   u8 version = 1 · fid upload (its parts' prefix in the parts index) · u64 created ·
///   attributes of the object to be
public struct UploadRecord: Sendable {
    public var fid: Fid
    public var created: UInt64
    public var attributes: [Attribute]

    func encode() -> [UInt8] {
        var w = WireWriter()
        w.u8(1)
        w.fid(fid)
        w.u64(created)
        writeAttributes(&w, attributes)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> UploadRecord {
        return try WireReader.read(bytes) { r in
            try checkVersion(&r, "upload")
            let u = UploadRecord(fid: try r.fid("upload fid"), created: try r.u64("created"), attributes: try readAttributes(&r))
            try r.finish("upload record")
            return u
        }
    }
}

/// Value of the parts index: one uploaded part.
///
///   u8 version = 1 · fid data · u64 size · u64 modified · 16 bytes MD5 · attributes
///   (the part's checksums)
public struct PartRecord: Sendable {
    public var number: Int
    public var fid: Fid
    public var size: UInt64
    public var modified: UInt64
    public var md5: [UInt8]
    public var attributes: [Attribute]

    public var etag: String { hex(md5) }

    public init(number: Int, fid: Fid, size: UInt64, modified: UInt64, md5: [UInt8], attributes: [Attribute]) {
        self.number = number
        self.fid = fid
        self.size = size
        self.modified = modified
        self.md5 = md5
        self.attributes = attributes
    }

    func encode() -> [UInt8] {
        var w = WireWriter()
        w.u8(1)
        w.fid(fid)
        w.u64(size)
        w.u64(modified)
        w.raw(md5)
        writeAttributes(&w, attributes)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8], number: Int) throws -> PartRecord {
        return try WireReader.read(bytes) { r in
            try checkVersion(&r, "part")
            let fid = try r.fid("part fid")
            let size = try r.u64("part size")
            let modified = try r.u64("part modified")
            var md5: [UInt8] = []
            for _ in 0..<16 { md5.append(try r.u8("part md5")) }
            let p = PartRecord(number: number, fid: fid, size: size, modified: modified, md5: md5, attributes: try readAttributes(&r))
            try r.finish("part record")
            return p
        }
    }
}

/// Value of the pending-frees index (and of a bucket's free markers): an object that may
/// have to be freed, who would still be using it, and the session of the process that noted
/// it. The sweeper frees it only when its owner does not refer to it and its session is gone.
///
///   u8 version = 2 · u8 owner kind (0: the object list entry `key` of `bucket`, or an
///   upload of that key with this fid; 1: part `part` of upload `upload`) · u64 noted (ns,
///   for people: no decision reads it) · string bucket · string key · fid upload · u32 part ·
///   u64 session (the etcd lease id of the noting process; 0: none)
///
/// Version 1 had no session: such a record is read with session 0, owned by no one alive.
public struct PendingFree: Sendable, Equatable {
    public enum Owner: Sendable, Equatable {
        case object(bucket: String, key: String)
        case part(upload: Fid, number: Int)
    }
    public var owner: Owner
    public var noted: UInt64
    public var session: UInt64

    public init(owner: Owner, noted: UInt64, session: UInt64) {
        self.owner = owner
        self.noted = noted
        self.session = session
    }

    func encode() -> [UInt8] {
        var w = WireWriter()
        w.u8(2)
        switch owner {
        case .object(let bucket, let key):
            w.u8(0)
            w.u64(noted)
            w.string(bucket)
            w.string(key)
            w.fid(Fid(hi: 0, lo: 0))
            w.u32(0)
        case .part(let upload, let number):
            w.u8(1)
            w.u64(noted)
            w.string("")
            w.string("")
            w.fid(upload)
            w.u32(UInt32(number))
        }
        w.u64(session)
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> PendingFree {
        return try WireReader.read(bytes) { r in
            let version = try r.u8("pending-free version")
            guard version == 1 || version == 2 else {
                throw TesseraError(.unsupportedVersion, "pending-free record version \(version); this build reads versions 1 and 2")
            }
            let kind = try r.u8("owner kind")
            let noted = try r.u64("noted")
            let bucket = try r.string("bucket")
            let key = try r.string("key")
            let upload = try r.fid("upload")
            let part = Int(try r.u32("part"))
            let session = version == 2 ? try r.u64("session") : 0
            try r.finish("pending-free record")
            switch kind {
            case 0: return PendingFree(owner: .object(bucket: bucket, key: key), noted: noted, session: session)
            case 1: return PendingFree(owner: .part(upload: upload, number: part), noted: noted, session: session)
            default: throw TesseraError(.corrupt, "pending-free owner kind \(kind)")
            }
        }
    }
}

public func hex(_ bytes: some Sequence<UInt8>) -> String {
    let digits = Array("0123456789abcdef".utf8)
    var out: [UInt8] = []
    for b in bytes {
        out.append(digits[Int(b >> 4)])
        out.append(digits[Int(b & 15)])
    }
    return String(decoding: out, as: UTF8.self)
}
