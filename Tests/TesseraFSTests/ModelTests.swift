// The core against an in-memory model: random sequences of namespace and data operations,
// the whole tree compared after every step (types, sizes, link counts, contents, listings,
// xattrs, symlink targets, errnos, and inode numbers, which must survive a remount). A
// failing sequence is shrunk to a shortest one that still fails and printed as Swift, to be
// kept below as a named regression test.
import Foundation
import Glibc
import Testing
import TesseraClient
import TesseraCore
import TesseraFS

/// One step. `description` is Swift source for a regression test.
enum Op: CustomStringConvertible, Sendable {
    case create(String)
    case mkdir(String)
    case write(String, offset: Int, length: Int, seed: UInt8)
    case truncate(String, Int)
    case unlink(String)
    case rmdir(String)
    case rename(String, String, flags: UInt32)
    case link(String, String)
    case symlink(String, target: String)
    case setxattr(String, name: String, value: String)
    case removexattr(String, name: String)
    case chmod(String, UInt32)
    /// Open, unlink, then write and read through the handle before closing it.
    case openUnlinked(String, seed: UInt8)
    case remount

    var description: String {
        switch self {
        case .create(let p): return ".create(\"\(p)\")"
        case .mkdir(let p): return ".mkdir(\"\(p)\")"
        case .write(let p, let o, let l, let s): return ".write(\"\(p)\", offset: \(o), length: \(l), seed: \(s))"
        case .truncate(let p, let n): return ".truncate(\"\(p)\", \(n))"
        case .unlink(let p): return ".unlink(\"\(p)\")"
        case .rmdir(let p): return ".rmdir(\"\(p)\")"
        case .rename(let a, let b, let f): return ".rename(\"\(a)\", \"\(b)\", flags: \(f))"
        case .link(let a, let b): return ".link(\"\(a)\", \"\(b)\")"
        case .symlink(let p, let t): return ".symlink(\"\(p)\", target: \"\(t)\")"
        case .setxattr(let p, let n, let v): return ".setxattr(\"\(p)\", name: \"\(n)\", value: \"\(v)\")"
        case .removexattr(let p, let n): return ".removexattr(\"\(p)\", name: \"\(n)\")"
        case .chmod(let p, let m): return ".chmod(\"\(p)\", 0o\(String(m, radix: 8)))"
        case .openUnlinked(let p, let s): return ".openUnlinked(\"\(p)\", seed: \(s))"
        case .remount: return ".remount"
        }
    }
}

func pattern(_ seed: UInt8, _ n: Int) -> [UInt8] {
    (0..<n).map { UInt8(truncatingIfNeeded: Int(seed) &+ $0 &* 7 &+ ($0 >> 9)) | 1 }
}

/// The model: paths to nodes; files that are hard links share one node.
final class Model {
    final class Node {
        var type: FileType
        var data: [UInt8] = []
        var target = ""
        var xattrs: [String: String] = [:]
        var mode: UInt32
        var links = 1
        /// Unique for the model's life (an ObjectIdentifier can come back after a free).
        let id: Int
        init(_ type: FileType, mode: UInt32) {
            self.type = type
            self.mode = mode
            Node.made += 1
            id = Node.made
        }
        nonisolated(unsafe) static var made = 0
    }
    var tree: [String: Node] = ["": Node(.directory, mode: 0o755)]

    static func parent(_ p: String) -> String { p.split(separator: "/").dropLast().joined(separator: "/") }
    func children(_ p: String) -> [String] {
        tree.keys.filter { !$0.isEmpty && Self.parent($0) == p }.sorted()
    }

    /// The errno of walking to `p`'s parent: ENOTDIR through a non-directory, ENOENT past
    /// a missing one, else 0.
    func walk(_ p: String) -> Int32 {
        var q = ""
        for part in p.split(separator: "/").dropLast() {
            q = q.isEmpty ? String(part) : q + "/" + part
            guard let n = tree[q] else { return ENOENT }
            if n.type != .directory { return ENOTDIR }
        }
        return 0
    }

    /// Why `p` cannot be found, or 0 if it is there.
    func missing(_ p: String) -> Int32 {
        let w = walk(p)
        return w != 0 ? w : (tree[p] == nil ? ENOENT : 0)
    }

