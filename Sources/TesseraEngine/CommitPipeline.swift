// Group commit: closed transactions join a group; a logger thread seals and logs groups,
// a placer thread places logged groups into the segment and releases their log space.
//
// The durability order (docs/FORMAT.md, "Durability order") is kept in this order here:
//   1. a transaction closes: its regions are copied into the open group (memory only);
//   2. the group is sealed (by size, by timer, or because someone waits for it);
//   3. the logger writes the sealed record at the log head and flushes the image: LOGGED;
//   4. the placer writes the regions of logged groups into the segment;
//   5. the placer flushes the image, and beforeRelease flushes the data image (where the
//      journaled data of those groups was written when their transactions ran);
//   6. the placer writes the header with the new log tail and flushes it;
//   7. only then is the log space of those groups released for reuse.
#if canImport(Glibc)
import Glibc
#endif
import TesseraCore

/// Tunables of the commit pipeline.
public struct CommitOptions: Sendable {
    /// Longest time a non-empty open group waits before it is sealed: how long a change no
    /// one waits for may stay volatile (a waiter seals at once). Each seal is a device flush.
    public var groupTimeoutNanos: UInt64 = 50_000_000
    /// Longest time a logged group waits before it is placed.
    public var placeTimeoutNanos: UInt64 = 100_000_000
    /// Runs before each log record is written; an error fails the engine. The IO service
    /// flushes the data image here, so no group that maps new data blocks is LOGGED before
    /// those blocks are on disk.
    public var beforeLog: (@Sendable () throws -> Void)?
    /// Runs after groups are placed and before the log tail moves past them; an error fails
    /// the engine. Data regions (`Transaction.journal`) live only in the log until their
    /// home is flushed: the IO service flushes the data image here.
    public var beforeRelease: (@Sendable () throws -> Void)?
    public init() {}
}

final class CommitPipeline: @unchecked Sendable {
    // SAFETY of @unchecked Sendable: every mutable field is touched only under `lock`,
    // except `head`, which only the logger thread writes, `zeroedThrough`, which only the
    // thread holding `writing` touches, and the constants.
    let file: ImageFile
    /// The image opened O_DIRECT|O_DSYNC for log writes, where the file system allows it: a
    /// record is durable when its write returns, with no separate flush of the whole file.
    private let logFile: ImageFile?
    /// Bytes from the log's start that are written (zeroes or records). A record written
    /// into blocks never written makes each durable write update the file's metadata too,
    /// so on the first pass through the log (a new image, which `Engine.format` makes with
    /// only `logZeroStep` bytes of it zeroed) the writer zeroes the log ahead of itself,
    /// `logZeroStep` bytes at a time. The written part is always a prefix, found again at
    /// open as the first hole.
    private var zeroedThrough: UInt64
    /// Log bytes zeroed at a time on the first pass.
    static let logZeroStep: UInt64 = 4 << 20
    let geometry: Geometry
    let options: CommitOptions
    let maxRecord: Int
    /// Largest payload one transaction may capture.
    let maxTransactionBytes: Int
    private let capacity: Int
    private let placeThreshold: Int
    private let lock = ConditionLock()

    private struct Group {
        var seq: UInt64
        var buffer: [UInt8] = [UInt8](repeating: 0, count: LogRecord.headerSize)
        var regions: UInt32 = 0
        var dataRegions = false
        var openedAt: UInt64 = 0
        var isEmpty: Bool { buffer.count == LogRecord.headerSize }
        var recordLength: Int { LogRecord.recordLength(payload: buffer.count - LogRecord.headerSize) }
    }
    private struct Logged {
        var seq: UInt64
        var position: UInt64
        var record: RecordBuffer
        var loggedAt: UInt64
    }

