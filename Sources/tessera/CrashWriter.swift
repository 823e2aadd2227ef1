// `tessera debug crash-writer`: runs transactions until killed, printing each one seen LOGGED.
//
// Used by the crash test, which SIGKILLs it at random moments and then checks the image.
// Transaction n puts, in one transaction:
//   catalogue 1:1  "tx/<n>/a" and "tx/<n>/b" = value(n)
//   catalogue 1:2  "<n>"                     = value(n)
// and churns catalogue 1:3 (random puts and deletes) so that nodes split and merge. Every
// 50th transaction creates or drops a scratch catalogue. After `waitLogged`, it prints "L <n>".
import ArgumentParser
import Foundation
import TesseraCore
import TesseraEngine

struct CrashWriter: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "crash-writer", abstract: "Write transactions until killed (for the crash test).")

    @Argument var image: String
    @Option(help: "First transaction number.") var start: Int = 0
    @Option(help: "Writer threads.") var threads: Int = 4

    static let pairs = Fid(hi: 1, lo: 1)
    static let singles = Fid(hi: 1, lo: 2)
    static let churn = Fid(hi: 1, lo: 3)

    static func value(_ n: Int) -> [UInt8] { Array("value-\(n)-".utf8) + [UInt8](repeating: UInt8(truncatingIfNeeded: n), count: n % 97) }

    func run() throws {
        var options = EngineOptions()
        options.cacheBytes = 1 << 20
        let engine = try Engine.open(path: image, options: options)
        try engine.write(credit: engine.credit(operations: 3)) { t in
            for fid in [Self.pairs, Self.singles, Self.churn] { try t.createCatalogue(fid) }
        }
        let counter = Counter(start)
        let output = FileHandle.standardOutput
        let group = DispatchGroup()
        for _ in 0..<threads {
            DispatchQueue.global().async(group: group) {
                var rng = SystemRandomNumberGenerator()
                while true {
                    let n = counter.next()
                    do {
                        let tx = try engine.write(credit: engine.credit(operations: 12)) { t in
                            try t.put(Self.pairs, Array("tx/\(n)/a".utf8), Self.value(n))
                            try t.put(Self.pairs, Array("tx/\(n)/b".utf8), Self.value(n))
                            try t.put(Self.singles, Array("\(n)".utf8), Self.value(n))
                            for _ in 0..<6 {
                                let k = Array("churn-\(Int.random(in: 0..<3000, using: &rng))".utf8)
                                if Bool.random(using: &rng) { try t.put(Self.churn, k, [UInt8](repeating: 1, count: Int.random(in: 0...300, using: &rng))) } else { try t.delete(Self.churn, k) }
                            }
                            if n % 50 == 0 {
                                let scratch = Fid(hi: 2, lo: UInt64(n / 50 % 4))
                                if try !t.createCatalogue(scratch) { try t.dropCatalogue(scratch) }
                            }
                        }.tx
                        try engine.waitLogged(tx)
                        output.write(Data("L \(n)\n".utf8))
                    } catch {
                        FileHandle.standardError.write(Data("crash-writer: \(error)\n".utf8))
                        Foundation.exit(1)
                    }
                }
            }
        }
        group.wait()
    }
}

/// A thread-safe counter.
final class Counter: @unchecked Sendable {
    // SAFETY: `value` is touched only under `lock`.
    private let lock = NSLock()
    private var value: Int
    init(_ start: Int) { value = start }
    func next() -> Int {
        lock.lock()
        defer { lock.unlock() }
        value += 1
        return value - 1
    }
}