    /// Applies `op`; returns the errno it should fail with, or 0.
    func apply(_ op: Op) -> Int32 {
        func dirOK(_ p: String) -> Int32 { walk(p) }
        switch op {
        case .create(let p), .mkdir(let p):
            let e = dirOK(p)
            if e != 0 { return e }
            if tree[p] != nil { return EEXIST }
            if case .mkdir = op { tree[p] = Node(.directory, mode: 0o755) } else { tree[p] = Node(.regular, mode: 0o644) }
            return 0
        case .symlink(let p, let t):
            let e = dirOK(p)
            if e != 0 { return e }
            if tree[p] != nil { return EEXIST }
            let n = Node(.symlink, mode: 0o777)
            n.target = t
            tree[p] = n
            return 0
        case .write(let p, let o, let l, let s):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            guard n.type == .regular else { return n.type == .directory ? EISDIR : 0 }
            if n.data.count < o + l { n.data += [UInt8](repeating: 0, count: o + l - n.data.count) }
            n.data.replaceSubrange(o..<(o + l), with: pattern(s, l))
            return 0
        case .truncate(let p, let size):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            guard n.type == .regular else { return n.type == .directory ? EISDIR : 0 }
            if size < n.data.count { n.data.removeSubrange(size...) } else { n.data += [UInt8](repeating: 0, count: size - n.data.count) }
            return 0
        case .unlink(let p):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            if n.type == .directory { return EISDIR }
            n.links -= 1
            tree[p] = nil
            return 0
        case .rmdir(let p):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            if n.type != .directory { return ENOTDIR }
            if !children(p).isEmpty { return ENOTEMPTY }
            tree[p] = nil
            return 0
        case .rename(let a, let b, let flags):
            if walk(a) != 0 { return walk(a) }
            if walk(b) != 0 { return walk(b) }
            guard let s = tree[a] else { return ENOENT }
            let t = tree[b]
            if a == b || (t != nil && t === s) { return 0 }
            if s.type == .directory && (b + "/").hasPrefix(a + "/") { return EINVAL }
            if flags == FileSystem.renameExchange {
                guard let t else { return ENOENT }
                if t.type == .directory && (a + "/").hasPrefix(b + "/") { return EINVAL }
                let below = tree.filter { $0.key.hasPrefix(a + "/") }
                let belowB = tree.filter { $0.key.hasPrefix(b + "/") }
                for k in below.keys { tree[k] = nil }
                for k in belowB.keys { tree[k] = nil }
                for (k, v) in below { tree[b + k.dropFirst(a.count)] = v }
                for (k, v) in belowB { tree[a + k.dropFirst(b.count)] = v }
                tree[a] = t
                tree[b] = s
                return 0
            }
            if let t {
                if t.type == .directory && s.type != .directory { return EISDIR }
                if s.type == .directory && t.type != .directory { return ENOTDIR }
                if flags == FileSystem.renameNoReplace { return EEXIST }
                if t.type == .directory && !children(b).isEmpty { return ENOTEMPTY }
                t.links -= 1
            }
            let below = tree.filter { $0.key.hasPrefix(a + "/") }
            for k in below.keys { tree[k] = nil }
            for (k, v) in below { tree[b + k.dropFirst(a.count)] = v }
            tree[a] = nil
            tree[b] = s
            return 0
        case .link(let a, let b):
            if missing(a) != 0 { return missing(a) }
            let s = tree[a]!
            let e = dirOK(b)
            if e != 0 { return e }
            if s.type == .directory { return EPERM }
            if tree[b] != nil { return EEXIST }
            s.links += 1
            tree[b] = s
            return 0
        case .setxattr(let p, let name, let v):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            n.xattrs[name] = v
            return 0
        case .removexattr(let p, let name):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            return n.xattrs.removeValue(forKey: name) == nil ? ENODATA : 0
        case .chmod(let p, let m):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            n.mode = m
            return 0
        case .openUnlinked(let p, let seed):
            if missing(p) != 0 { return missing(p) }
            let n = tree[p]!
            if n.type == .directory { return 0 }
            if n.type == .regular {
                // Other hard links still show what was written through the handle.
                if n.data.count < 5100 { n.data += [UInt8](repeating: 0, count: 5100 - n.data.count) }
                n.data.replaceSubrange(100..<5100, with: pattern(seed, 5000))
            }
            n.links -= 1
            tree[p] = nil
            return 0
        case .remount:
            return 0
        }
    }
}

