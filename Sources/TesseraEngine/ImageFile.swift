// Every syscall the engine makes on an image goes through this one file.
#if canImport(Glibc)
import Glibc
#endif
import CTesseraSupport
import TesseraCore

/// The calls `ImageFile` makes, for fault injection.
public enum IOCall: Sendable {
    case read, write, flush
}

/// Decides whether a call on an image fails: returns the errno to fail it with, or nil to let
/// it run. Tests use it to make reads, writes and flushes fail (EIO, ENOSPC, ...).
public typealias FaultInjector = @Sendable (_ call: IOCall, _ path: String, _ offset: UInt64) -> Int32?

/// An open image file. Reads and writes are positional and complete (short transfers and
/// EINTR are retried); every failure becomes a `TesseraError` naming the file and the call.
public final class ImageFile: @unchecked Sendable {
    // SAFETY of @unchecked Sendable: `path` is immutable; `fd` changes only in `close()`,
    // which the owner calls after every other user has stopped. The kernel serialises
    // positional reads and writes on one descriptor.
    public let path: String
    private(set) var fd: Int32
    private let faults: FaultInjector?

    /// Opens `path`. With `lock`, takes an exclusive advisory lock so that two processes
    /// never run the engine on one image at the same time.
    ///
    /// With `durableWrites`, the file is opened O_DIRECT|O_DSYNC: every write is on stable
    /// storage when it returns (buffers and offsets must then be 4096-aligned). With
    /// `direct`, O_DIRECT: reads and writes bypass the page cache, with the same alignment.
    public init(
        path: String, create: Bool = false, writable: Bool = true, lock: Bool = true, durableWrites: Bool = false,
        direct: Bool = false, faults: FaultInjector? = nil
    ) throws {
        self.path = path
        self.faults = faults
        var flags = writable ? O_RDWR : O_RDONLY
        if create { flags |= O_CREAT | O_EXCL }
        if durableWrites { flags |= tessera_direct_sync_flags() }
        if direct { flags |= tessera_direct_flags() }
        flags |= O_CLOEXEC
        let fd = open(path, flags, 0o644)
        guard fd >= 0 else {
            let e = errno
            let what = e == ENOENT ? "does not exist" : e == EEXIST ? "already exists" : String(cString: strerror(e))
            throw TesseraError(e == ENOENT ? .notFound : e == EEXIST ? .exists : .io, "\(path): \(what)", osErrno: e)
        }
        self.fd = fd
        // A child process that another thread is starting holds a copy of every descriptor,
        // and so of the lock of an image closed meanwhile, until it execs (O_CLOEXEC): the
        // lock is retried for up to a second before the image is called someone else's.
        var tries = 0
        while lock && flock(fd, LOCK_EX | LOCK_NB) != 0 {
            let e = errno
            if e == EWOULDBLOCK && tries < 100 {
                tries += 1
                usleep(10_000)
                continue
            }
            Glibc.close(fd)
            throw TesseraError(.busy, "\(path): image is in use by another process", osErrno: e)
        }
    }

    deinit { close() }

    /// Tells the kernel reads will mostly be sequential (a larger read-ahead window).
    public func adviseSequential() {
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL)
    }

    /// Tells the kernel to read no more than asked (no read-ahead).
    public func adviseRandom() {
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM)
    }

    /// Closes the descriptor (releasing the lock); later calls fail with EBADF.
    public func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    /// The file's current size in bytes.
    public func size() throws -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw failure("fstat") }
        return UInt64(st.st_size)
    }

    /// Reads exactly `buffer.count` bytes at `offset`; a file that ends first is an error.
    public func read(fromAbsoluteOffset offset: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws {
        try inject(.read, offset, "read at \(offset)")
        var done = 0
        while done < buffer.count {
            let n = pread(fd, buffer.baseAddress! + done, buffer.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw failure("read at \(offset + UInt64(done))")
            }
            if n == 0 {
                throw TesseraError(.corrupt, "\(path): unexpected end of file at offset \(offset + UInt64(done))")
            }
            done += n
        }
    }

    public func read(fromAbsoluteOffset offset: UInt64, count: Int) throws -> [UInt8] {
        var out = [UInt8](repeating: 0, count: count)
        try out.withUnsafeMutableBytes { try read(fromAbsoluteOffset: offset, into: $0) }
        return out
    }

    /// Writes all of `bytes` at `offset`.
    public func write(_ bytes: UnsafeRawBufferPointer, atAbsoluteOffset offset: UInt64) throws {
        try inject(.write, offset, "write at \(offset)")
        var done = 0
        while done < bytes.count {
            let n = pwrite(fd, bytes.baseAddress! + done, bytes.count - done, off_t(offset) + off_t(done))
            if n < 0 {
                if errno == EINTR { continue }
                throw failure("write at \(offset + UInt64(done))")
            }
            done += n
        }
    }

    public func write(_ bytes: [UInt8], atAbsoluteOffset offset: UInt64) throws {
        try bytes.withUnsafeBytes { try write($0, atAbsoluteOffset: offset) }
    }

    /// Flushes written data to stable storage (fdatasync).
    public func flush() throws {
        try inject(.flush, 0, "fdatasync")
        while fdatasync(fd) != 0 {
            if errno == EINTR { continue }
            throw failure("fdatasync")
        }
    }

    /// Reserves disk blocks for `[offset, offset+length)` so later writes cannot hit ENOSPC.
    public func allocate(offset: UInt64, length: UInt64) throws {
        let r = posix_fallocate(fd, off_t(offset), off_t(length))
        if r == EOPNOTSUPP || r == EINVAL {  // some file systems cannot; fall back to a sparse file
            guard ftruncate(fd, off_t(offset + length)) == 0 else { throw failure("ftruncate") }
            return
        }
        guard r == 0 else {
            throw TesseraError(r == ENOSPC ? .noSpace : .io, "\(path): fallocate: \(String(cString: strerror(r)))", osErrno: r)
        }
    }

    private func inject(_ call: IOCall, _ offset: UInt64, _ what: @autoclosure () -> String) throws {
        guard let faults, let e = faults(call, path, offset) else { return }
        errno = e
        throw failure(what())
    }

    private func failure(_ call: String) -> TesseraError {
        let e = errno
        return TesseraError(e == ENOSPC ? .noSpace : .io, "\(path): \(call): \(String(cString: strerror(e)))", osErrno: e)
    }
}
