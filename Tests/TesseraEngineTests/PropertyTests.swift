// Reference-model property test: random operations applied to the engine and to a sorted
// in-memory model, compared at every step, with audit() after every batch.
import Foundation
import Testing
import TesseraCore
import TesseraEngine

@Suite struct PropertyTests {
    /// One random operation; `apply` runs it on both sides and returns a mismatch, if any.
    enum Op {
        case put(Fid, [UInt8], [UInt8], PutMode)
        case delete(Fid, [UInt8])
        case get(Fid, [UInt8])
        case scan(Fid, [UInt8]?, ScanDirection, Bool, Int)
        case create(Fid)
        case drop(Fid)
    }

    struct Generator {
        var rng: SeededRandom
        let fids = (1...6).map { Fid(hi: 0xC0FFEE, lo: UInt64($0)) }

        mutating func key() -> [UInt8] {
            // A small alphabet and shared prefixes give collisions and deep separators.
            let prefixes: [[UInt8]] = [[], Array("user/".utf8), Array("user/data/".utf8), [0], [0xFF, 0xFF]]
            var k = prefixes[Int.random(in: 0..<prefixes.count, using: &rng)]
            for _ in 0..<Int.random(in: 0...12, using: &rng) { k.append(UInt8.random(in: 0x61...0x66, using: &rng)) }
            if Int.random(in: 0..<50, using: &rng) == 0 { k += [UInt8](repeating: 0x7A, count: Int.random(in: 100...400, using: &rng)) }
            return k
        }

        mutating func value() -> [UInt8] {
            let n = Int.random(in: 0..<10, using: &rng) == 0 ? Int.random(in: 200...800, using: &rng) : Int.random(in: 0...120, using: &rng)
            return (0..<n).map { _ in UInt8.random(in: 0...255, using: &rng) }
        }

        mutating func op(live: [Fid]) -> Op {
            let roll = Int.random(in: 0..<10_000, using: &rng)
            if live.isEmpty || roll < 20 { return .create(fids.randomElement(using: &rng)!) }
            let fid = live.randomElement(using: &rng)!
            switch roll {
            case ..<22: return .drop(fid)
            case ..<4000: return .put(fid, key(), value(), .overwrite)
            case ..<5000: return .put(fid, key(), value(), .createOnly)
            case ..<7300: return .delete(fid, key())
            case ..<8500: return .get(fid, key())
            default:
                let start: [UInt8]? = Int.random(in: 0..<8, using: &rng) == 0 ? nil : key()
                return .scan(fid, start, Bool.random(using: &rng) ? .forward : .backward, Bool.random(using: &rng), Int.random(in: 1...60, using: &rng))
            }
        }
    }

    /// Applies `op` to the engine (inside `t`) and to `model`; returns a description of any difference.
    static func apply(_ op: Op, _ t: Transaction, _ model: inout ReferenceModel) throws -> String? {
        switch op {
        case .put(let fid, let k, let v, let mode):
            let (a, b) = (try t.put(fid, k, v, mode: mode), model.put(fid, k, v, mode: mode))
            return a == b ? nil : "put \(k) \(mode): engine \(a), model \(b)"
        case .delete(let fid, let k):
            let (a, b) = (try t.delete(fid, k), model.delete(fid, k))
            return a == b ? nil : "delete \(k): engine \(a), model \(b)"
        case .get(let fid, let k):
            let (a, b) = (try t.get(fid, k), model.get(fid, k))
            return a == b ? nil : "get \(k): engine \(String(describing: a)), model \(String(describing: b))"
        case .scan(let fid, let start, let dir, let inclusive, let limit):
            let a = try t.scan(fid, from: start, direction: dir, inclusive: inclusive, limit: limit)
            let b = model.scan(fid, from: start, direction: dir, inclusive: inclusive, limit: limit)
            let same = a.count == b.count && zip(a, b).allSatisfy { $0.key == $1.key && $0.value == $1.value }
            return same ? nil : "scan from \(String(describing: start)) \(dir) inclusive \(inclusive) limit \(limit): engine \(a.count) records, model \(b.count)"
        case .create(let fid):
            let a = try t.createCatalogue(fid)
            let b = model.catalogues[fid] == nil
            if b { model.catalogues[fid] = [] }
            return a == b ? nil : "create \(fid): engine \(a), model \(b)"
        case .drop(let fid):
            let a = try t.dropCatalogue(fid)
            let b = model.catalogues.removeValue(forKey: fid) != nil
            return a == b ? nil : "drop \(fid): engine \(a), model \(b)"
        }
    }

