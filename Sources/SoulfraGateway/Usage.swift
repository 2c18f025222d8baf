import SoulfraLimits

/// One key's counts on this loop, shared by reference with the key's exchanges so counting is a field add,
/// not a lookup. Loop thread only.
final class UsageCell {
    var usage: KeyUsage
    init(_ usage: KeyUsage) { self.usage = usage }
}

/// One world's request latency on this loop, by route kind, in `GatewayCounters.bucketsMicros` buckets.
public struct WorldLatency: Sendable, Equatable {
    /// `kinds × (buckets + 1)` counts, row by `ExchangeKind.index`.
    public var buckets: [UInt64]
    public var sumMicros: [UInt64]
    /// Times one of the world's streams waited for credit (its client, or the loop's budget, held it back).
    public var creditStalls: UInt64 = 0
    static var width: Int { 17 }  // GatewayCounters.bucketsMicros.count + 1 (checked in the tests)

    public init() {
        buckets = Array(repeating: 0, count: ExchangeKind.allCases.count * Self.width)
        sumMicros = Array(repeating: 0, count: ExchangeKind.allCases.count)
    }

    mutating func observe(_ kind: ExchangeKind, micros: UInt64) {
        buckets[kind.index * Self.width + GatewayCounters.bucket(micros)] &+= 1
        sumMicros[kind.index] &+= micros
    }

    func merging(_ o: WorldLatency) -> WorldLatency {
        var m = self
        for i in m.buckets.indices { m.buckets[i] &+= o.buckets[i] }
        for i in m.sumMicros.indices { m.sumMicros[i] &+= o.sumMicros[i] }
        m.creditStalls &+= o.creditStalls
        return m
    }
}

/// A world's latency on this loop, shared by reference with its exchanges (no lookup per request).
final class WorldCell {
    var latency = WorldLatency()
}

/// Per-key usage on one loop: no locks (one gateway per loop); the owner publishes `snapshot()` with the
/// loop's other counters and the control plane rolls the growth up into SQLite. Cells live as long as the
/// daemon, so nothing counted is lost when a key goes (at most one per key ever used).
struct UsageLedger {
    private(set) var cells: [UInt64: UsageCell] = [:]
    /// Worlds with requests on this loop (bounded by the worlds keys exist for).
    private(set) var worlds: [String: WorldCell] = [:]

    mutating func cell(world: String) -> WorldCell {
        if let c = worlds[world] { return c }
        let c = WorldCell()
        worlds[world] = c
        return c
    }

    mutating func cell(for key: KeyRecord) -> UsageCell {
        if let c = cells[key.id] { return c }
        let c = UsageCell(KeyUsage(world: key.world, prefix: key.prefix))
        cells[key.id] = c
        return c
    }

    func snapshot() -> [UInt64: KeyUsage] { cells.mapValues(\.usage) }
}

/// Finds the runtime's token counts in reply bytes as they pass, split anywhere: the numbers after
/// `"tokens_in":` and `"tokens_out":` (a reply's `done` event carries them in `usage`). Inside a JSON string
/// every quote is escaped, so an agent's text cannot forge the pattern. The patterns are static strings (no
/// lazily made global is touched per byte).
struct TokenScanner {
    private static let inPattern: StaticString = #""tokens_in":"#
    private static let outPattern: StaticString = #""tokens_out":"#
    private var matchedIn = 0
    private var matchedOut = 0
    /// 0: scanning; 1: reading tokens_in's digits; 2: tokens_out's.
    private var reading = 0
    private var value: UInt64 = 0

    /// Feeds bytes; `found(isOut, n)` for each number completed.
    mutating func feed(_ bytes: UnsafeRawBufferPointer, found: (Bool, UInt64) -> Void) {
        let pin = Self.inPattern.utf8Start, nin = Self.inPattern.utf8CodeUnitCount
        let pout = Self.outPattern.utf8Start, nout = Self.outPattern.utf8CodeUnitCount
        for b in bytes {
            if reading != 0 {
                if b >= 0x30 && b <= 0x39 {
                    // At most 12 digits count (a reply of a trillion tokens is a lie): sums cannot overflow.
                    if value < 100_000_000_000 { value = value &* 10 &+ UInt64(b - 0x30) }
                    continue
                }
                found(reading == 2, value)
                reading = 0
                value = 0
            }
            // The patterns repeat no prefix inside themselves past their first quote, so a mismatch restarts
            // at 0, or at 1 on a quote.
            matchedIn = pin[matchedIn] == b ? matchedIn + 1 : (b == 0x22 ? 1 : 0)
            matchedOut = pout[matchedOut] == b ? matchedOut + 1 : (b == 0x22 ? 1 : 0)
            if matchedIn == nin {
                reading = 1
                matchedIn = 0
            } else if matchedOut == nout {
                reading = 2
                matchedOut = 0
            }
        }
    }
}

