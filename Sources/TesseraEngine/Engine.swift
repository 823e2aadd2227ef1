// The engine: catalogues in B+trees on one metadata image, changed by transactions that
// reply at close and become durable when their commit group is LOGGED.
import CTesseraSupport
import Logging
import TesseraCore

#if canImport(Glibc)
import Glibc
#endif

/// Options for opening an image.
public struct EngineOptions: Sendable {
    /// Byte budget of the node cache.
    public var cacheBytes = 64 << 20
    public var commit = CommitOptions()
    public var logger = Logger(label: "tessera.engine")
    /// Makes chosen reads, writes or flushes of the image fail (tests only).
    public var faults: FaultInjector?
    /// Takes the data regions of groups replayed at open (`Transaction.journal`): offset in
    /// the data image, bytes. `commit.beforeRelease` runs after them, before the log is
    /// emptied. Without it, an image whose log holds data regions does not open.
    public var replayData: (@Sendable (UInt64, UnsafeRawBufferPointer) throws -> Void)?
    public init() {}
}

/// Names a closed transaction by the commit group it joined; groups are LOGGED in order.
public struct TxId: Sendable, Hashable, Comparable {
    public let group: UInt64
    public init(group: UInt64) { self.group = group }
    public static func < (a: TxId, b: TxId) -> Bool { a.group < b.group }
}

/// Counters for metrics and benchmarks.
public struct EngineStatistics: Sendable {
    public var cacheHits: UInt64
    public var cacheMisses: UInt64
    public var cacheResidentBytes: Int
    public var groupsLogged: UInt64
    public var bytesLogged: UInt64
    public var logUsedBytes: Int
    /// Most bytes of commit groups held in memory at once.
    public var peakLogBufferBytes: Int
    public var logSize: UInt64
}

public final class Engine: @unchecked Sendable {
    // SAFETY of @unchecked Sendable: `store` and `closed` are touched only under `lock`;
    // `pipeline` is thread-safe; the rest is immutable.
    public let path: String
    public let geometry: Geometry
    public let limits: Limits
    /// Most records (puts, deletes, creates, drops) one transaction may carry.
    public static let maxOperationsPerTransaction = 4096
    /// Commit groups replayed from the log when the image was opened.
    public let recoveredGroups: Int
    /// Problems with the header slots seen at open (the other slot was used).
    public let headerProblems: [String]
    let file: ImageFile
    let pipeline: CommitPipeline
    private let store: Store
    private let lock = ConditionLock()
    private var closed = false
    private let logger: Logger

    /// Opens an image, replaying its log, and starts the commit pipeline.
    public static func open(path: String, options: EngineOptions = EngineOptions()) throws -> Engine {
        let file = try ImageFile(path: path, faults: options.faults)
        let (header, slot, problems) = try ImageHeader.load(from: file)
        let recovered = try Recovery.replay(
            file: file, header: header, slot: slot, data: options.replayData, flushData: options.commit.beforeRelease)
        return try Engine(file: file, header: recovered.header, slot: recovered.slot, groups: recovered.groups, problems: problems, options: options)
    }

    private init(file: ImageFile, header: ImageHeader, slot: Int, groups: Int, problems: [String], options: EngineOptions) throws {
        self.file = file
        self.path = file.path
        self.geometry = header.geometry
        self.limits = Limits(pageSize: header.geometry.pageSize)
        self.recoveredGroups = groups
        self.headerProblems = problems
        self.logger = options.logger
        let pipeline = CommitPipeline(file: file, header: header, headerSlot: slot, options: options.commit, faults: options.faults)
        self.pipeline = pipeline
        let cache = PageCache(file: file, geometry: header.geometry, budgetBytes: options.cacheBytes)
        cache.placedThrough = { pipeline.placed }
        cache.placeNow = { try pipeline.waitPlaced($0) }
        cache.nudgePlacement = { pipeline.nudgePlacement() }
        store = Store(geometry: header.geometry, cache: cache)
        _ = try store.rootInfo()
        pipeline.start()
        if groups > 0 { logger.info("\(path): replayed \(groups) commit groups from the log") }
        try reclaimDropped()
    }

    /// Logs and places everything, then closes the image. Further calls fail with `.closed`.
    public func close() throws {
        let already = lock.withLock { () -> Bool in
            defer { closed = true }
            return closed
        }
        if already { return }
        defer { file.close() }
        try pipeline.stop()
    }

    /// Stops without logging or placing anything more, as a crash would (tests only).
    public func abandonForTesting() {
        lock.withLock { closed = true }
        pipeline.abandon()
        file.close()
    }

    deinit {
        if !closed { try? pipeline.stop() }
    }

    // MARK: Transactions

    /// The most log bytes one transaction may fill (its credit included).
    public var maxTransactionBytes: Int { pipeline.maxTransactionBytes }

    /// Log bytes a `Transaction.journal` call adds besides the bytes themselves.
    public static let journalRegionOverhead = LogRecord.regionHeaderSize

    /// Log credit a transaction of `operations` records with `payloadBytes` of keys and
    /// values should declare.
    public func credit(operations: Int, payloadBytes: Int = 0) -> Int {
        min(pipeline.maxTransactionBytes, 4 * geometry.pageSize + operations * 640 + 2 * payloadBytes)
    }

