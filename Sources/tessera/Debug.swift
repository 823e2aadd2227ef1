// `tessera debug`: tools for tests (hidden from help).
import ArgumentParser

struct Debug: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Tools used by the test suite.", shouldDisplay: false,
        subcommands: [CrashWriter.self, Fill.self, FreeData.self, IndexLoad.self, Replicas.self])
}