    private var open: Group
    private var sealed: [Group] = []
    private var logged: [Logged] = []
    private var reserved = 0
    /// Log bytes of sealed, logged and not yet released records.
    private var inFlight = 0
    /// Records written to the log and not yet released.
    private var writtenUnreleased = 0
    /// A thread is writing a record now (records are written one at a time, in order).
    private var writing = false
    private(set) var loggedThrough: UInt64
    private(set) var placedThrough: UInt64
    private var sealWanted: UInt64 = 0
    private var placeWanted: UInt64 = 0
    private var spaceWaiters = 0
    private var stopping = false
    private var loggerDone = false
    private var failure: TesseraError?
    private var asyncWaiters: [(UInt64, CheckedContinuation<Void, Error>)] = []
    private var head: UInt64
    private var tail: UInt64
    private var header: ImageHeader
    private var headerSlot: Int
    private var threads: [pthread_t] = []

    /// Most bytes of commit groups held in memory at once (open, sealed, logged, unplaced).
    private var peakBufferedBytes = 0
    private var groupsLogged: UInt64 = 0
    private var bytesLogged: UInt64 = 0

    /// The counters above, and the log usage, read at one moment under the lock (the logger
    /// thread changes them).
    var counters: (groupsLogged: UInt64, bytesLogged: UInt64, logUsage: Int, peakBufferedBytes: Int) {
        lock.withLock { (groupsLogged, bytesLogged, used, peakBufferedBytes) }
    }

    /// Starts after recovery: the log is empty, its head and tail at `header.logTail`.
    init(file: ImageFile, header: ImageHeader, headerSlot: Int, options: CommitOptions, faults: FaultInjector?) {
        self.file = file
        self.logFile = try? ImageFile(path: file.path, lock: false, durableWrites: true, faults: faults)
        self.geometry = header.geometry
        zeroedThrough = min(file.firstHole(from: Geometry.logOffset) - Geometry.logOffset, header.geometry.logSize)
        self.options = options
        self.header = header
        self.headerSlot = headerSlot
        let logSize = Int(header.geometry.logSize)
        maxRecord = min(logSize / 4, 16 << 20) / LogRecord.align * LogRecord.align
        maxTransactionBytes = maxRecord - LogRecord.headerSize - LogRecord.commitSize
        capacity = logSize - 2 * maxRecord
        placeThreshold = max(logSize / 8, maxRecord)
        head = header.logTail
        tail = header.logTail
        loggedThrough = header.logTailSeq - 1
        placedThrough = header.logTailSeq - 1
        open = Group(seq: header.logTailSeq)
    }

    func start() {
        threads.append(startThread { [self] in loggerLoop() })
        threads.append(startThread { [self] in placerLoop() })
    }

    /// Logs and places everything, then stops both threads.
    func stop() throws {
        lock.withLock {
            stopping = true
            lock.broadcast()
        }
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
        logFile?.close()
        if let failure { throw failure }
    }

    /// Stops the threads at once without logging or placing anything: a simulated crash.
    func abandon() {
        lock.withLock { fail(TesseraError(.closed, "\(file.path): engine abandoned")) }
        for t in threads { pthread_join(t, nil) }
        threads.removeAll()
        logFile?.close()
    }

    // MARK: Transactions

    private var used: Int { reserved + inFlight + open.recordLength }

    /// Reserves `credit` bytes of log for a transaction about to open, waiting while the log
    /// is full. A credit larger than one record can hold is refused.
    func reserve(_ credit: Int) throws {
        guard credit <= maxTransactionBytes else {
            throw TesseraError(.tooLarge, "transaction needs \(credit) bytes of log, more than the \(maxTransactionBytes) one transaction may use (log size \(geometry.logSize))")
        }
        try lock.withLock {
            while used + credit > capacity {
                if let failure { throw failure }
                spaceWaiters += 1
                sealWanted = max(sealWanted, open.seq)
                placeWanted = max(placeWanted, open.seq)
                lock.broadcast()
                lock.wait()
                spaceWaiters -= 1
            }
            if let failure { throw failure }
            reserved += credit
        }
    }

    func unreserve(_ credit: Int) {
        lock.withLock {
            reserved -= credit
            if spaceWaiters > 0 { lock.broadcast() }
        }
    }

