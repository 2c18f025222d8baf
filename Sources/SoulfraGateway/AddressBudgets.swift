import SoulfraLimits
import SoulfraRate

/// A client's address for per-address budgets: 16 bytes (IPv4 as an IPv4-mapped IPv6 address), no port.
public struct ClientAddress: Hashable, Sendable {
    public let high: UInt64
    public let low: UInt64
    public init(high: UInt64, low: UInt64) {
        self.high = high
        self.low = low
    }

    /// What budgets are kept under: an IPv4 address whole, an IPv6 address by its /64 (what one subscriber
    /// is given: a client with a /64 must not get 2^64 fresh budgets, nor push everyone else's out).
    var budgetKey: ClientAddress { high == 0 && low >> 32 == 0xFFFF ? self : ClientAddress(high: high, low: 0) }
}

/// Budgets per client address, across that address's connections on one loop: new connections per second
/// (a client that reconnects is not a new client) and HTTP/2 stream resets per second (a client that resets
/// streams and reconnects to get a fresh per-connection budget still runs out). Bounded: past `capacity`
/// addresses the oldest entry is forgotten.
struct AddressBudgets {
    struct Entry {
        var connections: TokenBucket
        var resets: TokenBucket
    }

    let capacity: Int
    var entries: [ClientAddress: Entry] = [:]
    var order: [ClientAddress] = []
    var orderHead = 0

    init(capacity: Int = 65_536) { self.capacity = capacity }

    private mutating func entry(_ a: ClientAddress, _ limits: GatewayLimits, now: UInt64) -> Entry {
        if let e = entries[a] { return e }
        if entries.count >= capacity {
            entries.removeValue(forKey: order[orderHead])
            orderHead += 1
            if orderHead > 1_024 && orderHead * 2 > order.count {
                order.removeFirst(orderHead)
                orderHead = 0
            }
        }
        order.append(a)
        return Entry(connections: TokenBucket(ratePerSecond: Double(limits.connectionsPerSecondPerAddress),
                                              capacity: Double(limits.connectionBurstPerAddress), now: now),
                     resets: TokenBucket(ratePerSecond: Double(limits.resetsPerSecondPerAddress),
                                         capacity: Double(limits.resetBurstPerAddress), now: now))
    }

    /// Charges one new connection; false when the address is over its budget.
    mutating func admitConnection(_ address: ClientAddress, _ limits: GatewayLimits, now: UInt64) -> Bool {
        let a = address.budgetKey
        var e = entry(a, limits, now: now)
        e.connections.refill(now: now)
        let ok = e.connections.take(1)
        entries[a] = e
        return ok
    }

    /// Charges `n` stream resets; false when the address is over its budget.
    mutating func chargeResets(_ address: ClientAddress, _ n: UInt64, _ limits: GatewayLimits, now: UInt64) -> Bool {
        let a = address.budgetKey
        var e = entry(a, limits, now: now)
        e.resets.refill(now: now)
        let ok = e.resets.take(Double(n))
        entries[a] = e
        return ok
    }
}
