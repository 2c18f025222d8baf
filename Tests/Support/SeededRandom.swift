import SoulfraPeerLink

/// The seeded generator the tests use (the peer library's SplitMix64, which also drives reconnect jitter), so
/// every randomized test repeats exactly and prints its seed on failure.
public typealias SeededRandom = SplitMix64