    /// Adds a closing transaction's regions to the open group; returns the group's number.
    /// `fill` appends the payload (region headers and bytes) to the buffer it is given.
    func join(credit: Int, payloadBytes: Int, regions: Int, dataRegions: Bool, fill: (inout [UInt8]) -> Void) -> UInt64 {
        lock.withLock {
            reserved -= credit
            // Wake the logger only when it has something new to act on: a sealed group, a
            // group that just opened (its timer starts), or one past the size that seals it.
            // Waking it, and the placer on the same condition, for every transaction would
            // cost two thread switches per commit.
            var wake = spaceWaiters > 0
            if !open.isEmpty && open.buffer.count + payloadBytes + LogRecord.commitSize > maxRecord {
                sealOpenGroup()
                wake = true
            }
            if open.isEmpty {
                open.openedAt = monotonicNanos()
                wake = true
            }
            let before = open.buffer.count
            fill(&open.buffer)
            open.regions += UInt32(regions)
            open.dataRegions = open.dataRegions || dataRegions
            if before < maxRecord / 2 && open.buffer.count >= maxRecord / 2 { wake = true }
            peakBufferedBytes = max(peakBufferedBytes, inFlight + open.buffer.count)
            if wake { lock.broadcast() }
            return open.seq
        }
    }

    /// The number the next closing transaction would get; a read-only transaction uses it.
    var currentGroup: UInt64 { lock.withLock { open.isEmpty ? open.seq - 1 : open.seq } }

    private func sealOpenGroup() {
        let next = open.seq + 1
        inFlight += open.recordLength
        sealed.append(open)
        open = Group(seq: next)
    }

    // MARK: Waiting

    /// A group number from outside (a SYNC request) may not exist yet: wait for what does.
    private func existing(_ seq: UInt64) -> UInt64 { min(seq, open.isEmpty ? open.seq - 1 : open.seq) }

    /// Blocks until group `seq` is LOGGED, asking for it to be sealed now.
    func waitLogged(_ seq: UInt64) throws {
        try lock.withLock {
            let seq = existing(seq)
            while loggedThrough < seq {
                if let failure { throw failure }
                if !writing && writeNextLocked(seal: open.seq <= seq) { continue }
                if sealWanted < seq {
                    sealWanted = seq
                    lock.broadcast()
                }
                lock.wait()
            }
        }
    }

