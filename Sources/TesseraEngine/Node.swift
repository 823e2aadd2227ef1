// A B+tree node: a slotted page whose slots point at cells kept at the end of the page.
//
// Node page layout (docs/FORMAT.md, "B+tree node"); little-endian:
//
//   off  size  field
//   0    2     magic 0x4E54 ("TN")
//   2    1     kind: 1 leaf, 2 branch
//   3    1     level: 0 for leaves, child level + 1 for branches
//   4    2     count: number of cells
//   6    2     cell start: offset of the lowest cell byte (cells grow down from the page end)
//   8    2     garbage: bytes of removed cells inside the cell area
//   10   6     zero
//   16   8     branch: leftmost child page; leaf: zero
//   24   2*n   slots: cell offsets, in key order
//
//   +--------+-----------+ - - - free - - - +-----------------------------+
//   | header | slots ->  |                  |  <- cells (and garbage)      |
//   +--------+-----------+ - - - - - - - - -+-----------------------------+
//   0        24          24+2n              cellStart                 pageSize
//
//   leaf cell:   u16 key length, u16 value length, key, value
//   branch cell: u16 key length, u64 child page, key   (the child holds keys >= key)
//
// Page sizes above 32 KiB are not supported, so every offset fits in 16 bits.
#if canImport(Glibc)
import Glibc
#endif
import TesseraCore

/// A key and its value (leaf) or child page (branch), detached from any page.
struct Cell {
    var key: [UInt8]
    var value: [UInt8]
    var child: UInt64 = 0

    func size(leaf: Bool) -> Int { (leaf ? 4 + value.count : 10) + key.count + 2 }
}

struct Node {
    static let headerSize = 24
    static let magic: UInt16 = 0x4E54
    static let leafKind: UInt8 = 1
    static let branchKind: UInt8 = 2

    let frame: Frame
    let pageSize: Int
    @inline(__always) var p: UnsafeMutableRawPointer { frame.data }
    var page: UInt64 { frame.page }

    var isLeaf: Bool { p.load(fromByteOffset: 2, as: UInt8.self) == Node.leafKind }
    var level: Int { Int(p.load(fromByteOffset: 3, as: UInt8.self)) }
    var count: Int { Int(p.loadLE(at: 4, as: UInt16.self)) }
    var cellStart: Int { Int(p.loadLE(at: 6, as: UInt16.self)) }
    var garbage: Int { Int(p.loadLE(at: 8, as: UInt16.self)) }
    var leftmost: UInt64 { p.loadLE(at: 16, as: UInt64.self) }

    /// Bytes of slots and live cells: what a node must hold, apart from its header.
    var usedBytes: Int { 2 * count + (pageSize - cellStart) - garbage }
    var capacity: Int { pageSize - Node.headerSize }
    var freeBytes: Int { capacity - usedBytes }

    @inline(__always) func slot(_ i: Int) -> Int { Int(p.loadLE(at: Node.headerSize + 2 * i, as: UInt16.self)) }

    @inline(__always) func key(_ i: Int) -> UnsafeRawBufferPointer {
        let c = slot(i)
        let klen = Int(p.loadLE(at: c, as: UInt16.self))
        return UnsafeRawBufferPointer(start: p + c + (isLeaf ? 4 : 10), count: klen)
    }

    func value(_ i: Int) -> UnsafeRawBufferPointer {
        let c = slot(i)
        let klen = Int(p.loadLE(at: c, as: UInt16.self))
        let vlen = Int(p.loadLE(at: c + 2, as: UInt16.self))
        return UnsafeRawBufferPointer(start: p + c + 4 + klen, count: vlen)
    }

    /// Child `j` of a branch: 0 is the leftmost, j > 0 the child of cell j-1.
    func child(_ j: Int) -> UInt64 {
        j == 0 ? leftmost : p.loadLE(at: slot(j - 1) + 2, as: UInt64.self)
    }

    func cellSize(_ i: Int) -> Int {
        let c = slot(i)
        let klen = Int(p.loadLE(at: c, as: UInt16.self))
        return isLeaf ? 4 + klen + Int(p.loadLE(at: c + 2, as: UInt16.self)) : 10 + klen
    }

