// `tessera index …` and `tessera object …`: key-value and object copy tools over a cluster.
import ArgumentParser
import Foundation
import TesseraClient
import TesseraCore
import TesseraLocal
import TesseraState

/// Opens the cluster of the state folder for one command and closes it after. The cluster
/// map is read once, if etcd answers: a server it calls failed is not waited for.
func withCluster<R>(_ state: StateOption, _ body: (Cluster) async throws -> R) async throws -> R {
    let config = try state.config()
    let cluster = try Cluster(config: config)
    ClusterState.follow(cluster, config.state)
    if let settings = config.state, let map = await ClusterState.fetchMap(settings) { cluster.apply(map) }
    do {
        let r = try await body(cluster)
        await cluster.close()
        return r
    } catch {
        await cluster.close()
        throw error
    }
}

/// Prints one line per record that failed, and exits 1 if any did.
func reportFailures(_ lines: [String]) throws {
    for line in lines { printError(line) }
    if !lines.isEmpty { throw ExitCode(1) }
}

func parseFid(_ text: String) throws -> Fid {
    guard let f = Fid(text) else { throw ValidationError("'\(text)' is not an index fid (HI:LO in hexadecimal, e.g. 0x1:0x2)") }
    return f
}

struct IndexCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "index", abstract: "Key-value access to the cluster's replicated indexes.",
        subcommands: [List.self, Create.self, Drop.self, Put.self, Get.self, Del.self, Next.self, Where.self])

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List indexes.")
        @OptionGroup var state: StateOption
        func run() async throws {
            for f in try await withCluster(state, { try await $0.listIndexes(limit: 100_000) }) { print(f) }
        }
    }

    struct Where: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the servers holding an index, and its chain under the cluster map.")
        @OptionGroup var state: StateOption
        @Flag(help: "Print name=value fields, for scripts.") var bytes = false
        @Argument(help: "Index fid.") var fid: String
        func run() async throws {
            let f = try parseFid(fid)
            let (c, replicas, version) = try await withCluster(state) { $0.chain(of: f) }
            let name = { (s: Int?) in s.map(String.init) ?? "none" }
            if bytes {
                print("replicas=\(replicas.map(String.init).joined(separator: ",")) head=\(name(c.head)) tail=\(name(c.tail)) serving=\(name(c.serving)) map=\(version)")
            } else {
                print("index \(f): servers \(replicas.map(String.init).joined(separator: " and ")); head \(name(c.head)), tail \(name(c.tail)), reads at \(name(c.serving)) (map version \(version))")
            }
        }
    }

    struct Create: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create an index.")
        @OptionGroup var state: StateOption
        @Argument(help: "Index fid, HI:LO in hexadecimal.") var fid: String
        func run() async throws {
            let f = try parseFid(fid)
            if !(try await withCluster(state, { try await $0.createIndex(f) })) { print("index \(f) exists already") }
        }
    }

    struct Drop: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Drop an index with all its records.")
        @OptionGroup var state: StateOption
        @Argument(help: "Index fid.") var fid: String
        func run() async throws {
            let f = try parseFid(fid)
            guard try await withCluster(state, { try await $0.dropIndex(f) }) else { throw TesseraError(.notFound, "no index \(f)") }
        }
    }

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Put KEY VALUE pairs into an index (made if missing), in transactions of up to 4000 records.")
        @OptionGroup var state: StateOption
        @Flag(help: "Refuse keys that exist already.") var createOnly = false
        @Argument(help: "Index fid.") var fid: String
        @Argument(help: "KEY VALUE pairs, or - to read KEY<tab>VALUE lines from standard input.") var pairs: [String]
        func validate() throws {
            guard pairs == ["-"] || (!pairs.isEmpty && pairs.count % 2 == 0) else { throw ValidationError("give KEY VALUE pairs, or -") }
        }
        func run() async throws {
            let f = try parseFid(fid)
            var records: [Record] = []
            if pairs == ["-"] {
                for (n, line) in String(decoding: FileHandle.standardInput.readDataToEndOfFile(), as: UTF8.self).split(separator: "\n").enumerated() {
                    guard let tab = line.firstIndex(of: "\t") else { throw ValidationError("line \(n + 1) of standard input has no tab between key and value") }
                    records.append(Record(key: Array(line[..<tab].utf8), value: Array(line[line.index(after: tab)...].utf8)))
                }
            } else {
                records = stride(from: 0, to: pairs.count, by: 2).map { Record(key: Array(pairs[$0].utf8), value: Array(pairs[$0 + 1].utf8)) }
            }
            // A request is one transaction, of at most 4096 records: more go in several.
            let statuses = try await withCluster(state) { c in
                try await c.createIndex(f)
                var out: [TesseraCore.Status] = []
                for start in stride(from: 0, to: records.count, by: 4000) {
                    out += try await c.put(f, Array(records[start..<min(records.count, start + 4000)]), mode: createOnly ? .createOnly : .overwrite, sync: true)
                }
                return out
            }
            try reportFailures(zip(records, statuses).filter { $0.1 != .ok }.map { "\(String(decoding: $0.0.key, as: UTF8.self)): \($0.1)" })
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the values of keys.")
        @OptionGroup var state: StateOption
        @Argument(help: "Index fid.") var fid: String
        @Argument(help: "Keys.") var keys: [String]
        func run() async throws {
            let f = try parseFid(fid)
            let values = try await withCluster(state) { try await $0.get(f, keys.map { Array($0.utf8) }) }
            for v in values { if let v { print(String(decoding: v, as: UTF8.self)) } }
            try reportFailures(zip(keys, values).filter { $0.1 == nil }.map { "\($0.0): not found" })
        }
    }

    struct Del: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Delete keys.")
        @OptionGroup var state: StateOption
        @Argument(help: "Index fid.") var fid: String
        @Argument(help: "Keys.") var keys: [String]
        func run() async throws {
            let f = try parseFid(fid)
            let statuses = try await withCluster(state) { try await $0.delete(f, keys.map { Array($0.utf8) }, sync: true) }
            try reportFailures(zip(keys, statuses).filter { $0.1 != .ok }.map { "\($0.0): not found" })
        }
    }

    struct Next: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print records in key order from a key (or the first).")
        @OptionGroup var state: StateOption
        @Option(name: .short, help: "Most records to print.") var n: Int = 100
        @Flag(help: "Start after the start key.") var excludeStart = false
        @Argument(help: "Index fid.") var fid: String
        @Argument(help: "Start key.") var start: String?
        func run() async throws {
            let f = try parseFid(fid)
            let records = try await withCluster(state) { try await $0.records(f, from: start.map { Array($0.utf8) }, excludeStart: excludeStart, limit: n) }
            for r in records { print("\(String(decoding: r.key, as: UTF8.self))\t\(String(decoding: r.value, as: UTF8.self))") }
        }
    }
}

