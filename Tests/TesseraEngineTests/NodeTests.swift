// Nodes read from untrusted pages: validation either rejects a page or makes it safe to read.
import Foundation
import Testing
import TesseraCore
@testable import TesseraEngine

@Suite struct NodeTests {
    @Test func randomPagesNeverCrash() {
        let size = 4096
        let data = UnsafeMutableRawPointer.allocate(byteCount: size, alignment: 16)
        defer { data.deallocate() }
        var rng = SeededRandom(seed: 99)
        var accepted = 0
        for trial in 0..<20_000 {
            for i in 0..<size { data.storeBytes(of: UInt8.random(in: 0...255, using: &rng), toByteOffset: i, as: UInt8.self) }
            // Make a fraction look plausible so validation gets past the first checks.
            if trial % 2 == 0 {
                data.storeLE(Node.magic, at: 0)
                let leaf = Bool.random(using: &rng)
                data.storeBytes(of: leaf ? Node.leafKind : Node.branchKind, toByteOffset: 2, as: UInt8.self)
                data.storeBytes(of: UInt8(leaf ? 0 : 1), toByteOffset: 3, as: UInt8.self)
                data.storeLE(UInt16.random(in: 0...8, using: &rng), at: 4)
                data.storeLE(UInt16.random(in: 3000...4096, using: &rng), at: 6)
                data.storeLE(UInt16(0), at: 8)
            }
            let node = Node(frame: Frame(page: 5, data: data), pageSize: size)
            guard (try? node.validate()) != nil else { continue }
            accepted += 1
            var sum = 0
            for i in 0..<node.count {
                sum &+= node.key(i).count
                if node.isLeaf { sum &+= node.value(i).count } else { sum &+= Int(truncatingIfNeeded: node.child(i + 1)) }
            }
            _ = sum
        }
        #expect(accepted > 0)
    }
}

@Suite struct RegionPlacerTests {
    @Test func laterGroupsWinWhereRegionsOverlap() throws {
        let dir = TemporaryDirectory()
        let path = dir.file("f")
        let file = try ImageFile(path: path, create: true)
        try file.write([UInt8](repeating: 0, count: 1024), atAbsoluteOffset: 0)
        let a = [UInt8](repeating: 1, count: 256)
        let b = [UInt8](repeating: 2, count: 128)
        let c = [UInt8](repeating: 3, count: 64)
        var placer = RegionPlacer()
        try a.withUnsafeBytes { ra in
            try b.withUnsafeBytes { rb in
                try c.withUnsafeBytes { rc in
                    placer.add(offset: 64, bytes: ra)  // [64, 320) first
                    placer.add(offset: 0, bytes: rb)  // [0, 128) second: overwrites 64..<128
                    placer.add(offset: 512, bytes: rc)  // separate run
                    try placer.write(to: file, segmentOffset: 100)
                }
            }
        }
        let out = try file.read(fromAbsoluteOffset: 100, count: 600)
        #expect(out[0..<128].allSatisfy { $0 == 2 })
        #expect(out[128..<320].allSatisfy { $0 == 1 })
        #expect(out[320..<512].allSatisfy { $0 == 0 })
        #expect(out[512..<576].allSatisfy { $0 == 3 })
    }
}
