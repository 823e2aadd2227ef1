// `tessera mount BUCKET DIR`: the FUSE daemon. Without -f it starts itself again in the
// foreground as a detached child (a process that has started threads cannot fork safely),
// waits until DIR is mounted, and exits; the child serves until DIR is unmounted (umount,
// fusermount3 -u) or it gets SIGTERM/SIGINT, then exits, leaving no process behind.
import ArgumentParser
import Foundation
import Logging
import TesseraClient
import TesseraConfig
import TesseraCore
import TesseraEtcd
import TesseraFS
import TesseraFUSE
import TesseraLocal
import TesseraRPC
import TesseraS3
import TesseraState

struct Mount: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Mount a bucket as a directory (FUSE).",
        discussion: """
            Options (-o, comma-separated, as mount(8) passes them): allow_other, ro, uid=N, gid=N, \
            umask=OCTAL, attr_timeout=SECONDS, entry_timeout=SECONDS (default 1), memory=SIZE (write-back \
            and read-ahead budget, default 256M), inline=BYTES (files up to this size keep their data in \
            their entry, default 4096, less with small catalogue nodes, 0: none), config=FILE, log=FILE; _netdev, defaults, auto, noauto, \
            nofail, user and rw are accepted and ignored; anything else goes to libfuse.
            """)

    @OptionGroup var state: StateOption
    @Option(help: "The cluster file (default: the state folder's cluster.toml).") var config: String?
    @Flag(name: .short, help: "Stay in the foreground.") var foreground = false
    @Option(name: .short, help: "Mount options.") var o: [String] = []
    @Option(help: "Where the daemon's log goes (default: discarded unless -f).") var log: String?
    @Argument(help: "The bucket (made if it does not exist).") var bucket: String
    @Argument(help: "The directory to mount it on.") var mountpoint: String

    struct Parsed {
        var fs = FileSystemOptions()
        var mount = MountOptions()
        var config: String?
        var log: String?
    }

    static func parse(_ options: [String]) throws -> Parsed {
        var p = Parsed()
        for item in options.flatMap({ $0.split(separator: ",").map(String.init) }) where !item.isEmpty {
            let (name, value) = item.firstIndex(of: "=").map { (String(item[..<$0]), String(item[item.index(after: $0)...])) } ?? (item, "")
            func number(_ radix: Int = 10) throws -> UInt32 {
                guard let n = UInt32(value, radix: radix) else { throw ValidationError("-o \(item): '\(value)' is not a number") }
                return n
            }
            func seconds() throws -> Double {
                guard let s = Double(value), s >= 0, s < 86400 else { throw ValidationError("-o \(item): '\(value)' is not a number of seconds") }
                return s
            }
            switch name {
            case "allow_other": p.mount.allowOther = true
            case "ro":
                p.fs.readOnly = true
                p.mount.readOnly = true
            case "rw", "_netdev", "defaults", "auto", "noauto", "nofail", "user", "users": break
            case "uid": p.fs.uid = try number()
            case "gid": p.fs.gid = try number()
            case "umask": p.fs.umask = try number(8) & 0o7777
            case "attr_timeout": p.mount.attrTimeout = try seconds()
            case "entry_timeout": p.mount.entryTimeout = try seconds()
            case "memory":
                let n = try parseSize(value)
                guard n >= 16 << 20 else { throw ValidationError("-o memory: at least 16M") }
                p.fs.memoryBudget = Int(n)
            case "inline":
                guard let n = Int(value), n >= 0, n <= 1 << 16 else { throw ValidationError("-o \(item): a number of bytes up to 65536") }
                p.fs.inlineLimit = n
            case "config": p.config = value
            case "log": p.log = value
            default: p.mount.fuseOptions.append(item)
            }
        }
        // Names the mount knows are trusted for 100 ms between reads of the bucket's change
        // stamps, never longer than the kernel may trust them (entry_timeout=0: not at all).
        p.fs.nameCacheWindow = .milliseconds(Int64(min(p.mount.entryTimeout, 0.1) * 1000))
        return p
    }

    func run() async throws {
        var parsed = try Self.parse(o)
        let configPath = config ?? parsed.config ?? state.configPath
        guard isDirectory(mountpoint) == true else { throw ValidationError("\(mountpoint) is not a directory") }
        let cfg = try ClusterConfig.load(path: configPath)
        guard S3Store.validBucketName(bucket) else { throw ValidationError("'\(bucket)' is not a valid bucket name (3–63 of a-z, 0-9, '.', '-')") }
        let target = mountTarget(mountpoint)
        if !foreground {
            // The daemon's own errors reach only its log: say now if etcd is not there.
            if let settings = cfg.state {
                let etcd = try EtcdClient(endpoints: settings.endpoints, requestTimeout: .seconds(3), logger: quietLogger)
                defer { Task { await etcd.close() } }
                _ = try await etcd.version()
            }
            try daemonize(configPath: configPath, target: target, log: log ?? parsed.log)
            return
        }
        if ProcessInfo.processInfo.environment["TESSERA_MOUNT_DAEMON"] == "1" { setsid() }
        parsed.mount.fuseOptions = ["fsname=tessera:\(bucket)", "subtype=tessera"] + parsed.mount.fuseOptions
        let logger = Logger(label: "tessera.mount")
        // One event-loop thread for all the mount's connections: FUSE requests run there.
        let state = try await ClusterState.start(config: cfg, info: SessionInfo(kind: .mount, serves: "bucket \(bucket) on \(target)"), logger: logger)
        let cluster = try Cluster(config: cfg, loop: RPCLoop())
        ClusterState.follow(cluster, cfg.state)
        let store = state.ownerStore(cluster)
        let owner = cfg.s3.credentials.keys.sorted().first ?? S3Store.keylessOwner
        let fs: FileSystem
        do { fs = try await FileSystem(store: store, bucket: bucket, owner: owner, options: parsed.fs) } catch {
            await state.close()
            await cluster.close()
            throw error
        }
        let session = try FUSESession(fs: fs, mountpoint: target, options: parsed.mount)
        logger.info("bucket \(bucket) mounted on \(target)")
        // libfuse's loop blocks its threads: run it on a thread of its own, not the pool's.
        let status = await withCheckedContinuation { (c: CheckedContinuation<Int32, Never>) in
            let t = Thread { c.resume(returning: session.run()) }
            t.stackSize = 8 << 20
            t.start()
        }
        logger.info("\(target) unmounted")
        await state.close()
        await cluster.close()
        if status != 0 { throw TesseraError(.io, "the FUSE session ended with status \(status)") }
    }

    /// Starts `tessera mount … -f` detached and waits until the mount is there.
    private func daemonize(configPath: String, target: String, log: String?) throws {
        var env = ProcessInfo.processInfo.environment
        env["TESSERA_MOUNT_DAEMON"] = "1"
        let p = try ChildProcess(
            tesseraExecutable, ["mount", "--config", configPath, "-f"] + o.flatMap { ["-o", $0] } + [bucket, mountpoint],
            stdout: .null, stderr: log.map { .file($0) } ?? .null, environment: env, newSession: true)
        let deadline = Date().addingTimeInterval(60)
        while !isFuseMount(target) {
            if let ended = p.termination() {
                throw TesseraError(.io, "the mount daemon exited with status \(ended.status)\(log.map { "; see \($0)" } ?? " (run with -f to see why)")")
            }
            guard Date() < deadline else {
                p.signal(SIGTERM)
                throw TesseraError(.timedOut, "\(target) was not mounted within a minute")
            }
            usleep(20_000)
        }
    }
}