    /// First index whose key is >= `key`, and whether it is equal.
    /// - Complexity: O(log n) key comparisons.
    func lowerBound(_ key: UnsafeRawBufferPointer) -> (index: Int, found: Bool) {
        var lo = 0
        var hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if compareBytes(self.key(mid), key) < 0 { lo = mid + 1 } else { hi = mid }
        }
        return (lo, lo < count && compareBytes(self.key(lo), key) == 0)
    }

    /// The child of a branch whose range holds `key`: the number of separators <= key.
    func childIndex(_ key: UnsafeRawBufferPointer) -> Int {
        var lo = 0
        var hi = count
        while lo < hi {
            let mid = (lo + hi) / 2
            if compareBytes(self.key(mid), key) <= 0 { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    func cell(_ i: Int) -> Cell {
        isLeaf
            ? Cell(key: Array(key(i)), value: Array(value(i)))
            : Cell(key: Array(key(i)), value: [], child: child(i + 1))
    }

    func cells() -> [Cell] { (0..<count).map(cell) }

    /// Checks that the node can be read without going out of the page. Run once per load:
    /// pages come from disk and are not trusted.
    func validate() throws {
        func bad(_ why: String) -> TesseraError { TesseraError(.corrupt, "node page \(page): \(why)") }
        guard p.loadLE(at: 0, as: UInt16.self) == Node.magic else { throw bad("bad magic (not a B-tree node)") }
        let kind = p.load(fromByteOffset: 2, as: UInt8.self)
        guard kind == Node.leafKind || kind == Node.branchKind else { throw bad("unknown kind \(kind)") }
        guard (kind == Node.leafKind) == (level == 0), level < 32 else { throw bad("kind \(kind) at level \(level)") }
        let slotsEnd = Node.headerSize + 2 * count
        guard slotsEnd <= cellStart, cellStart <= pageSize, garbage <= pageSize - cellStart else {
            throw bad("count \(count), cell start \(cellStart), garbage \(garbage) do not fit the page")
        }
        let fixed = isLeaf ? 4 : 10
        for i in 0..<count {
            let c = slot(i)
            guard c >= cellStart, c + fixed <= pageSize else { throw bad("slot \(i) points outside the cell area") }
            let klen = Int(p.loadLE(at: c, as: UInt16.self))
            let vlen = isLeaf ? Int(p.loadLE(at: c + 2, as: UInt16.self)) : 0
            guard c + fixed + klen + vlen <= pageSize else { throw bad("cell \(i) runs past the page end") }
        }
    }

    // MARK: Changes (every byte changed is first declared to the transaction)

    /// Inserts `cell` at index `i`; the caller has checked that it fits.
    func insert(_ cell: Cell, at i: Int, _ tx: TxContext) {
        let size = cell.size(leaf: isLeaf) - 2
        if cellStart - (Node.headerSize + 2 * count) < size + 2 { compact(tx) }
        let n = count
        let at = cellStart - size
        tx.willModify(frame, at, size)
        p.storeLE(UInt16(cell.key.count), at: at)
        var body = at + 4
        if isLeaf {
            p.storeLE(UInt16(cell.value.count), at: at + 2)
        } else {
            p.storeLE(cell.child, at: at + 2)
            body = at + 10
        }
        cell.key.withUnsafeBytes { (p + body).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        if isLeaf {
            cell.value.withUnsafeBytes { if $0.count > 0 { (p + body + cell.key.count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
        }
        let slotAt = Node.headerSize + 2 * i
        tx.willModify(frame, 0, Node.headerSize + 2 * (n + 1))
        memmove(p + slotAt + 2, p + slotAt, 2 * (n - i))
        p.storeLE(UInt16(at), at: slotAt)
        p.storeLE(UInt16(n + 1), at: 4)
        p.storeLE(UInt16(at), at: 6)
    }

    /// Removes cell `i`; its bytes become garbage until the next compaction.
    func remove(at i: Int, _ tx: TxContext) {
        let n = count
        let size = cellSize(i)
        let slotAt = Node.headerSize + 2 * i
        tx.willModify(frame, 0, Node.headerSize + 2 * n)
        memmove(p + slotAt, p + slotAt + 2, 2 * (n - i - 1))
        p.storeLE(UInt16(n - 1), at: 4)
        p.storeLE(UInt16(garbage + size), at: 8)
    }

    /// Overwrites the value of leaf cell `i` with one of the same length.
    func overwriteValue(at i: Int, with value: UnsafeRawBufferPointer, _ tx: TxContext) {
        let old = self.value(i)
        guard old.count > 0 else { return }
        let offset = UnsafeRawPointer(old.baseAddress!) - UnsafeRawPointer(p)
        tx.willModify(frame, offset, old.count)
        (p + offset).copyMemory(from: value.baseAddress!, byteCount: value.count)
    }

    /// Rewrites the whole node from `cells`, packed, with no garbage.
    func rebuild(leaf: Bool, level: Int, leftmost: UInt64, cells: [Cell], _ tx: TxContext) {
        var at = pageSize
        var offsets: [UInt16] = []
        offsets.reserveCapacity(cells.count)
        let total = cells.reduce(0) { $0 + $1.size(leaf: leaf) - 2 }
        tx.willModify(frame, pageSize - total, total)
        for c in cells {
            at -= c.size(leaf: leaf) - 2
            offsets.append(UInt16(at))
            p.storeLE(UInt16(c.key.count), at: at)
            if leaf {
                p.storeLE(UInt16(c.value.count), at: at + 2)
                c.key.withUnsafeBytes { if $0.count > 0 { (p + at + 4).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
                c.value.withUnsafeBytes { if $0.count > 0 { (p + at + 4 + c.key.count).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            } else {
                p.storeLE(c.child, at: at + 2)
                c.key.withUnsafeBytes { if $0.count > 0 { (p + at + 10).copyMemory(from: $0.baseAddress!, byteCount: $0.count) } }
            }
        }
        tx.willModify(frame, 0, Node.headerSize + 2 * cells.count)
        memset(p, 0, Node.headerSize)
        p.storeLE(Node.magic, at: 0)
        p.storeBytes(of: leaf ? Node.leafKind : Node.branchKind, toByteOffset: 2, as: UInt8.self)
        p.storeBytes(of: UInt8(level), toByteOffset: 3, as: UInt8.self)
        p.storeLE(UInt16(cells.count), at: 4)
        p.storeLE(UInt16(at), at: 6)
        p.storeLE(leftmost, at: 16)
        for (i, o) in offsets.enumerated() { p.storeLE(o, at: Node.headerSize + 2 * i) }
        frame.validated = true
    }

    private func compact(_ tx: TxContext) {
        rebuild(leaf: isLeaf, level: level, leftmost: leftmost, cells: cells(), tx)
    }
}