    func waitLogged(_ seq: UInt64) async throws {
        try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
            lock.withLock {
                let seq = existing(seq)
                // With no writer busy, this task writes the record itself, as the blocking
                // wait does: handing it to the logger thread and back costs two thread
                // switches, most of a log write's time again.
                while loggedThrough < seq && failure == nil && !writing && writeNextLocked(seal: open.seq <= seq) {}
                if loggedThrough >= seq {
                    c.resume()
                } else if let failure {
                    c.resume(throwing: failure)
                } else {
                    asyncWaiters.append((seq, c))
                    sealWanted = max(sealWanted, seq)
                    lock.broadcast()
                }
            }
        }
    }

    /// Blocks until group `seq` is placed in the segment.
    func waitPlaced(_ seq: UInt64) throws {
        try lock.withLock {
            while placedThrough < seq {
                if let failure { throw failure }
                sealWanted = max(sealWanted, seq)
                placeWanted = max(placeWanted, seq)
                lock.broadcast()
                lock.wait()
            }
        }
    }

    /// Seals the open group now (it is logged as soon as the logger gets to it).
    func sealNow() {
        lock.withLock {
            sealWanted = max(sealWanted, open.seq)
            lock.broadcast()
        }
    }

    /// Asks for placement soon without waiting.
    func nudgePlacement() {
        lock.withLock {
            placeWanted = max(placeWanted, loggedThrough)
            lock.broadcast()
        }
    }

    var placed: UInt64 { lock.withLock { placedThrough } }
    var loggedGroups: UInt64 { lock.withLock { loggedThrough } }

    /// Log usage in bytes: reserved, open, and logged but not yet released.
    var logUsage: Int { lock.withLock { used } }

    // MARK: Logger

    /// The logger thread seals groups that are due (timer, size, someone waiting, shutdown)
    /// and writes them. A thread in `waitLogged` may write its own group first: with no
    /// writer busy, the waiter leads, which saves two thread hand-offs per durable commit.
    private func loggerLoop() {
        lock.lock()
        while failure == nil {
            let age = open.isEmpty ? 0 : monotonicNanos() - open.openedAt
            let due = !open.isEmpty
                && (stopping || sealWanted >= open.seq || age >= options.groupTimeoutNanos || open.buffer.count >= maxRecord / 2)
            if (!sealed.isEmpty || due) && writeNextLocked(seal: due) { continue }
            if stopping && sealed.isEmpty && open.isEmpty && !writing { break }
            if !open.isEmpty && sealed.isEmpty && !writing && !due {
                lock.wait(nanoseconds: options.groupTimeoutNanos - age)
            } else {
                lock.wait()
            }
        }
        loggerDone = true
        lock.broadcast()
        lock.unlock()
    }

    /// Writes the first sealed group, sealing the open one first if `seal` and none is sealed.
    /// Called and returns with the lock held; releases it during the I/O. Returns false when
    /// another thread is writing, nothing is sealed, or the log has no room until the placer
    /// releases some.
    private func writeNextLocked(seal: Bool) -> Bool {
        guard !writing, failure == nil else { return false }
        if sealed.isEmpty {
            guard seal, !open.isEmpty else { return false }
            sealOpenGroup()
        }
        guard let position = positionFor(length: sealed[0].recordLength) else {
            placeWanted = max(placeWanted, loggedThrough)
            lock.broadcast()
            return false
        }
        var group = sealed.removeFirst()
        writing = true
        lock.unlock()
        LogRecord.seal(&group.buffer, seq: group.seq, regionCount: group.regions, dataRegions: group.dataRegions)
        let record = RecordBuffer(copying: group.buffer)
        var error: TesseraError?
        do {
            try options.beforeLog?()
            try zeroAhead(through: position + UInt64(record.count))
            if let logFile {
                try logFile.write(record.bytes, atAbsoluteOffset: Geometry.logOffset + position)
            } else {
                try file.write(record.bytes, atAbsoluteOffset: Geometry.logOffset + position)
                try file.flush()
            }
        } catch let e as TesseraError { error = e } catch let e { error = TesseraError(.io, "\(file.path): \(e)") }
        lock.lock()
        writing = false
        if let error {
            fail(error)
            return false
        }
        head = position + UInt64(record.count)
        if head == geometry.logSize { head = 0 }
        loggedThrough = group.seq
        writtenUnreleased += 1
        groupsLogged += 1
        bytesLogged += UInt64(record.count)
        logged.append(Logged(seq: group.seq, position: position, record: record, loggedAt: monotonicNanos()))
        resumeAsyncWaiters()
        lock.broadcast()
        return true
    }

    /// Zeroes the log from `zeroedThrough` to past `end` (relative to the log's start), a
    /// step more than needed, before a record is written there. Only on the first pass:
    /// afterwards the whole log is written.
    private func zeroAhead(through end: UInt64) throws {
        guard end > zeroedThrough else { return }
        let to = min(geometry.logSize, (end + Self.logZeroStep - 1) / Self.logZeroStep * Self.logZeroStep + Self.logZeroStep)
        try Self.zero(logFile ?? file, from: Geometry.logOffset + zeroedThrough, count: to - zeroedThrough)
        if logFile == nil { try file.flush() }
        zeroedThrough = to
    }

    /// Writes `count` zero bytes at `offset` (both multiples of 4096, as O_DIRECT needs).
    static func zero(_ file: ImageFile, from offset: UInt64, count: UInt64) throws {
        let chunk = 1 << 20
        let zeros = UnsafeMutableRawBufferPointer.allocate(byteCount: chunk, alignment: 4096)
        defer { zeros.deallocate() }
        zeros.initializeMemory(as: UInt8.self, repeating: 0)
        var at: UInt64 = 0
        while at < count {
            let n = Int(min(UInt64(chunk), count - at))
            try file.write(UnsafeRawBufferPointer(rebasing: zeros[0..<n]), atAbsoluteOffset: offset + at)
            at += UInt64(n)
        }
    }

    /// Where a record of `length` bytes can go without overwriting unreleased records.
    private func positionFor(length: Int) -> UInt64? {
        let len = UInt64(length)
        let logSize = geometry.logSize
        if writtenUnreleased == 0 {
            return head + len <= logSize ? head : 0
        }
        if head >= tail {
            if head + len <= logSize { return head }
            return len <= tail ? 0 : nil
        }
        return head + len <= tail ? head : nil
    }

    private func resumeAsyncWaiters() {
        guard !asyncWaiters.isEmpty else { return }
        var keep: [(UInt64, CheckedContinuation<Void, Error>)] = []
        for (seq, c) in asyncWaiters {
            if let failure { c.resume(throwing: failure) } else if seq <= loggedThrough { c.resume() } else { keep.append((seq, c)) }
        }
        asyncWaiters = keep
    }

    private func fail(_ e: TesseraError) {
        if failure == nil { failure = e }
        resumeAsyncWaiters()
        lock.broadcast()
    }

    // MARK: Placer

    private func placerLoop() {
        lock.lock()
        while failure == nil {
            guard let first = logged.first else {
                if stopping && loggerDone { break }
                lock.wait(nanoseconds: options.placeTimeoutNanos)
                continue
            }
            let pending = logged.reduce(0) { $0 + $1.record.count }
            let age = monotonicNanos() - first.loggedAt
            guard stopping || placeWanted >= first.seq || spaceWaiters > 0 || pending >= placeThreshold
                || age >= options.placeTimeoutNanos
            else {
                lock.wait(nanoseconds: options.placeTimeoutNanos - age)
                continue
            }
            let batch = logged
            logged.removeAll()
            var next = header
            next.generation += 1
            let last = batch.last!
            next.logTail = last.position + UInt64(last.record.count)
            if next.logTail == geometry.logSize { next.logTail = 0 }
            next.logTailSeq = last.seq + 1
            lock.unlock()
            var error: TesseraError?
            do {
                try place(batch)
                try file.flush()
                try options.beforeRelease?()
                try file.write(next.encode(), atAbsoluteOffset: UInt64((headerSlot ^ 1) * Geometry.slotSize))
                try file.flush()
            } catch let e as TesseraError { error = e } catch let e { error = TesseraError(.io, "\(e)") }
            lock.lock()
            if let error {
                fail(error)
                break
            }
            header = next
            headerSlot ^= 1
            tail = next.logTail
            placedThrough = last.seq
            inFlight -= batch.reduce(0) { $0 + $1.record.count }
            writtenUnreleased -= batch.count
            lock.broadcast()
        }
        lock.broadcast()
        lock.unlock()
    }

    private func place(_ batch: [Logged]) throws {
        var placer = RegionPlacer()
        let segmentSize = geometry.pageCount * UInt64(geometry.pageSize)
        for item in batch {
            let record = item.record.bytes
            let h = LogRecord.header(record, expecting: item.seq, logSize: geometry.logSize)!
            // Data regions are in their image already (the journaling transaction wrote them).
            try LogRecord.forEachRegion(record, h, segmentSize: segmentSize, data: { _, _ in }) { placer.add(offset: $0, bytes: $1) }
        }
        // `batch` keeps every record alive until the placer has written them.
        try placer.write(to: file, segmentOffset: geometry.segmentOffset)
        withExtendedLifetime(batch) {}
    }
}

/// A sealed record in memory at a stable address, so the placer can point into it.
final class RecordBuffer: @unchecked Sendable {
    // SAFETY: immutable after init; freed in deinit.
    let bytes: UnsafeRawBufferPointer
    init(copying source: [UInt8]) {
        let p = UnsafeMutableRawBufferPointer.allocate(byteCount: source.count, alignment: 4096)
        source.withUnsafeBytes { p.copyMemory(from: $0) }
        bytes = UnsafeRawBufferPointer(p)
    }
    deinit { bytes.deallocate() }
    var count: Int { bytes.count }
}

/// Runs `body` on a new POSIX thread.
func startThread(_ body: @escaping @Sendable () -> Void) -> pthread_t {
    final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
    let box = Unmanaged.passRetained(Box(body)).toOpaque()
    var tid = pthread_t()
    let rc = pthread_create(&tid, nil, { arg in
        let box = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
        box.body()
        return nil
    }, box)
    precondition(rc == 0, "pthread_create failed: \(rc)")
    return tid
}
