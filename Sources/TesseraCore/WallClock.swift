// The wall clock, for times people read and S3 reports (never for lifetimes: those are
// sessions, and durations use the monotonic clock).
import Glibc

/// Nanoseconds since 1970 (CLOCK_REALTIME).
public func wallClockNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_REALTIME, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
