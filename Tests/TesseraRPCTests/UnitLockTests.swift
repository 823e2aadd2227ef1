// A server's range locks (UnitLocks.swift): a LOCK that waits is served before any later
// request for an overlapping range, so a lock of a whole cob (a delete) is not starved by
// unit locks that keep overlapping it one after another (the repair's groups).
import Testing
import TesseraCore
@testable import TesseraServices

@Suite struct UnitLockTests {
    let cob = Fid(hi: 0x10C, lo: 1)

    @Test func aWaitingLockGoesBeforeLaterOverlappingOnes() async throws {
        let locks = UnitLocks()
        #expect(locks.tryLock(cob, 0..<100, owner: 1))
        let whole = Task { try await locks.lock(cob, 0..<1000, owner: 9) }
        while locks.waiting(cob) == 0 { try await Task.sleep(for: .milliseconds(1)) }
        // Free of every held lock, but inside the waiting one: refused, on the fast path
        // and on the slow one alike.
        #expect(!locks.tryLock(cob, 500..<600, owner: 2))
        let later = Task { try await locks.lock(cob, 500..<600, owner: 2) }
        while locks.waiting(cob) < 2 { try await Task.sleep(for: .milliseconds(1)) }
        // Outside it: taken at once.
        #expect(locks.tryLock(cob, 1000..<1100, owner: 3))
        locks.unlock(cob, owner: 1)
        try await whole.value
        #expect(locks.holds(cob, 0..<1000, owner: 9))
        #expect(!locks.holds(cob, 500..<600, owner: 2))
        locks.unlock(cob, owner: 9)
        try await later.value
        #expect(locks.holds(cob, 500..<600, owner: 2))
        #expect(locks.waiting(cob) == 0)
    }

    @Test func anOwnerIsNotKeptWaitingByItsOwnWaitingLock() async throws {
        let locks = UnitLocks()
        #expect(locks.tryLock(cob, 0..<100, owner: 1))
        let waiting = Task { try await locks.lock(cob, 0..<1000, owner: 9) }
        while locks.waiting(cob) == 0 { try await Task.sleep(for: .milliseconds(1)) }
        #expect(locks.tryLock(cob, 500..<600, owner: 9))
        locks.unlock(cob, owner: 1)
        try await waiting.value
        #expect(locks.holds(cob, 0..<1000, owner: 9))
    }
}
