// `tessera debug fill`: builds a large catalogue with a small node cache and reports memory.
//
// Used by the cache-budget test: it puts `records` records (value derived from the key),
// reads them back at random and in one full scan, verifying every byte, and prints the
// resident set size before and at most during the work ("rss-base N", "rss-max N").
import ArgumentParser
import CTesseraSupport
import Foundation
import TesseraCore
import TesseraEngine

struct Fill: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Fill a catalogue under a small cache budget (for the cache test).")

    @Argument var image: String
    @Option var records: Int = 100_000
    @Option var valueSize: Int = 500
    @Option(help: "Node cache budget in bytes.") var cache: Int = 2 << 20

    static func value(_ i: Int, _ size: Int) -> [UInt8] { (0..<size).map { UInt8(truncatingIfNeeded: i &* 31 &+ $0) } }
    static func key(_ i: Int) -> [UInt8] { Array(String(format: "%08x-%06d", (i &* 2_654_435_761) & 0xFFFF_FFFF, i).utf8) }

    func run() throws {
        // Commit groups and log records are large (up to megabytes) and short-lived. With
        // freed blocks kept in the heap (Main.swift) they fragment and stay resident, several
        // MiB beyond the node-cache budget this command measures; a fixed, small mmap
        // threshold sends them back to the system when freed. A server keeps them instead:
        // it moves unit-sized buffers, and fresh pages for each cost more than they save.
        _ = tessera_set_mmap_threshold(128 << 10)
        var options = EngineOptions()
        options.cacheBytes = cache
        let engine = try Engine.open(path: image, options: options)
        defer { try? engine.close() }
        let fid = Fid(hi: 9, lo: 9)
        try engine.write { try $0.createCatalogue(fid) }
        // Warm up what the loop uses (Foundation's formatting loads locale data) before the baseline.
        _ = Self.key(0)
        _ = try engine.get(fid, Self.key(0))
        let base = residentBytes()
        var peak = base
        let batch = 100
        for start in stride(from: 0, to: records, by: batch) {
            try engine.write(credit: engine.credit(operations: batch, payloadBytes: batch * valueSize)) { t in
                for i in start..<min(start + batch, records) { try t.put(fid, Self.key(i), Self.value(i, valueSize)) }
            }
            peak = max(peak, residentBytes())
        }
        var rng = SystemRandomNumberGenerator()
        for n in 0..<records {
            let i = n % 2 == 0 ? Int.random(in: 0..<records, using: &rng) : n
            guard try engine.get(fid, Self.key(i)) == Self.value(i, valueSize) else {
                throw ValidationError("record \(i) read back wrong")
            }
            if n % 1000 == 0 { peak = max(peak, residentBytes()) }
        }
        var seen = 0
        var from: [UInt8]? = nil
        while true {
            let page = try engine.scan(fid, from: from, inclusive: from == nil, limit: 1000)
            guard let last = page.last else { break }
            seen += page.count
            from = last.key
            peak = max(peak, residentBytes())
        }
        guard seen == records else { throw ValidationError("scan saw \(seen) records, expected \(records)") }
        let report = try engine.audit()
        guard report.isClean else { throw ValidationError("audit: \(report.problems)") }
        print("rss-base \(base)")
        print("rss-max \(peak)")
        print("tree-bytes \(report.treePages * UInt64(engine.geometry.pageSize))")
        print("cache-misses \(engine.statistics.cacheMisses)")
        print("cache-resident \(engine.statistics.cacheResidentBytes)")
        print("log-buffers-peak \(engine.statistics.peakLogBufferBytes)")
    }
}

/// Resident set size of this process, from /proc/self/statm.
func residentBytes() -> Int {
    guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8) else { return 0 }
    let fields = text.split(separator: " ")
    return fields.count > 1 ? (Int(fields[1]) ?? 0) * Int(sysconf(Int32(_SC_PAGESIZE))) : 0
}
