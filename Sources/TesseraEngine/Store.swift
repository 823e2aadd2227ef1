// The segment as the B-trees see it: node access through the cache, and the page allocator.
//
// Root page (segment page 0; docs/FORMAT.md, "Root page"); little-endian:
//
//   off  size  field
//   0    8     magic "TSRAROOT"
//   8    8     meta-b-tree root page (always 1)
//   16   8     free list head page (0: empty)
//   24   8     free page count
//   32   8     high-water mark: pages at or above it were never allocated
//
// Free page: 0 magic "TSRAFREE" (8 bytes), 8 next free page (8 bytes, 0 ends the list).
//
// Invariant (checked by `audit()`): every page below the high-water mark is reachable
// exactly once: page 0 as the root, or from the meta-b-tree, a catalogue, or the free list.
import TesseraCore

#if canImport(Glibc)
import Glibc
#endif

/// Engine internals below the lock: not thread-safe, used only by `Engine` under its lock.
final class Store {
    static let rootMagic: UInt64 = 0x544F_4F52_4152_5354  // "TSRAROOT" little-endian
    static let freeMagic: UInt64 = 0x4545_5246_4152_5354  // "TSRAFREE"
    static let metaRootPage: UInt64 = 1

    let geometry: Geometry
    let cache: PageCache
    let tx: TxContext
    let limits: Limits
    /// Root pages of live catalogues already looked up. A root page never moves while its
    /// catalogue lives (FORMAT.md, "fixed root pages"); a drop removes the entry and an
    /// undone transaction empties the cache, so no entry outlives its catalogue.
    var roots: [Fid: UInt64] = [:]
    var pageSize: Int { geometry.pageSize }
    /// Underflow threshold: a non-root node with fewer used bytes is merged or refilled.
    var minFill: Int { (pageSize - Node.headerSize) / 4 }

    init(geometry: Geometry, cache: PageCache) {
        self.geometry = geometry
        self.cache = cache
        self.tx = TxContext(pageSize: geometry.pageSize)
        self.limits = Limits(pageSize: geometry.pageSize)
    }

    /// Undoes the running transaction.
    func rollback() {
        tx.rollback()
        roots.removeAll()
    }

    // MARK: Nodes

    func node(_ page: UInt64) throws -> Node {
        guard page >= 1, page < geometry.pageCount else {
            throw TesseraError(.corrupt, "page number \(page) is outside the segment (\(geometry.pageCount) pages)")
        }
        let f = try cache.frame(page)
        let n = Node(frame: f, pageSize: pageSize)
        if !f.validated {
            try n.validate()
            f.validated = true
        }
        return n
    }

    /// The node of a child page, checked to sit one level below its parent.
    func child(_ parent: Node, _ j: Int) throws -> Node {
        let c = try node(parent.child(j))
        guard c.level == parent.level - 1 else {
            throw TesseraError(.corrupt, "node page \(c.page) at level \(c.level) is a child of page \(parent.page) at level \(parent.level)")
        }
        return c
    }

    // MARK: Root page and allocator

    private func rootFrame() throws -> Frame {
        let f = try cache.frame(0)
        guard f.data.loadLE(at: 0, as: UInt64.self) == Store.rootMagic else {
            throw TesseraError(.corrupt, "segment root page has a bad magic")
        }
        return f
    }

    struct RootInfo {
        var metaRoot: UInt64
        var freeHead: UInt64
        var freeCount: UInt64
        var highWater: UInt64
    }

    func rootInfo() throws -> RootInfo {
        let d = try rootFrame().data
        return RootInfo(
            metaRoot: d.loadLE(at: 8, as: UInt64.self), freeHead: d.loadLE(at: 16, as: UInt64.self),
            freeCount: d.loadLE(at: 24, as: UInt64.self), highWater: d.loadLE(at: 32, as: UInt64.self))
    }

    private func setRoot(_ field: Int, _ value: UInt64) throws {
        let f = try rootFrame()
        tx.willModify(f, field, 8)
        f.data.storeLE(value, at: field)
    }

    /// A page for a new node. The caller rebuilds it completely.
    func allocate() throws -> Frame {
        let r = try rootInfo()
        if r.freeHead != 0 {
            guard r.freeHead < r.highWater, r.freeHead > Store.metaRootPage else {
                throw TesseraError(.corrupt, "free list head \(r.freeHead) is outside the allocated pages")
            }
            let f = try cache.frame(r.freeHead)
            guard f.data.loadLE(at: 0, as: UInt64.self) == Store.freeMagic else {
                throw TesseraError(.corrupt, "page \(r.freeHead) is on the free list but not marked free")
            }
            try setRoot(16, f.data.loadLE(at: 8, as: UInt64.self))
            try setRoot(24, r.freeCount - 1)
            f.validated = false
            return f
        }
        guard r.highWater < geometry.pageCount else {
            throw TesseraError(.noSpace, "metadata image is full: all \(geometry.pageCount) pages of \(pageSize) bytes are in use")
        }
        try setRoot(32, r.highWater + 1)
        return try cache.fresh(r.highWater)
    }

    func free(_ page: UInt64) throws {
        let r = try rootInfo()
        let f = try cache.frame(page)
        tx.willModify(f, 0, 16)
        f.data.storeLE(Store.freeMagic, at: 0)
        f.data.storeLE(r.freeHead, at: 8)
        f.validated = false
        try setRoot(16, page)
        try setRoot(24, r.freeCount + 1)
    }

    /// Pages that can still be allocated: the free list plus the never-used tail.
    func availablePages() throws -> UInt64 {
        let r = try rootInfo()
        return r.freeCount + (geometry.pageCount - r.highWater)
    }

    /// Writes the root page and an empty meta-b-tree into a new image (no log involved).
    static func formatSegment(_ file: ImageFile, _ g: Geometry) throws {
        var root = [UInt8](repeating: 0, count: g.pageSize)
        root.storeLE(rootMagic, at: 0)
        root.storeLE(metaRootPage, at: 8)
        root.storeLE(UInt64(2), at: 32)
        try file.write(root, atAbsoluteOffset: g.segmentOffset)
        var leaf = [UInt8](repeating: 0, count: g.pageSize)
        leaf.storeLE(Node.magic, at: 0)
        leaf[2] = Node.leafKind
        leaf.storeLE(UInt16(g.pageSize), at: 6)
        try file.write(leaf, atAbsoluteOffset: g.segmentOffset + UInt64(g.pageSize))
    }
}

/// The largest key, value and transaction the engine accepts, derived from the page size so
/// that a node always holds at least three of the largest cells.
public struct Limits: Sendable, Equatable {
    public let maxKey: Int
    public let maxValue: Int

    public init(pageSize: Int) {
        let capacity = pageSize - Node.headerSize
        maxKey = min(1024, capacity / 8)
        maxValue = capacity / 3 - maxKey - 6
    }
}
