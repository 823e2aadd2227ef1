// `tessera bench engine`: the metadata engine against SQLite, printed as a table of ratios.
import ArgumentParser
import Foundation
import TesseraLocal

struct BenchEngine: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "engine",
        abstract: "Engine vs SQLite (WAL) on the same disk: random puts, gets, a full scan, and durable puts with 1, 8 and 64 writers.")

    @Option(help: "Folder for the image and the SQLite database (default: the system temporary folder).")
    var dir: String?

    @Option(help: "Records for the put, get and scan rows.")
    var records: Int = 1_000_000

    @Option(help: "Durable puts per sync row, for 1, 8 and 64 writers (comma separated).")
    var syncOps: String = "2000,8000,32000"

    @Option(help: "Node size of the benchmark image.")
    var pageSize: Int = 16384

    func run() throws {
        let counts = syncOps.split(separator: ",").compactMap { Int($0) }
        guard counts.count == 3 else { throw ValidationError("--sync-ops needs three counts, for 1, 8 and 64 writers") }
        var bench = EngineBenchmark(directory: dir ?? NSTemporaryDirectory())
        bench.records = records
        bench.pageSize = pageSize
        bench.syncOperations = [1: counts[0], 8: counts[1], 64: counts[2]]
        bench.progress = { FileHandle.standardError.write(Data("bench engine: \($0)\n".utf8)) }
        let rows = try bench.run()
        let header = "row".padding(toLength: 50, withPad: " ", startingAt: 0) + "   tessera ops/s    sqlite ops/s   ratio"
        print(header)
        for r in rows {
            print(r.name.padding(toLength: 50, withPad: " ", startingAt: 0)
                + String(format: " %15.0f %15.0f %7.2f", r.tessera, r.sqlite, r.ratio))
        }
    }
}
