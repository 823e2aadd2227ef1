// placeholder
import ArgumentParser
struct CrashWriter: ParsableCommand {
    func run() throws {}
}
