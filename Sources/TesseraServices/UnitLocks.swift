// Range locks on cobs, kept in a server's memory (REPLICATION.md, "Object data"): while a
// server is `repairing`, every writer of a parity group with a unit here holds the lock of
// that unit's range for its whole group write, and the repair holds it while it reads the
// group's other units and writes this one, so the repair never sees half a write.
//
// A lock lasts until its owner gives it back or `hold` passes: a writer that dies holding
// one delays the repair of that unit, never stops it. Owners are numbers their senders
// draw at random; a server checks only that the owner a WRITE names holds its range.
import Synchronization
import TesseraCore

public final class UnitLocks: Sendable {
    struct Held {
        var range: Range<UInt64>
        var owner: UInt64
        var expires: ContinuousClock.Instant
    }

    /// How long a lock is held at most.
    /// Longer than a request may take (the RPC deadline, 30 s): a live writer never outlasts it.
    public static let hold: Duration = .seconds(90)
    /// How long LOCK waits for a range another owner holds.
    public static let wait: Duration = .seconds(30)

    private let held = Mutex<[Fid: [Held]]>([:])

    public init() {}

    /// Takes `range` of `cob` for `owner` if no other owner holds an overlapping one;
    /// whether it did.
    public func tryLock(_ cob: Fid, _ range: Range<UInt64>, owner: UInt64, now: ContinuousClock.Instant = .now) -> Bool {
        held.withLock { table in
            var list = table[cob, default: []].filter { $0.expires > now }
            guard !list.contains(where: { $0.owner != owner && $0.range.overlaps(range) }) else {
                table[cob] = list
                return false
            }
            list.append(Held(range: range, owner: owner, expires: now + Self.hold))
            table[cob] = list
            return true
        }
    }

    /// Takes the lock, waiting up to `wait` while another owner holds the range;
    /// `busy` after that.
    public func lock(_ cob: Fid, _ range: Range<UInt64>, owner: UInt64) async throws {
        let deadline = ContinuousClock.now + Self.wait
        var pause = Duration.microseconds(200)
        while !tryLock(cob, range, owner: owner) {
            guard ContinuousClock.now < deadline else {
                throw TesseraError(.busy, "bytes \(range.lowerBound)..<\(range.upperBound) of cob \(cob) stayed locked by another writer for \(Self.wait)")
            }
            try await Task.sleep(for: pause)
            pause = min(pause * 2, .milliseconds(5))
        }
    }

    /// Gives back every range of `cob` that `owner` holds.
    public func unlock(_ cob: Fid, owner: UInt64) {
        held.withLock { table in
            let rest = table[cob, default: []].filter { $0.owner != owner }
            table[cob] = rest.isEmpty ? nil : rest
        }
    }

    /// Whether `owner` holds (unexpired) ranges of `cob` that cover all of `range`.
    public func holds(_ cob: Fid, _ range: Range<UInt64>, owner: UInt64, now: ContinuousClock.Instant = .now) -> Bool {
        guard owner != 0 else { return false }
        let mine = held.withLock { $0[cob, default: []] }.filter { $0.owner == owner && $0.expires > now }.map(\.range).sorted { $0.lowerBound < $1.lowerBound }
        var at = range.lowerBound
        for r in mine where r.lowerBound <= at && r.upperBound > at {
            at = r.upperBound
            if at >= range.upperBound { return true }
        }
        return range.isEmpty || at >= range.upperBound
    }
}
