// audit(): walks the meta-b-tree, every catalogue and the free list, checking the invariants.
//
// Invariants checked:
//  1. every node is well formed (magic, kind, level, cells inside the page);
//  2. keys are strictly ascending within a node and lie inside the range its parent gives it;
//  3. every leaf of a tree is at level 0 and every child one level below its parent (equal
//     leaf depth);
//  4. every non-root node has at least `minFill` used bytes; a root branch has a separator;
//  5. every page below the high-water mark is reachable exactly once: the root page, a tree
//     node, or a free-list page; the free list's length equals the root page's free count.
import TesseraCore

/// What `audit()` found.
public struct AuditReport: Sendable {
    public var problems: [String] = []
    public var catalogues = 0
    public var droppedCatalogues = 0
    public var records: UInt64 = 0
    public var treePages: UInt64 = 0
    public var freePages: UInt64 = 0
    public var highWater: UInt64 = 0
    public var isClean: Bool { problems.isEmpty }
}

extension Store {
    private struct Walk {
        var report = AuditReport()
        var owner: [UInt8]  // 0 unvisited, 1 visited
        mutating func problem(_ s: String) {
            if report.problems.count < 100 { report.problems.append(s) }
            if report.problems.count == 100 { report.problems.append("(further problems not listed)") }
        }
    }

    func audit() throws -> AuditReport {
        let r = try rootInfo()
        var w = Walk(owner: [UInt8](repeating: 0, count: Int(min(r.highWater, geometry.pageCount))))
        w.report.highWater = r.highWater
        if r.highWater > geometry.pageCount || r.highWater < 2 {
            w.problem("high-water mark \(r.highWater) is outside 2...\(geometry.pageCount)")
        }
        _ = mark(0, "root page", &w)
        if r.metaRoot != Store.metaRootPage { w.problem("meta-b-tree root is page \(r.metaRoot), expected \(Store.metaRootPage)") }
        var metaRecords: [([UInt8], [UInt8])] = []
        try walkTree(Store.metaRootPage, name: "meta-b-tree", &w) { metaRecords.append((Array($0), Array($1))) }
        var roots: [(String, UInt64)] = []
        for (key, value) in metaRecords {
            guard value.count == 16, key.count == 17 || key.count == 9 else {
                w.problem("meta-b-tree record with a \(key.count)-byte key and \(value.count)-byte value")
                continue
            }
            let root = value.loadLE(at: 0, as: UInt64.self)
            if key[0] == Store.liveTag, key.count == 17, let fid = Fid(bytes: key[1...]) {
                roots.append(("catalogue \(fid)", root))
                w.report.catalogues += 1
            } else if key[0] == Store.deadTag && key.count == 9 {
                roots.append(("dropped catalogue at page \(root)", root))
                w.report.droppedCatalogues += 1
            } else {
                w.problem("meta-b-tree record with unknown tag \(key[0])")
            }
        }
        var records: UInt64 = 0
        for (name, root) in roots {
            try walkTree(root, name: name, &w) { _, _ in records += 1 }
        }
        w.report.records = records
        walkFreeList(r, &w)
        for page in 0..<w.owner.count where w.owner[page] == 0 {
            w.problem("page \(page) is neither in a tree nor on the free list (leaked)")
        }
        return w.report
    }

    private func mark(_ page: UInt64, _ what: String, _ w: inout Walk) -> Bool {
        guard page < UInt64(w.owner.count) else {
            w.problem("\(what): page \(page) is at or above the high-water mark \(w.report.highWater)")
            return false
        }
        guard w.owner[Int(page)] == 0 else {
            w.problem("\(what): page \(page) is reachable more than once")
            return false
        }
        w.owner[Int(page)] = 1
        return true
    }

    private func walkTree(
        _ root: UInt64, name: String, _ w: inout Walk,
        _ record: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void
    ) throws {
        try walkNode(root, name: name, level: nil, low: nil, high: nil, isRoot: true, &w, record)
    }

    /// Checks one node and its subtree. Children are listed before descending, so no pointer
    /// into a page is held while other pages load.
    private func walkNode(
        _ page: UInt64, name: String, level: Int?, low: [UInt8]?, high: [UInt8]?, isRoot: Bool,
        _ w: inout Walk, _ record: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) -> Void
    ) throws {
        let here = "\(name), node page \(page)"
        guard mark(page, here, &w) else { return }
        w.report.treePages += 1
        cache.currentOp &+= 1
        let n: Node
        do { n = try node(page) } catch let e as TesseraError where e.code == .corrupt {
            w.problem("\(name): \(e.message)")
            return
        }
        if let level, n.level != level { w.problem("\(here): level \(n.level), expected \(level) (leaves at unequal depth)") }
        if !isRoot && n.usedBytes < minFill { w.problem("\(here): underfull (\(n.usedBytes) bytes used, minimum \(minFill))") }
        if isRoot && !n.isLeaf && n.count == 0 { w.problem("\(here): root branch without separators") }
        if n.count > 0, let low, low.withUnsafeBytes({ compareBytes(n.key(0), $0) }) < 0 {
            w.problem("\(here): first key is below the parent's separator")
        }
        for i in 0..<n.count {
            if i > 0 && compareBytes(n.key(i - 1), n.key(i)) >= 0 {
                w.problem("\(here): key \(i) is not above key \(i - 1) (out of order)")
            }
            if let high, high.withUnsafeBytes({ compareBytes(n.key(i), $0) }) >= 0 {
                w.problem("\(here): key \(i) is not below the parent's upper bound")
            }
            if n.isLeaf { record(n.key(i), n.value(i)) }
        }
        guard !n.isLeaf else { return }
        let children = (0...n.count).map { n.child($0) }
        let separators = (0..<n.count).map { Array(n.key($0)) }
        let childLevel = n.level - 1
        for (j, child) in children.enumerated() {
            try walkNode(
                child, name: name, level: childLevel, low: j == 0 ? low : separators[j - 1],
                high: j < separators.count ? separators[j] : high, isRoot: false, &w, record)
        }
    }

    private func walkFreeList(_ r: RootInfo, _ w: inout Walk) {
        var page = r.freeHead
        var count: UInt64 = 0
        while page != 0 {
            guard mark(page, "free list", &w) else { break }
            count += 1
            guard let f = try? cache.frame(page) else {
                w.problem("free list: page \(page) cannot be read")
                break
            }
            guard f.data.loadLE(at: 0, as: UInt64.self) == Store.freeMagic else {
                w.problem("free list: page \(page) is not marked free")
                break
            }
            page = f.data.loadLE(at: 8, as: UInt64.self)
        }
        w.report.freePages = count
        if count != r.freeCount { w.problem("free list holds \(count) pages but the root page counts \(r.freeCount)") }
    }
}
