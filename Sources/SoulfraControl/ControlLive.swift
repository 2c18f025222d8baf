import Foundation
import SoulfraLimits

/// `GET /admin/v1/live`: the worlds table's live figures as server-sent events, one document a second, for the
/// control panel. Request rates and p99 are over the last 10 s (from the loops' counts and the gateway's
/// per-world latency histograms); users and interactions from the vault roll-ups.
extension ControlService {
    /// Followers of the live feed at most (each costs one document a second).
    static let maxLiveFollowers = 32
    static let liveWindowMilliseconds: Int64 = 10_000

    /// One sample of the cumulative counts the rates and percentiles are taken from.
    struct LiveSample {
        var at: Int64
        var requests: [String: UInt64]
        var latency: [String: [UInt64]]
    }

    func live(_ r: ControlRequest, reply: @escaping @Sendable (ControlReply) -> Bool) throws(APIError) -> (Int, Any)? {
        guard r.wantsEvents || r.value("follow") == "1" else { return (200, liveDocument(now: Self.now())) }
        guard liveFollowers.count < Self.maxLiveFollowers else {
            throw APIError(503, "too_many_followers", "\(Self.maxLiveFollowers) live feeds are open already; close one (or read GET /admin/v1/live once)")
        }
        guard reply(.streamHead), reply(.event(Self.render(liveDocument(now: Self.now())).replacingOccurrences(of: "\n", with: ""))) else { return nil }
        liveFollowers.append(reply)
        return nil
    }

    /// Takes a sample and sends the document to every follower; followers that left are dropped. Each pass.
    func pushLive(now: Int64) {
        guard now - lastLivePush >= 1_000 else { return }
        lastLivePush = now
        sampleLive(now: now)
        guard !liveFollowers.isEmpty else { return }
        let text = String(decoding: (try? JSONSerialization.data(withJSONObject: liveDocument(now: now), options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        liveFollowers = liveFollowers.filter { $0(.event(text)) }
    }

    func sampleLive(now: Int64) {
        var requests: [String: UInt64] = [:]
        for loop in readUsage?() ?? [] { for u in loop.values { requests[u.world, default: 0] &+= u.requests } }
        liveSamples.append(LiveSample(at: now, requests: requests, latency: live.latency))
        liveSamples.removeAll { now - $0.at > Self.liveWindowMilliseconds }
    }

    /// Every active world's live row, and the totals.
    func liveDocument(now: Int64) -> [String: Any] {
        let worlds = ((try? store.worlds()) ?? []).filter { $0.state != "purging" }
        let current = live
        let first = liveSamples.first, last = liveSamples.last
        let seconds = Double((last?.at ?? 0) - (first?.at ?? 0)) / 1000
        var rows: [[String: Any]] = []
        for w in worlds {
            let ready = Set(current.attached[w.name] ?? []).count
            let a = analytics[w.name]
            var rate = 0.0
            if let first, let last, seconds > 0 {
                rate = Double((last.requests[w.name] ?? 0) &- min(last.requests[w.name] ?? 0, first.requests[w.name] ?? 0)) / seconds
            }
            var p99: Any = NSNull()
            if let first, let last, let now = last.latency[w.name] {
                let before = first.latency[w.name] ?? Array(repeating: 0, count: now.count)
                p99 = Self.percentile(0.99, zip(now, before).map { $0 &- min($0, $1) }, bounds: current.latencyBoundsMicros).map { $0 as Any } ?? NSNull()
            }
            let health = w.state != "active" ? "stopping" : w.instances == 0 ? "idle" : ready >= w.instances ? "healthy" : ready == 0 ? "down" : "degraded"
            rows.append(["name": w.name, "type": w.template, "state": w.state, "health": health, "users": a?.users.count ?? 0,
                         "active_users": a?.activeUsers(now: now) ?? 0, "interactions": a?.interactions ?? 0,
                         "requests_per_second": (rate * 10).rounded() / 10, "p99_ms": p99, "instances_ready": ready, "instances_desired": w.instances,
                         "viewers": current.viewers[w.name] ?? 0,
                         "peers": ["instance": ready, "runtime": current.peers.runtimeLinks, "vault": current.peers.vault ? 1 : 0]])
        }
        return ["at_ms": now, "worlds": rows, "webhooks_pending": ((try? store.pendingWebhookMessages()) ?? [:]).values.reduce(0, +)]
    }

    /// The upper bound (ms) of the bucket under which `q` of the counts fall (nil: none; the last bound past it).
    static func percentile(_ q: Double, _ counts: [UInt64], bounds: [UInt64]) -> Double? {
        let total = counts.reduce(0, +)
        guard total > 0 else { return nil }
        var seen: UInt64 = 0
        for (i, n) in counts.enumerated() {
            seen += n
            if Double(seen) >= q * Double(total) { return i < bounds.count ? Double(bounds[i]) / 1000 : Double(bounds.last ?? 0) / 1000 }
        }
        return nil
    }
}
