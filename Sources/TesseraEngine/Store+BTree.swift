// B+tree changes: put and delete with splits, merges and refills; the root page never moves.
//
// A tree is named by its root page, which stays the same for the tree's whole life: a root
// split moves the root's cells into two new children, and a root with one child left takes
// that child's cells. So the meta-b-tree entry of a catalogue never changes after creation.
import TesseraCore

extension Store {
    struct Split {
        var separator: [UInt8]
        var right: UInt64
    }

    /// - Complexity: O(log n) node visits; splits touch O(log n) nodes at worst.
    func put(root: UInt64, key: [UInt8], value: [UInt8], mode: PutMode) throws -> PutOutcome {
        var outcome = PutOutcome.inserted
        _ = try put(node: try node(root), isRoot: true, key: key, value: value, mode: mode, outcome: &outcome)
        return outcome
    }

    /// Deletes `key`; false if it was absent.
    func delete(root: UInt64, key: [UInt8]) throws -> Bool {
        let top = try node(root)
        let found = try key.withUnsafeBytes { try delete(node: top, isRoot: true, key: $0) }
        if found { try collapseRoot(root) }
        return found
    }

    private func put(node n: Node, isRoot: Bool, key: [UInt8], value: [UInt8], mode: PutMode, outcome: inout PutOutcome) throws -> Split? {
        if n.isLeaf {
            let (i, found) = key.withUnsafeBytes { n.lowerBound($0) }
            if found {
                if mode == .createOnly {
                    outcome = .exists
                    return nil
                }
                outcome = .replaced
                if n.value(i).count == value.count {
                    value.withUnsafeBytes { n.overwriteValue(at: i, with: $0, tx) }
                    return nil
                }
                n.remove(at: i, tx)
            }
            // A shorter value may leave the leaf underfull; the parent refills it.
            return try insert(Cell(key: key, value: value), into: n, at: i, isRoot: isRoot)
        }
        let j = key.withUnsafeBytes { n.childIndex($0) }
        let split = try put(node: try child(n, j), isRoot: false, key: key, value: value, mode: mode, outcome: &outcome)
        return try afterChildChanged(n, j, split: split, isRoot: isRoot)
    }

    private func delete(node n: Node, isRoot: Bool, key: UnsafeRawBufferPointer) throws -> Bool {
        if n.isLeaf {
            let (i, found) = n.lowerBound(key)
            if found { n.remove(at: i, tx) }
            return found
        }
        let j = n.childIndex(key)
        guard try delete(node: try child(n, j), isRoot: false, key: key) else { return false }
        if let split = try afterChildChanged(n, j, split: nil, isRoot: isRoot) {
            throw TesseraError(.internalError, "unexpected split \(split.right) at the root during delete")
        }
        return true
    }

    /// After child `j` of `n` changed: link a split-off sibling, or refill an underfull child.
    /// Returns a split of `n` itself when linking or refilling overflowed it.
    private func afterChildChanged(_ n: Node, _ j: Int, split: Split?, isRoot: Bool) throws -> Split? {
        if let split {
            return try insert(Cell(key: split.separator, value: [], child: split.right), into: n, at: j, isRoot: isRoot)
        }
        let c = try child(n, j)
        if c.usedBytes < minFill && n.count > 0 {
            return try refill(n, j, isRoot: isRoot)
        }
        return nil
    }

    /// Inserts `cell` at `i`, splitting `n` if it does not fit.
    private func insert(_ cell: Cell, into n: Node, at i: Int, isRoot: Bool) throws -> Split? {
        let leaf = n.isLeaf
        if n.freeBytes >= cell.size(leaf: leaf) {
            n.insert(cell, at: i, tx)
            return nil
        }
        var cells = n.cells()
        cells.insert(cell, at: i)
        let level = n.level
        let (left, promoted, right) = divide(cells, leaf: leaf)
        let separator = leaf ? shortestSeparator(left.last!.key, right.first!.key) : promoted!.key
        let rightLeftmost = leaf ? 0 : promoted!.child
        if isRoot {
            let l = Node(frame: try allocate(), pageSize: pageSize)
            let r = Node(frame: try allocate(), pageSize: pageSize)
            l.rebuild(leaf: leaf, level: level, leftmost: n.leftmost, cells: left, tx)
            r.rebuild(leaf: leaf, level: level, leftmost: rightLeftmost, cells: right, tx)
            n.rebuild(leaf: false, level: level + 1, leftmost: l.page, cells: [Cell(key: separator, value: [], child: r.page)], tx)
            return nil
        }
        let r = Node(frame: try allocate(), pageSize: pageSize)
        n.rebuild(leaf: leaf, level: level, leftmost: n.leftmost, cells: left, tx)
        r.rebuild(leaf: leaf, level: level, leftmost: rightLeftmost, cells: right, tx)
        return Split(separator: separator, right: r.page)
    }

