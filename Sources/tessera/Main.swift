// The `tessera` command: subcommands parse their arguments and call the layers below.
import ArgumentParser
import Foundation
import Logging

struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Tessera: a FUSE-mounted object file system over its own distributed object store.",
        subcommands: [Mkfs.self, Check.self, Bench.self, Debug.self])
}

/// Exit status: 0 success, 1 failure, 2 usage error (ARCHITECTURE.md, "Command line").
@main
enum Main {
    static func main() {
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = ProcessInfo.processInfo.environment["TESSERA_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
            return handler
        }
        do {
            var command = try Tessera.parseAsRoot()
            try command.run()
        } catch let code as ExitCode {
            exit(code.rawValue)
        } catch {
            let status = Tessera.exitCode(for: error)
            let message = Tessera.fullMessage(for: error)
            if status == .success {
                print(message)
                exit(0)
            }
            FileHandle.standardError.write(Data(("tessera: " + message + "\n").utf8))
            exit(status == .validationFailure ? 2 : 1)
        }
    }
}

/// Parses sizes such as `4096`, `64K`, `256M`, `1G`, `2T` (binary multiples).
func parseSize(_ text: String) throws -> UInt64 {
    let units: [Character: UInt64] = ["K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40]
    var digits = Substring(text.uppercased())
    if digits.hasSuffix("IB") { digits = digits.dropLast(2) } else if digits.hasSuffix("B") { digits = digits.dropLast() }
    var multiplier: UInt64 = 1
    if let last = digits.last, let m = units[last] {
        multiplier = m
        digits = digits.dropLast()
    }
    guard let n = UInt64(digits), n.multipliedReportingOverflow(by: multiplier).overflow == false else {
        throw ValidationError("'\(text)' is not a size (examples: 1048576, 64M, 1G)")
    }
    return n * multiplier
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data(("tessera: " + message + "\n").utf8))
}
