// The node cache: segment pages in memory, bounded by a byte budget, evicted by CLOCK.
#if canImport(Glibc)
import Glibc
#endif
import TesseraCore

/// One cached segment page. Owned by `PageCache`; touched only under the engine lock.
final class Frame {
    let page: UInt64
    let data: UnsafeMutableRawPointer
    /// Commit group of the last closed transaction that modified this page; 0 if none since
    /// load. The frame is clean (evictable) once that group has been placed in the segment.
    var lastGroup: UInt64 = 0
    /// Modified by the open transaction: 64-byte chunks, one bit each.
    var txMask: [UInt64] = []
    var inTransaction = false
    /// Operation that last used the frame; frames of the running operation are never evicted,
    /// because the code above holds pointers into them.
    var lastOp: UInt64 = 0
    var referenced = true
    /// The node structure was checked after loading (see `Node.validate`).
    var validated = false

    init(page: UInt64, data: UnsafeMutableRawPointer) {
        self.page = page
        self.data = data
    }
}

/// Segment pages cached in memory. A miss reads the page from the image. When the budget
/// is reached, a clean frame not used by the running operation is evicted; if every frame is
/// dirty, the cache asks the commit pipeline to place what it has and waits for it.
///
/// Not thread-safe: the engine serialises all access under its lock.
final class PageCache {
    let file: ImageFile
    let pageSize: Int
    let segmentOffset: UInt64
    let capacity: Int
    private var frames = PageTable()
    private var clock: [Frame] = []
    private var hand = 0
    private var spare: [UnsafeMutableRawPointer] = []
    /// Bumped by the engine at the start of every operation.
    var currentOp: UInt64 = 1
    /// Commit groups placed so far; set by the engine from the commit pipeline.
    var placedThrough: () -> UInt64 = { 0 }
    /// Places every logged-or-open group up to the given one; called when all frames are dirty.
    var placeNow: (UInt64) throws -> Void = { _ in }
    /// Asks the pipeline to place soon, without waiting.
    var nudgePlacement: () -> Void = {}

    private(set) var hits: UInt64 = 0
    private(set) var misses: UInt64 = 0

    init(file: ImageFile, geometry: Geometry, budgetBytes: Int) {
        self.file = file
        self.pageSize = geometry.pageSize
        self.segmentOffset = geometry.segmentOffset
        self.capacity = max(16, budgetBytes / geometry.pageSize)
    }

    /// Page buffers come from slabs of `slabPages` pages: one aligned allocation per page
    /// would cost a second page of memory each for malloc's header.
    private static let slabPages = 64
    private var slabs: [UnsafeMutableRawPointer] = []

    deinit {
        for s in slabs { free(s) }
    }

    var residentBytes: Int { clock.count * pageSize }

    /// The frame of `page`, read from the image on a miss.
    func frame(_ page: UInt64) throws -> Frame {
        if let f = frames[page] {
            f.referenced = true
            f.lastOp = currentOp
            hits &+= 1
            return f
        }
        misses &+= 1
        let f = try newFrame(page)
        do {
            try file.read(
                fromAbsoluteOffset: segmentOffset + page * UInt64(pageSize),
                into: UnsafeMutableRawBufferPointer(start: f.data, count: pageSize))
        } catch {
            drop(f)
            throw error
        }
        return f
    }

    /// A frame for a page whose old content does not matter (a page never used before).
    func fresh(_ page: UInt64) throws -> Frame {
        if let f = frames[page] { return f }
        let f = try newFrame(page)
        memset(f.data, 0, pageSize)
        return f
    }

    private func newFrame(_ page: UInt64) throws -> Frame {
        let buffer = try takeBuffer()
        let f = Frame(page: page, data: buffer)
        f.lastOp = currentOp
        frames[page] = f
        clock.append(f)
        return f
    }

    private func drop(_ f: Frame) {
        frames[f.page] = nil
        if let i = clock.firstIndex(where: { $0 === f }) { clock.remove(at: i) }
        spare.append(f.data)
    }

    private func takeBuffer() throws -> UnsafeMutableRawPointer {
        if clock.count >= capacity, let victim = try evictOne() {
            return victim
        }
        if let p = spare.popLast() { return p }
        var slab: UnsafeMutableRawPointer?
        guard posix_memalign(&slab, 4096, PageCache.slabPages * pageSize) == 0, let slab else {
            throw TesseraError(.noSpace, "out of memory for the node cache")
        }
        slabs.append(slab)
        for i in (1..<PageCache.slabPages).reversed() { spare.append(slab + i * pageSize) }
        return slab
    }

    /// Evicts one clean frame and returns its buffer; nil lets the cache overshoot, which
    /// happens only while one operation or transaction holds more frames than the budget.
    private func evictOne() throws -> UnsafeMutableRawPointer? {
        for attempt in 0..<2 {
            var newestDirty: UInt64 = 0
            let placed = placedThrough()
            var steps = 0
            while steps < 2 * clock.count {
                if hand >= clock.count { hand = 0 }
                let f = clock[hand]
                steps += 1
                if f.inTransaction || f.lastOp == currentOp {
                    hand += 1
                    continue
                }
                if f.lastGroup > placed {
                    newestDirty = max(newestDirty, f.lastGroup)
                    hand += 1
                    continue
                }
                if f.referenced {
                    f.referenced = false
                    hand += 1
                    continue
                }
                frames[f.page] = nil
                clock.swapAt(hand, clock.count - 1)
                clock.removeLast()
                return f.data
            }
            if newestDirty == 0 || attempt == 1 { return nil }
            try placeNow(newestDirty)
        }
        return nil
    }

    /// Called when a transaction dirties frames; asks for placement once half the budget is dirty.
    func noteDirty(count: Int) {
        dirtySinceNudge += count
        if dirtySinceNudge > capacity / 2 {
            dirtySinceNudge = 0
            nudgePlacement()
        }
    }
    private var dirtySinceNudge = 0

    /// Forgets every frame (used after recovery rewrote the segment under the cache).
    func invalidateAll() {
        for f in clock { spare.append(f.data) }
        clock.removeAll()
        frames = PageTable()
        hand = 0
    }
}

/// Page number → cached frame: a two-level radix table, leaves of 1024 slots made on first
/// use. A lookup is two array indexings, where a dictionary would hash every page number.
struct PageTable {
    private static let leafBits = 10
    private static let leafSize = 1 << leafBits
    private final class Leaf {
        var slots = [Frame?](repeating: nil, count: PageTable.leafSize)
    }
    private var leaves: [Leaf?] = []

    subscript(page: UInt64) -> Frame? {
        get {
            let i = Int(page >> UInt64(Self.leafBits))
            guard i < leaves.count, let leaf = leaves[i] else { return nil }
            return leaf.slots[Int(page) & (Self.leafSize - 1)]
        }
        set {
            let i = Int(page >> UInt64(Self.leafBits))
            if i >= leaves.count {
                guard newValue != nil else { return }
                leaves.append(contentsOf: repeatElement(nil, count: i + 1 - leaves.count))
            }
            let leaf: Leaf
            if let l = leaves[i] {
                leaf = l
            } else {
                guard newValue != nil else { return }
                leaf = Leaf()
                leaves[i] = leaf
            }
            leaf.slots[Int(page) & (Self.leafSize - 1)] = newValue
        }
    }
}