    /// Splits cells in two halves of about equal bytes. For branches the middle cell is
    /// promoted: its key becomes the separator and its child the right node's leftmost.
    private func divide(_ cells: [Cell], leaf: Bool) -> ([Cell], Cell?, [Cell]) {
        let total = cells.reduce(0) { $0 + $1.size(leaf: leaf) }
        var acc = 0
        var k = 0
        while k < cells.count && acc + cells[k].size(leaf: leaf) / 2 < total / 2 {
            acc += cells[k].size(leaf: leaf)
            k += 1
        }
        if leaf {
            k = min(max(k, 1), cells.count - 1)
            return (Array(cells[..<k]), nil, Array(cells[k...]))
        }
        k = min(max(k, 1), cells.count - 2)
        return (Array(cells[..<k]), cells[k], Array(cells[(k + 1)...]))
    }

    /// The shortest key s with a < s <= b: a prefix of b one byte past their common prefix.
    private func shortestSeparator(_ a: [UInt8], _ b: [UInt8]) -> [UInt8] {
        var p = 0
        while p < a.count && p < b.count && a[p] == b[p] { p += 1 }
        return Array(b[..<min(p + 1, b.count)])
    }

    /// Child `j` of `n` is underfull: merge it with a sibling, or move cells over from one.
    private func refill(_ n: Node, _ j: Int, isRoot: Bool) throws -> Split? {
        let (li, ri) = j < n.count ? (j, j + 1) : (j - 1, j)
        let l = try child(n, li)
        let r = try child(n, ri)
        let leaf = l.isLeaf
        var all = l.cells()
        if !leaf { all.append(Cell(key: Array(n.key(li)), value: [], child: r.leftmost)) }
        all += r.cells()
        let total = all.reduce(0) { $0 + $1.size(leaf: leaf) }
        if total <= l.capacity {
            l.rebuild(leaf: leaf, level: l.level, leftmost: l.leftmost, cells: all, tx)
            n.remove(at: li, tx)
            try free(r.page)
            return nil
        }
        let (left, promoted, right) = divide(all, leaf: leaf)
        l.rebuild(leaf: leaf, level: l.level, leftmost: l.leftmost, cells: left, tx)
        r.rebuild(leaf: leaf, level: r.level, leftmost: leaf ? 0 : promoted!.child, cells: right, tx)
        let separator = leaf ? shortestSeparator(left.last!.key, right.first!.key) : promoted!.key
        n.remove(at: li, tx)
        return try insert(Cell(key: separator, value: [], child: r.page), into: n, at: li, isRoot: isRoot)
    }

    /// A root branch left with one child takes over that child's cells (repeatedly).
    func collapseRoot(_ root: UInt64) throws {
        while true {
            let n = try node(root)
            guard !n.isLeaf, n.count == 0 else { return }
            let c = try child(n, 0)
            n.rebuild(leaf: c.isLeaf, level: c.level, leftmost: c.leftmost, cells: c.cells(), tx)
            try free(c.page)
        }
    }

    /// Creates an empty tree and returns its (permanent) root page.
    func createTree() throws -> UInt64 {
        let n = Node(frame: try allocate(), pageSize: pageSize)
        n.rebuild(leaf: true, level: 0, leftmost: 0, cells: [], tx)
        return n.page
    }

    /// Frees up to `budget` pages of a tree, rightmost leaves first, keeping what is left a
    /// valid (if thin) tree. Returns true when the whole tree, root included, is gone.
    func destroy(root: UInt64, budget: inout Int) throws -> Bool {
        while budget > 0 {
            if try freeRightmost(root) {
                try free(root)
                budget -= 1
                return true
            }
            budget -= 1
        }
        return false
    }

    /// Frees the rightmost leaf below `page`; true if `page` itself is now empty of children.
    private func freeRightmost(_ page: UInt64) throws -> Bool {
        let n = try node(page)
        if n.isLeaf { return true }
        let j = n.count
        let c = try child(n, j)
        guard try freeRightmost(c.page) else { return false }
        try free(c.page)
        if j == 0 { return true }
        n.remove(at: j - 1, tx)
        return false
    }

    /// The value of `key`, or nil.
    /// - Complexity: O(log n).
    func get(root: UInt64, key: UnsafeRawBufferPointer) throws -> [UInt8]? {
        var n = try node(root)
        while !n.isLeaf { n = try child(n, n.childIndex(key)) }
        let (i, found) = n.lowerBound(key)
        return found ? Array(n.value(i)) : nil
    }
}
