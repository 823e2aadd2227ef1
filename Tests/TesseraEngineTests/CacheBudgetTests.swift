// With a node-cache budget far below the tree's size, operations stay correct and the
// process's resident memory stays near the budget (measured in a child process, so other
// tests running in this one do not disturb the figure).
import Foundation
import Testing
import TesseraEngine
import TesseraLocal

@Suite struct CacheBudgetTests {
    @Test func tinyCacheLargeTree() throws {
        let dir = TemporaryDirectory()
        let path = try makeImage(dir, size: 256 << 20, pageSize: 4096, logSize: 4 << 20)
        let budget = 2 << 20
        let child = try ChildProcess(tesseraBinary(), ["debug", "fill", path, "--records", "100000", "--value-size", "500", "--cache", String(budget)], stdout: .pipe)
        let data = child.readOutput()
        #expect(child.wait() == .exit(0), "fill failed: every record must read back correctly")
        var figures: [String: Int] = [:]
        for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
            let parts = line.split(separator: " ")
            if parts.count == 2 { figures[String(parts[0])] = Int(parts[1]) }
        }
        let tree = try #require(figures["tree-bytes"])
        let growth = try #require(figures["rss-max"]) - (try #require(figures["rss-base"]))
        #expect(tree > 20 * budget, "the tree must be far larger than the cache")
        #expect(try #require(figures["cache-resident"]) <= budget + 64 * 4096)
        // The budget, plus commit groups held in memory (bounded by the 4 MiB log), plus a
        // little for the allocator; nothing that grows with the tree. Measured with a 75 MiB
        // tree: 4.5 to 7 MiB of growth over a 2 MiB budget, on a loaded machine.
        #expect(try #require(figures["log-buffers-peak"]) <= 4 << 20)
        #expect(growth < budget + (4 << 20) + (4 << 20), "resident memory grew by \(growth) bytes for a \(budget)-byte cache")
    }
}
