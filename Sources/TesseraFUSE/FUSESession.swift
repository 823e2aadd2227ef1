// The FUSE adapter (layer 8): a libfuse3 low-level session over the file-system core.
// Each callback converts the kernel's arguments, runs the core's call and replies; it holds
// no logic of its own. Callbacks run on libfuse's worker threads (the multi-threaded loop)
// and wait there for the core's async call, so buffers the kernel lent (a write's data, a
// name) stay valid without a copy.
import CFuse
import Dispatch
import Glibc
import Logging
import TesseraFS

public struct MountOptions: Sendable {
    /// Seconds the kernel may cache attributes and names (about 1 s; never 0 by default).
    public var attrTimeout = 1.0
    public var entryTimeout = 1.0
    public var allowOther = false
    public var readOnly = false
    public var maxThreads: UInt32 = 16
    /// libfuse's own mount options (fsname, subtype, …).
    public var fuseOptions: [String] = []
    public init() {}
}

/// A mounted session. `run()` serves requests until the file system is unmounted or the
/// process gets SIGINT, SIGTERM or SIGHUP.
public final class FUSESession: @unchecked Sendable {
    // SAFETY: `session` is set once in init and used by libfuse's threads; the rest is
    // immutable after init.
    let fs: FileSystem
    let options: MountOptions
    let logger: Logger
    private var session: OpaquePointer?
    private var mounted = false
    public let mountpoint: String

    public init(fs: FileSystem, mountpoint: String, options: MountOptions, logger: Logger = Logger(label: "tessera.fuse")) throws {
        self.fs = fs
        self.options = options
        self.logger = logger
        self.mountpoint = mountpoint
        var args = ["tessera"]
        var o = ["default_permissions"] + options.fuseOptions
        if options.allowOther { o.append("allow_other") }
        if options.readOnly { o.append("ro") }
        args += ["-o", o.joined(separator: ",")]
        // libfuse keeps pointers into argv: give it copies that live as long as the session.
        let argv = UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>.allocate(capacity: args.count + 1)
        for (n, a) in args.enumerated() { argv[n] = strdup(a) }
        argv[args.count] = nil
        var fargs = fuse_args(argc: Int32(args.count), argv: argv, allocated: 0)
        var ops = makeOperations()
        session = tessera_fuse_session_new(&fargs, &ops, Unmanaged.passUnretained(self).toOpaque())
        fuse_opt_free_args(&fargs)
        guard session != nil else { throw FSError(EINVAL, "libfuse refused the options \(o.joined(separator: ","))") }
        guard fuse_set_signal_handlers(session) == 0 else { throw FSError(EIO, "cannot set signal handlers") }
        guard fuse_session_mount(session, mountpoint) == 0 else {
            fuse_remove_signal_handlers(session)
            fuse_session_destroy(session)
            session = nil
            throw FSError(EIO, "cannot mount on \(mountpoint) (is it a directory, and is /dev/fuse there?)")
        }
        mounted = true
    }

    /// Serves until unmounted; then flushes what is open and tears the session down.
    public func run() -> Int32 {
        guard let session else { return -1 }
        let r = tessera_fuse_loop_mt(session, options.maxThreads)
        block { await self.fs.flushAll() }
        fuse_session_unmount(session)
        fuse_remove_signal_handlers(session)
        fuse_session_destroy(session)
        self.session = nil
        return r
    }

    /// Tells the kernel to forget what it cached of `ino`.
    func invalidate(_ ino: UInt64) {
        guard let session else { return }
        _ = fuse_lowlevel_notify_inval_inode(session, ino, 0, 0)
    }

    static func of(_ req: fuse_req_t?) -> FUSESession {
        Unmanaged<FUSESession>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
    }

    // MARK: Bridging

    /// Runs `body` in a task and waits for it on this (libfuse) thread. The task prefers the
    /// thread of the cluster's connections (`Cluster.executor`), so its round trips need no
    /// hop to the cooperative pool and back; `pool` tasks (the data path, whose copies and
    /// parity would hold up that thread's I/O) run on the pool.
    func wait<R>(pool: Bool = false, _ body: @escaping @Sendable () async throws -> R) -> Result<R, Error> {
        let box = ResultBox<R>()
        let done = DispatchSemaphore(value: 0)
        let run: @Sendable () async -> Void = {
            do { box.result = .success(try await body()) } catch { box.result = .failure(error) }
            done.signal()
        }
        if !pool, let executor = fs.cluster.executor { Task(executorPreference: executor, operation: run) } else { Task(operation: run) }
        done.wait()
        return box.result!
    }

    func block(_ body: @escaping @Sendable () async -> Void) {
        _ = wait(body)
    }

    /// Runs `body` and replies with its result through `reply`, or with its errno.
    func serve<R>(_ req: fuse_req_t?, pool: Bool = false, _ body: @escaping @Sendable () async throws -> R, reply: (R) -> Void) {
        switch wait(pool: pool, body) {
        case .success(let r): reply(r)
        case .failure(let e):
            let n = FSError.errno(of: e)
            if n == EIO { logger.error("request failed: \(e)") }
            fuse_reply_err(req, n)
        }
    }

    /// Replies with `now()` if it has an answer without waiting (on this thread, no task);
    /// else runs `later` as `serve` does.
    func serve<R>(_ req: fuse_req_t?, pool: Bool = false, now: () throws -> R?, _ later: @escaping @Sendable () async throws -> R, reply: (R) -> Void) {
        do {
            if let r = try now() {
                reply(r)
                return
            }
        } catch {
            fuse_reply_err(req, FSError.errno(of: error))
            return
        }
        serve(req, pool: pool, later, reply: reply)
    }

    func serveSync<R>(_ req: fuse_req_t?, _ body: () throws -> R, reply: (R) -> Void) {
        do { reply(try body()) } catch { fuse_reply_err(req, FSError.errno(of: error)) }
    }

    static func caller(_ req: fuse_req_t?) -> Caller {
        guard let ctx = fuse_req_ctx(req) else { return .root }
        return Caller(uid: ctx.pointee.uid, gid: ctx.pointee.gid)
    }

    func replyEntry(_ req: fuse_req_t?, _ a: Attributes) {
        var e = entry(a)
        fuse_reply_entry(req, &e)
    }

    func entry(_ a: Attributes) -> fuse_entry_param {
        var e = fuse_entry_param()
        e.ino = a.ino
        e.generation = 1
        e.attr_timeout = options.attrTimeout
        e.entry_timeout = options.entryTimeout
        fill(&e.attr, a)
        return e
    }

    func replyAttr(_ req: fuse_req_t?, _ a: Attributes) {
        var st = stat()
        fill(&st, a)
        fuse_reply_attr(req, &st, options.attrTimeout)
    }
}

func fill(_ st: inout stat, _ a: Attributes) {
    tessera_fill_stat(&st, a.ino, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.blocks, a.atime, a.mtime, a.ctime)
}

final class ResultBox<R>: @unchecked Sendable {
    // SAFETY: written once by the task before it signals, read after the wait.
    var result: Result<R, Error>?
}

/// Bytes of a C string (a name from the kernel), without the NUL.
func bytes(_ name: UnsafePointer<CChar>?) -> [UInt8] {
    guard let name else { return [] }
    return Array(UnsafeRawBufferPointer(start: name, count: strlen(name)))
}

/// A request handle passed into a task: libfuse allows replying from any thread.
struct Req: @unchecked Sendable {
    let raw: fuse_req_t?
}
