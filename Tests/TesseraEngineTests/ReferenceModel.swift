// A plain in-memory sorted map: the reference the engine is compared with.
import TesseraCore
import TesseraEngine

/// Catalogues as sorted arrays of records, with the engine's put/delete/scan semantics.
struct ReferenceModel {
    var catalogues: [Fid: [(key: [UInt8], value: [UInt8])]] = [:]

    private static func less(_ a: [UInt8], _ b: [UInt8]) -> Bool { a.lexicographicallyPrecedes(b) }

    private func lowerBound(_ records: [(key: [UInt8], value: [UInt8])], _ key: [UInt8]) -> Int {
        var lo = 0
        var hi = records.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if ReferenceModel.less(records[mid].key, key) { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    mutating func put(_ fid: Fid, _ key: [UInt8], _ value: [UInt8], mode: PutMode) -> PutOutcome {
        var records = catalogues[fid]!
        defer { catalogues[fid] = records }
        let i = lowerBound(records, key)
        if i < records.count && records[i].key == key {
            if mode == .createOnly { return .exists }
            records[i].value = value
            return .replaced
        }
        records.insert((key, value), at: i)
        return .inserted
    }

    mutating func delete(_ fid: Fid, _ key: [UInt8]) -> Bool {
        guard var records = catalogues[fid] else { return false }
        let i = lowerBound(records, key)
        guard i < records.count && records[i].key == key else { return false }
        records.remove(at: i)
        catalogues[fid] = records
        return true
    }

    func get(_ fid: Fid, _ key: [UInt8]) -> [UInt8]? {
        guard let records = catalogues[fid] else { return nil }
        let i = lowerBound(records, key)
        return i < records.count && records[i].key == key ? records[i].value : nil
    }

    func scan(_ fid: Fid, from start: [UInt8]?, direction: ScanDirection, inclusive: Bool, limit: Int) -> [(key: [UInt8], value: [UInt8])] {
        let records = catalogues[fid]!
        var out: [(key: [UInt8], value: [UInt8])] = []
        if direction == .forward {
            var i = 0
            if let start {
                i = lowerBound(records, start)
                if !inclusive && i < records.count && records[i].key == start { i += 1 }
            }
            while i < records.count && out.count < limit {
                out.append(records[i])
                i += 1
            }
        } else {
            var i = records.count - 1
            if let start {
                let lb = lowerBound(records, start)
                i = lb < records.count && records[lb].key == start && inclusive ? lb : lb - 1
            }
            while i >= 0 && out.count < limit {
                out.append(records[i])
                i -= 1
            }
        }
        return out
    }
}
