import Foundation

/// One page of a world's events as the control plane reads them (from the vault, in log order).
public struct EventPage: Sendable {
    public struct Event: Sendable {
        public var session: String
        public var kind: UInt8
        public var unixMilliseconds: UInt64
        public var payload: [UInt8]
        public init(session: String, kind: UInt8, unixMilliseconds: UInt64, payload: [UInt8]) {
            self.session = session
            self.kind = kind
            self.unixMilliseconds = unixMilliseconds
            self.payload = payload
        }
    }
    public var events: [Event]
    /// The log sequence to read after next time, and whether more is there now.
    public var next: UInt64
    public var more: Bool
    public init(events: [Event], next: UInt64, more: Bool) {
        self.events = events
        self.next = next
        self.more = more
    }
}

/// A world's figures rolled up from its events: users (sessions that said something), interactions (their
/// messages), replies per agent, refusals, and reply time as a histogram (percentiles are bucket bounds).
/// Rolled up incrementally from where the last read ended; rebuilt from the vault after a restart.
struct WorldAnalytics {
    var after: UInt64 = 0
    var users = Set<String>()
    var interactions = 0
    var replies: [String: Int] = [:]
    /// Messages per user (sessions counted as `users` is), for `user_milestone`.
    var perUser: [String: Int] = [:]
    /// Users who reached a milestone (`milestones`) in the pages folded, with when: the caller announces them.
    var crossed: [(user: String, count: Int, at: UInt64)] = []
    /// Tokens in and out by agent, as the runtime reported them.
    var agentTokens: [String: (tokensIn: Int, tokensOut: Int)] = [:]
    var refused = 0
    /// Tantrums (executive worlds mark them on the user's message), and the times of the last minute's.
    var tantrums = 0
    var recentTantrums: [UInt64] = []
    var firstMilliseconds: UInt64 = 0
    var lastMilliseconds: UInt64 = 0
    /// Reply times in milliseconds: counts per bucket (upper bounds; the last is everything above).
    static let bounds: [Double] = [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000]
    var latency = [Int](repeating: 0, count: WorldAnalytics.bounds.count + 1)
    var latencySumMilliseconds = 0.0
    /// Time to the first token, the same buckets.
    var firstToken = [Int](repeating: 0, count: WorldAnalytics.bounds.count + 1)
    var firstTokenSumMilliseconds = 0.0
    /// When each user last sent a message (for active users: those seen in the last `activeWindow`).
    var lastSeen: [String: UInt64] = [:]
    static let activeWindowMilliseconds: UInt64 = 300_000
    /// Distinct users counted exactly up to this many; past it, the count stops growing (documented).
    static let maxUsers = 100_000
    /// The world this rolls up: its creation time tells a world deployed again under the name apart.
    var generation: Int64 = 0

    /// Folds a page in. Kinds as the world instance stores them: 1 a user's message, 3 a reply's end.
    mutating func fold(_ page: EventPage, milestones: Set<Int> = []) {
        for e in page.events where !e.session.hasPrefix("_") {
            if firstMilliseconds == 0 { firstMilliseconds = e.unixMilliseconds }
            lastMilliseconds = max(lastMilliseconds, e.unixMilliseconds)
            guard e.kind == 1 || e.kind == 3, let o = (try? JSONSerialization.jsonObject(with: Data(e.payload))) as? [String: Any] else { continue }
            if e.kind == 1 {
                interactions += 1
                if o["tantrum"] as? Bool == true {
                    tantrums += 1
                    recentTantrums.append(e.unixMilliseconds)
                }
                // A message sent without a session gets one of its own ("s-…"): not a user that returns.
                if users.count < Self.maxUsers && !e.session.hasPrefix("s-") { users.insert(e.session) }
                if users.contains(e.session) {
                    lastSeen[e.session] = max(lastSeen[e.session] ?? 0, e.unixMilliseconds)
                    let n = perUser[e.session, default: 0] + 1
                    perUser[e.session] = n
                    if milestones.contains(n) { crossed.append((e.session, n, e.unixMilliseconds)) }
                }
                continue
            }
            if o["moderated"] as? Bool == true { refused += 1; continue }
            let agent = o["agent"] as? String ?? "?"
            replies[agent, default: 0] += 1
            let usage = o["usage"] as? [String: Any]
            let t = agentTokens[agent] ?? (0, 0)
            // Each reply's counts are bounded (a trillion), so the sums cannot overflow.
            func count(_ v: Any?) -> Int { max(0, min(jsonInteger(v) ?? 0, 1_000_000_000_000)) }
            agentTokens[agent] = (t.tokensIn &+ count(usage?["tokens_in"]), t.tokensOut &+ count(usage?["tokens_out"]))
            if let total = usage?["total_ms"] as? Double {
                latency[Self.bounds.firstIndex { total <= $0 } ?? Self.bounds.count] += 1
                latencySumMilliseconds += total
            }
            if let first = usage?["time_to_first_token_ms"] as? Double {
                firstToken[Self.bounds.firstIndex { first <= $0 } ?? Self.bounds.count] += 1
                firstTokenSumMilliseconds += first
            }
        }
        after = max(after, page.next)
    }

