// `tessera bench repair`: what losing a server costs (issue 21). On a local cluster of three
// servers (`tessera up`, layout 2+1) filled through the mount until every server holds
// `--units` bytes of units, each round:
//
// 1. writes a file of `--size` through the mount in 1 MiB writes and an fsync (as `dd bs=1M
//    conv=fsync`) and reads it back cold in 1 MiB reads, all servers up (the baseline of
//    the degraded rows);
// 2. SIGKILLs one server (server `round mod 3`), waits for the map to fail it, and does the
//    same write into a new file and the same cold read of the first file, whose units on the
//    killed server are rebuilt from parity for the read;
// 3. wipes the killed server's images, `tessera replace`s it, `tessera repair --wait`s, and
//    takes from the repair's progress the bytes of units written to the blank server and
//    the time the object data's walk took; then writes the same number of bytes the same
//    way to a plain file on the same disk (the baseline of the rebuild row: `dd`);
// 4. compares the replaced server's used data bytes with what it held before it was killed
//    plus its share of the degraded write's units (it should hold the same).
//
// The table gives medians over the rounds, and the median of each round's ratio.
import ArgumentParser
import Foundation
import TesseraConfig
import TesseraCore
import TesseraLocal
import TesseraState

struct BenchRepair: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "repair", abstract: "Rebuild of a replaced server against dd; degraded sequential write and read through the mount against healthy.")

    @Option(help: "Folder on the disk to measure (default: the current directory).") var dir = "."
    @Option(help: "Bytes of units each server holds before the first round (the rebuild's size).") var units = "2G"
    @Option(help: "Size of the sequential write and read.") var size = "1G"
    @Option(help: "Rounds; each kills, replaces and rebuilds one server.") var rounds = 3

    func run() async throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        let held = try ByteSize.required(units)
        let bytes = try ByteSize.required(size)
        guard bytes >= 1 << 20 else { throw ValidationError("--size must be at least 1M") }
        var template = Array(((dir as NSString).standardizingPath + "/tessera-bench-repair-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TesseraError(.io, "cannot make a folder in \(dir): \(String(cString: strerror(errno)))")
        }
        let work = URL(fileURLWithPath: String(cString: made)).resolvingSymlinksInPath().path
        let mount = work + "/tessera"
        let state = LocalState(path: work + "/state")
        try FileManager.default.createDirectory(atPath: mount, withIntermediateDirectories: true)
        defer {
            // `down` stops whatever a failed `up` started too; the folder goes only once
            // nothing is mounted in it.
            if (try? runTool(tesseraExecutable, ["down", "--dir", state.path, mount])) == 0 || !FileManager.default.fileExists(atPath: state.configPath) {
                try? FileManager.default.removeItem(atPath: work)
            } else {
                FileHandle.standardError.write(Data("bench repair: tessera down failed: \(work) is left in place\n".utf8))
            }
        }
        // Room for the fill, each round's two files and the blank server's rebuild, with a
        // margin: a group of 2+1 puts half its data's size on each of the three servers.
        let dataSize = held * 2 + bytes * UInt64(rounds) * 2 + (4 << 30)
        note("tessera up --dir \(state.path) --data-size \(dataSize) \(mount)")
        guard try runTool(tesseraExecutable, ["up", "--dir", state.path, "--data-size", String(dataSize), "--ttl", "3s", "--grace", "3s", mount]) == 0 else {
            throw TesseraError(.io, "tessera up failed")
        }
        let config = try state.config()
        guard let settings = config.state, config.servers.count >= 3 else { throw TesseraError(.invalidArgument, "bench repair needs the cluster state service and three servers") }

        // The fill: files of 256 MiB until the emptiest server holds `held` bytes.
        var filled = 0
        while let least = try usedData(state).values.min(), least < held {
            note("fill \(filled): the emptiest server holds \(least >> 20) MiB of \(held >> 20) MiB")
            try write("\(mount)/fill-\(filled).bin", 256 << 20)
            filled += 1
        }

        // Per row: each round's (baseline, tessera).
        var rows: [(what: String, unit: String, rounds: [(Double, Double)])] = [
            ("sequential write 1 MiB blocks, conv=fsync: degraded vs healthy", "MB/s", []),
            ("sequential cold read 1 MiB blocks: degraded vs healthy", "MB/s", []),
            ("rebuild of a replaced server: units written vs dd, conv=fsync", "MB/s", []),
        ]
        var notes: [String] = []
        for round in 1...rounds {
            let victim = config.servers[(round - 1) % config.servers.count]
            note("round \(round) of \(rounds): server \(victim.id)")
            let healthyFile = "\(mount)/healthy-\(round).bin"
            let degradedFile = "\(mount)/degraded-\(round).bin"
            dropCaches()
            let healthyWrite = try timed(bytes) { try write(healthyFile, bytes) }
            dropCaches()
            let healthyRead = try timed(bytes) { try readWhole(healthyFile, bytes) }
            let before = try usedBy(victim.id, state)

            guard let pid = state.runningPid(victim.id) else { throw TesseraError(.io, "server \(victim.id) is not running") }
            note("SIGKILL server \(victim.id) (pid \(pid)); waiting for the map to fail it")
            kill(pid, SIGKILL)
            try await waitForMap(settings, "server \(victim.id) failed") { $0.server(victim.id)?.state == .failed }
            dropCaches()
            let degradedWrite = try timed(bytes) { try write(degradedFile, bytes) }
            dropCaches()
            let degradedRead = try timed(bytes) { try readWhole(healthyFile, bytes) }
            rows[0].rounds.append((healthyWrite, degradedWrite))
            rows[1].rounds.append((healthyRead, degradedRead))

            for image in [victim.metaPath, victim.dataPath] { try FileManager.default.removeItem(atPath: image) }
            note("tessera replace --id \(victim.id); tessera repair --wait")
            let replaced = ContinuousClock.now
            guard try runTool(tesseraExecutable, ["replace", "--dir", state.path, "--id", String(victim.id)]) == 0,
                try runTool(tesseraExecutable, ["repair", "--dir", state.path, "--wait", "--timeout", "7200"]) == 0
            else { throw TesseraError(.io, "replace or repair of server \(victim.id) failed") }
            let wall = seconds(ContinuousClock.now - replaced)
            let progress = try await StateReader.with(settings) { try await $0.repairs() }.first { $0.server == victim.id }
            guard let data = progress?.data, let done = data.done, done > data.started, data.totals.bytesWritten > 0 else {
                throw TesseraError(.io, "the repair of server \(victim.id) left no finished object data progress: \(String(describing: progress))")
            }
            let written = data.totals.bytesWritten
            let rebuild = Double(written) / (Double(done - data.started) / 1e9) / 1e6
            let baseline = try timed(written) { try write("\(work)/baseline.bin", written) }
            unlink("\(work)/baseline.bin")
            rows[2].rounds.append((baseline, rebuild))
            let after = try usedBy(victim.id, state)
            // What the degraded write put on the other servers and the repair rebuilt on this one.
            let share = bytes * UInt64(config.layout.dataUnits + config.layout.parityUnits) / UInt64(config.layout.dataUnits) / UInt64(config.servers.count)
            let expected = before + share
            let line = "round \(round): server \(victim.id) held \(before >> 20) MiB of data before its kill, \(expected >> 20) MiB with its share of the degraded write, "
                + String(format: "and %d MiB after its rebuild (%+.1f%%); ", after >> 20, (Double(after) - Double(expected)) * 100 / Double(expected))
                + "\(written >> 20) MiB of units rebuilt in \(String(format: "%.1f", Double(done - data.started) / 1e9)) s of data repair, "
                + "\(String(format: "%.1f", wall)) s from replace to online; \(data.totals.groups) groups, \(data.totals.units) units, \(data.totals.bytesRead >> 20) MiB read"
            note(line)
            notes.append(line)
            for f in [healthyFile, degradedFile] { unlink(f) }
        }

        print("tessera bench repair: \(dir), \(rounds) round(s) of \(size) sequential, servers holding at least \(units) of units; medians, ratios above 1 favour tessera")
        print(pad("", 64, left: true) + ["baseline", "tessera", "ratio"].map { pad($0, 11) }.joined() + "  unit  (per-round ratio)")
        for row in rows {
            let ratios = row.rounds.map { $0.1 / $0.0 }
            let cells = [median(row.rounds.map(\.0)), median(row.rounds.map(\.1))].map { pad(String(format: "%.1f", $0), 11) } + [pad(String(format: "%.2f", median(ratios)), 11)]
            print(pad(row.what, 64, left: true) + cells.joined() + "  " + pad(row.unit, 5, left: true) + " (" + ratios.map { String(format: "%.2f", $0) }.joined(separator: " ") + ")")
        }
        for line in notes { print(line) }
    }

    private func note(_ s: String) { FileHandle.standardError.write(Data("bench repair: \(s)\n".utf8)) }

    /// Writes `bytes` to `path` in 1 MiB writes and fsyncs it (as `dd bs=1M conv=fsync`),
    /// each block different (a block's first 8 bytes are its number in a random buffer), so
    /// the write measures what a user writes, not a source like /dev/urandom.
    private func write(_ path: String, _ bytes: UInt64) throws {
        let fd = open(path, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
        guard fd >= 0 else { throw TesseraError(.io, "\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var block = [UInt8](repeating: 0, count: 1 << 20)
        var random = SystemRandomNumberGenerator()
        block.withUnsafeMutableBytes { b in for i in stride(from: 0, to: b.count, by: 8) { b.storeBytes(of: random.next() as UInt64, toByteOffset: i, as: UInt64.self) } }
        var at: UInt64 = 0
        while at < bytes {
            let n = Int(min(UInt64(block.count), bytes - at))
            block.withUnsafeMutableBytes { $0.storeBytes(of: at, toByteOffset: 0, as: UInt64.self) }
            var done = 0
            while done < n {
                let w = block.withUnsafeBytes { pwrite(fd, $0.baseAddress! + done, n - done, off_t(at) + off_t(done)) }
                guard w > 0 else { throw TesseraError(.io, "write \(path) at \(at + UInt64(done)): \(String(cString: strerror(errno)))") }
                done += w
            }
            at += UInt64(n)
        }
        guard fsync(fd) == 0 else { throw TesseraError(.io, "fsync \(path): \(String(cString: strerror(errno)))") }
    }

    /// Reads `path` to its end in 1 MiB reads (as `dd bs=1M of=/dev/null`); it must hold
    /// `bytes`.
    private func readWhole(_ path: String, _ bytes: UInt64) throws {
        let fd = open(path, O_RDONLY)
        guard fd >= 0 else { throw TesseraError(.io, "\(path): \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        var block = [UInt8](repeating: 0, count: 1 << 20)
        var total: UInt64 = 0
        while true {
            let r = block.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            guard r >= 0 else { throw TesseraError(.io, "read \(path) at \(total): \(String(cString: strerror(errno)))") }
            if r == 0 { break }
            total += UInt64(r)
        }
        guard total == bytes else { throw TesseraError(.io, "\(path): read \(total) bytes of \(bytes)") }
    }

    /// Each running server's used bytes of its data image (`tessera status --bytes`).
    private func usedData(_ state: LocalState) throws -> [Int: UInt64] {
        var used: [Int: UInt64] = [:]
        for line in try capture(tesseraExecutable, ["status", "--dir", state.path, "--bytes"], quiet: true).split(separator: "\n") {
            let fields = Dictionary(line.split(separator: " ").compactMap { f -> (String, String)? in
                guard let eq = f.firstIndex(of: "=") else { return nil }
                return (String(f[..<eq]), String(f[f.index(after: eq)...]))
            }, uniquingKeysWith: { a, _ in a })
            if let id = fields["server"].flatMap({ Int($0) }), let u = fields["data_used"].flatMap({ UInt64($0) }) { used[id] = u }
        }
        return used
    }

    private func usedBy(_ id: Int, _ state: LocalState) throws -> UInt64 {
        guard let used = try usedData(state)[id] else { throw TesseraError(.io, "tessera status does not show server \(id)'s used bytes") }
        return used
    }

    private func waitForMap(_ settings: ClusterConfig.State, _ what: String, _ holds: @escaping @Sendable (ClusterMap) -> Bool) async throws {
        let deadline = ContinuousClock.now + settings.ttl + settings.grace + .seconds(60)
        while ContinuousClock.now < deadline {
            if let m = try? await StateReader.with(settings, { try await $0.map()?.map }), holds(m) { return }
            try await Task.sleep(for: .milliseconds(200))
        }
        throw TesseraError(.timedOut, "\(what): not in the cluster map within a minute of the failure timings")
    }
}
