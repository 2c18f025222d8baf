/// Exponential backoff with full jitter. The random source is injected so tests are repeatable.
public struct Backoff: Sendable {
    public var initialMilliseconds: UInt32
    public var maxMilliseconds: UInt32
    public private(set) var attempt: UInt32 = 0

    public init(initialMilliseconds: UInt32 = 50, maxMilliseconds: UInt32 = 5_000) {
        self.initialMilliseconds = initialMilliseconds
        self.maxMilliseconds = maxMilliseconds
    }

    /// The next delay: uniformly random in [0, min(max, initial·2^attempt)].
    public mutating func next(using rng: inout some RandomNumberGenerator) -> UInt32 {
        let ceiling = UInt64(initialMilliseconds) << UInt64(min(attempt, 20))
        attempt += 1
        let cap = UInt32(min(UInt64(maxMilliseconds), ceiling))
        return UInt32.random(in: 0...cap, using: &rng)
    }

    public mutating func reset() { attempt = 0 }
}

/// SplitMix64: a small seeded generator for reconnect jitter (repeatable in tests).
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64
    public init(seed: UInt64) { state = seed }
    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
