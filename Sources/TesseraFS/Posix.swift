// The file system's attributes of one entry, kept in the `posix` field of its object record
// (docs/FILESYSTEM.md has the same table). Integers are little-endian (WireWriter).
//
//   u8 version = 1 · u64 inode number · u32 mode (type and permission bits) · u32 uid ·
//   u32 gid · u64 atime · u64 ctime (ns since 1970) · u64 rdev · bytes symlink target ·
//   u32 xattr count, then per xattr: bytes name, bytes value
//
// The size and mtime are the object record's own `size` and `modified`, so S3 clients and
// the mount agree on them; a symlink's size is its target's length.
import Glibc
import TesseraCore
import TesseraS3

/// File types, as the `S_IFMT` bits of a mode.
public enum FileType: UInt32, Sendable {
    case regular = 0o100000, directory = 0o040000, symlink = 0o120000
    case fifo = 0o010000, socket = 0o140000, character = 0o020000, block = 0o060000

    public init?(mode: UInt32) { self.init(rawValue: mode & 0o170000) }
}

struct Posix: Sendable, Equatable {
    var ino: UInt64
    var mode: UInt32
    var uid: UInt32
    var gid: UInt32
    var atime: UInt64
    var ctime: UInt64
    var rdev: UInt64 = 0
    var target: [UInt8] = []
    var xattrs: [(name: [UInt8], value: [UInt8])] = []

    var type: FileType { FileType(mode: mode) ?? .regular }

    /// What a write or chown by someone other than root does: set-user-ID goes, and
    /// set-group-ID where it means that (with group-execute; without, it marks locking).
    mutating func dropSetIDs() {
        mode &= ~0o4000
        if mode & 0o010 != 0 { mode &= ~0o2000 }
    }

    static func == (a: Posix, b: Posix) -> Bool {
        a.ino == b.ino && a.mode == b.mode && a.uid == b.uid && a.gid == b.gid && a.atime == b.atime && a.ctime == b.ctime && a.rdev == b.rdev
            && a.target == b.target && a.xattrs.elementsEqual(b.xattrs) { $0.name == $1.name && $0.value == $1.value }
    }

    func encode() -> [UInt8] {
        var w = WireWriter(capacity: 64 + target.count)
        w.u8(1)
        w.u64(ino)
        w.u32(mode)
        w.u32(uid)
        w.u32(gid)
        w.u64(atime)
        w.u64(ctime)
        w.u64(rdev)
        w.blob(target)
        w.array(xattrs) { w, x in
            w.blob(x.name)
            w.blob(x.value)
        }
        return w.bytes
    }

    static func decode(_ bytes: [UInt8]) throws -> Posix {
        return try WireReader.read(bytes) { r in
            let v = try r.u8("posix version")
            guard v == 1 else { throw TesseraError(.unsupportedVersion, "posix attributes version \(v); this build reads version 1") }
            var p = Posix(ino: try r.u64("inode"), mode: try r.u32("mode"), uid: try r.u32("uid"), gid: try r.u32("gid"), atime: try r.u64("atime"), ctime: try r.u64("ctime"))
            p.rdev = try r.u64("rdev")
            p.target = try r.blob("symlink target")
            p.xattrs = try r.array("xattrs", minimumSize: 8) { r in (try r.blob("xattr name"), try r.blob("xattr value")) }
            try r.finish("posix attributes")
            guard FileType(mode: p.mode) != nil, p.ino > 1 || p.ino == 1 else { throw TesseraError(.corrupt, "posix attributes with mode \(String(p.mode, radix: 8))") }
            return p
        }
    }
}

/// What `stat` shows of one inode.
public struct Attributes: Sendable, Equatable {
    public var ino: UInt64
    public var mode: UInt32
    public var nlink: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var rdev: UInt64
    public var size: UInt64
    /// Nanoseconds since 1970.
    public var atime: UInt64
    public var mtime: UInt64
    public var ctime: UInt64

    public var type: FileType { FileType(mode: mode) ?? .regular }
    /// 512-byte blocks, as `st_blocks` counts them.
    public var blocks: UInt64 { type == .regular ? (size + 511) / 512 : 0 }
}

/// Who asks: the kernel's credentials of the calling process.
public struct Caller: Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) {
        self.uid = uid
        self.gid = gid
    }
    public static let root = Caller(uid: 0, gid: 0)
}

/// The changes of one setattr call; nil fields stay as they are.
public struct AttributeChanges: Sendable {
    public enum Time: Sendable, Equatable {
        case now
        case at(UInt64)
    }
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: Time?
    public var mtime: Time?
    public init(mode: UInt32? = nil, uid: UInt32? = nil, gid: UInt32? = nil, size: UInt64? = nil, atime: Time? = nil, mtime: Time? = nil) {
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.size = size
        self.atime = atime
        self.mtime = mtime
    }
}

public struct FileSystemStatistics: Sendable {
    public var blockSize: UInt64
    public var blocks: UInt64
    public var freeBlocks: UInt64
    public var files: UInt64
    public var freeFiles: UInt64
    public var nameMax: UInt64
}

/// A POSIX error: the core's only failure that the adapter turns into a reply.
public struct FSError: Error, Sendable, CustomStringConvertible {
    public let errno: Int32
    public let message: String
    public init(_ errno: Int32, _ message: String = "") {
        self.errno = errno
        self.message = message
    }
    public var description: String { "\(String(cString: strerror(errno)))\(message.isEmpty ? "" : ": " + message)" }

    /// Any error as an errno: FSError as is, TesseraError by its code, anything else EIO.
    public static func errno(of error: Error) -> Int32 {
        if let e = error as? FSError { return e.errno }
        if let e = error as? TesseraError { return e.errno }
        return EIO
    }
}

/// Inode numbers of entries that carry none (objects written through S3, directories
/// implied by keys): a 63-bit hash of the entry's key with the top bit set, so they never
/// meet the numbers the file system hands out, which count up from 2.
func hashedInode(_ key: [UInt8]) -> UInt64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325
    for b in key {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    // A final mix (splitmix64's), so keys that differ in their last bytes spread out.
    h = (h ^ (h >> 30)) &* 0xbf58_476d_1ce4_e5b9
    h = (h ^ (h >> 27)) &* 0x94d0_49bb_1331_11eb
    h ^= h >> 31
    return h | (1 << 63)
}

/// Nanoseconds since 1970.
func now() -> UInt64 { S3Store.now() }
