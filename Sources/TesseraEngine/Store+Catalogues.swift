// The meta-b-tree: the catalogue of catalogues, mapping an index fid to its tree's root page.
//
// Meta-b-tree records (docs/FORMAT.md, "Meta-b-tree"):
//   live catalogue:    key = 0x00 ++ fid (16 bytes, big-endian)   value = root page (u64 LE) ++ 8 zero bytes
//   dropped catalogue: key = 0x01 ++ root page (u64, big-endian)  value = the same 16 bytes
// A dropped catalogue is unlinked at once and its pages are freed afterwards, a bounded
// number per transaction, so a drop of any size fits the log.
import TesseraCore

extension Store {
    static let liveTag: UInt8 = 0
    static let deadTag: UInt8 = 1

    private func liveKey(_ fid: Fid) -> [UInt8] { [Store.liveTag] + fid.bytes }

    private func rootValue(_ page: UInt64) -> [UInt8] {
        var v: [UInt8] = []
        v.appendLE(page)
        v.appendLE(UInt64(0))
        return v
    }

    private func decodeRoot(_ v: [UInt8], _ what: @autoclosure () -> String) throws -> UInt64 {
        guard v.count == 16 else { throw TesseraError(.corrupt, "meta-b-tree record of \(what()) has a \(v.count)-byte value") }
        return v.loadLE(at: 0, as: UInt64.self)
    }

    /// The root page of catalogue `fid`, found through the meta-b-tree.
    func catalogueRoot(_ fid: Fid) throws -> UInt64 {
        if let root = roots[fid] { return root }
        guard let v = try liveKey(fid).withUnsafeBytes({ try get(root: Store.metaRootPage, key: $0) }) else {
            throw TesseraError(.notFound, "catalogue \(fid) does not exist")
        }
        let root = try decodeRoot(v, "catalogue \(fid)")
        roots[fid] = root
        return root
    }

    /// Creates catalogue `fid`; false if it already exists.
    func createCatalogue(_ fid: Fid) throws -> Bool {
        if try liveKey(fid).withUnsafeBytes({ try get(root: Store.metaRootPage, key: $0) }) != nil { return false }
        let root = try createTree()
        _ = try put(root: Store.metaRootPage, key: liveKey(fid), value: rootValue(root), mode: .createOnly)
        return true
    }

    /// Unlinks catalogue `fid` and queues its pages for reclaiming; false if it does not exist.
    func dropCatalogue(_ fid: Fid) throws -> Bool {
        guard let v = try liveKey(fid).withUnsafeBytes({ try get(root: Store.metaRootPage, key: $0) }) else { return false }
        let root = try decodeRoot(v, "catalogue \(fid)")
        roots[fid] = nil
        _ = try delete(root: Store.metaRootPage, key: liveKey(fid))
        _ = try put(root: Store.metaRootPage, key: [Store.deadTag] + bigEndianBytes(root), value: rootValue(root), mode: .overwrite)
        return true
    }

    /// Every live catalogue, in fid order.
    func listCatalogues() throws -> [Fid] {
        var out: [Fid] = []
        try scan(root: Store.metaRootPage, from: [Store.liveTag], direction: .forward, inclusive: true) { k, _ in
            guard k.count == 17, k[0] == Store.liveTag, let fid = Fid(bytes: k[1...]) else { return false }
            out.append(fid)
            return true
        }
        return out
    }

    /// Root pages of dropped catalogues whose pages are not all freed yet.
    func droppedRoots() throws -> [UInt64] {
        var out: [UInt64] = []
        try scan(root: Store.metaRootPage, from: [Store.deadTag], direction: .forward, inclusive: true) { k, v in
            guard k.count == 9, k[0] == Store.deadTag, v.count == 16 else { return false }
            out.append(v.loadUnaligned(fromByteOffset: 0, as: UInt64.self).littleEndian)
            return true
        }
        return out
    }

    /// Frees up to `budget` pages of dropped catalogues; true if some remain.
    func reclaim(budget: Int) throws -> Bool {
        var budget = budget
        for root in try droppedRoots() {
            guard budget > 0 else { return true }
            if try destroy(root: root, budget: &budget) {
                _ = try delete(root: Store.metaRootPage, key: [Store.deadTag] + bigEndianBytes(root))
            }
        }
        let remaining = try droppedRoots()
        return budget <= 0 && !remaining.isEmpty
    }
}
