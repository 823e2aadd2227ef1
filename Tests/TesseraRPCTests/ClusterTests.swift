// Three `tessera server` processes on loopback: concurrent CAS and IOS clients; a server
// SIGKILLed while serving writes and restarted keeps everything it acknowledged after
// sync-wait or SYNC; `tessera check` passes on every image afterwards.
import Foundation
import NIOPosix
import Testing
import TesseraCore
import TesseraLocal
import TesseraRPC

/// A loopback socket bound to a port the kernel picked, listening; the port is this
/// process's until it closes the socket, so no other process can take it in between.
func listeningSocket() throws -> (fd: CInt, port: Int) {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw TesseraError(.io, "socket: \(String(cString: strerror(errno)))") }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    var length = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { a in
            bind(fd, a, length) == 0 && listen(fd, 256) == 0 && getsockname(fd, a, &length) == 0
        }
    }
    guard ok else {
        let message = String(cString: strerror(errno))
        close(fd)
        throw TesseraError(.io, "listening on a loopback port: \(message)")
    }
    return (fd, Int(UInt16(bigEndian: addr.sin_port)))
}

func tesseraBinary() -> String {
    if let path = ProcessInfo.processInfo.environment["TESSERA_BIN"] { return path }
    return URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent().appendingPathComponent("tessera").path
}

/// A local cluster of server processes, stopped by PID when released. It holds each
/// server's listening socket and hands it to every process it starts for that server
/// (`server --listen-fd 0`), so a port stays the cluster's across restarts.
final class ProcessCluster: @unchecked Sendable {
    // SAFETY: `processes` is touched only by the test's own task.
    static let secret = "cluster-test-secret-0123"
    let dir: String
    let ports: [Int]
    private let sockets: [CInt]
    var processes: [ChildProcess?]

    init(servers: Int = 3) throws {
        var template = Array((NSTemporaryDirectory() + "/tessera-cluster-XXXXXX").utf8CString)
        dir = template.withUnsafeMutableBufferPointer { String(cString: mkdtemp($0.baseAddress!)!) }
        var sockets: [CInt] = []
        var ports: [Int] = []
        for _ in 0..<servers {
            let (fd, port) = try listeningSocket()
            sockets.append(fd)
            ports.append(port)
        }
        self.sockets = sockets
        self.ports = ports
        var toml = "secret = \"\(ProcessCluster.secret)\"\n[layout]\ndata_units = 2\nparity_units = 1\nunit_size = \"64K\"\n"
        for i in 0..<servers {
            toml += "[[server]]\nid = \(i)\naddress = \"127.0.0.1:\(ports[i])\"\nmeta = \"\(i)/meta.img\"\nmeta_size = \"128M\"\ndata = \"\(i)/data.img\"\ndata_size = \"256M\"\n"
        }
        try toml.write(toFile: dir + "/cluster.toml", atomically: true, encoding: .utf8)
        processes = Array(repeating: nil, count: servers)
        for i in 0..<servers {
            let mkfs = try run(["mkfs", "--config", dir + "/cluster.toml", "--id", String(i), "--page-size", "4096"])
            guard mkfs == 0 else { throw TesseraError(.io, "mkfs \(i) exited \(mkfs)") }
        }
    }

    func run(_ args: [String]) throws -> Int32 {
        try ChildProcess(tesseraBinary(), args, stdout: .null, stderr: .null).wait().status
    }

    func start(_ i: Int) throws {
        processes[i] = try ChildProcess(
            tesseraBinary(), ["server", "--config", dir + "/cluster.toml", "--id", String(i), "--cache", "16M", "--listen-fd", "0"],
            stdin: .descriptor(sockets[i]), stdout: .null, stderr: .file(log(i)))
    }

    func log(_ i: Int) -> String { dir + "/server-\(i).log" }

    func connect(_ i: Int) async throws -> RPCClient {
        let deadline = Date().addingTimeInterval(20)
        while true {
            do {
                return try await RPCClient.connect(host: "127.0.0.1", port: ports[i], secret: ProcessCluster.secret, group: MultiThreadedEventLoopGroup.singleton)
            } catch {
                if Date() > deadline {
                    let log = (try? String(contentsOfFile: self.log(i), encoding: .utf8)) ?? ""
                    throw TesseraError(.io, "\(error); server \(i) running: \(processes[i]?.isRunning ?? false); its log: \(log)")
                }
                try await Task.sleep(for: .milliseconds(50))
            }
        }
    }

    func stop(_ i: Int, signal: Int32) {
        guard let p = processes[i] else { return }
        p.signal(signal)
        p.wait()
        processes[i] = nil
    }

