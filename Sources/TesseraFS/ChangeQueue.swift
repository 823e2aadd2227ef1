// The mount's changes to its bucket's object list, in the order it makes them, sent as few
// UPDATEs as possible.
//
// Every change of the object list the file system makes (`storeRecords`) goes through this
// queue. One UPDATE is in flight at a time; changes made meanwhile wait and go together in
// the next, merged key by key (the last change of a key wins: a delete then a put is a put,
// a put then a delete a delete), so it lands in one transaction on each replica as it
// would have in several. A change either waits for its UPDATE (`submit`) or is answered at
// once and written behind (`submitBehind`: unlink, making a name known absent, setattr of a
// closed file). Reads of names from the store first wait until nothing is queued
// (`drained`), so the store never shows the mount an older state than its own. `fsync`
// sends its entry with sync-wait, which makes every change queued before it durable on the
// same replicas, or drains the queue and SYNCs when it has no entry to send.
//
// A change written behind that fails is logged, the name cache is emptied (its state is
// unknown), and the failure is what the next `fsync` returns, as a local file system
// reports a failed write-back.
import Glibc
import Synchronization
import TesseraClient
import TesseraCore

final class ChangeQueue: Sendable {
    private let cluster: Cluster
    private let index: Fid

    /// At most this many keys go in one merged UPDATE; a bigger change goes alone.
    static let batchKeys = 512

    private struct Submission {
        var deletes: [[UInt8]]
        var puts: [Record]
        var sync: Bool
        var waiter: CheckedContinuation<Void, Error>?
        var after: (@Sendable () async -> Void)?
        var lost: (@Sendable (Error) -> Void)?
        var tooLarge = false
        var keys: Int { deletes.count + puts.count }
    }

    private struct State {
        var queued: [Submission] = []
        var running = false
        var idle: [CheckedContinuation<Void, Never>] = []
        var failure: Error?
    }
    private let state = Mutex(State())

    init(cluster: Cluster, index: Fid) {
        self.cluster = cluster
        self.index = index
    }

    /// Queues deleting `deletes` then putting `puts`; returns once the UPDATE carrying them
    /// is answered (throwing E2BIG if a record of theirs was too large). With nothing
    /// queued or in flight, the caller sends its UPDATE itself (no task hop).
    func submit(deleting deletes: [[UInt8]], putting puts: [Record], sync: Bool) async throws {
        let alone = state.withLock { s -> Bool in
            // Nothing is queued while nothing runs.
            guard !s.running else { return false }
            s.running = true
            return true
        }
        guard alone else {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                enqueue(Submission(deletes: deletes, puts: puts, sync: sync, waiter: c))
            }
            return
        }
        var subs = [Submission(deletes: deletes, puts: puts, sync: sync)]
        let outcome: Error?
        do {
            try await apply(&subs)
            outcome = subs[0].tooLarge ? FSError(E2BIG, "the entry's record is too large (xattrs?)") : nil
        } catch {
            outcome = error
        }
        carryOn()
        if let outcome { throw outcome }
    }

    /// Queues deleting `deletes` then putting `puts` and returns at once: `after` runs once
    /// they are in the store, `lost` if they could not be stored.
    func submitBehind(deleting deletes: [[UInt8]], putting puts: [Record], after: (@Sendable () async -> Void)?, lost: @escaping @Sendable (Error) -> Void) {
        enqueue(Submission(deletes: deletes, puts: puts, sync: false, waiter: nil, after: after, lost: lost))
    }

    private func enqueue(_ submission: Submission) {
        let start = state.withLock { s -> Bool in
            s.queued.append(submission)
            let idle = !s.running
            s.running = true
            return idle
        }
        if start { Task { await self.run() } }
    }

    /// Returns once every change queued before the call is in the store.
    func drained() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if !s.running { return true }
                s.idle.append(c)
                return false
            }
            if now { c.resume() }
        }
    }

    /// The failure of a change written behind since the last call, if any.
    func takeFailure() -> Error? {
        state.withLock { s in
            defer { s.failure = nil }
            return s.failure
        }
    }

    /// After an UPDATE: the next batch if changes were queued meanwhile, else idle.
    private func carryOn() {
        let idle = state.withLock { s -> [CheckedContinuation<Void, Never>]? in
            guard s.queued.isEmpty else { return nil }
            s.running = false
            defer { s.idle = [] }
            return s.idle
        }
        guard let idle else {
            Task { await self.run() }
            return
        }
        for c in idle { c.resume() }
    }

    /// Sends queued changes until none is left.
    private func run() async {
        while true {
            // Whole submissions, in order, up to the batch size (one at least).
            let (taken, idle) = state.withLock { s -> ([Submission], [CheckedContinuation<Void, Never>]) in
                var keys = 0
                var taken = 0
                for sub in s.queued {
                    if taken > 0 && keys + sub.keys > Self.batchKeys { break }
                    keys += sub.keys
                    taken += 1
                }
                if taken == 0 {
                    s.running = false
                    defer { s.idle = [] }
                    return ([], s.idle)
                }
                defer { s.queued.removeFirst(taken) }
                return (Array(s.queued.prefix(taken)), [])
            }
            if taken.isEmpty {
                for c in idle { c.resume() }
                return
            }
            var subs = taken
            do {
                try await apply(&subs)
                for sub in subs {
                    if let w = sub.waiter {
                        if sub.tooLarge { w.resume(throwing: FSError(E2BIG, "the entry's record is too large (xattrs?)")) } else { w.resume() }
                    }
                    if let a = sub.after { await a() }
                }
            } catch {
                for sub in subs {
                    if let w = sub.waiter {
                        w.resume(throwing: error)
                    } else {
                        state.withLock { $0.failure = error }
                        sub.lost?(error)
                    }
                }
            }
        }
    }

    /// One UPDATE of `subs` merged key by key, the last change of a key winning: one
    /// transaction applies them as they would have applied one after another. Marks the
    /// submissions with a record the store found too large.
    private func apply(_ subs: inout [Submission]) async throws {
        let m = Self.merge(subs.map { ($0.deletes, $0.puts) })
        let st = try await cluster.update(index, deleting: m.deletes, putting: m.puts, sync: subs.contains { $0.sync })
        for (n, s) in st.dropFirst(m.deletes.count).enumerated() where s == .tooLarge { subs[m.putFrom[n]].tooLarge = true }
    }

    /// Changes made one after another (each deletes, then puts) as one UPDATE's deletes and
    /// puts, with the change each put came from. A key's last change decides it, so an UPDATE
    /// (deletes first) ends where the changes would have.
    static func merge(_ changes: [(deletes: [[UInt8]], puts: [Record])]) -> (deletes: [[UInt8]], puts: [Record], putFrom: [Int]) {
        var last: [[UInt8]: (value: [UInt8]?, from: Int)] = [:]
        for (n, c) in changes.enumerated() {
            for k in c.deletes { last[k] = (nil, n) }
            for r in c.puts { last[r.key] = (r.value, n) }
        }
        var deletes: [[UInt8]] = []
        var puts: [Record] = []
        var putFrom: [Int] = []
        for (k, c) in last.sorted(by: { $0.key.lexicographicallyPrecedes($1.key) }) {
            if let v = c.value {
                puts.append(Record(key: k, value: v))
                putFrom.append(c.from)
            } else {
                deletes.append(k)
            }
        }
        return (deletes, puts, putFrom)
    }
}
