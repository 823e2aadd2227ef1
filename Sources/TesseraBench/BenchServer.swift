// `tessera bench server`: one server process on loopback against Redis (appendonly yes,
// appendfsync everysec, driven by redis-benchmark at the same pipelining) for CAS puts and
// gets, and against dd (conv=fdatasync, same disk) for 1 MiB IOS unit writes and reads.
import ArgumentParser
import Foundation
import TesseraLocal
import NIOPosix
import TesseraCore
import TesseraRPC

struct BenchServer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "server",
        abstract: "Server vs Redis (CAS put/get, 1 and 64 in flight) and vs dd (IOS 1 MiB units), on loopback and the same disk.")

    @Option(help: "Folder for the images, Redis's files and dd's file (default: the system temporary folder).")
    var dir: String?
    @Option(help: "CAS operations per row.") var ops: Int = 100_000
    @Option(help: "MiB written and read by the IOS rows.") var mib: Int = 1024

    @Option(help: "Rounds; each runs Tessera then its baseline, and the table shows medians.") var rounds: Int = 3

    func run() async throws {
        guard rounds >= 1, ops >= 1, mib >= 1 else { throw ValidationError("--rounds, --ops and --mib must be at least 1") }
        let root = (dir ?? NSTemporaryDirectory()) + "/tessera-bench-server-\(getpid())"
        try FileManager.default.createDirectory(atPath: root, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: root) }
        // Each round measures Tessera and its baseline back to to back, so the ratio of a
        // round compares the two under the same load from the machine's neighbours.
        var rows: [String: [(Double, Double)]] = [:]
        var order: [(String, String)] = []
        func add(_ name: String, _ unit: String, _ t: Double, _ b: Double) {
            if rows[name] == nil { order.append((name, unit)) }
            rows[name, default: []].append((t, b))
        }
        for round in 1...rounds {
            note("round \(round) of \(rounds)")
            let cas = try await casRows(root)
            let redis = try redisRows(root)
            for (name, t) in cas { add(name, "ops/s", t, redis[name] ?? .nan) }
            let (w, r) = try await ioRows(root)
            let (dw, dr) = try ddRows(root)
            add("IOS write 1 MiB units vs dd conv=fdatasync", "MB/s", w, dw)
            add("IOS read 1 MiB units vs dd read", "MB/s", r, dr)
        }
        print("medians of \(rounds) round(s); ratio = median of the per-round ratios")
        print("row".padding(toLength: 46, withPad: " ", startingAt: 0) + "        tessera       baseline   ratio  unit  (per-round ratios)")
        for (name, unit) in order {
            let runs = rows[name]!
            let ratios = runs.map { $0.0 / $0.1 }
            let each = ratios.map { String(format: "%.2f", $0) }.joined(separator: " ")
            print(name.padding(toLength: 46, withPad: " ", startingAt: 0)
                + String(format: " %14.0f %14.0f %7.2f  %@  (%@)", median(runs.map(\.0)), median(runs.map(\.1)), median(ratios), unit, each))
        }
    }

    private func note(_ s: String) { FileHandle.standardError.write(Data("bench server: \(s)\n".utf8)) }

    // MARK: Tessera

    private func startServer(_ root: String) throws -> (Process, Int, String) {
        let port = Int.random(in: 20_000..<32_000)
        let secret = "bench-secret-0123456789"
        let toml = """
            secret = "\(secret)"
            [layout]
            data_units = 1
            parity_units = 0
            [[server]]
            id = 0
            address = "127.0.0.1:\(port)"
            meta = "meta.img"
            meta_size = "1G"
            data = "data.img"
            data_size = "\(mib * 2 + 256)M"
            """
        try toml.write(toFile: root + "/cluster.toml", atomically: true, encoding: .utf8)
        let me = CommandLine.arguments[0]
        let mkfs = Process()
        mkfs.executableURL = URL(fileURLWithPath: me)
        mkfs.arguments = ["mkfs", "--config", root + "/cluster.toml", "--id", "0"]
        mkfs.standardOutput = FileHandle.nullDevice
        try mkfs.run()
        mkfs.waitUntilExit()
        guard mkfs.terminationStatus == 0 else { throw ValidationError("mkfs failed") }
        let server = Process()
        server.executableURL = URL(fileURLWithPath: me)
        server.arguments = ["server", "--config", root + "/cluster.toml", "--id", "0", "--cache", "512M"]
        server.standardError = FileHandle.nullDevice
        try server.run()
        return (server, port, secret)
    }

    private func connect(_ port: Int, _ secret: String) async throws -> RPCClient {
        for _ in 0..<200 {
            if let c = try? await RPCClient.connect(host: "127.0.0.1", port: port, secret: secret, group: MultiThreadedEventLoopGroup.singleton) { return c }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw ValidationError("the server did not start")
    }

    /// Formats fresh images, runs a server process on them, and hands `body` a client.
    private func withServer<R>(_ root: String, _ body: (RPCClient) async throws -> R) async throws -> R {
        for image in ["meta.img", "data.img"] { try? FileManager.default.removeItem(atPath: root + "/" + image) }
        let (server, port, secret) = try startServer(root)
        defer {
            kill(server.processIdentifier, SIGTERM)
            server.waitUntilExit()
        }
        let client = try await connect(port, secret)
        let result = try await body(client)
        await client.close()
        return result
    }

    private func casRows(_ root: String) async throws -> [(String, Double)] {
        try await withServer(root) { client in try await casRows(client) }
    }

    /// Rows at 1 in flight send one request and wait for its reply; rows at N in flight send
    /// pipelines of N requests, each its own frame, and wait for all N replies before the
    /// next pipeline, exactly as redis-benchmark -P N does.
    private func casRows(_ client: RPCClient) async throws -> [(String, Double)] {
        let index = Fid(hi: 0xBE, lo: 1)
        _ = try await client.handle(.createIndexes([index])).unwrap()
        let value = [UInt8](repeating: 0x5A, count: 100)
        let keys = (0..<ops).map(key)
        var rows: [(String, Double)] = []
        for inFlight in [1, 64] {
            note("CAS put and get, \(inFlight) in flight")
            let put = try await rate(ops) {
                try await pipelines(client, inFlight, ops) { i in
                    .put(index: index, records: [Record(key: keys[i], value: value)], mode: .overwrite, syncWait: false)
                } check: { i, response in _ = try response.unwrap() }
            }
            let get = try await rate(ops) {
                try await pipelines(client, inFlight, ops) { i in
                    .get(index: index, keys: [keys[i]])
                } check: { i, response in
                    guard case .values(let v) = try response.unwrap(), v.count == 1, let got = v[0], sameBytes(got, value) else { throw ValidationError("lost key \(i)") }
                }
            }
            rows.append(("CAS put, \(inFlight) in flight vs Redis SET", put))
            rows.append(("CAS get, \(inFlight) in flight vs Redis GET", get))
        }
        return rows
    }

    private func ioRows(_ root: String) async throws -> (Double, Double) {
        try await withServer(root) { client in try await ioRows(client) }
    }

    private func ioRows(_ client: RPCClient) async throws -> (Double, Double) {
        let cob = Fid(hi: 0xBE, lo: 2)
        let unit = [UInt8](repeating: 0xA5, count: 1 << 20)
        note("IOS \(mib) MiB of 1 MiB unit writes, 4 in flight, then SYNC")
        let write = try await rate(mib) {
            let txs = TxCollector()
            try await parallel(4, mib) { i in
                guard case .statuses(_, let tx) = try await client.handle(.write(cob: cob, offset: UInt64(i) << 20, data: unit, syncWait: false)).unwrap() else { return }
                txs.add(tx)
            }
            _ = try await client.handle(.sync(transactions: [txs.max])).unwrap()
        }
        dropCaches()
        note("IOS reads")
        let read = try await rate(mib) {
            try await parallel(4, mib) { i in
                guard case .data(let d) = try await client.handle(.read(cob: cob, offset: UInt64(i) << 20, length: 1 << 20)).unwrap(), d.count == 1 << 20 else {
                    throw ValidationError("short read")
                }
            }
        }
        return (write * 1.048576, read * 1.048576)
    }

    // MARK: Baselines

    private func redisRows(_ root: String) throws -> [String: Double] {
        guard let server = which("redis-server"), let bench = which("redis-benchmark"), let cli = which("redis-cli") else {
            note("redis-server, redis-benchmark or redis-cli not found (apt-get install redis-server redis-tools); Redis rows skipped")
            return [:]
        }
        let port = Int.random(in: 20_000..<32_000)
        let redis = Process()
        redis.executableURL = URL(fileURLWithPath: server)
        redis.arguments = ["--port", String(port), "--bind", "127.0.0.1", "--dir", root, "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""]
        redis.standardOutput = FileHandle.nullDevice
        try redis.run()
        defer {
            // SIGKILL: a child started from a Swift concurrency thread inherits its blocked
            // signal mask, and Redis then never sees SIGTERM. Its data is not needed.
            kill(redis.processIdentifier, SIGKILL)
            redis.waitUntilExit()
        }
        // Wait until Redis answers: a benchmark against a server still starting measures nothing.
        var up = false
        for _ in 0..<100 where !up {
            up = (try? capture(cli, ["-p", String(port), "ping"], quiet: true))?.contains("PONG") ?? false
            if !up { usleep(50_000) }
        }
        guard up else { throw ValidationError("redis-server did not start on port \(port)") }
        var out: [String: Double] = [:]
        for inFlight in [1, 64] {
            note("Redis SET and GET, pipelining \(inFlight)")
            let text = try capture(bench, ["-p", String(port), "-c", "1", "-P", String(inFlight), "-n", String(ops), "-d", "100", "-r", String(ops), "-t", "set,get", "-q"])
            for line in text.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) {
                let parts = line.split(separator: ":")
                guard parts.count == 2, let n = Double(parts[1].split(separator: " ").first ?? "") else { continue }
                if parts[0].hasSuffix("SET") { out["CAS put, \(inFlight) in flight vs Redis SET"] = n }
                if parts[0].hasSuffix("GET") { out["CAS get, \(inFlight) in flight vs Redis GET"] = n }
            }
        }
        return out
    }

    private func ddRows(_ root: String) throws -> (Double, Double) {
        let file = root + "/dd.bin"
        note("dd \(mib) MiB, conv=fdatasync")
        let w = try ddRate(["if=/dev/zero", "of=" + file, "bs=1M", "count=\(mib)", "conv=fdatasync"])
        dropCaches()
        let r = try ddRate(["if=" + file, "of=/dev/null", "bs=1M"])
        unlink(file)
        return (w, r)
    }

    /// dd's own MB/s figure, from its last line of stderr.
    private func ddRate(_ args: [String]) throws -> Double {
        let start = Date()
        _ = try capture("/bin/dd", args, stderr: true)
        return Double(mib) * 1.048576 / Date().timeIntervalSince(start)
    }

}

