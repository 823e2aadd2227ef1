// `tessera bench fs`: the mount against bindfs over a plain directory (the FUSE baseline;
// Debian's bindfs is FUSE 2, so it runs with -o multithreaded,big_writes) and against the
// plain directory itself (the limit), all on the same disk, in one run: dd write (1 GiB,
// conv=fsync) and cold read with 1 MiB blocks, fio 4 KiB random read/write, create + stat +
// unlink of small files, cp -a and diff -r of a system tree, and `tessera fsx`. Each round
// runs every row on the three back to back, so a round's ratios compare them under the same
// load from the machine's neighbours; the table gives medians over the rounds (one round
// swung a row's ratio by half on these shared machines).
import ArgumentParser
import Foundation
import TesseraLocal
import TesseraCore

struct BenchFS: AsyncParsableCommand {
    static let configuration = CommandConfiguration(commandName: "fs", abstract: "The mount against bindfs and the plain directory.")

    @Option(help: "Folder on the disk to measure (default: the current directory).") var dir = "."
    @Option(help: "Size of the dd file.") var size = "1G"
    @Option(help: "Small files to create, stat and unlink.") var files = 10_000
    @Option(help: "Seconds of each fio run.") var fioSeconds = 10
    @Option(help: "fsx operations.") var fsxOps = 10_000
    @Option(help: "The tree to copy (default: the first of /usr/lib/python3.11, /usr/include, /usr/share/doc).") var tree: String?
    @Option(help: "Rounds; each runs every row on the plain directory, bindfs and the mount, and the table shows medians.") var rounds = 3

    struct Target {
        let name: String
        let path: String
    }

    func run() async throws {
        guard rounds >= 1 else { throw ValidationError("--rounds must be at least 1") }
        guard let bindfs = which("bindfs"), let fio = which("fio") else {
            throw TesseraError(.notFound, "bench fs needs bindfs and fio (apt-get install bindfs fio; scripts/install-deps does)")
        }
        let bytes = try ByteSize.required(size)
        let src = tree ?? ["/usr/lib/python3.11", "/usr/include", "/usr/share/doc"].first { FileManager.default.fileExists(atPath: $0) }
        guard let src else { throw ValidationError("no tree to copy; give --tree") }
        var template = Array(((dir as NSString).standardizingPath + "/tessera-bench-fs-XXXXXX").utf8CString)
        guard let made = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            throw TesseraError(.io, "cannot make a folder in \(dir): \(String(cString: strerror(errno)))")
        }
        let work = URL(fileURLWithPath: String(cString: made)).resolvingSymlinksInPath().path
        let plain = work + "/plain"
        let bindSource = work + "/bindfs-source"
        let bindMount = work + "/bindfs"
        let mount = work + "/tessera"
        let state = work + "/state"
        for d in [plain, bindSource, bindMount, mount] { try FileManager.default.createDirectory(atPath: d, withIntermediateDirectories: true) }
        var bindMounted = false
        var up = false
        defer {
            if bindMounted { _ = try? runTool("/bin/umount", [bindMount]) }
            if up { _ = try? runTool(tesseraExecutable, ["down", "--dir", state, mount]) }
            try? FileManager.default.removeItem(atPath: work)
        }
        note("bindfs -o multithreaded,big_writes \(bindSource) \(bindMount)")
        guard try runTool(bindfs, ["-o", "multithreaded,big_writes", bindSource, bindMount]) == 0 else { throw TesseraError(.io, "bindfs did not mount") }
        bindMounted = true
        note("tessera up --dir \(state) \(mount)")
        let dataSize = max(4 << 30, bytes * 2)
        guard try runTool(tesseraExecutable, ["up", "--dir", state, "--data-size", String(dataSize), mount]) == 0 else { throw TesseraError(.io, "tessera up failed") }
        up = true

