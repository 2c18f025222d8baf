import SoulfraHTTP2
import SoulfraKeys
import SoulfraLimits
import SoulfraRate

/// The gateway's key table: an immutable snapshot indexed by digest, replaced whole when keys change.
public final class KeyTable: Sendable {
    let byDigest: [SecretDigest: KeyRecord]
    /// Keys with a monthly budget: their shared counters (see `BudgetCounter`).
    let budgets: [UInt64: BudgetCounter]
    /// Worlds some key names (a refusal is access-logged only under a world that exists).
    let worlds: Set<String>

    public init(_ keys: [KeyRecord], budgets: [UInt64: BudgetCounter] = [:]) {
        var m: [SecretDigest: KeyRecord] = [:]
        for k in keys { m[k.digest] = k }
        byDigest = m
        self.budgets = budgets
        worlds = Set(keys.map(\.world))
    }

    public var count: Int { byDigest.count }
}

/// What one connection last looked up (see `Gatekeeper.admit(…, cache:)`). The key record is reused only
/// while the table it came from is current; its state (disabled, expiry, quotas) is checked every time.
public struct AdmissionCache {
    var method = ""
    var path = ""
    var route: Route?
    var authorization = ""
    var record: KeyRecord?
    var generation: UInt64 = 0
    /// The last `ratelimit` header value made for this connection, and what it said.
    var rateValue = ""
    var rateRemaining: UInt32 = .max
    var rateReset: UInt32 = .max
    public init() {}
}

/// The verdict on a request's head.
public enum Admission: Sendable, Equatable {
    /// Forward to the world: the key's id rides on the broker stream for its quotas.
    case admit(route: Route, key: KeyRecord, rateLimit: RateLimitState)
    case reject(GatewayError)
}

/// A key's request-rate state after a request was charged, for the response headers.
public struct RateLimitState: Sendable, Equatable {
    public var limit: UInt32
    public var remaining: UInt32
    /// Seconds until the bucket is full again (rounded up).
    public var resetSeconds: UInt32
    public var windowSeconds: UInt32 = 1
    /// The key's constant header values (see `KeyRecord.rateLimitPolicy`), and the `ratelimit` value when a
    /// connection's cache already holds it; built here when not given.
    var policyValue: String?
    var limitValue: String?
    var rateValue: String?

    public init(limit: UInt32, remaining: UInt32, resetSeconds: UInt32, windowSeconds: UInt32 = 1) {
        self.limit = limit
        self.remaining = remaining
        self.resetSeconds = resetSeconds
        self.windowSeconds = windowSeconds
    }

    public static func == (l: RateLimitState, r: RateLimitState) -> Bool {
        l.limit == r.limit && l.remaining == r.remaining && l.resetSeconds == r.resetSeconds && l.windowSeconds == r.windowSeconds
    }

    /// Both header generations (design §5): the IETF draft's `RateLimit-Policy`/`RateLimit` and the older
    /// `RateLimit-Limit`/`-Remaining`/`-Reset` that many clients still read. Names are lowercase, as HTTP/2
    /// requires (HTTP/1.1 names are case-insensitive).
    public var headers: [(String, String)] {
        var out: [H2Header] = []
        appendHeaders(to: &out)
        return out.map { ($0.name, $0.value) }
    }

    /// The `ratelimit` value, `"burst";r=<remaining>;t=<reset>`, built without string interpolation.
    var currentValue: String {
        if let rateValue { return rateValue }
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 40) { buf in
            var n = 0
            for b in #""burst";r="#.utf8 { buf[n] = b; n += 1 }
            n = writeDecimal(remaining, buf, n)
            for b in ";t=".utf8 { buf[n] = b; n += 1 }
            n = writeDecimal(resetSeconds, buf, n)
            return String(decoding: UnsafeBufferPointer(rebasing: buf[0..<n]), as: UTF8.self)
        }
    }

    /// Appends the five headers: this runs on every admitted response of a key with a request quota. The
    /// changing ones are sent HPACK never-indexed over HTTP/2.
    public func appendHeaders(to out: inout [H2Header]) {
        out.append(H2Header("ratelimit-policy", policyValue ?? "\"burst\";q=\(limit);w=\(windowSeconds)"))
        out.append(H2Header("ratelimit", currentValue, neverIndexed: true))
        out.append(H2Header("ratelimit-limit", limitValue ?? String(limit)))
        out.append(H2Header("ratelimit-remaining", String(remaining), neverIndexed: true))
        out.append(H2Header("ratelimit-reset", String(resetSeconds)))
    }

    /// Whether a header's value changes on every response (sent never-indexed over HTTP/2).
    @inline(__always) public static func changes(_ name: String) -> Bool {
        name == "ratelimit" || name == "ratelimit-remaining"
    }
}

/// Writes `v` in decimal at `buf[at...]`; returns the index after it.
@inline(__always) func writeDecimal(_ v: UInt32, _ buf: UnsafeMutableBufferPointer<UInt8>, _ at: Int) -> Int {
    var digits = 1, t = v
    while t >= 10 { t /= 10; digits += 1 }
    var x = v
    for k in stride(from: at + digits - 1, through: at, by: -1) {
        buf[k] = 0x30 + UInt8(x % 10)
        x /= 10
    }
    return at + digits
}

/// Authenticates and rate-limits requests. Sans-IO: takes the request's method, path, credentials and `now`;
/// keeps per-key buckets of its own (one gateway loop, one `Gatekeeper`; no locks).
public final class Gatekeeper {
    public private(set) var table: KeyTable
    /// Bumped on every `install`, so per-connection caches of looked-up keys know they are stale.
    public private(set) var generation: UInt64 = 0
    var buckets: [UInt64: TokenBucket] = [:]

