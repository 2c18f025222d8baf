/// A token bucket: `ratePerSecond` tokens a second up to `capacity`, refilled from `now` (monotonic
/// nanoseconds, passed in: the bucket never reads a clock). The one rate limiter everything uses — key request
/// rates and per-address budgets at the gateway, HTTP/2 reset budgets, and key quotas in the broker, where a
/// bucket may go into debt (`charge`) so that long-run pacing is exact.
public struct TokenBucket: Sendable, Equatable {
    /// Tokens a second (0: the bucket never refills — its capacity is all there is).
    public var ratePerSecond: Double
    public var capacity: Double
    public private(set) var tokens: Double
    public private(set) var refilledAt: UInt64
    /// No limit at all: every `take` succeeds (a key quota of 0).
    public let unlimited: Bool

    /// A full bucket.
    public init(ratePerSecond: Double, capacity: Double, now: UInt64) {
        precondition(ratePerSecond >= 0 && capacity >= 0, "a bucket's rate and capacity are not negative")
        self.ratePerSecond = ratePerSecond
        self.capacity = capacity
        self.tokens = capacity
        self.refilledAt = now
        self.unlimited = false
    }

    /// A key quota of `perSecond` with one second of burst; 0 means the key has no such quota.
    public init(quotaPerSecond perSecond: UInt32, now: UInt64) {
        self.init(ratePerSecond: Double(perSecond), capacity: Double(perSecond), now: now, unlimited: perSecond == 0)
    }

    private init(ratePerSecond: Double, capacity: Double, now: UInt64, unlimited: Bool) {
        self.ratePerSecond = ratePerSecond
        self.capacity = capacity
        self.tokens = capacity
        self.refilledAt = now
        self.unlimited = unlimited
    }

    /// Adds what accrued since the last refill, up to `capacity`. A clock that went backwards adds nothing.
    @inline(__always)
    public mutating func refill(now: UInt64) {
        guard now > refilledAt else { return }
        tokens = min(capacity, tokens + ratePerSecond * Double(now - refilledAt) / 1e9)
        refilledAt = now
    }

    /// Takes `n` tokens if they are all there.
    @inline(__always)
    public mutating func take(_ n: Double) -> Bool {
        if unlimited { return true }
        guard tokens >= n else { return false }
        tokens -= n
        return true
    }

    /// Takes up to `want` whole tokens; returns how many.
    @inline(__always)
    public mutating func take(upTo want: UInt32) -> UInt32 {
        if unlimited { return want }
        guard tokens >= 1 else { return 0 }
        let granted = UInt32(min(Double(want), tokens.rounded(.down)))
        tokens -= Double(granted)
        return granted
    }

    /// Charges `n` whatever is there: the bucket may go into debt, which delays what `take` grants later.
    public mutating func charge(_ n: Double) {
        if !unlimited { tokens -= n }
    }

    /// Seconds until `n` tokens are there (0 if they are now; whole seconds, rounded up, at least 1 otherwise;
    /// `UInt32.max` for a bucket that never refills).
    public func secondsUntil(_ n: Double) -> UInt32 {
        guard !unlimited, tokens < n else { return 0 }
        guard ratePerSecond > 0 else { return .max }
        return max(1, UInt32(((n - tokens) / ratePerSecond).rounded(.up)))
    }
}