extension Gateway {
    /// This loop's per-key usage, for the owner to publish.
    public func usageSnapshot() -> [UInt64: KeyUsage] { ledger.snapshot() }

    /// The counters with each world's latency filled in (what the owner publishes and `/metrics` renders).
    public func countersSnapshot() -> GatewayCounters {
        var c = counters
        c.worldLatency = ledger.worlds.mapValues(\.latency)
        return c
    }

    /// A request's time so far into its world's histogram (unary: head to complete reply; streamed: head to
    /// the reply's start).
    @inline(__always) func observeWorld(_ ex: Exchange, now: UInt64) {
        ex.world.latency.observe(ex.kind, micros: (now &- ex.startedAt) / 1_000)
    }

    /// Charges one interaction to the exchange's key, or refuses it: the key's monthly budget is used up.
    func chargeInteraction(_ ex: Exchange) -> GatewayError? {
        if let e = charge(ex.key, 1) { return e }
        ex.usage.usage.interactions &+= 1
        return nil
    }

    /// Charges a stream's messages that arrived since the last charge. False: the budget ran out, and the
    /// stream was ended with `usage_exceeded` (the messages past it never reach the world).
    func chargeMessages(_ ex: Exchange) -> Bool {
        let n = ex.messagesIn &- ex.messagesCharged
        guard n > 0 else { return true }
        if let e = charge(ex.key, n) {
            fail(ex, e)
            return false
        }
        ex.messagesCharged = ex.messagesIn
        ex.usage.usage.interactions &+= n
        return true
    }

    /// Takes `n` interactions from the key's monthly budget; `usage_exceeded` if they are not all there (nil:
    /// charged, or no budget).
    func charge(_ key: KeyRecord, _ n: UInt64) -> GatewayError? {
        guard key.monthlyInteractions > 0, let budget = gatekeeper.table.budgets[key.id] else { return nil }
        return budget.charge(n, limit: key.monthlyInteractions) ? nil : usageExceeded(key)
    }

    /// `usage_exceeded` if the key has no interaction left this month (nothing charged).
    func budgetSpent(_ key: KeyRecord) -> GatewayError? {
        guard key.monthlyInteractions > 0, let budget = gatekeeper.table.budgets[key.id] else { return nil }
        return budget.allows(1, limit: key.monthlyInteractions) ? nil : usageExceeded(key)
    }

    func usageExceeded(_ key: KeyRecord) -> GatewayError {
        let wait = key.budgetResetsAt > unixSeconds ? key.budgetResetsAt - unixSeconds : 1
        return GatewayError(.usageExceeded,
                            "key \(key.prefix) has used its \(key.monthlyInteractions) interactions this month; it resets at \(Self.utcDate(key.budgetResetsAt)) UTC",
                            headers: [("retry-after", "\(wait)")])
    }

    /// `2026-12-01T00:00:00` for unix seconds (proleptic Gregorian, UTC), without Foundation.
    static func utcDate(_ seconds: UInt64) -> String {
        let days = Int64(seconds / 86_400), rest = Int(seconds % 86_400)
        // Howard Hinnant's days-to-civil.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        let y = yoe + era * 400 + (m <= 2 ? 1 : 0)
        func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "\(y)-\(two(Int(m)))-\(two(Int(d)))T\(two(rest / 3600)):\(two(rest / 60 % 60)):\(two(rest % 60))"
    }

    /// Adds reply bytes to the exchange's key and looks in them for the runtime's token counts (replies to
    /// conversations only: a room's fan-out is not its viewers' usage).
    @inline(__always) func countReply(_ ex: Exchange, _ bytes: UnsafeRawBufferPointer) {
        let cell = ex.usage
        cell.usage.bytesOut &+= UInt64(bytes.count)
        // A resumed stream replays stored replies first: their tokens were counted when they were made.
        guard ex.kind != .roomSubscribe && ex.kind != .history && ex.resourceDetail == nil && ex.resumeAfter == nil else { return }
        ex.tokens.feed(bytes) { out, n in
            if out { cell.usage.tokensOut &+= n } else { cell.usage.tokensIn &+= n }
        }
    }
}
