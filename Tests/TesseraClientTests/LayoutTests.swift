// Layout and parity properties: byte offsets map to (group, unit, server) and back; every
// unit of a group on its own server; any K missing units of a group rebuilt exactly.
import Testing
import TesseraClient
import TesseraCore

@Suite struct LayoutTests {
    @Test(arguments: [(2, 1, 3), (3, 2, 5), (4, 2, 7), (1, 0, 1)])
    func offsetsMapToUnitsAndBack(n: Int, k: Int, p: Int) throws {
        let layout = try ObjectLayout(dataUnits: n, parityUnits: k, unitSize: 16384, servers: p)
        var rng = SeededRandom(seed: UInt64(n * 100 + k * 10 + p))
        for _ in 0..<20_000 {
            let offset = UInt64.random(in: 0..<(1 << 40), using: &rng)
            let (g, d, inUnit) = layout.locate(offset)
            #expect(d >= 0 && d < n && inUnit >= 0 && inUnit < layout.unitSize)
            #expect(layout.objectOffset(group: g, unit: d, offsetInUnit: inUnit) == offset)
            let servers = (0..<layout.width).map { layout.server(group: g, unit: $0) }
            #expect(Set(servers).count == layout.width, "units of group \(g) share a server: \(servers)")
            #expect(servers.allSatisfy { $0 >= 0 && $0 < p })
            // The ranges a read or write splits into cover it exactly, group by group.
            let length = Int.random(in: 0..<(3 * layout.groupSize), using: &rng)
            let pieces = layout.groups(offset: offset, length: length)
            var at = offset
            for piece in pieces {
                #expect(piece.from >= 0 && piece.from < piece.to && piece.to <= layout.groupSize)
                #expect(layout.objectOffset(group: piece.group, unit: 0, offsetInUnit: 0) + UInt64(piece.from) == at)
                at += UInt64(piece.to - piece.from)
            }
            #expect(at == offset + UInt64(length))
        }
    }

    @Test func parityIsSpreadOverEveryServer() throws {
        let layout = try ObjectLayout(dataUnits: 2, parityUnits: 1, unitSize: 4096, servers: 3)
        #expect(Set((0..<3).map { layout.server(group: UInt64($0), unit: 2) }) == [0, 1, 2])
    }

    @Test func badLayoutsAreRefused() {
        #expect(throws: TesseraError.self) { try ObjectLayout(dataUnits: 2, parityUnits: 2, unitSize: 4096, servers: 3) }
        #expect(throws: TesseraError.self) { try ObjectLayout(dataUnits: 2, parityUnits: 1, unitSize: 1000, servers: 3) }
        #expect(throws: TesseraError.self) { try ObjectLayout(dataUnits: 0, parityUnits: 1, unitSize: 4096, servers: 3) }
    }

    @Test(arguments: [(2, 1), (3, 1), (2, 2), (4, 2), (6, 3)])
    func anyKMissingUnitsAreRebuilt(n: Int, k: Int) throws {
        let code = ErasureCode(dataUnits: n, parityUnits: k)
        var rng = SeededRandom(seed: UInt64(n * 10 + k))
        for round in 0..<20 {
            let length = [1, 7, 64, 4096, 65536][round % 5]
            let data = (0..<n).map { _ in (0..<length).map { _ in UInt8.random(in: 0...255, using: &rng) } }
            let all = data + code.encode(data)
            // Every set of exactly K missing units, and a random smaller one.
            for missing in combinations(n + k, k) + [[Int.random(in: 0..<(n + k), using: &rng)]] {
                var units: [[UInt8]?] = all
                for m in missing { units[m] = nil }
                #expect(try code.reconstruct(units) == all, "n=\(n) k=\(k) missing \(missing)")
            }
            var tooMany: [[UInt8]?] = all
            for m in 0...k { tooMany[m] = nil }
            #expect(throws: TesseraError.self) { try code.reconstruct(tooMany) }
        }
    }

    @Test func parityDetectsAnyChangedDataByte() {
        let code = ErasureCode(dataUnits: 2, parityUnits: 1)
        let data: [[UInt8]] = [[UInt8](repeating: 3, count: 100), [UInt8](repeating: 9, count: 100)]
        var changed = data
        changed[1][42] ^= 1
        #expect(code.encode(data) != code.encode(changed))
        #expect(code.encode([[UInt8](repeating: 0, count: 8), [UInt8](repeating: 0, count: 8)]) == [[UInt8](repeating: 0, count: 8)])
    }
}

func combinations(_ n: Int, _ k: Int) -> [[Int]] {
    if k == 0 { return [[]] }
    if n < k { return [] }
    return combinations(n - 1, k - 1).map { $0 + [n - 1] } + combinations(n - 1, k)
}
