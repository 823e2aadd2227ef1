// `tessera fsx FILE`: an fsx-style stress tester. A seeded random mix of reads, writes,
// appends, truncates up and down, mmap reads and writes, fsync, and close-and-reopen on one
// file, mirrored in memory and checked on every read. On a mismatch it prints the last
// operations and the differing bytes and exits 1; at the end it prints ops/s.
import ArgumentParser
import Foundation
import TesseraCore
import TesseraLocal

struct Fsx: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Stress one file with random I/O checked against a model (fsx-style).")

    @Option(name: .short, help: "Operations to run.") var N = 10_000
    @Option(name: .short, help: "Random seed (default: from the clock, printed).") var S: UInt64?
    @Option(name: .customLong("max-size"), help: "Largest file size.") var maxSize = "256K"
    @Option(name: .customLong("max-op"), help: "Largest read or write.") var maxOp = "64K"
    @Flag(name: .customLong("no-mmap"), help: "No mmap reads or writes.") var noMmap = false
    @Flag(help: "Print every operation.") var verbose = false
    @Flag(help: "At the end, print the time spent in each kind of operation.") var times = false
    @Argument(help: "The file to test (created, and truncated at start).") var file: String

    enum Kind: String {
        case read, write, append, truncate, mapread, mapwrite, fsync, reopen
    }

    struct Step: CustomStringConvertible {
        let n: Int
        let kind: Kind
        let offset: Int
        let length: Int
        /// When it began (wall clock), to line a failure up with servers' logs.
        var at = Date()
        var description: String {
            let t = at.timeIntervalSince1970
            let s = Int(t) % 86400
            return "\(n): \(kind.rawValue) \(offset) \(length) at " + String(format: "%02d:%02d:%02d.%03d", s / 3600, s / 60 % 60, s % 60, Int(t * 1000) % 1000) + " UTC"
        }
    }

    func run() throws {
        let maxFile = Int(try parseSize(maxSize))
        let maxOp = Int(try parseSize(self.maxOp))
        guard maxFile > 0, maxOp > 0 else { throw ValidationError("--max-size and --max-op must be positive") }
        let seed = S ?? UInt64(Date().timeIntervalSince1970 * 1000)
        var rng = SeededRandom(seed: seed)
        var model: [UInt8] = []
        var log: [Step] = []
        var fd = open(file, O_RDWR | O_CREAT | O_TRUNC, 0o644)
        guard fd >= 0 else { throw TesseraError(.io, "\(file): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        let page = Int(sysconf(Int32(_SC_PAGESIZE)))

        func fail(_ why: String) throws -> Never {
            printError("fsx: \(why) (seed \(seed))")
            printError("last operations:")
            for s in log.suffix(30) { printError("  \(s)") }
            throw ExitCode(1)
        }
        func sys(_ r: Int, _ what: String) throws {
            if r < 0 { try fail("\(what): \(String(cString: strerror(errno)))") }
        }
        // Bytes that tell operations apart: step number and position.
        func byte(_ i: Int, of step: Int) -> UInt8 { UInt8(truncatingIfNeeded: step &* 131 &+ i &* 7 &+ 1) }
        func fill(_ n: Int, _ step: Int) -> [UInt8] { (0..<n).map { byte($0, of: step) } }
        func compare(_ got: [UInt8], at offset: Int, _ what: String) throws {
            let want = Array(model[offset..<(offset + got.count)])
            guard got != want else { return }
            let first = zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }!.offset
            var lines = ["\(what) at \(offset), \(got.count) bytes: first difference at file offset \(offset + first)"]
            let from = max(0, first - 8)
            let to = min(got.count, first + 24)
            lines.append("  offset    file  model")
            for i in from..<to where got[i] != want[i] || i == first {
                lines.append(String(format: "  %-8d  0x%02x  0x%02x", offset + i, got[i], want[i]))
            }
            // The last writes of that byte since the file last ended below it, and the
            // fsyncs and reopens after the last: which write the file's byte came from
            // tells a lost write from a misplaced one.
            let at = offset + first
            let since = log.lastIndex { $0.kind == .truncate && $0.offset <= at }.map { $0 + 1 } ?? 0
            let writes = log[since...].filter { [.write, .append, .mapwrite].contains($0.kind) && $0.offset <= at && at < $0.offset + $0.length }
            let after = log[since...].filter { [.fsync, .reopen].contains($0.kind) && $0.n > (writes.last?.n ?? 0) }
            lines.append("  the last writes of byte \(at) since the file was last cut below it, and each fsync and reopen since:")
            for s in writes.suffix(10) { lines.append("    \(s) (wrote " + String(format: "0x%02x)", byte(at - s.offset, of: s.n))) }
            for s in after.suffix(10) { lines.append("    \(s)") }
            try fail(lines.joined(separator: "\n"))
        }

        let kinds: [Kind] = noMmap ? [.read, .read, .write, .write, .append, .truncate, .fsync, .reopen] : [.read, .read, .write, .write, .append, .truncate, .mapread, .mapwrite, .fsync, .reopen]
        let start = Date()
        var spent: [Kind: (count: Int, seconds: Double)] = [:]
        for n in 1...max(N, 1) {
            let began = Date()
            defer {
                if times, let last = log.last, last.n == n {
                    let e = spent[last.kind] ?? (0, 0)
                    spent[last.kind] = (e.count + 1, e.seconds + Date().timeIntervalSince(began))
                }
            }
            var kind = kinds.randomElement(using: &rng)!
            // fsync and reopen are rarer than the data operations.
            if (kind == .fsync || kind == .reopen) && Int.random(in: 0..<4, using: &rng) != 0 { kind = .write }
            let size = model.count
            switch kind {
            case .read, .mapread:
                guard size > 0 else { continue }
                let off = Int.random(in: 0..<size, using: &rng)
                let len = Int.random(in: 1...min(maxOp, size - off), using: &rng)
                log.append(Step(n: n, kind: kind, offset: off, length: len))
                var buf = [UInt8](repeating: 0, count: len)
                if kind == .read {
                    var done = 0
                    while done < len {
                        let r = buf.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, len - done, off_t(off + done)) }
                        try sys(r, "pread")
                        if r == 0 { try fail("pread at \(off + done): end of file, model size \(size)") }
                        done += r
                    }
                } else {
                    let base = off / page * page
                    let mlen = off + len - base
                    guard let m = mmap(nil, mlen, PROT_READ, MAP_SHARED, fd, off_t(base)), m != MAP_FAILED else { try fail("mmap read: \(String(cString: strerror(errno)))") }
                    buf.withUnsafeMutableBytes { $0.copyMemory(from: UnsafeRawBufferPointer(start: m + (off - base), count: len)) }
                    munmap(m, mlen)
                }
                try compare(buf, at: off, kind.rawValue)
            case .write, .append, .mapwrite:
                let off = kind == .append ? size : Int.random(in: 0..<maxFile, using: &rng)
                let len = min(Int.random(in: 1...maxOp, using: &rng), maxFile - off)
                guard len > 0 else { continue }
                log.append(Step(n: n, kind: kind, offset: off, length: len))
                let data = fill(len, n)
                if kind == .mapwrite {
                    if off + len > size { try sys(Int(ftruncate(fd, off_t(off + len))), "ftruncate before mapwrite") }
                    let base = off / page * page
                    let mlen = off + len - base
                    guard let m = mmap(nil, mlen, PROT_READ | PROT_WRITE, MAP_SHARED, fd, off_t(base)), m != MAP_FAILED else {
                        try fail("mmap write: \(String(cString: strerror(errno)))")
                    }
                    data.withUnsafeBytes { (m + (off - base)).copyMemory(from: $0.baseAddress!, byteCount: len) }
                    try sys(Int(msync(m, mlen, MS_SYNC)), "msync")
                    munmap(m, mlen)
                } else {
                    var done = 0
                    while done < len {
                        let r = data.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, len - done, off_t(off + done)) }
                        try sys(r, "pwrite")
                        done += r
                    }
                }
                if model.count < off + len { model += [UInt8](repeating: 0, count: off + len - model.count) }
                model.replaceSubrange(off..<(off + len), with: data)
            case .truncate:
                let to = Int.random(in: 0...maxFile, using: &rng)
                log.append(Step(n: n, kind: kind, offset: to, length: 0))
                try sys(Int(ftruncate(fd, off_t(to))), "ftruncate")
                if to < model.count { model.removeSubrange(to...) } else { model += [UInt8](repeating: 0, count: to - model.count) }
            case .fsync:
                log.append(Step(n: n, kind: kind, offset: 0, length: 0))
                try sys(Int(fsync(fd)), "fsync")
            case .reopen:
                log.append(Step(n: n, kind: kind, offset: 0, length: 0))
                try sys(Int(close(fd)), "close")
                fd = open(file, O_RDWR)
                try sys(Int(fd), "reopen")
            }
            if verbose { print(log.last!) }
            // The size as stat sees it, after every step.
            var st = stat()
            try sys(Int(fstat(fd, &st)), "fstat")
            if Int(st.st_size) != model.count { try fail("size \(st.st_size) after step \(n), model \(model.count)") }
        }
        // Finally the whole file, read back after a close and reopen.
        close(fd)
        fd = open(file, O_RDONLY)
        try sys(Int(fd), "final open")
        var all = [UInt8](repeating: 0, count: model.count)
        var done = 0
        while done < all.count {
            let want = all.count - done
            let r = all.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, want, off_t(done)) }
            try sys(r, "final read")
            if r == 0 { break }
            done += r
        }
        if done != model.count { try fail("final read got \(done) bytes, model \(model.count)") }
        try compare(all, at: 0, "final read")
        let seconds = Date().timeIntervalSince(start)
        for (kind, e) in spent.sorted(by: { $0.value.seconds > $1.value.seconds }) {
            print("\(kind.rawValue.padding(toLength: 9, withPad: " ", startingAt: 0))" + String(format: "%6d ops %8.3f s %8.1f us/op", e.count, e.seconds, e.seconds * 1e6 / Double(e.count)))
        }
        print(String(format: "fsx: %d operations passed in %.2f s: %.0f ops/s (seed %llu%@)", N, seconds, Double(N) / seconds, seed, noMmap ? ", no mmap" : ""))
    }
}
