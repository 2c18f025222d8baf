import SoulfraLimits
import SoulfraMetrics

/// The control plane's part of `/metrics`, rebuilt every roll-up (2 s) and read by the admin listener. Label
/// sets are bounded: `world` by the worlds deployed, `instance` by a world's `scaling.max_instances`, `key`
/// only when `metrics.per_key_labels` asks for it.
extension ControlService {
    /// What the data plane sees of each world's 3-way stream, besides its instances.
    public struct StreamPeers: Sendable {
        public var runtimeLinks: Int
        public var vault: Bool
        public init(runtimeLinks: Int, vault: Bool) {
            self.runtimeLinks = runtimeLinks
            self.vault = vault
        }
    }

    func controlMetrics(now: Int64) -> String {
        var o = PrometheusText(prefix: "soulfra_world")
        let worlds = ((try? store.worlds()) ?? []).filter { $0.state == "active" }
        analyticsMetrics(&o, now: now)
        usageMetrics(&o)
        instanceMetrics(&o, worlds: worlds, now: now)
        return o.text + webhookMetrics() + (settings.perKeyMetrics ? keyMetrics() : "")
    }

    /// Users, interactions, tantrums and the runtime's reply times, from the vault roll-ups.
    func analyticsMetrics(_ o: inout PrometheusText, now: Int64) {
        let names = analytics.keys.sorted()
        o.family("users", .gauge, "Users (sessions that sent a message) a world has had.")
        for n in names { o.sample("users", ["world": n], analytics[n]!.users.count) }
        o.family("active_users", .gauge, "Users who sent a message in the last 5 minutes.")
        for n in names { o.sample("active_users", ["world": n], analytics[n]!.activeUsers(now: now)) }
        o.family("interactions_total", .counter, "Users' messages to a world, as stored in its vault.")
        for n in names { o.sample("interactions_total", ["world": n], analytics[n]!.interactions) }
        o.family("tantrums_per_minute", .gauge, "Tantrums in an executive world in the last minute.")
        for n in names { o.sample("tantrums_per_minute", ["world": n], analytics[n]!.tantrumsLastMinute(now: now)) }
        let series: [(String, String, KeyPath<WorldAnalytics, [Int]>, KeyPath<WorldAnalytics, Double>)] = [
            ("ai_time_to_first_token_seconds", "Agents' time to their first token, as the runtime reported it.", \.firstToken, \.firstTokenSumMilliseconds),
            ("ai_reply_seconds", "Agents' whole reply time, as the runtime reported it.", \.latency, \.latencySumMilliseconds),
        ]
        for (name, help, buckets, sum) in series {
            o.family(name, .histogram, help)
            for n in names {
                let a = analytics[n]!
                var cumulative = 0
                for (i, bound) in WorldAnalytics.bounds.enumerated() {
                    cumulative += a[keyPath: buckets][i]
                    o.sample(name + "_bucket", ["world": n, "le": String(bound / 1000)], cumulative)
                }
                cumulative += a[keyPath: buckets][WorldAnalytics.bounds.count]
                o.sample(name + "_bucket", ["world": n, "le": "+Inf"], cumulative)
                o.sample(name + "_sum", ["world": n], a[keyPath: sum] / 1000)
                o.sample(name + "_count", ["world": n], cumulative)
            }
        }
    }

    /// Requests, interactions, bytes and tokens per world since the daemon started, from the loops' counts.
    func usageMetrics(_ o: inout PrometheusText) {
        var byWorld: [String: KeyUsage] = [:]
        for loop in readUsage?() ?? [] {
            for u in loop.values { byWorld[u.world, default: KeyUsage(world: u.world, prefix: "")].add(u) }
        }
        let names = byWorld.keys.sorted()
        o.family("requests_total", .counter, "Requests admitted at the gateway for a world.")
        for n in names { o.sample("requests_total", ["world": n], byWorld[n]!.requests) }
        o.family("gateway_interactions_total", .counter, "Interactions charged at the gateway (messages requests and stream messages).")
        for n in names { o.sample("gateway_interactions_total", ["world": n], byWorld[n]!.interactions) }
        o.family("bytes_total", .counter, "Body bytes through the gateway for a world, by direction.")
        for n in names {
            o.sample("bytes_total", ["world": n, "direction": "in"], byWorld[n]!.bytesIn)
            o.sample("bytes_total", ["world": n, "direction": "out"], byWorld[n]!.bytesOut)
        }
        o.family("tokens_total", .counter, "Tokens in replies through the gateway, by direction (the runtime's counts).")
        for n in names {
            o.sample("tokens_total", ["world": n, "direction": "in"], byWorld[n]!.tokensIn)
            o.sample("tokens_total", ["world": n, "direction": "out"], byWorld[n]!.tokensOut)
        }
    }

