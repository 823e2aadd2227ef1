// A real etcd for the tests: its own data folder and free loopback ports, started and
// stopped by its PID (never by name), paused and resumed with SIGSTOP/SIGCONT.
import Foundation
import Logging
import TesseraEtcd
import TesseraLocal
import XCTest

final class EtcdProcess: @unchecked Sendable {
    let dir: URL
    /// The client port of the last `start`.
    private(set) var clientPort: Int
    let peerPort: Int
    private var process: ChildProcess?
    private(set) var paused = false

    var endpoint: String { "127.0.0.1:\(clientPort)" }
    var pid: Int32? { process?.pid }

    /// A fresh data folder and two free ports; call `start()`.
    init() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-etcd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        clientPort = try freePort()
        peerPort = try freePort()
    }

    /// Starts etcd (on the same ports and data as before, after a `stop`, unless given
    /// another client port) and waits until it serves reads, for up to 15 s.
    func start(clientPort port: Int? = nil) async throws {
        precondition(process == nil, "etcd is already running")
        if let port { clientPort = port }
        let peer = "http://127.0.0.1:\(peerPort)", client = "http://127.0.0.1:\(clientPort)"
        // Short heartbeats make startup quick and let leases of 1 s exist (etcd's minimum
        // TTL is 1.5 election timeouts).
        let arguments = [
            "--name", "t", "--data-dir", dir.appendingPathComponent("data").path,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "t=\(peer)",
            "--heartbeat-interval", "50", "--election-timeout", "250", "--logger", "zap", "--log-level", "warn",
        ]
        process = try ChildProcess("/usr/bin/etcd", arguments, stdout: .file(dir.appendingPathComponent("etcd.log").path), stderr: .stdout)
        try await waitUntilServing()
    }

    private func waitUntilServing() async throws {
        let client = try EtcdClient(endpoints: [endpoint], requestTimeout: .milliseconds(500), logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }))
        defer { Task { await client.close() } }
        let deadline = ContinuousClock.now + .seconds(15)
        while true {
            do {
                _ = try await client.get("readiness-probe")
                return
            } catch {
                guard ContinuousClock.now < deadline, process?.isRunning == true else {
                    throw TesseraTestError("etcd did not start: \(error); its log: \(self.log())")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 5 s) and waits for it to exit.
    func stop() {
        guard let p = process else { return }
        if paused { p.signal(SIGCONT) }
        paused = false
        p.signal(SIGTERM)
        let deadline = Date().addingTimeInterval(5)
        while p.isRunning, Date() < deadline { usleep(10_000) }
        if p.isRunning { p.signal(SIGKILL) }
        p.wait()
        process = nil
    }

    func pause() {
        guard let pid else { return }
        kill(pid, SIGSTOP)
        paused = true
    }

    func resume() {
        guard let pid else { return }
        kill(pid, SIGCONT)
        paused = false
    }

    /// Stops etcd and removes its folder.
    func destroy() {
        stop()
        try? FileManager.default.removeItem(at: dir)
    }

    func log() -> String {
        (try? String(contentsOf: dir.appendingPathComponent("etcd.log"), encoding: .utf8)).map { String($0.suffix(2000)) } ?? "(none)"
    }
}

struct TesseraTestError: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// A loopback port for an etcd (or a dead endpoint) started later: `freePorts`, which picks
/// below the ephemeral range so no other process takes it meanwhile.
func freePort() throws -> Int { try freePorts(1)[0] }

/// Log records kept for assertions.
final class CapturedLogs: @unchecked Sendable {
    private let lock = NSLock()
    private var records: [(Logger.Level, String)] = []

    var logger: Logger {
        Logger(label: "test") { _ in CapturingHandler(sink: self) }
    }

    func append(_ level: Logger.Level, _ message: String) { lock.withLock { records.append((level, message)) } }

    func all() -> [String] { lock.withLock { records.map { "\($0.0) \($0.1)" } } }

    func messages(at level: Logger.Level) -> [String] { lock.withLock { records.filter { $0.0 == level }.map(\.1) } }
}

struct CapturingHandler: LogHandler {
    let sink: CapturedLogs
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let fields = (event.metadata ?? [:]).merging(metadata) { a, _ in a }
        sink.append(event.level, event.message.description + (fields.isEmpty ? "" : " \(fields)"))
    }
}

/// Polls `condition` every 50 ms for up to `timeout`; true once it holds.
func eventually(_ timeout: Duration, _ condition: () async throws -> Bool) async rethrows -> Bool {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try await condition() { return true }
        try? await Task.sleep(for: .milliseconds(50))
    }
    return try await condition()
}

/// The result of `body`, or an error if it takes longer than `timeout` (`body` is then
/// cancelled): a test fails instead of hanging.
func within<T: Sendable>(_ timeout: Duration, _ body: @escaping @Sendable () async throws -> T) async throws -> T {
    try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await body() }
        group.addTask {
            try await Task.sleep(for: timeout)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw TesseraTestError("no result within \(timeout)")
        }
        return value
    }
}
