// The mount's changes to its bucket's object list, in the order it makes them, sent as few
// UPDATEs as possible.
//
// Every change of the object list the file system makes (`storeRecords`) goes through this
// queue. One UPDATE is in flight at a time; changes made meanwhile wait and go together in
// the next, merged key by key (the last change of a key wins: a delete then a put is a put,
// a put then a delete a delete), so it lands in one transaction on each replica as it
// would have in several. A change either waits for its UPDATE (`submit`) or is answered at
// once and written behind (`submitBehind`: unlink, making a name known absent, setattr of a
// closed file). A change written behind while nothing is being sent is held until it is
// `hold` (5 ms) old, so the next waited change carries it: a new file's create goes in the
// UPDATE of its close. (Held for 5 ms from the first of a run instead, creates under
// `cp -a` met the timer in the middle of their file's copy, and the close then waited for
// that UPDATE before sending its own.) Reads of names from the store first wait until
// nothing is queued (`drained`), so the store never shows the mount an older state than
// its own; a create-only put of a name (O_EXCL) waits only for the changes queued of that
// name and the names under it (`settled`). `fsync` sends its entry with sync-wait, which makes every change queued before
// it durable on the same replicas, or drains the queue and SYNCs when it has no entry to
// send.
//
// A change written behind that fails is logged, the name cache is emptied (its state is
// unknown), and the failure is what the next `fsync` returns, as a local file system
// reports a failed write-back.
import Glibc
import TesseraClient
import TesseraCore

/// The time a change queue holds changes by: the monotonic clock in the mount, a clock the
/// test moves in tests. Times are durations since a fixed start.
protocol QueueClock: Sendable {
    func now() -> Duration
    func sleep(for duration: Duration) async
}

/// The system's monotonic clock.
struct MonotonicClock: QueueClock {
    private let start = ContinuousClock.now
    func now() -> Duration { ContinuousClock.now - start }
    func sleep(for duration: Duration) async { try? await Task.sleep(for: duration) }
}

