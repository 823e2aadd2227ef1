// `tessera bench`: benchmarks, each against the baseline its issue names.
import ArgumentParser

struct Bench: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a benchmark against its baseline and print the ratios.",
        subcommands: [BenchEngine.self, BenchServer.self])
}
