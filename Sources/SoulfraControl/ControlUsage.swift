import Foundation
import SoulfraConfig
import SoulfraLimits

/// Usage roll-ups: the loops count per key without locks and publish their counts every second; every
/// `usageIntervalMilliseconds` (and once more when the daemon stops) the growth since the last roll-up is
/// written to SQLite in one transaction, with each world's instance time. A crash loses at most the last
/// interval; a graceful stop loses nothing (the loops publish their final counts before the last roll-up).
extension ControlService {
    public static let usageIntervalMilliseconds: Int64 = 2_000

    /// How usage rows name keys: a control-plane key by its row id, a config-file key by its gateway id negated.
    static func usageKeyID(_ gatewayID: UInt64) -> Int64 {
        gatewayID >= ControlTables.keyIDBase ? Int64(gatewayID - ControlTables.keyIDBase) : -Int64(clamping: gatewayID)
    }

    /// Rolls what the loops counted since the last roll-up into SQLite, then renews the budget marks. A write
    /// that fails is retried whole at the next roll-up (nothing is marked seen until it is written).
    func rollUpUsage(now: Int64) {
        let loops = readUsage?() ?? []
        let elapsed = lastUsageRollUp == 0 ? 0 : max(0, min(now - lastUsageRollUp, 60_000))
        var growth: [UInt64: KeyUsage] = [:]
        for (i, counts) in loops.enumerated() {
            let seen = i < usageSeen.count ? usageSeen[i] : [:]
            for (id, u) in counts {
                let d = u.since(seen[id])
                if !d.isZero { growth[id, default: KeyUsage(world: u.world, prefix: u.prefix)].add(d) }
            }
        }
        let day = Self.day(now)
        var rows: [(keyID: Int64, world: String, day: String, delta: UsageDelta)] = []
        var prefixes: [Int64: String] = [:]
        for (id, d) in growth {
            let k = Self.usageKeyID(id)
            prefixes[k] = d.prefix
            rows.append((k, d.world, day, UsageDelta(requests: Int64(clamping: d.requests), interactions: Int64(clamping: d.interactions),
                                                     bytesIn: Int64(clamping: d.bytesIn), bytesOut: Int64(clamping: d.bytesOut),
                                                     tokensIn: Int64(clamping: d.tokensIn), tokensOut: Int64(clamping: d.tokensOut))))
        }
        var time: [(world: String, template: String, day: String, milliseconds: Int64)] = []
        if elapsed > 0 {
            let templates = Dictionary(((try? store.worlds()) ?? []).map { ($0.name, $0.template) }) { a, _ in a }
            var running: [String: Int64] = [:]
            for o in plane.driver.observe() where o.state == .running { running[o.world, default: 0] += 1 }
            for (world, n) in running { time.append((world, templates[world] ?? "custom", day, n * elapsed)) }
        }
        do {
            try store.addUsage(rows, prefixes: prefixes, instanceTime: time)
            usageSeen = loops
            lastUsageRollUp = now
            usageError = ""
        } catch {
            let text = "\(error)"
            if text != usageError { alert(world: "", "usage: the roll-up was not written (\(text)); it is retried with the next") }
            usageError = text
            return
        }
        renewBudgets(now: now)
    }

    /// Each budgeted key's counter, set to its month's interactions as of the roll-up just written and the
    /// charges that roll-up included. A read that fails leaves the counters as they were (never a fresh month).
    func renewBudgets(now: Int64) {
        guard let keys = try? store.keys() else { return }
        let budgeted = keys.filter { KeyQuotas(json: $0.quotas).monthlyInteractions > 0 && $0.live(at: now) }
        let ids = Set(budgeted.map { ControlTables.keyIDBase + UInt64($0.id) })
        budgetCounters = budgetCounters.filter { ids.contains($0.key) }
        guard !budgeted.isEmpty, let used = try? store.interactionsByKey(since: Self.monthStart(now).day) else { return }
        for k in budgeted {
            let id = ControlTables.keyIDBase + UInt64(k.id)
            let counter = budgetCounters[id] ?? BudgetCounter()
            budgetCounters[id] = counter
            counter.set(used: UInt64(max(0, used[Int64(k.id)] ?? 0)), seen: seen(id))
        }
    }