/// Runs ops against the core and the model, checking after every step.
final class Runner {
    let cluster: InProcessCluster
    var fs: FileSystem
    var client: Cluster
    let model = Model()
    /// Inode numbers seen per model node, which must never change.
    var inos: [Int: UInt64] = [:]
    let bucket: String

    init(_ cluster: InProcessCluster, bucket: String) async throws {
        self.cluster = cluster
        self.bucket = bucket
        (client, fs) = try await cluster.mount(bucket: bucket)
    }

    func resolve(_ path: String) async throws -> UInt64 {
        var ino = FileSystem.rootIno
        for part in path.split(separator: "/") { ino = try await fs.lookup(ino, Array(part.utf8)).ino }
        return ino
    }

    /// The parent's inode and the last name, failing as the kernel's path walk would.
    func split(_ path: String) async throws -> (UInt64, [UInt8]) {
        let parent = try await resolve(Model.parent(path))
        if try fs.getattr(parent).type != .directory { throw FSError(ENOTDIR) }
        return (parent, Array((path.split(separator: "/").last ?? "").utf8))
    }

    func errno(_ body: () async throws -> Void) async -> Int32 {
        do {
            try await body()
            return 0
        } catch { return FSError.errno(of: error) }
    }

    func run(_ op: Op) async throws -> Int32 {
        let fs = self.fs
        switch op {
        case .create(let p):
            return await errno {
                let (d, n) = try await split(p)
                let (_, h) = try await fs.create(d, n, mode: 0o644, flags: O_RDWR | O_CREAT | O_EXCL, caller: .root)
                try await fs.release(h)
            }
        case .mkdir(let p):
            return await errno {
                let (d, n) = try await split(p)
                _ = try await fs.mkdir(d, n, mode: 0o755, caller: .root)
            }
        case .symlink(let p, let t):
            return await errno {
                let (d, n) = try await split(p)
                _ = try await fs.symlink(Array(t.utf8), d, n, caller: .root)
            }
        case .write(let p, let o, let l, let s):
            return await errno {
                let ino = try await resolve(p)
                guard try fs.getattr(ino).type == .regular else {
                    if try fs.getattr(ino).type == .directory { throw FSError(EISDIR) }
                    return
                }
                let h = try await fs.open(ino, flags: O_RDWR).handle
                let bytes = pattern(s, l)
                _ = try await fs.write(h, at: UInt64(o), bytes: bytes)
                try await fs.flush(h)
                try await fs.release(h)
            }
        case .truncate(let p, let size):
            return await errno {
                let ino = try await resolve(p)
                let t = try fs.getattr(ino).type
                if t == .directory { throw FSError(EISDIR) }
                guard t == .regular else { return }
                _ = try await fs.setattr(ino, AttributeChanges(size: UInt64(size)), caller: .root)
            }
        case .unlink(let p):
            return await errno {
                let (d, n) = try await split(p)
                try await fs.unlink(d, n)
            }
        case .rmdir(let p):
            return await errno {
                let (d, n) = try await split(p)
                try await fs.rmdir(d, n)
            }
        case .rename(let a, let b, let flags):
            return await errno {
                let (d1, n1) = try await split(a)
                let (d2, n2) = try await split(b)
                try await fs.rename(d1, n1, d2, n2, flags: flags)
            }
        case .link(let a, let b):
            return await errno {
                let ino = try await resolve(a)
                let (d, n) = try await split(b)
                _ = try await fs.link(ino, d, n)
            }
        case .setxattr(let p, let name, let v):
            return await errno { try await fs.setxattr(try await resolve(p), Array(name.utf8), Array(v.utf8), flags: 0) }
        case .removexattr(let p, let name):
            return await errno { try await fs.removexattr(try await resolve(p), Array(name.utf8)) }
        case .chmod(let p, let m):
            return await errno { _ = try await fs.setattr(try await resolve(p), AttributeChanges(mode: m), caller: .root) }
        case .openUnlinked(let p, let s):
            return await errno {
                let ino = try await resolve(p)
                guard try fs.getattr(ino).type == .regular else {
                    let (d, n) = try await split(p)
                    if try fs.getattr(ino).type == .directory { return }
                    try await fs.unlink(d, n)
                    return
                }
                let h = try await fs.open(ino, flags: O_RDWR).handle
                let (d, n) = try await split(p)
                try await fs.unlink(d, n)
                let bytes = pattern(s, 5000)
                _ = try await fs.write(h, at: 100, bytes: bytes)
                let back = try await fs.read(h, at: 100, count: 5000)
                try await fs.release(h)
                if back != bytes { throw FSError(EBADMSG, "an open unlinked file read back wrong") }
            }
        case .remount:
            await fs.flushAll()
            await client.close()
            (client, self.fs) = try await cluster.mount(bucket: bucket)
            return 0
        }
    }

