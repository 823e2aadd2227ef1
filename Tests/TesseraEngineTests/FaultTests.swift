// Failing syscalls: nothing is reported durable that is not, a failed engine refuses work,
// and reopening without faults recovers every LOGGED transaction with a clean audit.
import Foundation
import Testing
import TesseraCore
import TesseraEngine

/// Fails chosen calls while armed.
final class Faults: @unchecked Sendable {
    // SAFETY: `rule` is touched only under `lock`.
    private let lock = NSLock()
    private var rule: ((IOCall, UInt64) -> Int32?)?
    func arm(_ r: @escaping (IOCall, UInt64) -> Int32?) { lock.withLock { rule = r } }
    func disarm() { lock.withLock { rule = nil } }
    var injector: FaultInjector { { [self] call, _, offset in lock.withLock { rule?(call, offset) } } }
}

@Suite struct FaultTests {
    let fid = Fid(hi: 5, lo: 5)
    static let logSize: UInt64 = 4 << 20
    static let segment = UInt64(8192) + logSize

    func open(_ path: String, _ faults: Faults? = nil, cache: Int = 8 << 20) throws -> Engine {
        var o = options(cacheBytes: cache)
        o.faults = faults?.injector
        return try Engine.open(path: path, options: o)
    }

    @Test func logWriteFailureIsNeverReportedDurable() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, logSize: Self.logSize)
        let faults = Faults()
        let engine = try open(path, faults)
        try engine.waitLogged(engine.write { try $0.createCatalogue(fid) }.tx)
        try engine.waitLogged(engine.write { try $0.put(fid, bytes("kept"), bytes("1")) }.tx)
        faults.arm { call, offset in call == .write && offset >= 8192 && offset < Self.segment ? EIO : nil }
        let lost = try engine.write { try $0.put(fid, bytes("lost"), bytes("2")) }.tx
        #expect { try engine.waitLogged(lost) } throws: { ($0 as? TesseraError)?.code == .io }
        #expect { try engine.write { try $0.put(fid, bytes("later"), bytes("3")) } } throws: { ($0 as? TesseraError)?.code == .io }
        #expect(throws: TesseraError.self) { try engine.close() }
        faults.disarm()
        let again = try open(path)
        defer { try? again.close() }
        #expect(try again.get(fid, bytes("kept")) == bytes("1"))
        #expect(try again.get(fid, bytes("lost")) == nil)
        #expect(try again.audit().isClean)
    }

    @Test(arguments: [IOCall.flush, IOCall.write])
    func placementFailureLosesNothingLogged(call: IOCall) throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, logSize: Self.logSize)
        let faults = Faults()
        let engine = try open(path, faults)
        try engine.waitLogged(engine.write { try $0.createCatalogue(fid) }.tx)
        // Placement writes the segment (ENOSPC) and flushes the image (EIO); the log does neither
        // through these calls when direct I/O is available, so only placement fails.
        faults.arm { c, offset in
            c == call && (c == .flush || offset >= Self.segment) ? (c == .write ? ENOSPC : EIO) : nil
        }
        var logged: [Int] = []
        for i in 0..<50 {
            guard let r = try? engine.write({ try $0.put(fid, bytes("k\(i)"), bytes("v\(i)")) }), (try? engine.waitLogged(r.tx)) != nil else { break }
            logged.append(i)
        }
        _ = try? engine.close()
        faults.disarm()
        let again = try open(path)
        defer { try? again.close() }
        for i in logged { #expect(try again.get(fid, bytes("k\(i)")) == bytes("v\(i)"), "k\(i) was LOGGED") }
        #expect(try again.audit().isClean)
    }

    @Test func readErrorFailsTheOperationOnly() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, logSize: Self.logSize)
        let faults = Faults()
        let engine = try open(path, faults, cache: 64 << 10)
        defer { try? engine.close() }
        try engine.write { try $0.createCatalogue(fid) }
        for chunk in 0..<20 {
            try engine.write(credit: engine.credit(operations: 100)) { t in
                for i in 0..<100 { try t.put(fid, bytes("k\(chunk)-\(i)"), [UInt8](repeating: 9, count: 300)) }
            }
        }
        faults.arm { call, offset in call == .read && offset >= Self.segment ? EIO : nil }
        var failures = 0
        for chunk in 0..<20 {
            do { _ = try engine.write { try $0.put(fid, bytes("k\(chunk)-50"), bytes("new")) } } catch let e as TesseraError {
                #expect(e.code == .io)
                failures += 1
            }
        }
        #expect(failures > 0)
        faults.disarm()
        let report = try engine.audit()
        #expect(report.isClean, "\(report.problems)")
        #expect(report.records == 2000)
    }
}
