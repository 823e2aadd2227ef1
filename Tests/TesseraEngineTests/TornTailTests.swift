// Torn-tail tests: a log with unplaced records is truncated or corrupted at random offsets;
// recovery must replay exactly the records before the damage, in order, all or nothing each.
import Foundation
import Testing
import TesseraCore
import TesseraEngine

@Suite struct TornTailTests {
    static let fid = Fid(hi: 7, lo: 7)
    static let transactions = 120

    /// An image whose log holds `transactions` records (one transaction each), none placed.
    static func imageWithUnplacedLog(_ dir: TemporaryDirectory) throws -> (path: String, records: [(start: Int, meaningful: Int)]) {
        let path = try makeImage(dir, size: 32 << 20, pageSize: 4096, logSize: 8 << 20)
        let engine = try Engine.open(path: path, options: unplacedOptions())
        try engine.waitLogged(engine.write { try $0.createCatalogue(fid) }.tx)
        for n in 0..<transactions {
            let tx = try engine.write { t in
                for part in ["a", "b", "c"] { try t.put(fid, bytes("\(n)/\(part)"), [UInt8](repeating: UInt8(n % 256), count: 150)) }
            }.tx
            try engine.waitLogged(tx)
        }
        engine.abandonForTesting()
        // Walk the records as docs/FORMAT.md describes them: length at +24, payload at +20.
        let file = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        defer { try? file.close() }
        try file.seek(toOffset: 8192)
        let log = [UInt8](file.readData(ofLength: 8 << 20))
        var records: [(Int, Int)] = []
        var at = 0
        while at + 32 <= log.count, log.loadLE(at: 0 + at, as: UInt32.self) == 0x524C_5354 {
            let payload = Int(log.loadLE(at: at + 20, as: UInt32.self))
            records.append((at, 32 + payload + 16))
            at += Int(log.loadLE(at: at + 24, as: UInt32.self))
        }
        return (path, records)
    }

    /// Number of whole transactions visible, checking that each is all or nothing and that
    /// they form a prefix of the order they were written in.
    static func visiblePrefix(_ path: String) throws -> Int {
        let engine = try Engine.open(path: path, options: options())
        defer { try? engine.close() }
        let report = try engine.audit()
        #expect(report.isClean, "\(report.problems)")
        guard try engine.catalogues().contains(fid) else { return -1 }
        var count = 0
        for n in 0..<transactions {
            let parts = try ["a", "b", "c"].map { try engine.get(fid, bytes("\(n)/\($0)")) }
            let present = parts.filter { $0 != nil }.count
            #expect(present == 0 || present == 3, "transaction \(n) is half visible")
            if present == 3 {
                #expect(count == n, "transaction \(n) visible after a missing one")
                count += 1
            }
        }
        return count
    }

    /// Transactions that survive a byte changed at `offset` of the log: those in records
    /// before the damaged one (a byte of padding damages nothing). The first record holds the
    /// catalogue's creation, so -1 means not even the catalogue survives.
    static func expectedSurvivors(_ records: [(start: Int, meaningful: Int)], damageAt offset: Int) -> Int {
        let damaged = records.firstIndex { offset >= $0.start && offset < $0.start + $0.meaningful }
        return (damaged ?? records.count) - 1
    }

    /// Transactions that survive zeroing the log from `offset` on: records wholly before it.
    static func expectedSurvivors(_ records: [(start: Int, meaningful: Int)], truncatedAt offset: Int) -> Int {
        records.prefix { $0.start + $0.meaningful <= offset }.count - 1
    }

    @Test func truncatedAtRandomOffsets() throws {
        let dir = TemporaryDirectory()
        let (path, records) = try Self.imageWithUnplacedLog(dir)
        #expect(records.count == Self.transactions + 1)
        let pristine = try Data(contentsOf: URL(fileURLWithPath: path))
        var rng = SeededRandom(seed: 42)
        let end = records.last!.start + records.last!.meaningful
        for trial in 0..<25 {
            let cut = trial == 0 ? 0 : Int.random(in: 0..<end, using: &rng)
            var damaged = pristine
            damaged.replaceSubrange((8192 + cut)..<(8192 + (8 << 20)), with: Data(count: (8 << 20) - cut))
            try damaged.write(to: URL(fileURLWithPath: path))
            let survivors = try Self.visiblePrefix(path)
            #expect(survivors == Self.expectedSurvivors(records, truncatedAt: cut), "cut at \(cut)")
        }
    }

    @Test func corruptedAtRandomOffsets() throws {
        let dir = TemporaryDirectory()
        let (path, records) = try Self.imageWithUnplacedLog(dir)
        let pristine = try Data(contentsOf: URL(fileURLWithPath: path))
        var rng = SeededRandom(seed: 7)
        let end = records.last!.start + records.last!.meaningful
        for _ in 0..<25 {
            let at = Int.random(in: 0..<end, using: &rng)
            var damaged = pristine
            damaged[8192 + at] ^= UInt8.random(in: 1...255, using: &rng)
            try damaged.write(to: URL(fileURLWithPath: path))
            let expected = Self.expectedSurvivors(records, damageAt: at)
            #expect(try Self.visiblePrefix(path) == expected, "byte flipped at log offset \(at)")
        }
    }

    @Test func recoveryInterruptedAndRerun() throws {
        // Replaying twice (as after a crash during recovery) gives the same state.
        let dir = TemporaryDirectory()
        let (path, _) = try Self.imageWithUnplacedLog(dir)
        let copy = dir.file("copy.img")
        try FileManager.default.copyItem(atPath: path, toPath: copy)
        // First recovery replays the segment but "crashes" before closing cleanly.
        let first = try Engine.open(path: copy, options: options())
        #expect(first.recoveredGroups == Self.transactions + 1)
        first.abandonForTesting()
        // Restore the original header and log so the next open replays the same groups again
        // over a segment that already holds them.
        let original = try Data(contentsOf: URL(fileURLWithPath: path))
        var replayed = try Data(contentsOf: URL(fileURLWithPath: copy))
        replayed.replaceSubrange(0..<(8192 + (8 << 20)), with: original[0..<(8192 + (8 << 20))])
        try replayed.write(to: URL(fileURLWithPath: copy))
        #expect(try Self.visiblePrefix(copy) == Self.transactions)
    }
}
