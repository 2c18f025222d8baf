#if canImport(Glibc)
import Glibc
#endif

/// Monotonic nanoseconds (CLOCK_MONOTONIC). Read by the I/O layers and passed into the logic as `now`.
@inline(__always) public func monotonicNanoseconds() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) &* 1_000_000_000 &+ UInt64(ts.tv_nsec)
}

/// Monotonic milliseconds.
@inline(__always) public func monotonicMilliseconds() -> UInt64 { monotonicNanoseconds() / 1_000_000 }

/// strerror for a positive errno, with the number.
public func describe(errno code: Int32) -> String {
    String(cString: strerror(code)) + " (errno \(code))"
}
