// Parity by Intel ISA-L: a Cauchy generator matrix over GF(2^8) whose first N rows are the
// identity, so data units are stored as they are and any N of the N+K units of a group give
// back the other K (every N×N submatrix of a Cauchy matrix is invertible).
import CISAL
import TesseraCore

public struct ErasureCode: Sendable {
    public let dataUnits: Int
    public let parityUnits: Int
    /// (N+K)×N generator matrix, row-major.
    private let matrix: [UInt8]
    /// Expanded tables of the K parity rows, for `ec_encode_data`.
    private let parityTables: [UInt8]

    public init(dataUnits: Int, parityUnits: Int) {
        precondition(dataUnits >= 1 && parityUnits >= 0 && dataUnits + parityUnits <= 255)
        self.dataUnits = dataUnits
        self.parityUnits = parityUnits
        let rows = dataUnits + parityUnits
        var m = [UInt8](repeating: 0, count: rows * dataUnits)
        gf_gen_cauchy1_matrix(&m, Int32(rows), Int32(dataUnits))
        matrix = m
        var tables = [UInt8](repeating: 0, count: max(1, dataUnits * parityUnits * 32))
        if parityUnits > 0 {
            var parityRows = Array(m[(dataUnits * dataUnits)...])
            ec_init_tables(Int32(dataUnits), Int32(parityUnits), &parityRows, &tables)
        }
        parityTables = tables
    }

    /// The K parity units of `data` (N units of equal length).
    public func encode(_ data: [[UInt8]]) -> [[UInt8]] {
        precondition(data.count == dataUnits)
        let length = data[0].count
        precondition(data.allSatisfy { $0.count == length })
        guard parityUnits > 0, length > 0 else { return Array(repeating: [UInt8](repeating: 0, count: length), count: parityUnits) }
        var parity = Array(repeating: [UInt8](repeating: 0, count: length), count: parityUnits)
        run(tables: parityTables, rows: parityUnits, inputs: data, outputs: &parity, length: length)
        return parity
    }

    /// Rebuilds missing units. `units` holds all N+K units of a group, nil where missing;
    /// at least N must be present. Returns every unit, data then parity.
    public func reconstruct(_ units: [[UInt8]?]) throws -> [[UInt8]] {
        precondition(units.count == dataUnits + parityUnits)
        let present = units.indices.filter { units[$0] != nil }
        guard present.count >= dataUnits else {
            throw TesseraError(.io, "\(units.count - present.count) units of a \(dataUnits)+\(parityUnits) group are missing; at most \(parityUnits) can be rebuilt")
        }
        let missingData = (0..<dataUnits).filter { units[$0] == nil }
        let length = units[present[0]]!.count
        var all = units
        if !missingData.isEmpty {
            // Rows of the generator for N units we have; its inverse maps them back to the data.
            let chosen = Array(present.prefix(dataUnits))
            var b = [UInt8](repeating: 0, count: dataUnits * dataUnits)
            for (i, r) in chosen.enumerated() {
                for j in 0..<dataUnits { b[i * dataUnits + j] = matrix[r * dataUnits + j] }
            }
            var inverse = [UInt8](repeating: 0, count: dataUnits * dataUnits)
            guard gf_invert_matrix(&b, &inverse, Int32(dataUnits)) == 0 else {
                throw TesseraError(.corrupt, "parity matrix is singular for units \(chosen)")
            }
            var rows = [UInt8]()
            for d in missingData { rows += inverse[(d * dataUnits)..<((d + 1) * dataUnits)] }
            var tables = [UInt8](repeating: 0, count: dataUnits * missingData.count * 32)
            ec_init_tables(Int32(dataUnits), Int32(missingData.count), &rows, &tables)
            var out = Array(repeating: [UInt8](repeating: 0, count: length), count: missingData.count)
            run(tables: tables, rows: missingData.count, inputs: chosen.map { units[$0]! }, outputs: &out, length: length)
            for (i, d) in missingData.enumerated() { all[d] = out[i] }
        }
        if all.contains(where: { $0 == nil }) {
            let parity = encode(Array(all[0..<dataUnits].map { $0! }))
            for p in 0..<parityUnits where all[dataUnits + p] == nil { all[dataUnits + p] = parity[p] }
        }
        return all.map { $0! }
    }

    /// Runs the ISA-L kernel over copies of the units in one scratch buffer: the kernel takes
    /// an array of pointers, and Swift arrays give stable pointers only one at a time.
    private func run(tables: [UInt8], rows: Int, inputs: [[UInt8]], outputs: inout [[UInt8]], length: Int) {
        var tables = tables
        let scratch = UnsafeMutableRawPointer.allocate(byteCount: (inputs.count + rows) * length, alignment: 64)
        defer { scratch.deallocate() }
        var ins: [UnsafeMutablePointer<UInt8>?] = []
        for (i, unit) in inputs.enumerated() {
            let p = (scratch + i * length).assumingMemoryBound(to: UInt8.self)
            unit.withUnsafeBytes { p.update(from: $0.bindMemory(to: UInt8.self).baseAddress!, count: length) }
            ins.append(p)
        }
        var outs: [UnsafeMutablePointer<UInt8>?] = (0..<rows).map { (scratch + (inputs.count + $0) * length).assumingMemoryBound(to: UInt8.self) }
        ec_encode_data(Int32(length), Int32(dataUnits), Int32(rows), &tables, &ins, &outs)
        for r in 0..<rows {
            outputs[r] = [UInt8](UnsafeBufferPointer(start: outs[r]!, count: length))
        }
    }
}
