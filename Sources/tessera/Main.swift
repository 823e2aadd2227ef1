// The `tessera` command: subcommands parse their arguments and call the layers below.
import ArgumentParser
import CTesseraSupport
import Foundation
import Logging
import TesseraBench
import TesseraCore

struct Tessera: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "Tessera: a FUSE-mounted object file system over its own distributed object store.",
        subcommands: [Mkfs.self, Check.self, Server.self, Gateway.self, Mount.self, Up.self, Fsx.self, Down.self, Status.self, Repair.self, Replace.self, Fsck.self, Scrub.self, IndexCommand.self, ObjectCommand.self, Bench.self, Debug.self])
}

/// Exit status: 0 success, 1 failure, 2 usage error (ARCHITECTURE.md, "Command line").
@main
enum Main {
    static func main() async {
        // A parent that ran us from a thread with SIGTERM blocked (Swift concurrency threads
        // do) passes that mask on; unblock it so `kill` and `tessera down` reach us. A server
        // outlives the terminal that ran `tessera up`, so hang-ups are ignored.
        var termination = sigset_t()
        sigemptyset(&termination)
        sigaddset(&termination, SIGTERM)
        sigaddset(&termination, SIGINT)
        sigprocmask(SIG_UNBLOCK, &termination, nil)
        signal(SIGHUP, SIG_IGN)
        // Clients move data in unit-sized buffers (up to 16 MiB plus a frame header): keep
        // freed ones in the heap, or every reply costs fresh pages, faulted in and zeroed.
        // Servers too: unit-sized reads and writes. `debug fill` sets a small one (Fill.swift).
        _ = tessera_keep_freed_blocks(64 << 20)
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = ProcessInfo.processInfo.environment["TESSERA_LOG_LEVEL"].flatMap(Logger.Level.init(rawValue:)) ?? .info
            return handler
        }
        do {
            var command = try Tessera.parseAsRoot()
            if var asynchronous = command as? AsyncParsableCommand {
                try await asynchronous.run()
            } else {
                try command.run()
            }
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

/// Parses a size such as `64M` given as an option: a usage error (exit 2) if it is not one.
func parseSize(_ text: String) throws -> UInt64 {
    do { return try ByteSize.required(text) } catch let e as TesseraError { throw ValidationError(e.message) }
}
