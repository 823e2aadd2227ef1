// A mutex with one condition variable, for the threads of the commit pipeline.
#if canImport(Glibc)
import Glibc
#endif

/// pthread mutex + condition. Used where threads must sleep until state changes; the
/// state itself lives in the owner, which touches it only between `lock()` and `unlock()`.
final class ConditionLock: @unchecked Sendable {
    // SAFETY: the pthread objects are heap-allocated once, never moved, destroyed in deinit.
    private let mutex = UnsafeMutablePointer<pthread_mutex_t>.allocate(capacity: 1)
    private let cond = UnsafeMutablePointer<pthread_cond_t>.allocate(capacity: 1)

    init() {
        pthread_mutex_init(mutex, nil)
        var attr = pthread_condattr_t()
        pthread_condattr_init(&attr)
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC)
        pthread_cond_init(cond, &attr)
        pthread_condattr_destroy(&attr)
    }

    deinit {
        pthread_cond_destroy(cond)
        pthread_mutex_destroy(mutex)
        cond.deallocate()
        mutex.deallocate()
    }

    func lock() { pthread_mutex_lock(mutex) }
    func unlock() { pthread_mutex_unlock(mutex) }

    @inline(__always)
    func withLock<R>(_ body: () throws -> R) rethrows -> R {
        lock()
        defer { unlock() }
        return try body()
    }

    /// Waits for a broadcast; the lock must be held.
    func wait() { pthread_cond_wait(cond, mutex) }

    /// Waits for a broadcast or until `nanoseconds` pass; the lock must be held.
    func wait(nanoseconds: UInt64) {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let total = UInt64(ts.tv_nsec) + nanoseconds
        ts.tv_sec += Int(total / 1_000_000_000)
        ts.tv_nsec = Int(total % 1_000_000_000)
        pthread_cond_timedwait(cond, mutex, &ts)
    }

    func broadcast() { pthread_cond_broadcast(cond) }
}

/// Monotonic time in nanoseconds.
func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