    /// Compares the whole tree; returns what differs, or nil.
    func check() async throws -> String? {
        var byNode: [Int: UInt64] = [:]
        for (path, node) in model.tree.sorted(by: { $0.key < $1.key }) {
            let ino: UInt64
            do { ino = try await resolve(path) } catch { return "\(path): lookup failed: \(error)" }
            let a = try fs.getattr(ino)
            if a.type != node.type { return "\(path): type \(a.type), model \(node.type)" }
            let id = node.id
            if let seen = byNode[id], seen != ino { return "\(path): hard links with inodes \(seen) and \(ino)" }
            byNode[id] = ino
            if let before = inos[id], before != ino { return "\(path): inode number changed from \(before) to \(ino)" }
            inos[id] = ino
            if a.mode & 0o7777 != node.mode && node.type != .symlink { return "\(path): mode \(String(a.mode, radix: 8)), model \(String(node.mode, radix: 8))" }
            if node.type != .directory && a.nlink != UInt32(node.links) { return "\(path): nlink \(a.nlink), model \(node.links)" }
            let xattrs = try fs.listxattr(ino).map { String(decoding: $0, as: UTF8.self) }.sorted()
            if xattrs != node.xattrs.keys.sorted() { return "\(path): xattrs \(xattrs), model \(node.xattrs.keys.sorted())" }
            for (k, v) in node.xattrs where try fs.getxattr(ino, Array(k.utf8)) != Array(v.utf8) { return "\(path): xattr \(k) differs" }
            switch node.type {
            case .regular:
                if a.size != UInt64(node.data.count) { return "\(path): size \(a.size), model \(node.data.count)" }
                let h = try await fs.open(ino, flags: O_RDONLY).handle
                let back = try await fs.read(h, at: 0, count: node.data.count + 10)
                try await fs.release(h)
                if back.count != node.data.count { return "\(path): read \(back.count) bytes, model \(node.data.count)" }
                if back != node.data {
                    let at = zip(back, node.data).enumerated().first { $0.element.0 != $0.element.1 }!.offset
                    return "\(path): contents differ first at byte \(at): \(back[at]) vs model \(node.data[at])"
                }
            case .symlink:
                if try fs.readlink(ino) != Array(node.target.utf8) { return "\(path): symlink target differs" }
            case .directory:
                let h = try fs.opendir(ino)
                let names = try await fs.readdir(h, from: 0).map { String(decoding: $0.name, as: UTF8.self) }
                fs.releasedir(h)
                let want = [".", ".."] + model.children(path).map { String($0.split(separator: "/").last!) }
                if names != want { return "\(path): listing \(names), model \(want)" }
            default: break
            }
        }
        return nil
    }
}

/// Random operations over a small namespace (names collide often on purpose).
func randomOps(seed: UInt64, count: Int) -> [Op] {
    var rng = SeededRandom(seed: seed)
    let names = ["a", "b", "c", "dd"]
    func path() -> String {
        let depth = Int.random(in: 1...3, using: &rng)
        return (0..<depth).map { _ in names.randomElement(using: &rng)! }.joined(separator: "/")
    }
    return (0..<count).map { _ in
        switch Int.random(in: 0..<100, using: &rng) {
        case 0..<12: return .create(path())
        case 12..<22: return .mkdir(path())
        case 22..<40:
            let big = Bool.random(using: &rng)
            return .write(path(), offset: Int.random(in: 0...(big ? 400_000 : 5000), using: &rng), length: Int.random(in: 1...(big ? 300_000 : 3000), using: &rng), seed: UInt8.random(in: 0...255, using: &rng))
        case 40..<47: return .truncate(path(), Int.random(in: 0...300_000, using: &rng))
        case 47..<55: return .unlink(path())
        case 55..<61: return .rmdir(path())
        case 61..<73: return .rename(path(), path(), flags: [0, 0, FileSystem.renameNoReplace, FileSystem.renameExchange].randomElement(using: &rng)!)
        case 73..<79: return .link(path(), path())
        case 79..<83: return .symlink(path(), target: path())
        case 83..<87: return .setxattr(path(), name: "user." + names.randomElement(using: &rng)!, value: String(Int.random(in: 0...999, using: &rng)))
        case 87..<89: return .removexattr(path(), name: "user." + names.randomElement(using: &rng)!)
        case 89..<92: return .chmod(path(), [0o600, 0o640, 0o755, 0o4755].randomElement(using: &rng)!)
        case 92..<96: return .openUnlinked(path(), seed: UInt8.random(in: 0...255, using: &rng))
        default: return .remount
        }
    }
}