    /// The charges of key `id` the last written roll-up included, over every loop.
    func seen(_ id: UInt64) -> UInt64 { usageSeen.reduce(UInt64(0)) { $0 &+ ($1[id]?.interactions ?? 0) } }

    /// The counter of a budgeted key new since the last roll-up (its month so far from SQLite).
    func freshCounter(_ id: UInt64, now: Int64) -> BudgetCounter {
        let used = (try? store.interactionsByKey(since: Self.monthStart(now).day))?[Self.usageKeyID(id)] ?? 0
        let counter = BudgetCounter(used: UInt64(max(0, used)), seen: seen(id))
        budgetCounters[id] = counter
        return counter
    }

    /// `YYYY-MM-DD` (UTC) of unix milliseconds.
    static func day(_ ms: Int64) -> String {
        let c = utcCalendar.dateComponents([.year, .month, .day], from: Date(timeIntervalSince1970: Double(ms) / 1000))
        return String(format: "%04d-%02d-%02d", c.year ?? 1970, c.month ?? 1, c.day ?? 1)
    }

    /// The first day of the month of `ms` (UTC), and the unix second the next month starts (when budgets reset).
    static func monthStart(_ ms: Int64) -> (day: String, nextMonth: UInt64) {
        let c = utcCalendar.dateComponents([.year, .month], from: Date(timeIntervalSince1970: Double(ms) / 1000))
        let (y, m) = (c.year ?? 1970, c.month ?? 1)
        let next = utcCalendar.date(from: DateComponents(year: m == 12 ? y + 1 : y, month: m == 12 ? 1 : m + 1, day: 1)) ?? Date()
        return (String(format: "%04d-%02d-01", y, m), UInt64(max(0, next.timeIntervalSince1970)))
    }

    static let utcCalendar: Calendar = {
        var c = Calendar(identifier: .gregorian)
        c.timeZone = TimeZone(identifier: "UTC")!
        return c
    }()
}

/// `GET /admin/v1/usage`: usage and cost per world, by key, day or agent.
extension ControlService {
    func usage(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let now = Self.now()
        if now - lastUsageRollUp >= 250 { rollUpUsage(now: now) }  // what the loops published last, not 2 s old
        let world = r.value("world").flatMap { $0.isEmpty ? nil : $0 }
        if let world { try DeployRequest.checkName(world) }
        let since = try Self.sinceDay(r.value("since"), now: now)
        let by = r.value("by") ?? "world"
        guard ["world", "key", "day", "agent"].contains(by) else {
            throw APIError(400, "invalid_request", "by must be key, day or agent, got \"\(by)\"")
        }
        let p = settings.pricing
        let totals = try wrap { () throws(ControlError) in try store.usageRows(world: world, since: since, group: .world) }
        let times = try wrap { () throws(ControlError) in try store.instanceTime(world: world, since: since, byDay: by == "day") }
        let timeByWorld = Dictionary(grouping: times, by: \.world)
        var worlds: [[String: Any]] = []
        var names = Set(totals.map(\.world))
        names.formUnion(times.map(\.world))
        var sum = (usage: UsageDelta(), ms: Int64(0), cost: 0.0)
        let groups: [String: [UsageRow]] = switch by {
        case "key": Dictionary(grouping: try wrap { () throws(ControlError) in try store.usageRows(world: world, since: since, group: .key) }, by: \.world)
        case "day": Dictionary(grouping: try wrap { () throws(ControlError) in try store.usageRows(world: world, since: since, group: .day) }, by: \.world)
        default: [:]
        }
        for name in names.sorted() {
            let d = totals.first { $0.world == name }?.delta ?? UsageDelta()
            let ts = timeByWorld[name] ?? []
            let ms = ts.reduce(0) { $0 + $1.milliseconds }
            let template = ts.first?.template ?? ((try? store.world(name))??.template ?? "custom")
            var o = Self.usageObject(d)
            o["world"] = name
            o["template"] = template
            o["instance_seconds"] = Double(ms) / 1000
            let cost = Self.cost(d, instanceMilliseconds: ms, template: template, pricing: p)
            o["cost"] = cost
            sum.usage = sum.usage.adding(d)
            sum.ms += ms
            sum.cost += cost["total"] ?? 0
            switch by {
            case "key":
                o["keys"] = (groups[name] ?? []).map { row -> [String: Any] in
                    var k = Self.usageObject(row.delta)
                    k["key_id"] = Int64(row.group) ?? 0
                    k["prefix"] = row.prefix
                    k["cost"] = Self.cost(row.delta, instanceMilliseconds: 0, template: template, pricing: p)
                    return k
                }
            case "day":
                let dayTime = Dictionary(ts.map { ($0.day, $0.milliseconds) }) { a, b in a + b }
                var days = Set((groups[name] ?? []).map(\.group))
                days.formUnion(dayTime.keys)
                o["days"] = days.sorted().map { day -> [String: Any] in
                    let row = groups[name]?.first { $0.group == day }?.delta ?? UsageDelta()
                    var k = Self.usageObject(row)
                    k["day"] = day
                    k["instance_seconds"] = Double(dayTime[day] ?? 0) / 1000
                    k["cost"] = Self.cost(row, instanceMilliseconds: dayTime[day] ?? 0, template: template, pricing: p)
                    return k
                }
            case "agent":
                let a = analytics[name]
                o["agents"] = (a?.replies ?? [:]).keys.sorted().map { agent -> [String: Any] in
                    let t = a?.agentTokens[agent] ?? (0, 0)
                    return ["agent": agent, "replies": a?.replies[agent] ?? 0, "tokens_in": t.tokensIn, "tokens_out": t.tokensOut]
                }
            default: break
            }
            worlds.append(o)
        }
        var total = Self.usageObject(sum.usage)
        total["instance_seconds"] = Double(sum.ms) / 1000
        total["cost"] = (sum.cost * 1_000_000).rounded() / 1_000_000
        return ["since": since, "by": by, "as_of_ms": lastUsageRollUp, "currency": p.currency, "pricing": p.object,
                "worlds": worlds, "total": total]
    }