    public init(table: KeyTable) { self.table = table }

    /// Swaps the key table; revocation takes effect on the next request.
    public func install(_ t: KeyTable) {
        table = t
        generation &+= 1
        let ids = Set(t.byDigest.values.map(\.id))
        buckets = buckets.filter { ids.contains($0.key) }
    }

    /// Decides on one request. `authorization` is the Authorization header's value; `queryToken` the `access_token`
    /// query parameter (honoured only on routes browsers reach without headers). `now` is monotonic
    /// nanoseconds for buckets; `unixSeconds` the wall clock for expiry.
    public func admit(method: String, path: String, authorization: String?, queryToken: String?,
                      now: UInt64, unixSeconds: UInt64) -> Admission {
        var cache = AdmissionCache()
        return admit(method: method, path: path, authorization: authorization, queryToken: queryToken,
                     now: now, unixSeconds: unixSeconds, cache: &cache)
    }

    /// The same, remembering the last route and key looked up in `cache` (one per connection: clients send
    /// the same path and key again and again, and matching and hashing them is most of the work).
    public func admit(method: String, path: String, authorization: String?, queryToken: String?,
                      now: UInt64, unixSeconds: UInt64, cache: inout AdmissionCache) -> Admission {
        let route: Route
        if let r = cache.route, cache.method == method, cache.path == path {
            route = r
        } else {
            switch Route.match(method: method, path: path) {
            case .success(let r):
                route = r
                cache.method = method
                cache.path = path
                cache.route = r
            case .failure(let e): return reject(e)
            }
        }
        let record: KeyRecord
        if let auth = authorization, let k = cache.record, cache.generation == generation, cache.authorization == auth {
            record = k
        } else {
            var presented: Substring?
            if let auth = authorization {
                guard let token = bearerToken(auth) else { return reject(.unauthorized) }
                presented = token
            } else if let q = queryToken, route.acceptsQueryToken {
                presented = Substring(q)
            }
            // Shape and checksum first: a mistyped or forged key never reaches the table.
            guard let p = presented, let key = APIKey.parse(p) else { return reject(.unauthorized) }
            guard let found = table.byDigest[key.digest] else { return reject(.unauthorized) }
            record = found
            if let auth = authorization {
                cache.authorization = auth
                cache.record = found
                cache.generation = generation
            }
        }
        if record.disabled {
            return reject(GatewayError(.keyDisabled, "key \(record.prefix) has been revoked"))
        }
        if let exp = record.expiresAt, unixSeconds >= exp {
            return reject(GatewayError(.keyExpired, "key \(record.prefix) has expired"))
        }
        guard record.world == route.world else {
            return reject(GatewayError(.wrongWorld,
                                       "key \(record.prefix) belongs to another world than \"\(route.world)\""))
        }
        guard record.permissions.contains(route.permission) else {
            let need = route.permission.names.first ?? "?"
            return reject(GatewayError(.insufficientPermissions,
                                       "key \(record.prefix) lacks the \(need) permission"))
        }
        switch charge(record, now: now) {
        case .success(var state):
            if state.limit > 0 {
                if cache.rateRemaining != state.remaining || cache.rateReset != state.resetSeconds {
                    cache.rateValue = state.currentValue
                    cache.rateRemaining = state.remaining
                    cache.rateReset = state.resetSeconds
                }
                state.rateValue = cache.rateValue
            }
            return .admit(route: route, key: record, rateLimit: state)
        case .failure(let e): return reject(e)
        }
    }

    /// A refusal (the gateway counts it by code when it answers).
    func reject(_ e: GatewayError) -> Admission { .reject(e) }

    /// Takes one token from the key's bucket, or says when one will be there.
    func charge(_ k: KeyRecord, now: UInt64) -> Result<RateLimitState, GatewayError> {
        guard k.requestsPerSecond > 0 else {
            return .success(RateLimitState(limit: 0, remaining: 0, resetSeconds: 0))
        }
        let rate = Double(k.requestsPerSecond)
        let capacity = Double(max(k.burst, 1))
        var b = buckets[k.id] ?? TokenBucket(ratePerSecond: rate, capacity: capacity, now: now)
        b.ratePerSecond = rate  // the key may have been changed by a reload
        b.capacity = capacity
        b.refill(now: now)
        let limit = UInt32(capacity)
        if b.take(1) {
            buckets[k.id] = b
            let reset = UInt32(((capacity - b.tokens) / rate).rounded(.up))
            var state = RateLimitState(limit: limit, remaining: UInt32(b.tokens.rounded(.down)), resetSeconds: reset)
            state.policyValue = k.rateLimitPolicy
            state.limitValue = k.rateLimitLimit
            return .success(state)
        }
        buckets[k.id] = b
        // Whole seconds, rounded up, at least 1 (design §5).
        let wait = b.secondsUntil(1)
        let state = RateLimitState(limit: limit, remaining: 0, resetSeconds: wait)
        return .failure(GatewayError(
            .rateLimited, "key \(k.prefix) is over \(k.requestsPerSecond) requests/s",
            headers: [("retry-after", "\(wait)")] + state.headers))
    }
}

/// The credentials of an `Authorization: Bearer <token>` value (scheme case-insensitive, RFC 9110 §11.1),
/// nil for any other scheme or an empty token.
public func bearerToken(_ authorization: String) -> Substring? {
    let trimmed = authorization.drop { $0 == " " }
    guard trimmed.count > 7, trimmed.prefix(7).lowercased() == "bearer " else { return nil }
    let token = trimmed.dropFirst(7).drop { $0 == " " }
    return token.isEmpty ? nil : token
}