/// `a == b` as one memcmp, as redis-benchmark would (the generic `==` goes byte by byte).
private func sameBytes(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    a.count == b.count && (a.isEmpty || a.withUnsafeBytes { x in b.withUnsafeBytes { y in memcmp(x.baseAddress!, y.baseAddress!, a.count) == 0 } })
}

private func key(_ i: Int) -> [UInt8] { Array(String(format: "key:%012d", i).utf8) }

/// Sends requests 0..<count in pipelines of `width`, checking every response, on the
/// connection's event loop (`RPCClient.executor`), as redis-benchmark runs on its own.
private func pipelines(
    _ client: RPCClient, _ width: Int, _ count: Int, _ request: (Int) -> Request, check: (Int, Response) throws -> Void
) async throws {
    try await withTaskExecutorPreference(client.executor) {
        var start = 0
        while start < count {
            let end = min(count, start + width)
            let responses = width == 1 ? [await client.handle(request(start))] : await client.pipeline((start..<end).map(request))
            for (i, r) in zip(start..<end, responses) { try check(i, r) }
            start = end
        }
    }
}

/// Runs `body(i)` for i in 0..<count with `width` running at once.
private func parallel(_ width: Int, _ count: Int, _ body: @escaping @Sendable (Int) async throws -> Void) async throws {
    try await withThrowingTaskGroup(of: Void.self) { group in
        for w in 0..<width {
            group.addTask {
                var i = w
                while i < count {
                    try await body(i)
                    i += width
                }
            }
        }
        try await group.waitForAll()
    }
}

private final class TxCollector: @unchecked Sendable {
    // SAFETY: `value` is touched only under `lock`.
    private let lock = NSLock()
    private var value: UInt64 = 0
    func add(_ v: UInt64) { lock.withLock { value = Swift.max(value, v) } }
    var max: UInt64 { lock.withLock { value } }
}