    deinit {
        for i in processes.indices { stop(i, signal: SIGKILL) }
        for fd in sockets { close(fd) }
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// What the servers acknowledged, recorded by the clients.
actor Acknowledged {
    var keys: [Int: Set<Int>] = [:]
    var units: [Int: Set<Int>] = [:]
    func key(_ server: Int, _ n: Int) { keys[server, default: []].insert(n) }
    func unit(_ server: Int, _ n: Int) { units[server, default: []].insert(n) }
}

@Suite struct ClusterTests {
    static let index = Fid(hi: 42, lo: 1)
    static let cob = Fid(hi: 42, lo: 2)
    static func unitBytes(_ n: Int) -> [UInt8] { (0..<(64 << 10)).map { UInt8(truncatingIfNeeded: $0 &+ n &* 13) } }

    @Test func killedServerKeepsWhatItAcknowledged() async throws {
        let cluster = try ProcessCluster()
        for i in 0..<3 { try cluster.start(i) }
        // Four client connections per server, two writers on each.
        var connected: [[RPCClient]] = []
        for i in 0..<3 {
            var mine: [RPCClient] = []
            for _ in 0..<4 { mine.append(try await cluster.connect(i)) }
            #expect(await mine[0].handle(.createIndexes([Self.index])).isOK)
            connected.append(mine)
        }
        let clients = connected
        let acked = Acknowledged()
        // Eight writers per server, CAS puts with sync-wait and IOS writes followed by SYNC.
        let writers = Task {
            await withTaskGroup(of: Void.self) { group in
                for server in 0..<3 {
                    for w in 0..<8 {
                        group.addTask {
                            let c = clients[server][w % 4]
                            for j in 0..<100_000 {
                                let n = w * 1_000_000 + j
                                if j % 4 == 3 {
                                    let r = await c.handle(.write(cob: Self.cob, offset: Self.slot(n) * (64 << 10), data: Self.unitBytes(n), syncWait: false))
                                    guard case .statuses(_, let tx) = r, await c.handle(.sync(transactions: [tx])) == .done else { return }
                                    await acked.unit(server, n)
                                } else {
                                    let k = Array("k\(n)".utf8)
                                    guard await c.handle(.put(index: Self.index, records: [Record(key: k, value: k)], mode: .overwrite, syncWait: true)).isOK else { return }
                                    await acked.key(server, n)
                                }
                                if Task.isCancelled { return }
                            }
                        }
                    }
                }
            }
        }
        try await Task.sleep(for: .milliseconds(1500))
        cluster.stop(1, signal: SIGKILL)
        try await Task.sleep(for: .milliseconds(300))
        writers.cancel()
        await writers.value
        for c in clients.joined() { await c.close() }

        try cluster.start(1)
        for server in 0..<3 {
            let c = try await cluster.connect(server)
            let keys = await acked.keys[server] ?? []
            #expect(keys.count > 10, "server \(server) acknowledged only \(keys.count) puts")
            for n in keys {
                let k = Array("k\(n)".utf8)
                guard await c.handle(.get(index: Self.index, keys: [k])) == .values([k]) else {
                    Issue.record("server \(server): acknowledged put \(n) is missing")
                    break
                }
            }
            // Each writer owns its slots; a slot holds the writer's last acknowledged unit, or
            // its next one (written to the same slot 1000 operations later) if that was under
            // way at the kill: a whole unit either way, never a mix or garbage.
            let units = await acked.units[server] ?? []
            var latest: [UInt64: Int] = [:]
            for n in units { latest[Self.slot(n)] = max(latest[Self.slot(n)] ?? -1, n) }
            #expect(units.count > 3, "server \(server) acknowledged only \(units.count) writes")
            for (slot, n) in latest {
                let r = await c.handle(.read(cob: Self.cob, offset: slot * (64 << 10), length: 64 << 10))
                guard case .data(let bytes) = r else {
                    Issue.record("server \(server): read of slot \(slot): \(r)")
                    continue
                }
                #expect(bytes == Self.unitBytes(n) || bytes == Self.unitBytes(n + 1000), "server \(server) slot \(slot) lost unit \(n)")
            }
            await c.close()
        }
        for i in 0..<3 { cluster.stop(i, signal: SIGTERM) }
        for i in 0..<3 {
            #expect(try cluster.run(["check", cluster.dir + "/\(i)/meta.img"]) == 0, "check of server \(i)")
        }
        try await flippedBytesAreAChecksumError(cluster)
    }

    /// Server 0 stores a unit with a unique marker; a byte flipped under it on disk (found by
    /// scanning data.img for the marker) makes the read fail with a checksum error.
    func flippedBytesAreAChecksumError(_ cluster: ProcessCluster) async throws {
        let cob = Fid(hi: 42, lo: 3)
        let marker = Array("flip-me-unit-0123456789abcdef".utf8)
        let unit = marker + [UInt8](repeating: 0x3C, count: 8192 - marker.count)
        try cluster.start(0)
        var c = try await cluster.connect(0)
        #expect(await c.handle(.write(cob: cob, offset: 0, data: unit, syncWait: true)).isOK)
        await c.close()
        cluster.stop(0, signal: SIGTERM)
        let path = cluster.dir + "/0/data.img"
        let image = try Data(contentsOf: URL(fileURLWithPath: path))
        guard let at = image.range(of: Data(marker))?.lowerBound else {
            Issue.record("the unit is not in data.img")
            return
        }
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        try h.seek(toOffset: UInt64(at + 4000))
        h.write(Data([0xFF]))
        try h.close()
        try cluster.start(0)
        c = try await cluster.connect(0)
        let r = await c.handle(.read(cob: cob, offset: 0, length: 8192))
        if case .failure(let s, _) = r { #expect(s == .checksum) } else { Issue.record("flipped bytes were returned as data") }
        await c.close()
        cluster.stop(0, signal: SIGTERM)
    }

    /// The 64 KiB slot of unit write n: writer w = n / 1e6 owns slots w*250 ..< w*250+250.
    static func slot(_ n: Int) -> UInt64 { UInt64((n / 1_000_000) * 250 + ((n % 1_000_000) / 4) % 250) }
}