    /// The bucket bound under which `q` of the replies finished (nil: none yet; +Inf past the last bound).
    func percentile(_ q: Double) -> Double? {
        let total = latency.reduce(0, +)
        guard total > 0 else { return nil }
        var seen = 0
        for (i, n) in latency.enumerated() {
            seen += n
            if Double(seen) >= q * Double(total) { return i < Self.bounds.count ? Self.bounds[i] : .infinity }
        }
        return .infinity
    }

    /// Users who sent a message within the active window before `now`.
    func activeUsers(now: Int64) -> Int {
        let since = UInt64(max(0, now)) &- min(UInt64(max(0, now)), Self.activeWindowMilliseconds)
        return lastSeen.values.reduce(0) { $0 + ($1 >= since ? 1 : 0) }
    }

    /// Tantrums stamped within the minute before `now`.
    mutating func tantrumsLastMinute(now: Int64) -> Int {
        recentTantrums.removeAll { Int64($0) < now - 60_000 }
        return recentTantrums.count
    }

    func document(world: String, asOf: Int64) -> [UInt8] {
        func ms(_ q: Double) -> Any { percentile(q).map { $0.isInfinite ? "+Inf" as Any : $0 as Any } ?? NSNull() }
        let o: [String: Any] = [
            "world": world, "as_of_ms": asOf, "users": users.count, "interactions": interactions, "refused": refused,
            "tantrums": tantrums, "tantrums_last_minute": recentTantrums.filter { Int64($0) >= asOf - 60_000 }.count,
            "replies_by_agent": replies, "replies": replies.values.reduce(0, +),
            "reply_ms": ["p50_at_most": ms(0.5), "p95_at_most": ms(0.95), "p99_at_most": ms(0.99),
                         "buckets": Dictionary(uniqueKeysWithValues: zip(Self.bounds.map { String(Int($0)) } + ["+Inf"], latency))],
            "first_event_ms": firstMilliseconds, "last_event_ms": lastMilliseconds, "events_read_through": after,
        ]
        return Array((try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data("{}".utf8))
    }
}

extension ControlService {
    /// How the control plane reads a world's events after a sequence (set by the daemon; nil: no vault here).
    public typealias EventReader = @Sendable (_ world: String, _ after: UInt64, _ done: @escaping @Sendable (Result<EventPage, Error>) -> Void) -> Void

    /// Rolls every running world's new events into its figures (one read in flight per world, up to 20 pages
    /// a round) and publishes the documents when they changed. Runs on the control queue every 2 s.
    func rollUp(worlds: [(name: String, createdAt: Int64)], now: Int64) {
        guard let readEvents else { return }
        // A read the vault never answered (its world closed under it) does not hold the world for ever.
        for (w, since) in reading where now - since > 30_000 { reading[w] = nil }
        for (w, created) in worlds {
            if analytics[w]?.generation != created {  // new, or deployed again under the name: from the start
                var fresh = WorldAnalytics()
                fresh.generation = created
                analytics[w] = fresh
            }
            guard reading[w] == nil else { continue }
            reading[w] = now
            readRound(w, generation: created, pages: 20, reader: readEvents)
        }
        let names = Set(worlds.map(\.name))
        for gone in analytics.keys where !names.contains(gone) { analytics[gone] = nil }
        for gone in analyticsErrors.keys where !names.contains(gone) { analyticsErrors[gone] = nil }
        let documents = Dictionary(uniqueKeysWithValues: analytics.map { ($0.key, $0.value.document(world: $0.key, asOf: now)) })
        publishAnalytics?(documents)
        // Built first, swapped in under the lock: a scrape on a loop never waits for the queries behind it.
        let text = controlMetrics(now: now)
        metricsText.withLock { $0 = text }
    }

    private func readRound(_ world: String, generation: Int64, pages: Int, reader: @escaping EventReader) {
        reader(world, analytics[world]?.after ?? 0) { [self] result in
            queue.async { [self] in
                var more = false
                guard var figures = analytics[world], figures.generation == generation else {
                    reading[world] = nil  // a page of an earlier world of the name, or of one gone: dropped
                    return
                }
                switch result {
                case .success(let page):
                    figures.fold(page, milestones: settings.userMilestones)
                    // Milestones reached before this daemon started were announced then (or missed while it
                    // was down): a restart reading the log again never repeats them.
                    for c in figures.crossed where Int64(c.at) >= startedAtMilliseconds {
                        webhooks.emit("user_milestone", world: world, data: ["world": world, "user": c.user, "interactions": c.count,
                                                                             "at_ms": c.at], now: Self.now())
                    }
                    figures.crossed.removeAll()
                    more = page.more
                case .failure(let e):
                    // Said once per new failure (a pass every 2 s must not fill the log); the figures wait.
                    if analyticsErrors[world] != "\(e)" { alert(world: world, "analytics cannot read the world's events: \(e)") }
                    analyticsErrors[world] = "\(e)"
                }
                if case .success = result { analyticsErrors[world] = nil }
                analytics[world] = figures
                if more && pages > 1 { readRound(world, generation: generation, pages: pages - 1, reader: reader) } else { reading[world] = nil }
            }
        }
    }
}