    /// Runs `body` as one transaction. Log space of `credit` bytes is reserved first (waiting
    /// while the log is full). When `body` returns, the transaction closes: its changes are
    /// visible to every later reader and will be durable once `waitLogged` returns for the id.
    /// If `body` throws, every change it made is undone.
    @discardableResult
    public func write<R>(credit: Int? = nil, _ body: (Transaction) throws -> R) throws -> (result: R, tx: TxId) {
        let credit = credit ?? self.credit(operations: 1)
        try pipeline.reserve(credit)
        var reclaim = false
        let outcome: (R, TxId)
        do {
            outcome = try lock.withLock {
                guard !closed else { throw TesseraError(.closed, "\(path): engine is closed") }
                store.cache.currentOp &+= 1
                store.tx.active = true
                let t = Transaction(store: store, limits: limits)
                defer { t.store = nil }
                let result: R
                do { result = try body(t) } catch {
                    store.rollback()
                    throw error
                }
                reclaim = t.dropped
                let (bytes, regions) = store.tx.payloadSize()
                if bytes > pipeline.maxTransactionBytes {
                    store.rollback()
                    throw TesseraError(.tooLarge, "transaction changed \(bytes) bytes of metadata, more than the \(pipeline.maxTransactionBytes) one transaction may log")
                }
                let journals = store.tx.journals
                if bytes == 0 {
                    store.tx.finish(group: 0)
                    pipeline.unreserve(credit)
                    return (result, TxId(group: pipeline.currentGroup))
                }
                let touched = store.tx.touched.count
                let group = pipeline.join(credit: credit, payloadBytes: bytes, regions: regions, dataRegions: journals) { store.tx.appendPayload(to: &$0) }
                store.tx.finish(group: group)
                store.cache.noteDirty(count: touched)
                return (result, TxId(group: group))
            }
        } catch {
            pipeline.unreserve(credit)  // nothing joined a group: every throw above precedes `join`
            throw error
        }
        if reclaim { try reclaimDropped() }
        return outcome
    }

    /// Blocks until `tx` is LOGGED (durable), sealing its group now if it is still open.
    public func waitLogged(_ tx: TxId) throws { try pipeline.waitLogged(tx.group) }

    public func waitLogged(_ tx: TxId) async throws { try await pipeline.waitLogged(tx.group) }

    /// The group of the newest transaction closed so far: once it is LOGGED, so is every
    /// change a reader can see now.
    public var currentTransaction: TxId { TxId(group: pipeline.currentGroup) }

    /// Every transaction with a group number up to this one is LOGGED.
    public var loggedThrough: TxId { TxId(group: pipeline.loggedGroups) }

    /// Every transaction with a group number up to this one is placed, and its log space
    /// released: recovery never replays it again.
    public var placedThrough: TxId { TxId(group: pipeline.placed) }

    /// Blocks until `tx` is placed, asking for it to be logged and placed now.
    public func waitPlaced(_ tx: TxId) throws { try pipeline.waitPlaced(tx.group) }

    /// Seals the open commit group now.
    public func sealNow() { pipeline.sealNow() }

    /// Frees the pages of dropped catalogues, a bounded number per transaction.
    private func reclaimDropped() throws {
        var more = true
        while more {
            (more, _) = try write(credit: credit(operations: 256)) { t in try t.store!.reclaim(budget: 256) }
        }
    }

    // MARK: Reads

    private func read<R>(_ body: (Store) throws -> R) throws -> R {
        try lock.withLock {
            guard !closed else { throw TesseraError(.closed, "\(path): engine is closed") }
            store.cache.currentOp &+= 1
            return try body(store)
        }
    }

    /// The value of `key` in catalogue `fid`, or nil.
    public func get(_ fid: Fid, _ key: [UInt8]) throws -> [UInt8]? {
        try read { s in try key.withUnsafeBytes { try s.get(root: s.catalogueRoot(fid), key: $0) } }
    }

    /// Up to `limit` records of catalogue `fid` in `direction` from `start` (see `Transaction.scan`).
    public func scan(
        _ fid: Fid, from start: [UInt8]?, direction: ScanDirection = .forward, inclusive: Bool = true, limit: Int
    ) throws -> [(key: [UInt8], value: [UInt8])] {
        try read { s in try Transaction.collect(s, fid, start, direction, inclusive, limit) }
    }

    /// Visits records of catalogue `fid` in order without copying them; `visit` returns false
    /// to stop. The buffers are valid only during the call, and the engine is locked for the
    /// whole visit: keep it short, or scan in bounded pieces.
    public func forEach(
        _ fid: Fid, from start: [UInt8]?, direction: ScanDirection = .forward, inclusive: Bool = true,
        _ visit: (UnsafeRawBufferPointer, UnsafeRawBufferPointer) throws -> Bool
    ) throws {
        try read { s in try s.scan(root: s.catalogueRoot(fid), from: start, direction: direction, inclusive: inclusive, visit) }
    }

    /// Every catalogue, in fid order.
    public func catalogues() throws -> [Fid] { try read { try $0.listCatalogues() } }

    /// Checks every invariant of the image (see `Store+Audit.swift`).
    public func audit() throws -> AuditReport { try read { try $0.audit() } }

    /// The image's configured size and the bytes of disk it holds (it grows as written).
    public var diskUsage: (size: UInt64, allocated: UInt64) { file.diskUsage }

    public var statistics: EngineStatistics {
        lock.withLock {
            let log = pipeline.counters
            return EngineStatistics(
                cacheHits: store.cache.hits, cacheMisses: store.cache.misses,
                cacheResidentBytes: store.cache.residentBytes, groupsLogged: log.groupsLogged,
                bytesLogged: log.bytesLogged, logUsedBytes: log.logUsage,
                peakLogBufferBytes: log.peakBufferedBytes, logSize: geometry.logSize)
        }
    }
}