final class ChangeQueue: Sendable {
    private let cluster: Cluster
    private let index: Fid
    private let clock: any QueueClock

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
        /// When it was queued (changes written behind are held until they are `hold` old).
        var since: Duration
        /// Its place in the queue's order, from 1 (set as it is queued).
        var seq: UInt64 = 0
        var keys: Int { deletes.count + puts.count }
    }

    private struct State {
        var queued: [Submission] = []
        /// A batch is being sent (by a task, or by a waited caller itself).
        var running = false
        /// A task will send what is held once it is `hold` old (`holdThenSend`).
        var armed = false
        var idle: [CheckedContinuation<Void, Never>] = []
        var failure: Error?
        /// The last submission queued, and the last whose batch is answered: batches go one
        /// at a time in queue order, so every submission up to `answered` is.
        var queuedSeq: UInt64 = 0
        var answered: UInt64 = 0
        /// Each key of a submission not yet answered, with the last such submission.
        var lastTouch: [[UInt8]: UInt64] = [:]
        /// Callers of `settled`, each with the submission it waits for.
        var settling: [(seq: UInt64, c: CheckedContinuation<Void, Never>)] = []

        /// Numbers `sub` and notes its keys; call under the lock as it is queued.
        mutating func number(_ sub: inout Submission) {
            queuedSeq += 1
            sub.seq = queuedSeq
            for k in sub.deletes { lastTouch[k] = queuedSeq }
            for r in sub.puts { lastTouch[r.key] = queuedSeq }
        }
    }
    private let state = Locked(State())

    /// How long a change written behind is held, when nothing is being sent, before it goes
    /// out by itself: the next waited change (a close), a read of names or an fsync takes it
    /// at once, in its own UPDATE; a run of unlinks goes in few.
    let hold: Duration

    init(cluster: Cluster, index: Fid, hold: Duration = .milliseconds(5), clock: any QueueClock = MonotonicClock()) {
        self.cluster = cluster
        self.index = index
        self.hold = hold
        self.clock = clock
    }

    /// Starts `body` in a task on the cluster's connection thread (its round trips need no
    /// hop to the cooperative pool and back).
    private func spawn(_ body: @escaping @Sendable () async -> Void) {
        Task(executorPreference: cluster.executor, operation: body)
    }

    /// Queues deleting `deletes` then putting `puts`; returns once the UPDATE carrying them
    /// is answered (throwing E2BIG if a record of theirs was too large). With nothing being
    /// sent, the caller sends its UPDATE itself (no task hop), with the changes held behind
    /// it.
    func submit(deleting deletes: [[UInt8]], putting puts: [Record], sync: Bool) async throws {
        var own = Submission(deletes: deletes, puts: puts, sync: sync, since: clock.now())
        let held = state.withLock { s -> [Submission]? in
            guard !s.running else { return nil }
            // Held changes all fit in one UPDATE with this one (else a task sends them).
            guard s.queued.reduce(own.keys, { $0 + $1.keys }) <= Self.batchKeys || s.queued.isEmpty else { return nil }
            s.running = true
            s.number(&own)
            defer { s.queued = [] }
            return s.queued
        }
        guard let held else {
            try await withCheckedThrowingContinuation { (c: CheckedContinuation<Void, Error>) in
                var sub = own
                sub.waiter = c
                enqueue(sub)
            }
            return
        }
        var subs = held + [own]
        let outcome: Error?
        do {
            try await apply(&subs)
            outcome = subs[subs.count - 1].tooLarge ? Self.tooLarge : nil
            await finish(subs.dropLast(), nil)
        } catch {
            outcome = error
            await finish(subs.dropLast(), error)
        }
        answered(through: own.seq)
        carryOn()
        if let outcome { throw outcome }
    }

    /// Queues deleting `deletes` then putting `puts` and returns at once: `after` runs once
    /// they are in the store, `lost` if they could not be stored.
    func submitBehind(deleting deletes: [[UInt8]], putting puts: [Record], after: (@Sendable () async -> Void)?, lost: @escaping @Sendable (Error) -> Void) {
        let now = clock.now()
        let arm = state.withLock { s -> Bool in
            var sub = Submission(deletes: deletes, puts: puts, sync: false, waiter: nil, after: after, lost: lost, since: now)
            s.number(&sub)
            s.queued.append(sub)
            guard !s.running, !s.armed else { return false }
            s.armed = true
            return true
        }
        if arm { spawn { await self.holdThenSend() } }
    }

    /// Sleeps until the oldest change held is `hold` old, then sends what is queued; stops
    /// if a waited change or a read of names took it meanwhile.
    private func holdThenSend() async {
        enum Next { case stop, send, sleep(Duration) }
        var wait = hold
        while true {
            await clock.sleep(for: wait)
            let now = clock.now()
            let next = state.withLock { s -> Next in
                guard !s.running, let oldest = s.queued.first else {
                    s.armed = false
                    return .stop
                }
                let age = now - oldest.since
                if age < hold { return .sleep(hold - age) }
                s.armed = false
                s.running = true
                return .send
            }
            switch next {
            case .stop: return
            case .send: return await run()
            case .sleep(let d): wait = d
            }
        }
    }

    private func enqueue(_ submission: Submission) {
        let start = state.withLock { s -> Bool in
            var submission = submission
            s.number(&submission)
            s.queued.append(submission)
            let idle = !s.running
            s.running = true
            return idle
        }
        if start { spawn { await self.run() } }
    }

    /// Returns once every change queued before the call is in the store; held changes go
    /// out now.
    func drained() async {
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let (now, start) = state.withLock { s -> (Bool, Bool) in
                if !s.running && s.queued.isEmpty { return (true, false) }
                s.idle.append(c)
                if s.running { return (false, false) }
                s.running = true
                return (false, true)
            }
            if now { c.resume() }
            if start { spawn { await self.run() } }
        }
    }

    /// Returns once every change queued before the call of `key`, or of a key under it
    /// (`key` + "/" + …), is in the store (or failed); held changes go out now. Changes of
    /// other names are not waited for.
    func settled(_ key: [UInt8]) async {
        let under = key + [0x2F]
        await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in
            let (now, start) = state.withLock { s -> (Bool, Bool) in
                let last = s.lastTouch.lazy.filter { $0.key == key || $0.key.starts(with: under) }.map(\.value).max()
                guard let last, last > s.answered else { return (true, false) }
                s.settling.append((last, c))
                if s.running { return (false, false) }
                s.running = true
                return (false, true)
            }
            if now { c.resume() }
            if start { spawn { await self.run() } }
        }
    }

    /// Every submission through `seq` is answered: forgets their keys and wakes who waits.
    private func answered(through seq: UInt64) {
        let ready = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.answered = max(s.answered, seq)
            s.lastTouch = s.lastTouch.filter { $0.value > s.answered }
            let ready = s.settling.filter { $0.seq <= s.answered }.map(\.c)
            s.settling.removeAll { $0.seq <= s.answered }
            return ready
        }
        for c in ready { c.resume() }
    }

    /// The failure of a change written behind since the last call, if any.
    func takeFailure() -> Error? {
        state.withLock { s in
            defer { s.failure = nil }
            return s.failure
        }
    }

    private static let tooLarge = FSError(E2BIG, "the entry's record is too large (xattrs?)")

    /// After an UPDATE: the next batch if changes were queued meanwhile, else idle.
    private func carryOn() {
        let idle = state.withLock { s -> [CheckedContinuation<Void, Never>]? in
            guard s.queued.isEmpty else { return nil }
            s.running = false
            defer { s.idle = [] }
            return s.idle
        }
        guard let idle else {
            spawn { await self.run() }
            return
        }
        for c in idle { c.resume() }
    }

    /// Answers the submissions of a batch that was sent (`error`: it failed): waiters are
    /// resumed, `after`s run, and a change written behind that failed is reported.
    private func finish(_ subs: ArraySlice<Submission>, _ error: Error?) async {
        for sub in subs {
            if let error {
                if let w = sub.waiter {
                    w.resume(throwing: error)
                } else {
                    state.withLock { $0.failure = error }
                    sub.lost?(error)
                }
            } else {
                if let w = sub.waiter {
                    if sub.tooLarge { w.resume(throwing: Self.tooLarge) } else { w.resume() }
                }
                if let a = sub.after { await a() }
            }
        }
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
                await finish(subs[...], nil)
            } catch {
                await finish(subs[...], error)
            }
            answered(through: subs[subs.count - 1].seq)
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