    static func usageObject(_ d: UsageDelta) -> [String: Any] {
        ["requests": d.requests, "interactions": d.interactions, "bytes_in": d.bytesIn, "bytes_out": d.bytesOut,
         "tokens_in": d.tokensIn, "tokens_out": d.tokensOut]
    }

    /// Cost by part and in total, rounded to a millionth of the currency.
    static func cost(_ d: UsageDelta, instanceMilliseconds: Int64, template: String, pricing p: Pricing) -> [String: Double] {
        func round(_ v: Double) -> Double { (v * 1_000_000).rounded() / 1_000_000 }
        let instances = Double(instanceMilliseconds) / 1000 * p.instanceSecond(template: template)
        let interactions = Double(d.interactions) * p.interaction
        let tokens = Double(d.tokensIn) * p.tokenIn + Double(d.tokensOut) * p.tokenOut
        return ["instances": round(instances), "interactions": round(interactions), "tokens": round(tokens),
                "total": round(instances + interactions + tokens)]
    }

    /// `since` as a day: `YYYY-MM-DD`, or `<n>d` days back (today is `0d`); the month's first day when absent.
    static func sinceDay(_ text: String?, now: Int64) throws(APIError) -> String {
        guard let text, !text.isEmpty else { return monthStart(now).day }
        if text.hasSuffix("d"), let n = Int(text.dropLast()), n >= 0, n <= 36_500 {
            return day(now - Int64(n) * 86_400_000)
        }
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 3, parts[0].count == 4, parts[1].count == 2, parts[2].count == 2,
              let y = Int(parts[0]), let m = Int(parts[1]), let d = Int(parts[2]), (1...12).contains(m), (1...31).contains(d), y >= 1970 else {
            throw APIError(400, "invalid_request", "since takes a day (2026-11-01) or days back (7d), got \"\(text)\"")
        }
        return text
    }
}

extension UsageDelta {
    func adding(_ o: UsageDelta) -> UsageDelta {
        UsageDelta(requests: requests + o.requests, interactions: interactions + o.interactions, bytesIn: bytesIn + o.bytesIn,
                   bytesOut: bytesOut + o.bytesOut, tokensIn: tokensIn + o.tokensIn, tokensOut: tokensOut + o.tokensOut)
    }
}
