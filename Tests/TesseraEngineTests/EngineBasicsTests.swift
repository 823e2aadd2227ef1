// Catalogue operations on a real image: put, get, delete, scans, create and drop, reopen.
import Foundation
import Testing
import TesseraCore
import TesseraEngine

@Suite struct EngineBasicsTests {
    let fid = Fid(hi: 1, lo: 2)

    @Test func putGetDeleteAcrossReopen() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir)
        var engine = try Engine.open(path: path, options: options())
        let (created, outcomes, seen) = try engine.write { t in
            let created = [try t.createCatalogue(fid), try t.createCatalogue(fid)]
            let outcomes = [
                try t.put(fid, bytes("a"), bytes("1")), try t.put(fid, bytes("a"), bytes("22")),
                try t.put(fid, bytes("a"), bytes("3"), mode: .createOnly), try t.put(fid, bytes("b"), bytes("2")),
            ]
            return (created, outcomes, try t.get(fid, bytes("a")))
        }.result
        #expect(created == [true, false])
        #expect(outcomes == [.inserted, .replaced, .exists, .inserted])
        #expect(seen == bytes("22"))
        #expect(try engine.get(fid, bytes("b")) == bytes("2"))
        #expect(try engine.write { try $0.delete(fid, bytes("b")) }.result)
        #expect(try !engine.write { try $0.delete(fid, bytes("b")) }.result)
        try engine.close()
        engine = try Engine.open(path: path, options: options())
        #expect(try engine.get(fid, bytes("a")) == bytes("22"))
        #expect(try engine.get(fid, bytes("b")) == nil)
        #expect(try engine.audit().isClean)
        try engine.close()
    }

    @Test func unknownCatalogueIsNotFound() throws {
        let dir = TemporaryDirectory()
        let engine = try Engine.open(path: try makeImage(dir), options: options())
        defer { try? engine.close() }
        #expect(throws: TesseraError.self) { try engine.get(fid, bytes("x")) }
        #expect(throws: TesseraError.self) { try engine.write { try $0.put(fid, bytes("x"), bytes("y")) } }
    }

    @Test func manyKeysSplitAndMergeAndScan() throws {
        let dir = TemporaryDirectory()
        let engine = try Engine.open(path: try makeImage(dir), options: options())
        defer { try? engine.close() }
        try engine.write { try $0.createCatalogue(fid) }
        let keys = (0..<5000).map { String(format: "key-%06d", $0) }
        for chunk in stride(from: 0, to: keys.count, by: 100) {
            try engine.write(credit: engine.credit(operations: 100)) { t in
                for k in keys[chunk..<min(chunk + 100, keys.count)] { try t.put(fid, bytes(k), bytes("value of " + k)) }
            }
        }
        #expect(try engine.audit().isClean)
        let all = try engine.scan(fid, from: nil, limit: 10_000)
        #expect(all.map { String(decoding: $0.key, as: UTF8.self) } == keys)
        let back = try engine.scan(fid, from: nil, direction: .backward, limit: 10_000)
        #expect(back.map { String(decoding: $0.key, as: UTF8.self) } == keys.reversed())
        // Start at an absent key: the following key in each direction.
        let mid = try engine.scan(fid, from: bytes("key-002500x"), limit: 2)
        #expect(mid.map { String(decoding: $0.key, as: UTF8.self) } == ["key-002501", "key-002502"])
        let midBack = try engine.scan(fid, from: bytes("key-002500x"), direction: .backward, limit: 2)
        #expect(midBack.map { String(decoding: $0.key, as: UTF8.self) } == ["key-002500", "key-002499"])
        let exclusive = try engine.scan(fid, from: bytes("key-002500"), inclusive: false, limit: 1)
        #expect(exclusive.first.map { String(decoding: $0.key, as: UTF8.self) } == "key-002501")
        for chunk in stride(from: 0, to: keys.count, by: 100) {
            try engine.write(credit: engine.credit(operations: 100)) { t in
                for k in keys[chunk..<min(chunk + 100, keys.count)] where k.hasSuffix("7") == false { try t.delete(fid, bytes(k)) }
            }
        }
        let report = try engine.audit()
        #expect(report.isClean, "\(report.problems)")
        #expect(report.records == 500)
    }

    @Test func dropReclaimsEveryPage() throws {
        let dir = TemporaryDirectory()
        let engine = try Engine.open(path: try makeImage(dir), options: options())
        defer { try? engine.close() }
        let before = try engine.audit()
        try engine.write { try $0.createCatalogue(fid) }
        for i in 0..<40 {
            try engine.write(credit: engine.credit(operations: 100)) { t in
                for j in 0..<100 { try t.put(fid, bytes("k\(i)-\(j)"), [UInt8](repeating: UInt8(j), count: 200)) }
            }
        }
        let full = try engine.audit()
        #expect(full.treePages > 100)
        #expect(try engine.write { try $0.dropCatalogue(fid) }.result)
        let after = try engine.audit()
        #expect(after.isClean, "\(after.problems)")
        #expect(after.catalogues == 0 && after.droppedCatalogues == 0)
        #expect(after.treePages == before.treePages)
        #expect(try engine.catalogues().isEmpty)
    }

    @Test func failedTransactionChangesNothing() throws {
        let dir = TemporaryDirectory()
        let engine = try Engine.open(path: try makeImage(dir), options: options())
        defer { try? engine.close() }
        try engine.write { try $0.createCatalogue(fid) }
        struct Boom: Error {}
        #expect(throws: Boom.self) {
            try engine.write(credit: engine.credit(operations: 300)) { t in
                for j in 0..<300 { try t.put(fid, bytes("k\(j)"), [UInt8](repeating: 1, count: 300)) }
                throw Boom()
            }
        }
        #expect(try engine.scan(fid, from: nil, limit: 10).isEmpty)
        #expect(try engine.audit().isClean)
    }

    @Test func limitsAreEnforced() throws {
        let dir = TemporaryDirectory()
        let engine = try Engine.open(path: try makeImage(dir), options: options())
        defer { try? engine.close() }
        try engine.write { try $0.createCatalogue(fid) }
        let limits = engine.limits
        try engine.write { try $0.put(fid, [UInt8](repeating: 7, count: limits.maxKey), [UInt8](repeating: 1, count: limits.maxValue)) }
        #expect { try engine.write { try $0.put(fid, [UInt8](repeating: 7, count: limits.maxKey + 1), []) } } throws: {
            ($0 as? TesseraError)?.code == .tooLarge
        }
        #expect { try engine.write { try $0.put(fid, [1], [UInt8](repeating: 1, count: limits.maxValue + 1)) } } throws: {
            ($0 as? TesseraError)?.code == .tooLarge
        }
        #expect { try engine.write(credit: 1 << 30) { _ in } } throws: { ($0 as? TesseraError)?.code == .tooLarge }
        #expect(try engine.audit().isClean)
    }
}
