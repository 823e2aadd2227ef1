// Range locks on cobs, kept in a server's memory (REPLICATION.md, "Object data"): while a
// server is `repairing`, every writer of a parity group with a unit here holds the lock of
// that unit's range for its whole group write, and the repair holds it while it reads the
// group's other units and writes this one, so the repair never sees half a write.
//
// A lock lasts until its owner gives it back or `hold` passes: a writer that dies holding
// one delays the repair of that unit, never stops it. Owners are numbers their senders
// draw at random; a server checks only that the owner a WRITE names holds its range.
import TesseraCore

public final class UnitLocks: Sendable {
    struct Held {
        var range: Range<UInt64>
        var owner: UInt64
        var expires: ContinuousClock.Instant
    }

    /// A LOCK waiting for its range, in arrival order (`number`): no later request takes a
    /// range that overlaps it, so a lock of a whole cob (a delete) is not starved by a
    /// stream of unit locks (the repair's, several groups of one object at a time) that
    /// each overlap it and never all at once let go.
    struct Waiting {
        var range: Range<UInt64>
        var owner: UInt64
        var number: UInt64
    }

    struct Table {
        var held: [Fid: [Held]] = [:]
        var waiting: [Fid: [Waiting]] = [:]
        var arrivals: UInt64 = 0
    }

    /// How long a lock is held at most.
    /// Longer than a request may take (the RPC deadline, 30 s): a live writer never outlasts it.
    public static let hold: Duration = .seconds(90)
    /// How long LOCK waits for a range another owner holds.
    public static let wait: Duration = .seconds(30)

    private let table = Locked(Table())

    public init() {}

    /// Takes `range` of `cob` for `owner` if no other owner holds an overlapping one and
    /// none waits for one; whether it did.
    public func tryLock(_ cob: Fid, _ range: Range<UInt64>, owner: UInt64, now: ContinuousClock.Instant = .now) -> Bool {
        table.withLock { take(&$0, cob, range, owner: owner, after: nil, now: now) }
    }

    /// Takes the lock, waiting up to `wait` while another owner holds the range or waited
    /// for an overlapping one first; `busy` after that.
    public func lock(_ cob: Fid, _ range: Range<UInt64>, owner: UInt64) async throws {
        if tryLock(cob, range, owner: owner) { return }
        let number = table.withLock { t in
            t.arrivals += 1
            t.waiting[cob, default: []].append(Waiting(range: range, owner: owner, number: t.arrivals))
            return t.arrivals
        }
        defer {
            table.withLock { t in
                let rest = t.waiting[cob, default: []].filter { $0.number != number }
                t.waiting[cob] = rest.isEmpty ? nil : rest
            }
        }
        let deadline = ContinuousClock.now + Self.wait
        var pause = Duration.microseconds(200)
        while !table.withLock({ take(&$0, cob, range, owner: owner, after: number, now: .now) }) {
            guard ContinuousClock.now < deadline else {
                throw TesseraError(.busy, "bytes \(range.lowerBound)..<\(range.upperBound) of cob \(cob) stayed locked by another writer for \(Self.wait)")
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(5))
        }
    }

    /// Takes `range` for `owner` unless another owner holds an overlapping range or waits
    /// for one since before `after` (a waiter's own arrival; nil: a request not waiting,
    /// behind every waiter).
    private func take(_ t: inout Table, _ cob: Fid, _ range: Range<UInt64>, owner: UInt64, after: UInt64?, now: ContinuousClock.Instant) -> Bool {
        var list = t.held[cob, default: []].filter { $0.expires > now }
        defer { t.held[cob] = list.isEmpty ? nil : list }
        guard !list.contains(where: { $0.owner != owner && $0.range.overlaps(range) }) else { return false }
        let ahead = t.waiting[cob, default: []].contains { w in
            w.owner != owner && w.range.overlaps(range) && (after.map { w.number < $0 } ?? true)
        }
        guard !ahead else { return false }
        list.append(Held(range: range, owner: owner, expires: now + Self.hold))
        return true
    }

    /// LOCKs of `cob` waiting now (for tests).
    func waiting(_ cob: Fid) -> Int { table.withLock { $0.waiting[cob]?.count ?? 0 } }

    /// Gives back every range of `cob` that `owner` holds.
    public func unlock(_ cob: Fid, owner: UInt64) {
        table.withLock { t in
            let rest = t.held[cob, default: []].filter { $0.owner != owner }
            t.held[cob] = rest.isEmpty ? nil : rest
        }
    }

    /// Whether `owner` holds (unexpired) ranges of `cob` that cover all of `range`.
    public func holds(_ cob: Fid, _ range: Range<UInt64>, owner: UInt64, now: ContinuousClock.Instant = .now) -> Bool {
        guard owner != 0 else { return false }
        let mine = table.withLock { $0.held[cob, default: []] }.filter { $0.owner == owner && $0.expires > now }.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
        var at = range.lowerBound
        for r in mine where r.lowerBound <= at && r.upperBound > at {
            at = r.upperBound
            if at >= range.upperBound { return true }
        }
        return range.isEmpty || at >= range.upperBound
    }
}
