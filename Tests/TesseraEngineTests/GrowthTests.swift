// Images that grow: a new image holds a few steps of disk, not its configured size; the log
// is zeroed ahead of the writer on its first pass; a disk that is full fails the write that
// needs a new step, cleanly, and reopening with space recovers everything LOGGED.
import Foundation
import Testing
import TesseraCore
import TesseraEngine

@Suite struct GrowthTests {
    let fid = Fid(hi: 6, lo: 6)
    static let step = ImageFile.defaultGrowthStep

    /// Whether the file system under the temporary folder reports holes (SEEK_HOLE): the
    /// log's zeroed prefix is found that way, and where it is not, the whole log counts as
    /// zeroed, so the checks on it do not apply.
    static func reportsHoles(_ dir: TemporaryDirectory) throws -> Bool {
        let f = try ImageFile(path: dir.file("probe"), create: true)
        defer { f.close() }
        try f.setLength(64 << 20)
        try f.write([UInt8](repeating: 1, count: 4096), atAbsoluteOffset: 0)
        // The rest of the step is reserved and unwritten: a hole to this check, as on ext4,
        // XFS and tmpfs.
        return f.firstHole(from: 0) == 4096
    }

    @Test func aNewMetadataImageHoldsAFewStepsAndItsLogsFirstStepZeroed() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 1 << 30, logSize: 32 << 20)
        let f = try ImageFile(path: path, writable: false, lock: false)
        defer { f.close() }
        #expect(try f.size() == 1 << 30)
        // The step of the headers and the log's zeroed start, and the segment's first step.
        // (A file system may count a block or two of its own, for the extent tree.)
        #expect(try f.allocatedBytes() <= 2 * Self.step + (64 << 10))
        if try Self.reportsHoles(dir) {
            #expect(f.firstHole(from: 8192) == 8192 + (4 << 20))
        }
    }

    @Test func theLogIsZeroedAheadOfItsWriterAndTheImageReopens() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 256 << 20, logSize: 32 << 20)
        let holes = try Self.reportsHoles(dir)
        var o = unplacedOptions()
        o.cacheBytes = 64 << 20
        let engine = try Engine.open(path: path, options: o)
        try engine.write { try $0.createCatalogue(fid) }
        // About 10 MiB of log: more than two zeroing steps.
        let value = [UInt8](repeating: 7, count: 500)
        for chunk in 0..<200 {
            let r = try engine.write(credit: engine.credit(operations: 100, payloadBytes: 100 * value.count)) { t in
                for i in 0..<100 { try t.put(fid, bytes("k\(chunk)-\(i)"), value) }
            }
            try engine.waitLogged(r.tx)
        }
        let logged = engine.statistics.bytesLogged
        #expect(logged > 8 << 20)
        try engine.close()
        let f = try ImageFile(path: path, writable: false, lock: false)
        defer { f.close() }
        if holes {
            let hole = f.firstHole(from: 8192)
            #expect(hole >= 8192 + logged, "the log is written (zeroes or records) as far as it was used")
            // Zeroed to the 4 MiB boundary past the last record, and one zeroing step more.
            #expect(hole <= 8192 + logged + (8 << 20), "and no further than a step past it")
        }
        let again = try Engine.open(path: path, options: options())
        defer { try? again.close() }
        for chunk in [0, 57, 199] { #expect(try again.get(fid, bytes("k\(chunk)-42")) == value) }
        #expect(try again.audit().isClean)
    }

    /// A full disk under the segment (placement) or under the log (its first pass zeroes
    /// ahead into new steps): the write is refused with `.noSpace` naming the image, the
    /// engine refuses later changes, and a reopen with room has every LOGGED change.
    @Test(arguments: ["segment", "log"])
    func aFullDiskFailsTheWriteThatNeedsANewStepAndLosesNothing(under: String) throws {
        let dir = TemporaryDirectory()
        let logSize: UInt64 = 32 << 20
        let path = try makeImage(dir, size: 256 << 20, logSize: logSize)
        let faults = Faults()
        // Steps past those a new image holds: in the log (its second step on), or past the
        // segment's first.
        let segment = 8192 + logSize
        faults.arm { call, offset in
            guard call == .grow else { return nil }
            // Only steps wholly within the log (the segment's first pages share a step with
            // the log's end): the log's zeroing meets the full disk, not placement.
            return under == "log" ? (offset >= Self.step && offset < segment / Self.step * Self.step ? ENOSPC : nil) : (offset >= segment + Self.step ? ENOSPC : nil)
        }
        var o = options(cacheBytes: 1 << 20)
        o.faults = faults.injector
        let engine = try Engine.open(path: path, options: o)
        try engine.waitLogged(engine.write { try $0.createCatalogue(fid) }.tx)
        let value = [UInt8](repeating: 3, count: 500)
        var logged: [Int] = []
        var failure: TesseraError?
        for chunk in 0..<800 {
            do {
                let r = try engine.write(credit: engine.credit(operations: 50, payloadBytes: 50 * value.count)) { t in
                    for i in 0..<50 { try t.put(fid, bytes("k\(chunk)-\(i)"), value) }
                }
                try engine.waitLogged(r.tx)
                logged.append(chunk)
            } catch let e as TesseraError {
                failure = e
                break
            }
        }
        let e = try #require(failure, "20 MiB of changes never needed a new step")
        #expect(e.code == .noSpace, "\(e)")
        #expect(e.message.contains("cannot grow the image") && e.message.contains(path), "\(e.message)")
        #expect(!logged.isEmpty)
        #expect { try engine.write { try $0.put(fid, bytes("after"), bytes("x")) } } throws: { ($0 as? TesseraError)?.code == .noSpace }
        _ = try? engine.close()
        faults.disarm()
        let again = try Engine.open(path: path, options: options())
        defer { try? again.close() }
        for chunk in logged { #expect(try again.get(fid, bytes("k\(chunk)-49")) == value, "chunk \(chunk) was LOGGED") }
        #expect(try again.get(fid, bytes("after")) == nil)
        #expect(try again.audit().isClean)
        // With room again, it takes changes.
        try again.waitLogged(again.write { try $0.put(fid, bytes("after"), bytes("y")) }.tx)
    }

    @Test func aWriteIntoANewStepReservesItAndAFullDiskWritesNothing() throws {
        let dir = TemporaryDirectory()
        let faults = Faults()
        let f = try ImageFile(path: dir.file("data.img"), create: true, faults: faults.injector)
        defer { f.close() }
        try f.setLength(1 << 30)
        #expect(try f.allocatedBytes() == 0)
        let block = [UInt8](repeating: 0xAB, count: 4096)
        try f.write(block, atAbsoluteOffset: 100 << 20)
        let held = try f.allocatedBytes()
        #expect(held >= Self.step && held < 2 * Self.step)
        faults.arm { call, _ in call == .grow ? ENOSPC : nil }
        // Within a step already grown: no reservation, the write goes through.
        try f.write(block, atAbsoluteOffset: (100 << 20) + 8192)
        #expect { try f.write(block, atAbsoluteOffset: 500 << 20) } throws: { ($0 as? TesseraError)?.code == .noSpace }
        faults.disarm()
        #expect(try f.read(fromAbsoluteOffset: 500 << 20, count: 4096) == [UInt8](repeating: 0, count: 4096))
        #expect(try f.allocatedBytes() == held)
    }
}