struct ObjectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "object", abstract: "Copy objects in and out of the cluster.",
        subcommands: [Put.self, Get.self, Rm.self, Ls.self])

    struct Put: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Store FILE (or stdin) as object NAME, replacing any object of that name.")
        @OptionGroup var state: StateOption
        @Argument(help: "Object name.") var name: String
        @Argument(help: "Input file; '-' or absent: stdin.") var file: String?
        func run() async throws {
            let input: FileHandle
            var total: UInt64?
            if let file, file != "-" {
                guard let h = FileHandle(forReadingAtPath: file) else { throw TesseraError(.notFound, "cannot open \(file)") }
                input = h
                total = (try? FileManager.default.attributesOfItem(atPath: file)[.size] as? UInt64) ?? nil
            } else {
                input = FileHandle.standardInput
            }
            let bar = Progress(total: total)
            let entry = try await withCluster(state) { c in
                let chunk = c.layout.groupSize * 8
                return try await NamedObjects(cluster: c).put(name, progress: bar.update) {
                    let d = try readFull(input, chunk)
                    return d.isEmpty ? nil : d
                }
            }
            bar.finish()
            _ = entry
        }
    }

    struct Get: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Write object NAME to FILE (or stdout).")
        @OptionGroup var state: StateOption
        @Argument(help: "Object name.") var name: String
        @Argument(help: "Output file; '-' or absent: stdout.") var file: String?
        func run() async throws {
            let output: FileHandle
            if let file, file != "-" {
                // Opened in place, not made anew: FileManager.createFile writes a temporary
                // file and renames it over the path, which replaced /dev/null with a file.
                let fd = open(file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
                guard fd >= 0 else { throw TesseraError(.io, "cannot create \(file): \(String(cString: strerror(errno)))") }
                output = FileHandle(fileDescriptor: fd, closeOnDealloc: true)
            } else {
                output = FileHandle.standardOutput
            }
            let bar = Progress(total: nil)
            try await withCluster(state) { c in
                try await NamedObjects(cluster: c).get(name, chunk: c.layout.groupSize * 8, progress: { done, total in bar.update(done, total: total) }) {
                    try output.write(contentsOf: $0)
                }
            }
            bar.finish()
            if output !== FileHandle.standardOutput { try output.close() }
        }
    }

    struct Rm: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Remove object NAME.")
        @OptionGroup var state: StateOption
        @Argument(help: "Object name.") var name: String
        func run() async throws {
            guard try await withCluster(state, { try await NamedObjects(cluster: $0).remove(name) }) else {
                throw TesseraError(.notFound, "no object named '\(name)'")
            }
        }
    }

    struct Ls: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List objects: size and name.")
        @OptionGroup var state: StateOption
        func run() async throws {
            for (name, e) in try await withCluster(state, { try await NamedObjects(cluster: $0).list(limit: 100_000) }) {
                print("\(e.size)\t\(name)")
            }
        }
    }
}

/// Reads up to `n` bytes, fewer only at the end of the input.
func readFull(_ h: FileHandle, _ n: Int) throws -> [UInt8] {
    var out: [UInt8] = []
    out.reserveCapacity(n)
    while out.count < n {
        guard let d = try h.read(upToCount: n - out.count), !d.isEmpty else { break }
        out += d
    }
    return out
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
final class Progress: @unchecked Sendable {
    // SAFETY: used from one task at a time.
    private let enabled = isatty(2) == 1
    private var total: UInt64?
    private var last = ContinuousClock.now - .seconds(1)
    private var drawn = false

    init(total: UInt64?) { self.total = total }

    func update(_ done: UInt64) { update(done, total: total) }

    func update(_ done: UInt64, total: UInt64?) {
        guard enabled, ContinuousClock.now - last >= .milliseconds(100) else { return }
        last = ContinuousClock.now
        drawn = true
        var line = "\r\(human(done))"
        if let total, total > 0 {
            let f = Double(done) / Double(total)
            let width = 30
            let filled = Int(f * Double(width))
            line = "\r[" + String(repeating: "#", count: filled) + String(repeating: " ", count: width - filled) + "] "
                + String(format: "%3.0f%% ", f * 100) + "\(human(done)) of \(human(total))"
        }
        FileHandle.standardError.write(Data((line + "   ").utf8))
    }

    func finish() {
        if drawn { FileHandle.standardError.write(Data("\n".utf8)) }
    }
}