/// Buckets made so far: each run of ops gets a fresh one.
private let bucketsMade = Locked(0)

/// Runs `ops` on a fresh bucket; the first failure, or nil.
func failure(of ops: [Op], on cluster: InProcessCluster) async throws -> String? {
    let runner = try await Runner(cluster, bucket: "fs-\(bucketsMade.withLock { $0 += 1; return $0 })")
    defer { Task { [client = runner.client] in await client.close() } }
    for (n, op) in ops.enumerated() {
        let want = runner.model.apply(op)
        let got = try await runner.run(op)
        if want != got { return "step \(n) \(op): errno \(got), model \(want)" }
        if let d = try await runner.check() { return "after step \(n) \(op): \(d)" }
    }
    return nil
}

/// Drops operations one at a time while the sequence still fails.
func shrink(_ ops: [Op], on cluster: InProcessCluster) async throws -> [Op] {
    var best = ops
    var i = 0
    while i < best.count {
        var candidate = best
        candidate.remove(at: i)
        if try await failure(of: candidate, on: cluster) != nil { best = candidate } else { i += 1 }
    }
    return best
}

@Suite(.serialized) struct ModelTests {
    @Test func randomSequencesMatchTheModel() async throws {
        let cluster = try await InProcessCluster()
        let seeds = ProcessInfo.processInfo.environment["TESSERA_FS_SEEDS"].flatMap(Int.init) ?? 12
        for seed in 1...UInt64(seeds) {
            let ops = randomOps(seed: seed, count: ProcessInfo.processInfo.environment["TESSERA_FS_OPS"].flatMap(Int.init) ?? 60)
            if let f = try await failure(of: ops, on: cluster) {
                let small = try await shrink(ops, on: cluster)
                let why = try await failure(of: small, on: cluster) ?? f
                Issue.record("seed \(seed): \(why)\nshrunk to:\n[\(small.map(\.description).joined(separator: ", "))]")
                break
            }
        }
        await cluster.stop()
    }

    /// Kept shrunk failures: each once failed, and must pass from now on.
    static let regressions: [(String, [Op])] = [
        // A path through a file is ENOTDIR, not ENOENT, at either end of a rename.
        ("renameThroughAFile", [.create("b"), .rename("b/a", "a/a", flags: 0)]),
        // Writes through an open, unlinked name show through the file's other hard link.
        ("openUnlinkedHardLink", [.create("c"), .mkdir("b"), .link("c", "b/dd"), .openUnlinked("c", seed: 222)]),
        // A truncation inside a page, then growth: the cut bytes read as zeros, in memory and
        // after a remount.
        ("truncateInPageThenGrow", [.create("a"), .write("a", offset: 0, length: 200_000, seed: 9), .truncate("a", 70_000), .write("a", offset: 150_000, length: 10, seed: 3), .remount]),
        // Renaming a directory over an empty one, and exchanging a directory with a file.
        ("renameDirectories", [.mkdir("a"), .create("a/f"), .mkdir("b"), .rename("a", "b", flags: 0), .create("c"), .rename("b", "c", flags: FileSystem.renameExchange), .remount]),
    ]

    @Test func regressions() async throws {
        let cluster = try await InProcessCluster()
        for (name, ops) in Self.regressions {
            let f = try await failure(of: ops, on: cluster)
            #expect(f == nil, "\(name): \(f ?? "")")
        }
        await cluster.stop()
    }
}