    /// Compares every catalogue in full.
    static func compareAll(_ engine: Engine, _ model: ReferenceModel) throws -> String? {
        let fids = try engine.catalogues()
        guard Set(fids) == Set(model.catalogues.keys) else { return "catalogues differ: engine \(fids), model \(model.catalogues.keys.sorted())" }
        for fid in fids {
            let a = try engine.scan(fid, from: nil, limit: Int.max)
            let b = model.catalogues[fid]!
            guard a.count == b.count, zip(a, b).allSatisfy({ $0.key == $1.key && $0.value == $1.value }) else {
                return "catalogue \(fid): engine \(a.count) records, model \(b.count)"
            }
        }
        return nil
    }

    @Test(arguments: [UInt64(1)])
    func hundredThousandOperations(seed: UInt64) throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 96 << 20, pageSize: 4096, logSize: 2 << 20)
        var engine = try Engine.open(path: path, options: options(cacheBytes: 2 << 20))
        var gen = Generator(rng: SeededRandom(seed: seed))
        var model = ReferenceModel()
        var done = 0
        var batches = 0
        let total = 100_000
        var reopened = false
        var crashed = false
        while done < total {
            let size = Int.random(in: 1...40, using: &gen.rng)
            let abort = Int.random(in: 0..<25, using: &gen.rng) == 0
            var trial = model
            struct Abort: Error {}
            var mismatch: String?
            let attempt = Result {
                try engine.write(credit: engine.credit(operations: size)) { t in
                    for _ in 0..<size where mismatch == nil {
                        let op = gen.op(live: Array(trial.catalogues.keys).sorted())
                        mismatch = try PropertyTests.apply(op, t, &trial)
                    }
                    if abort { throw Abort() }
                }
            }
            if let mismatch { Issue.record("seed \(seed), batch \(batches), after \(done) operations: \(mismatch)"); return }
            switch attempt {
            case .success(let r):
                model = trial
                if done > 75_000 && !crashed {
                    // Crash after the batch is LOGGED: everything so far must survive.
                    try engine.waitLogged(r.tx)
                    engine.abandonForTesting()
                    engine = try Engine.open(path: path, options: options(cacheBytes: 2 << 20))
                    crashed = true
                }
            case .failure(let e):
                guard e is Abort else { Issue.record("seed \(seed), batch \(batches): \(e)"); return }
            }
            done += size
            batches += 1
            let report = try engine.audit()
            if !report.isClean { Issue.record("seed \(seed), batch \(batches): audit: \(report.problems)"); return }
            if batches % 200 == 0, let diff = try PropertyTests.compareAll(engine, model) {
                Issue.record("seed \(seed), batch \(batches): \(diff)")
                return
            }
            if done > total / 2 && !reopened {
                try engine.close()
                engine = try Engine.open(path: path, options: options(cacheBytes: 2 << 20))
                reopened = true
            }
        }
        let final = try engine.audit()
        print("property test: \(done) operations in \(batches) batches; \(final.catalogues) catalogues, \(final.records) records, \(final.treePages) tree pages, \(final.freePages) free pages")
        #expect(try PropertyTests.compareAll(engine, model) == nil)
        try engine.close()
    }
}
