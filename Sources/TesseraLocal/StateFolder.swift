// The state folder of a local cluster (ARCHITECTURE.md, "Command line"): its cluster file,
// images, logs and the pids of the processes `tessera up` started, and starting and
// stopping them. The `up`, `down` and `status` commands are this over the command line.
import Foundation
import TesseraConfig
import TesseraCore

/// A local cluster's state folder: everything about it follows from its absolute `path`.
/// The command line's `--dir` option is one (StateOption); so is `LocalState`.
public protocol LocalStateFolder {
    /// Absolute: the processes `up` starts are recognised later by their `--config`
    /// argument, which must read the same whichever directory `down` runs in.
    var path: String { get }
}

/// A state folder at a known path.
public struct LocalState: LocalStateFolder {
    public let path: String
    public init(path: String) { self.path = path }
}

extension LocalStateFolder {
    public var configPath: String { path + "/cluster.toml" }

    /// The cluster file, or a clear error saying how to make one.
    public func config() throws -> ClusterConfig {
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw TesseraError(.notFound, "no cluster in \(path) (start one with: tessera up --dir \(path))")
        }
        return try ClusterConfig.load(path: configPath)
    }

    public func pidFile(_ id: Int) -> String { path + "/server-\(id).pid" }
    public func logFile(_ id: Int) -> String { path + "/server-\(id).log" }

    public var mountPidFile: String { path + "/mount.pid" }
    public var mountLogFile: String { path + "/mount.log" }
    public var mountPointFile: String { path + "/mount.point" }
    public var gatewayPidFile: String { path + "/gateway.pid" }
    public var gatewayLogFile: String { path + "/gateway.log" }

    /// The pid of server `id` if that process is running and is our server.
    public func runningPid(_ id: Int) -> pid_t? {
        runningPid(pidFile(id)) { args in
            args.contains("server") && args.contains(configPath) && args.firstIndex(of: "--id").map { $0 + 1 < args.count && args[$0 + 1] == String(id) } == true
        }
    }

    /// The pid of the gateway `up --s3` started, if it is running.
    public func runningGatewayPid() -> pid_t? {
        runningPid(gatewayPidFile) { $0.contains("gateway") && $0.contains(configPath) }
    }

    /// The pid of the mount daemon `up DIR` started, if it is running.
    public func runningMountPid() -> pid_t? {
        runningPid(mountPidFile) { $0.contains("mount") && $0.contains(configPath) }
    }

    /// The pid in `file` if that process runs with arguments `matching` accepts.
    public func runningPid(_ file: String, matching: ([String]) -> Bool) -> pid_t? {
        guard let text = try? String(contentsOfFile: file, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)), pid > 0 else { return nil }
        guard let cmd = try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline")) else { return nil }
        return matching(cmd.split(separator: 0).map { String(decoding: $0, as: UTF8.self) }) ? pid : nil
    }

    /// Starts `tessera ARGS` in the background, in a session of its own, its stderr
    /// appended to `log`, its pid in `pidFile`. Returns once the child runs the program
    /// (its command line is the one given), so `runningPid` recognises it from then on
    /// (`/proc/PID/cmdline` is empty until the exec; with Foundation's Process that was
    /// seen in a third of the launches on a loaded machine).
    public func spawn(executable: String = tesseraExecutable, _ args: [String], log: String, pidFile: String) throws {
        let pid = try ChildProcess(executable, args, stdout: .null, stderr: .file(log), newSession: true).pid
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline, kill(pid, 0) == 0 {
            let cmd = (try? Data(contentsOf: URL(fileURLWithPath: "/proc/\(pid)/cmdline"))) ?? Data()
            if cmd.split(separator: 0).map({ String(decoding: $0, as: UTF8.self) }).dropFirst().elementsEqual(args) { break }
            usleep(1000)
        }
        try String(pid).write(toFile: pidFile, atomically: true, encoding: .utf8)
    }

    /// Sends SIGTERM to `pid` and waits up to a minute for it to go, then kills it.
    public func stop(_ pid: pid_t, what: String, stillRunning: () -> pid_t?) async throws {
        kill(pid, SIGTERM)
        let deadline = ContinuousClock.now + .seconds(60)
        while stillRunning() == pid && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        if stillRunning() == pid {
            printError("\(what) (pid \(pid)) did not stop in time; killing it")
            kill(pid, SIGKILL)
        }
    }
}
