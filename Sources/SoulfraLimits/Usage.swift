import Synchronization

/// One key's traffic through one loop's gateway since the daemon started. Counts only grow: the control plane
/// rolls up the difference from what it saw last into SQLite.
public struct KeyUsage: Sendable, Equatable {
    public var world: String
    /// The key's visible prefix, kept with its usage after the key itself is gone.
    public var prefix: String
    /// Requests admitted (every route).
    public var requests: UInt64 = 0
    /// Messages to agents: a `messages` request, or one NDJSON line or WebSocket message on a stream.
    public var interactions: UInt64 = 0
    /// Body bytes from the client and to it (payloads, not framing or headers).
    public var bytesIn: UInt64 = 0
    public var bytesOut: UInt64 = 0
    /// Tokens the runtime reported in the replies' `usage` (`tokens_in`, `tokens_out`).
    public var tokensIn: UInt64 = 0
    public var tokensOut: UInt64 = 0

    public init(world: String, prefix: String) {
        self.world = world
        self.prefix = prefix
    }

    /// `self` minus `earlier` (what grew since), each count at least 0.
    public func since(_ earlier: KeyUsage?) -> KeyUsage {
        guard let e = earlier else { return self }
        var d = KeyUsage(world: world, prefix: prefix)
        d.requests = requests &- min(requests, e.requests)
        d.interactions = interactions &- min(interactions, e.interactions)
        d.bytesIn = bytesIn &- min(bytesIn, e.bytesIn)
        d.bytesOut = bytesOut &- min(bytesOut, e.bytesOut)
        d.tokensIn = tokensIn &- min(tokensIn, e.tokensIn)
        d.tokensOut = tokensOut &- min(tokensOut, e.tokensOut)
        return d
    }

    public var isZero: Bool {
        requests == 0 && interactions == 0 && bytesIn == 0 && bytesOut == 0 && tokensIn == 0 && tokensOut == 0
    }
}

/// A key's monthly interaction budget, shared by every loop and kept current in place by the control plane:
/// the key's charges since the daemon started (`charged`, by any loop), and an offset — the month's
/// interactions in SQLite as of the last roll-up, less the charges that roll-up included. This month's use is
/// `charged + offset`, exact across loops and restarts: a loop charges with one compare-and-swap, so two loops
/// never both take the last interaction, and a roll-up changes no key table.
public final class BudgetCounter: Sendable, Equatable {
    private let charged = Atomic<UInt64>(0)
    private let offset = Atomic<Int64>(0)

    public init(used: UInt64 = 0, seen: UInt64 = 0) { set(used: used, seen: seen) }

    public static func == (l: BudgetCounter, r: BudgetCounter) -> Bool { l === r }

    /// Charges since the daemon started.
    public var value: UInt64 { charged.load(ordering: .relaxed) }

    /// After a roll-up: the month's interactions in SQLite, and how many of this counter's charges they include.
    public func set(used: UInt64, seen: UInt64) {
        offset.store(Int64(clamping: used) &- Int64(clamping: seen), ordering: .relaxed)
    }

    @inline(__always) func used(charged c: UInt64) -> UInt64 {
        let v = Int64(clamping: c) &+ offset.load(ordering: .relaxed)
        return v < 0 ? 0 : UInt64(v)
    }

    /// Interactions used this month.
    public var used: UInt64 { used(charged: value) }

    /// Charges `n` interactions if the month's total stays within `limit`; false (nothing charged) if not.
    public func charge(_ n: UInt64, limit: UInt64) -> Bool {
        var current = charged.load(ordering: .relaxed)
        while true {
            guard used(charged: current) &+ n <= limit else { return false }
            let (done, found) = charged.compareExchange(expected: current, desired: current &+ n, ordering: .relaxed)
            if done { return true }
            current = found
        }
    }

    /// Whether `n` more would stay within `limit` (nothing charged).
    public func allows(_ n: UInt64, limit: UInt64) -> Bool { used &+ n <= limit }
}

extension KeyUsage {
    /// Adds `o`'s counts.
    public mutating func add(_ o: KeyUsage) {
        requests &+= o.requests
        interactions &+= o.interactions
        bytesIn &+= o.bytesIn
        bytesOut &+= o.bytesOut
        tokensIn &+= o.tokensIn
        tokensOut &+= o.tokensOut
    }
}

/// One request as the gateway's access log keeps it: taken on the loop without formatting (the strings are the
/// request's own), written to the world's `gateway.log` by the control plane.
public struct AccessEntry: Sendable {
    public var unixSeconds: UInt64
    public var world: String
    public var method: String
    /// The request target as sent (the control plane redacts `access_token` before writing it).
    public var target: String
    public var status: UInt16
    public var micros: UInt64
    public var bytesOut: UInt64
    /// The key's visible prefix ("" when the request named no known key).
    public var key: String
    public var requestID: String
    public var protocolName: String

    public init(unixSeconds: UInt64, world: String, method: String, target: String, status: UInt16, micros: UInt64, bytesOut: UInt64,
                key: String, requestID: String, protocolName: String) {
        self.unixSeconds = unixSeconds
        self.world = world
        self.method = method
        self.target = target
        self.status = status
        self.micros = micros
        self.bytesOut = bytesOut
        self.key = key
        self.requestID = requestID
        self.protocolName = protocolName
    }
}
