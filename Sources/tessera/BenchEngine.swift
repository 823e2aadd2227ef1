// `tessera bench engine`
import ArgumentParser
struct BenchEngine: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "engine")
    func run() throws {}
}
