// Every syscall the engine makes on an image goes through this one file.
#if canImport(Glibc)
import Glibc
#endif
import CTesseraSupport
import TesseraCore

/// The calls `ImageFile` makes, for fault injection.
public enum IOCall: Sendable {
    /// `grow` is the reservation of disk blocks before a write into a step not yet grown.
    case read, write, flush, grow
}

/// Decides whether a call on an image fails: returns the errno to fail it with, or nil to let
/// it run. Tests use it to make reads, writes and flushes fail (EIO, ENOSPC, ...).
public typealias FaultInjector = @Sendable (_ call: IOCall, _ path: String, _ offset: UInt64) -> Int32?

/// An open image file. Reads and writes are positional and complete (short transfers and
/// EINTR are retried); every failure becomes a `TesseraError` naming the file and the call.
///
/// Images are sparse: made at their configured size with no blocks (`setLength`), they
/// grow on disk as they are written, in steps of `growthStep` bytes. The first write into
/// a step reserves the whole step (Linux fallocate; a file system that cannot reserve, such
/// as NFSv3, allocates as written instead), so a disk that is full fails that write, before
/// any byte of it is written, with `.noSpace` naming the image; a step once grown is never
/// given back. Steps are remembered per open file only: after a reopen, the first write
/// into each step asks again, which costs a call and reserves nothing new.
public final class ImageFile: @unchecked Sendable {
    // SAFETY of @unchecked Sendable: `path` is immutable; `fd` changes only in `close()`,
    // which the owner calls after every other user has stopped. The kernel serialises
    // positional reads and writes on one descriptor. `grown` is behind a lock.
    public let path: String
    private(set) var fd: Int32
    private let faults: FaultInjector?
    /// Bytes of disk reserved at a time (0: none; the file system allocates as written).
    public let growthStep: UInt64
    /// Steps (offset / growthStep) reserved by this open file.
    private let grown = Locked<Set<UInt64>>([])

    /// The growth step of images (`ImageFile`): 8 MiB.
    public static let defaultGrowthStep: UInt64 = 8 << 20

    /// Opens `path`. With `lock`, takes an exclusive advisory lock so that two processes
    /// never run the engine on one image at the same time.
    ///
    /// With `durableWrites`, the file is opened O_DIRECT|O_DSYNC: every write is on stable
    /// storage when it returns (buffers and offsets must then be 4096-aligned). With
    /// `direct`, O_DIRECT: reads and writes bypass the page cache, with the same alignment.
    public init(
        path: String, create: Bool = false, writable: Bool = true, lock: Bool = true, durableWrites: Bool = false,
        direct: Bool = false, growthStep: UInt64 = ImageFile.defaultGrowthStep, faults: FaultInjector? = nil
    ) throws {
        self.path = path
        self.faults = faults
        self.growthStep = writable ? growthStep : 0
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

    /// The file's length and the bytes of disk it holds (0 for either that cannot be read).
    public var diskUsage: (size: UInt64, allocated: UInt64) { ((try? size()) ?? 0, (try? allocatedBytes()) ?? 0) }

    /// Bytes of disk the file holds (its allocated blocks).
    public func allocatedBytes() throws -> UInt64 {
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw failure("fstat") }
        return UInt64(st.st_blocks) * 512
    }

    /// Writes all of `bytes` at `offset`, growing the file's reserved blocks first.
    public func write(_ bytes: UnsafeRawBufferPointer, atAbsoluteOffset offset: UInt64) throws {
        try inject(.write, offset, "write at \(offset)")
        if growthStep > 0 && bytes.count > 0 { try grow(offset, UInt64(bytes.count)) }
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

    /// The offset of the first hole (bytes never written nor reserved-and-written) at or
    /// after `offset`: the file's length if there is none, or if the file system does not
    /// tell (SEEK_HOLE).
    public func firstHole(from offset: UInt64) -> UInt64 {
        let seekHole: Int32 = 4  // SEEK_HOLE (Linux), which Glibc's module leaves out
        let r = lseek(fd, off_t(offset), seekHole)
        guard r >= 0 else { return (try? size()) ?? offset }
        return max(UInt64(r), offset)
    }

    /// Makes the file `length` bytes long without giving it blocks (a sparse file): an image
    /// at its configured size, which grows on disk as it is written.
    public func setLength(_ length: UInt64) throws {
        guard ftruncate(fd, off_t(length)) == 0 else { throw failure("ftruncate to \(length) bytes") }
    }

    /// Reserves the disk blocks of every step that `[offset, offset + count)` touches and
    /// this file has not grown yet (within the file's length). A step is reserved under the
    /// lock of the set, so no write into it goes ahead of its reservation.
    private func grow(_ offset: UInt64, _ count: UInt64) throws {
        for step in (offset / growthStep)...((offset + count - 1) / growthStep) {
            try grown.withLock { (grown) throws(TesseraError) in
                guard !grown.contains(step) else { return }
                let start = step * growthStep
                guard let length = try? size() else { throw failure("fstat") }
                let end = max(min(start + growthStep, length), offset + count)
                if let injected = faults?(.grow, path, start) { throw grewNot(injected, start, end - start) }
                let r = tessera_reserve(fd, Int64(start), Int64(end - start))
                // A file system that cannot reserve allocates as it is written.
                guard r == 0 || r == EOPNOTSUPP || r == EINVAL else { throw grewNot(r, start, end - start) }
                grown.insert(step)
            }
        }
    }

    private func grewNot(_ e: Int32, _ start: UInt64, _ length: UInt64) -> TesseraError {
        let held = (try? allocatedBytes()).map { ", holding \($0) bytes of its \((try? size()) ?? 0)" } ?? ""
        let why = e == ENOSPC ? "the disk under it is full" : String(cString: strerror(e))
        return TesseraError(e == ENOSPC ? .noSpace : .io, "\(path): cannot grow the image by \(length) bytes at offset \(start)\(held): \(why)", osErrno: e)
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
