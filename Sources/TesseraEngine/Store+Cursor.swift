// Ordered scans of a B+tree in either direction, by a path from the root (no sibling links).
import TesseraCore

extension Store {
    /// Visits records in key order from `start` (nil: from the first or last key), starting at
    /// `start` itself when present and `inclusive`, otherwise at the following key in the
    /// direction of the scan. `visit` returns false to stop.
    /// - Complexity: O(log n + k) for k records visited.
    func scan(
        root: UInt64, from start: [UInt8]?, direction: ScanDirection, inclusive: Bool,
        _ visit: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        var path: [(node: Node, index: Int)] = []
        var n = try node(root)
        let forward = direction == .forward
        while !n.isLeaf {
            let j: Int
            if let start { j = start.withUnsafeBytes { n.childIndex($0) } } else { j = forward ? 0 : n.count }
            path.append((n, j))
            n = try child(n, j)
        }
        var i: Int
        if let start {
            let (lb, found) = start.withUnsafeBytes { n.lowerBound($0) }
            if forward { i = found && !inclusive ? lb + 1 : lb } else { i = found && inclusive ? lb : lb - 1 }
        } else {
            i = forward ? 0 : n.count - 1
        }
        while true {
            while forward ? i < n.count : i >= 0 {
                guard try visit(n.key(i), n.value(i)) else { return }
                i += forward ? 1 : -1
            }
            // Climb to the nearest ancestor with a sibling in this direction, then descend.
            while let (parent, j) = path.last, forward ? j >= parent.count : j <= 0 { path.removeLast() }
            guard let (parent, j) = path.popLast() else { return }
            // A long scan must not pin every leaf it passed: only the path stays pinned.
            cache.currentOp &+= 1
            for (p, _) in path { p.frame.lastOp = cache.currentOp }
            parent.frame.lastOp = cache.currentOp
            let next = forward ? j + 1 : j - 1
            path.append((parent, next))
            n = try child(parent, next)
            while !n.isLeaf {
                let k = forward ? 0 : n.count
                path.append((n, k))
                n = try child(n, k)
            }
            i = forward ? 0 : n.count - 1
        }
    }
}
