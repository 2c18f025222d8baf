import SoulfraWire

/// The quotas of one API key, as the broker enforces them inside streams.
public struct KeyQuota: Sendable, Equatable {
    /// The key's id as carried in OPEN (never the secret).
    public var keyID: UInt64
    /// The only world this key can reach.
    public var world: String
    /// Streams open at once (0: unlimited).
    public var maxStreams: Int
    /// Frames per second the key's streams may send towards the world (0: unlimited).
    public var framesPerSecond: UInt32
    /// Bytes per second the key's streams may send towards the world (0: unlimited).
    public var bytesPerSecond: UInt32

    public init(keyID: UInt64, world: String, maxStreams: Int = 0, framesPerSecond: UInt32 = 0, bytesPerSecond: UInt32 = 0) {
        self.keyID = keyID
        self.world = world
        self.maxStreams = maxStreams
        self.framesPerSecond = framesPerSecond
        self.bytesPerSecond = bytesPerSecond
    }
}

/// Who may attach and what each key may do: an immutable snapshot, replaced whole (never edited in place)
/// when keys or tokens change, so a loop reads it without locks.
public final class AccessTable: Sendable {
    /// Keys by id.
    public let keys: [UInt64: KeyQuota]
    /// Instance tokens, one per world.
    public let instanceTokens: [String: String]
    /// The daemon-wide tokens for runtime, vault and gateway peers ("" disables that kind).
    public let runtimeToken: String
    public let vaultToken: String
    public let gatewayToken: String

    public init(
        keys: [KeyQuota] = [], instanceTokens: [String: String] = [:],
        runtimeToken: String = "", vaultToken: String = "", gatewayToken: String = ""
    ) {
        var byID: [UInt64: KeyQuota] = [:]
        for k in keys { byID[k.keyID] = k }
        self.keys = byID
        self.instanceTokens = instanceTokens
        self.runtimeToken = runtimeToken
        self.vaultToken = vaultToken
        self.gatewayToken = gatewayToken
    }

    /// The token a peer of `kind` (in `world`, for instances) must present; nil when none can attach.
    func expectedToken(kind: PeerKind, world: String) -> String? {
        let t: String?
        switch kind {
        case .instance: t = instanceTokens[world]
        case .runtime: t = runtimeToken
        case .vault: t = vaultToken
        case .gateway: t = gatewayToken
        }
        guard let t, !t.isEmpty else { return nil }
        return t
    }
}

/// Compares two secrets in time that depends only on their lengths, not on where they differ.
public func constantTimeEquals(_ a: String, _ b: String) -> Bool {
    let x = Array(a.utf8), y = Array(b.utf8)
    var diff = UInt8(truncatingIfNeeded: x.count ^ y.count)
    let n = max(x.count, y.count)
    for i in 0..<n {
        let p = i < x.count ? x[i] : 0
        let q = i < y.count ? y[i] : 0
        diff |= p ^ q
    }
    return diff == 0 && x.count == y.count
}

/// A token bucket that may go into debt: a stream's initial window is charged up front, and the debt delays
/// later credit instead of being forgiven, so long-run pacing is exact.
struct TokenBucket {
    var ratePerSecond: Double
    var capacity: Double
    var tokens: Double
    var refilledAt: UInt64

    init(ratePerSecond: UInt32, now: UInt64) {
        self.ratePerSecond = Double(ratePerSecond)
        // One second of burst.
        self.capacity = Double(ratePerSecond)
        self.tokens = capacity
        self.refilledAt = now
    }

    var unlimited: Bool { ratePerSecond == 0 }

    mutating func refill(now: UInt64) {
        guard now > refilledAt else { return }
        tokens = min(capacity, tokens + ratePerSecond * Double(now - refilledAt) / 1e9)
        refilledAt = now
    }

    /// Takes up to `want`, returning what was granted.
    mutating func take(upTo want: UInt32) -> UInt32 {
        if unlimited { return want }
        guard tokens >= 1 else { return 0 }
        let granted = UInt32(min(Double(want), tokens.rounded(.down)))
        tokens -= Double(granted)
        return granted
    }

    /// Charges `n` unconditionally (may go negative).
    mutating func charge(_ n: UInt32) {
        if !unlimited { tokens -= Double(n) }
    }
}
