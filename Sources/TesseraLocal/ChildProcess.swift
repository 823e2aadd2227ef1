// A child process started with posix_spawn and reaped with waitpid, for everything Tessera
// and its tests start (servers, etcd, tools). Not Foundation's Process: on Linux it watches
// its children and their pipes with dispatch sources, and libdispatch's event loop then
// crashed a test run with a bad pointer in `_dispatch_event_loop_drain` (a known
// libdispatch fault with sources on descriptors that close under it; swift-subprocess
// moved off DispatchIO for the same crash). Nothing here uses dispatch.
import CTesseraSupport
import Glibc
import TesseraCore

public final class ChildProcess: Sendable {
    /// Where one of the child's standard descriptors goes.
    public enum Stream: Sendable {
        /// The parent's own.
        case inherit
        /// /dev/null.
        case null
        /// A pipe whose other end `output` (stdout) reads.
        case pipe
        /// stderr only: wherever stdout goes.
        case stdout
        /// A file: read (stdin) or appended to, made if missing (stdout, stderr).
        case file(String)
        /// A descriptor of the parent's (left open there).
        case descriptor(Int32)
    }

    /// How a child ended.
    public enum Termination: Sendable, Equatable {
        case exit(Int32)
        case signal(Int32)

        /// The exit status, or 128 + the signal, as a shell reports it.
        public var status: Int32 {
            switch self {
            case .exit(let s): return s
            case .signal(let s): return 128 + s
            }
        }
    }

    public let pid: pid_t
    /// The read end of the stdout pipe, with `stdout: .pipe`: read it with `readOutput`
    /// or `readLines`, or yourself (and close it).
    public let output: Int32?
    private let ended = Locked<Termination?>(nil)

    /// Starts `path` with `arguments` (argv[0] is `path`). Every descriptor of ours but the
    /// three given is closed in the child; its signal mask is empty (a Swift concurrency
    /// thread may have signals blocked). With `newSession` it leaves our session and
    /// process group (a daemon that outlives its terminal and our group's signals).
    public init(
        _ path: String, _ arguments: [String], stdin: Stream = .null, stdout: Stream = .inherit, stderr: Stream = .inherit,
        environment: [String: String]? = nil, newSession: Bool = false
    ) throws {
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var empty = sigset_t()
        sigemptyset(&empty)
        posix_spawnattr_setsigmask(&attributes, &empty)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK) | (newSession ? tessera_spawn_setsid_flag() : 0))

        var pipeEnds: [Int32] = [-1, -1]
        var toClose: [Int32] = []
        defer { for fd in toClose { close(fd) } }
        func route(_ s: Stream, _ target: Int32) throws {
            switch s {
            case .inherit: break
            case .null: posix_spawn_file_actions_addopen(&actions, target, "/dev/null", target == 0 ? O_RDONLY : O_WRONLY, 0)
            case .file(let p): posix_spawn_file_actions_addopen(&actions, target, p, target == 0 ? O_RDONLY : O_WRONLY | O_CREAT | O_APPEND, 0o644)
            case .descriptor(let fd): posix_spawn_file_actions_adddup2(&actions, fd, target)
            case .stdout: posix_spawn_file_actions_adddup2(&actions, 1, target)
            case .pipe:
                guard target == 1 else { throw TesseraError(.invalidArgument, "only stdout can be a pipe") }
                guard tessera_pipe_cloexec(&pipeEnds) == 0 else { throw TesseraError(.io, "pipe: \(String(cString: strerror(errno)))") }
                toClose.append(pipeEnds[1])
                posix_spawn_file_actions_adddup2(&actions, pipeEnds[1], 1)
            }
        }
        try route(stdin, 0)
        try route(stdout, 1)
        try route(stderr, 2)
        tessera_spawn_close_from(&actions, 3)

        let argv = ([path] + arguments).map { strdup($0) } + [nil]
        defer { for a in argv { free(a) } }
        let env = environment.map { $0.map { strdup("\($0.key)=\($0.value)") } + [nil] }
        defer { for a in env ?? [] { free(a) } }
        var pid: pid_t = 0
        let r = env.map { e in e.withUnsafeBufferPointer { posix_spawn(&pid, path, &actions, &attributes, argv, UnsafePointer($0.baseAddress)) } }
            ?? posix_spawn(&pid, path, &actions, &attributes, argv, environ)
        guard r == 0 else {
            if pipeEnds[0] >= 0 { close(pipeEnds[0]) }
            throw TesseraError(.io, "cannot run \(path): \(String(cString: strerror(r)))")
        }
        self.pid = pid
        output = pipeEnds[0] >= 0 ? pipeEnds[0] : nil
    }

    /// Waits for the child to end (reaping it) and says how.
    @discardableResult
    public func wait() -> Termination {
        if let t = ended.withLock({ $0 }) { return t }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        return record(status)
    }

    /// How the child ended, if it has (reaping it); nil while it runs.
    public func termination() -> Termination? {
        if let t = ended.withLock({ $0 }) { return t }
        var status: Int32 = 0
        guard waitpid(pid, &status, WNOHANG) == pid else { return nil }
        return record(status)
    }

    public var isRunning: Bool { termination() == nil }

    /// Sends `sig` to the child, unless it was reaped (its pid may be another's by then).
    public func signal(_ sig: Int32) {
        ended.withLock { e in
            if e == nil { _ = kill(pid, sig) }
        }
    }

    /// Reads the stdout pipe to its end and closes it.
    public func readOutput() -> [UInt8] {
        guard let fd = output else { return [] }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n > 0 {
                out += buffer[0..<n]
            } else if n == 0 || errno != EINTR {
                return out
            }
        }
    }

    private func record(_ status: Int32) -> Termination {
        // WIFEXITED / WEXITSTATUS / WTERMSIG, which Swift does not import.
        let t: Termination = status & 0x7F == 0 ? .exit((status >> 8) & 0xFF) : .signal(status & 0x7F)
        ended.withLock { $0 = t }
        return t
    }
}