        let targets = [Target(name: "plain", path: plain), Target(name: "bindfs", path: bindMount), Target(name: "tessera", path: mount)]
        // Per row, in order: its unit and each round's values (plain, bindfs, tessera).
        var rows: [(what: String, unit: String, rounds: [[Double]])] = []
        func add(_ what: String, _ unit: String, _ values: [Double]) {
            if let i = rows.firstIndex(where: { $0.what == what }) { rows[i].rounds.append(values) } else { rows.append((what, unit, [values])) }
        }
        func measure(_ what: String, _ unit: String, _ body: (Target) throws -> Double) rethrows {
            var values: [Double] = []
            for t in targets {
                let v = try body(t)
                note("\(what) on \(t.name): \(String(format: "%.1f", v)) \(unit)")
                values.append(v)
            }
            add(what, unit, values)
        }
        let mib = Int(bytes >> 20)
        for round in 1...rounds {
            note("round \(round) of \(rounds)")
            try measure("dd write 1 MiB blocks, conv=fsync", "MB/s") { t in
                dropCaches()
                return try timed(bytes) { _ = try capture("/bin/dd", ["if=/dev/zero", "of=\(t.path)/dd.bin", "bs=1M", "count=\(mib)", "conv=fsync"], stderr: true) }
            }
            try measure("dd cold read 1 MiB blocks", "MB/s") { t in
                dropCaches()
                let r = try timed(bytes) { _ = try capture("/bin/dd", ["if=\(t.path)/dd.bin", "of=/dev/null", "bs=1M"], stderr: true) }
                unlink("\(t.path)/dd.bin")
                return r
            }
            try measure("fio 4 KiB random read+write", "IOPS") { t in
                let out = try capture(fio, [
                    "--name=rand", "--filename=\(t.path)/fio.bin", "--size=256M", "--bs=4k", "--rw=randrw", "--rwmixread=50", "--ioengine=psync",
                    "--runtime=\(fioSeconds)", "--time_based", "--output-format=json",
                ])
                unlink("\(t.path)/fio.bin")
                return fioIOPS(out)
            }
            var smallFiles: [[Double]] = []
            for t in targets { smallFiles.append(try smallFileRates(t.path + "/small")) }
            for (n, what) in ["create (1 KiB, close)", "stat", "unlink"].enumerated() {
                add("\(files) small files: \(what)", "ops/s", smallFiles.map { $0[n] })
            }
            try measure("cp -a \(src)", "s") { t in
                dropCaches()
                return try elapsed { guard try runTool("/bin/cp", ["-a", src, "\(t.path)/tree"]) == 0 else { throw TesseraError(.io, "cp -a failed on \(t.name)") } }
            }
            try measure("diff -r (cold)", "s") { t in
                dropCaches()
                let s = try elapsed { guard try runTool("/usr/bin/diff", ["-r", "-q", "--no-dereference", src, "\(t.path)/tree"]) == 0 else { throw TesseraError(.io, "diff -r found differences on \(t.name)") } }
                _ = try runTool("/bin/rm", ["-rf", "\(t.path)/tree"])
                return s
            }
            try measure("tessera fsx -N \(fsxOps)", "ops/s") { t in
                let out = try capture(tesseraExecutable, ["fsx", "-N", String(fsxOps), "-S", "1", "\(t.path)/fsx.bin"])
                unlink("\(t.path)/fsx.bin")
                guard let r = out.split(separator: ":").last.flatMap({ $0.split(separator: " ").first }).flatMap({ Double($0) }) else {
                    throw TesseraError(.io, "fsx on \(t.name) failed: \(out)")
                }
                return r
            }
        }

        print("tessera bench fs: \(dir), \(rounds) round(s): medians of the values and of each round's ratios; ratios above 1 favour tessera (for seconds, the inverse)")
        print(pad("", 44, left: true) + ["plain", "bindfs", "tessera", "/plain", "/bindfs"].map { pad($0, 11) }.joined() + "  unit  (per-round /bindfs)")
        for row in rows {
            let lowerBetter = row.unit == "s"
            func ratio(_ v: [Double], _ base: Int) -> Double { lowerBetter ? v[base] / v[2] : v[2] / v[base] }
            let values = (0..<3).map { t in median(row.rounds.map { $0[t] }) }
            let vsPlain = median(row.rounds.map { ratio($0, 0) })
            let perRound = row.rounds.map { ratio($0, 1) }
            let cells = values.map { pad(String(format: "%.1f", $0), 11) } + [vsPlain, median(perRound)].map { pad(String(format: "%.2f", $0), 11) }
            print(pad(row.what, 44, left: true) + cells.joined() + "  " + pad(row.unit, 5, left: true) + " (" + perRound.map { String(format: "%.2f", $0) }.joined(separator: " ") + ")")
        }
    }

    private func note(_ s: String) { FileHandle.standardError.write(Data("bench fs: \(s)\n".utf8)) }

    private func fioIOPS(_ json: String) -> Double {
        guard let start = json.firstIndex(of: "{"), let data = String(json[start...]).data(using: .utf8),
            let obj = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let jobs = obj["jobs"] as? [[String: Any]], let job = jobs.first
        else { return .nan }
        let r = (job["read"] as? [String: Any])?["iops"] as? Double ?? 0
        let w = (job["write"] as? [String: Any])?["iops"] as? Double ?? 0
        return r + w
    }

    /// Creates, stats and unlinks `files` files of 1 KiB under `dir`; rates of each.
    private func smallFileRates(_ dir: String) throws -> [Double] {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let payload = [UInt8](repeating: 0x61, count: 1024)
        let names = (0..<files).map { "\(dir)/f\($0)" }
        let create = try elapsed {
            for n in names {
                let fd = open(n, O_CREAT | O_WRONLY | O_TRUNC, 0o644)
                guard fd >= 0 else { throw TesseraError(.io, "\(n): \(String(cString: strerror(errno)))") }
                _ = payload.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
                close(fd)
            }
        }
        var st = stat()
        let stats = try elapsed {
            for n in names where stat(n, &st) != 0 { throw TesseraError(.io, "stat \(n): \(String(cString: strerror(errno)))") }
        }
        let unlinks = try elapsed {
            for n in names where unlink(n) != 0 { throw TesseraError(.io, "unlink \(n): \(String(cString: strerror(errno)))") }
        }
        rmdir(dir)
        return [Double(files) / create, Double(files) / stats, Double(files) / unlinks]
    }
}
