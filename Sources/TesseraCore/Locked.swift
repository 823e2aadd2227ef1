// A value behind a lock, as Synchronization's Mutex, that ThreadSanitizer can follow.
//
// On Linux the standard library's Mutex waits in the kernel when it is contended (a
// priority-inheriting futex): the lock is handed to the waiter inside the futex call,
// with no atomic operation in between that ThreadSanitizer sees, so it reports the next
// holder's accesses as races with the last one's. Every lock in Tessera is a `Locked`, and
// a build with `-Xswiftc -DTESSERA_TSAN` (scripts/test-tsan) tells ThreadSanitizer of each
// hand-over (an acquire on taking the lock, a release before giving it back). Other builds
// compile to the Mutex alone.
import Synchronization

public struct Locked<Value: ~Copyable>: ~Copyable, @unchecked Sendable {
    // SAFETY: the Mutex is Sendable for any Value; this only wraps it.
    @usableFromInline let mutex: Mutex<Value>
    #if TESSERA_TSAN
    /// A byte of its own, whose address names this lock to the sanitizer (the value's own
    /// address cannot be had without an access to it, which would come before the acquire).
    @usableFromInline let token: UnsafeMutableRawPointer
    #endif

    @inlinable public init(_ initialValue: consuming sending Value) {
        mutex = Mutex(initialValue)
        #if TESSERA_TSAN
        token = .allocate(byteCount: 1, alignment: 1)
        #endif
    }

    #if TESSERA_TSAN
    deinit { token.deallocate() }
    #endif

    /// Runs `body` with the value, holding the lock.
    @inlinable public borrowing func withLock<Result: ~Copyable, E: Error>(_ body: (inout sending Value) throws(E) -> sending Result) throws(E) -> sending Result {
        try mutex.withLock { (value: inout sending Value) throws(E) -> sending Result in
            #if TESSERA_TSAN
            tsanAcquire(token)
            defer { tsanRelease(token) }
            #endif
            return try body(&value)
        }
    }
}

#if TESSERA_TSAN
// ThreadSanitizer's annotations (compiler-rt's tsan_interface.h), from its runtime, which
// a `-sanitize=thread` link brings in.
@usableFromInline @_silgen_name("__tsan_acquire") func tsanAcquire(_ address: UnsafeMutableRawPointer)
@usableFromInline @_silgen_name("__tsan_release") func tsanRelease(_ address: UnsafeMutableRawPointer)
#endif