    /// Every 10 s (a pass), the running instances' CPU and memory are read off the control queue; the samples
    /// come back to it. An instance the last reading did not cover (just started, or started again under the
    /// same id) is read within 2 s; one whose reading fails waits the 10 s like the others. A reading still
    /// running (a slow engine) is not doubled.
    func sampleResources(now: Int64) {
        let running = plane.lastObserved.filter { $0.state == .running }
        let uncovered = running.contains { sampledHandles[ObservedInstance.key($0.world, $0.id)] != $0.handle }
        guard !sampling, now - lastResourceSample >= (uncovered ? 2_000 : 10_000) else { return }
        lastResourceSample = now
        sampling = true
        let handles = Dictionary(running.map { (ObservedInstance.key($0.world, $0.id), $0.handle) }) { a, _ in a }
        let read = plane.driver.usageReader(running)
        sampler.async { [weak self] in
            let samples = read()
            self?.queue.async { [weak self] in
                self?.resourceSamples = samples
                self?.sampledHandles = handles
                self?.sampling = false
            }
        }
    }

    /// The last sample of a running instance, if it is of this process or container (not of one before it).
    func resourceSample(_ o: ObservedInstance) -> InstanceUsage? {
        let key = ObservedInstance.key(o.world, o.id)
        return sampledHandles[key] == o.handle ? resourceSamples[key] : nil
    }

    /// Instances by state, their CPU and memory (as last sampled), and the 3-way stream's peers.
    func instanceMetrics(_ o: inout PrometheusText, worlds: [WorldRecord], now: Int64) {
        let observed = plane.driver.observe()
        let current = live
        o.family("instances", .gauge, "A world's instances: wanted, running (as the driver sees them), ready (attached and taking streams), exited.")
        for w in worlds {
            let mine = observed.filter { $0.world == w.name }
            let running = mine.filter { $0.state == .running }.count
            o.sample("instances", ["world": w.name, "state": "desired"], w.instances)
            o.sample("instances", ["world": w.name, "state": "running"], running)
            o.sample("instances", ["world": w.name, "state": "ready"], Set(current.attached[w.name] ?? []).count)
            o.sample("instances", ["world": w.name, "state": "exited"], mine.count - running)
        }
        o.family("stream_peers", .gauge, "The 3-way stream's peers a world's messages go through, by peer kind (runtime workers and the vault serve every world).")
        for w in worlds {
            o.sample("stream_peers", ["world": w.name, "peer_kind": "instance"], Set(current.attached[w.name] ?? []).count)
            o.sample("stream_peers", ["world": w.name, "peer_kind": "runtime"], current.peers.runtimeLinks)
            o.sample("stream_peers", ["world": w.name, "peer_kind": "vault"], current.peers.vault ? 1 : 0)
        }
        // Only samples of what runs now (not of an instance gone, or of the process before a restart).
        let sampled = observed.sorted { ($0.world, $0.id) < ($1.world, $1.id) }.compactMap { i in
            i.state == .running ? resourceSample(i).map { (instance: i, usage: $0) } : nil
        }
        o.family("instance_cpu_seconds_total", .counter, "CPU time an instance has used (/proc for processes, the engine's stats for containers).")
        for s in sampled { o.sample("instance_cpu_seconds_total", ["world": s.instance.world, "instance": s.instance.id], s.usage.cpuSeconds) }
        o.family("instance_memory_bytes", .gauge, "Memory an instance uses (resident set, or the container's usage).")
        for s in sampled { o.sample("instance_memory_bytes", ["world": s.instance.world, "instance": s.instance.id], s.usage.memoryBytes) }
    }

    /// Webhook attempts by outcome, endpoints by state, messages waiting.
    func webhookMetrics() -> String {
        var o = PrometheusText(prefix: "soulfra_webhook")
        o.family("deliveries_total", .counter, "Webhook attempts since the daemon started, by outcome (gave_up: a message's last attempt failed).")
        for outcome in ["success", "failure", "gave_up"] { o.sample("deliveries_total", ["outcome": outcome], webhooks.outcomes[outcome] ?? 0) }
        let endpoints = (try? store.webhooks()) ?? []
        o.family("endpoints", .gauge, "Webhook endpoints by state.")
        for state in ["enabled", "disabled"] { o.sample("endpoints", ["state": state], endpoints.filter { $0.state == state }.count) }
        o.single("pending_messages", .gauge, "Webhook messages waiting for an attempt.", ((try? store.pendingWebhookMessages()) ?? [:]).values.reduce(0, +))
        return o.text
    }

    /// Per-key series (`metrics.per_key_labels`): the key's prefix as the label.
    func keyMetrics() -> String {
        var byKey: [UInt64: KeyUsage] = [:]
        for loop in readUsage?() ?? [] {
            for (id, u) in loop { byKey[id, default: KeyUsage(world: u.world, prefix: u.prefix)].add(u) }
        }
        var o = PrometheusText(prefix: "soulfra_key")
        let ids = byKey.keys.sorted()
        o.family("requests_total", .counter, "Requests admitted for a key.")
        for id in ids { o.sample("requests_total", ["world": byKey[id]!.world, "key": byKey[id]!.prefix], byKey[id]!.requests) }
        o.family("interactions_total", .counter, "Interactions charged to a key.")
        for id in ids { o.sample("interactions_total", ["world": byKey[id]!.world, "key": byKey[id]!.prefix], byKey[id]!.interactions) }
        return o.text
    }
}
