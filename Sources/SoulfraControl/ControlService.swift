import Foundation
import Synchronization
import SoulfraConfig
import SoulfraKeys
import SoulfraLimits

/// What the data plane takes from the control plane: each world's instance token and its keys, in the forms
/// the gateway's key table and the broker's access table are built from.
public struct ControlTables: Sendable, Equatable {
    public var instanceTokens: [String: String] = [:]
    public var gatewayKeys: [SoulfraLimits.KeyRecord] = []
    public var quotas: [KeyQuota] = []
    /// Keys with a monthly budget: their counters (the same objects from one table to the next).
    public var budgets: [UInt64: BudgetCounter] = [:]
    /// Browser origins allowed per world (CORS).
    public var origins: [String: [String]] = [:]
    public init() {}

    /// Gateway key ids of control-plane keys start here, above any a config file uses.
    public static let keyIDBase: UInt64 = 1 << 40
}

/// The control plane in the daemon: one serial queue owns the state (SQLite), the driver and the reconciler.
/// A pass runs every `tickMilliseconds` and after every change; admin API calls are queued onto it and
/// answered from it; whenever keys or worlds change, the tables are published to the loops.
public final class ControlService: @unchecked Sendable {
    public struct Settings: Sendable {
        /// The daemon's control directory: control.db, the instances' pid and log files, the instance secret.
        public var directory: String
        public var templatesDirectory: String
        /// The soulfra binary instances run (`soulfra world`).
        public var executable: String
        /// Where instances attach: the broker's unix socket path, or host:port.
        public var brokerAddress: String
        /// The gateway's base URL, for endpoints and curl examples.
        public var gatewayURL: String
        public var tickMilliseconds = 250
        /// How long a stopping instance has to drain before it is killed.
        public var stopGraceMilliseconds = 10_000
        /// What cost is figured from.
        public var pricing = Pricing()
        /// Per-key series on `/metrics` (`metrics.per_key_labels`).
        public var perKeyMetrics = false
        /// A user's message counts that are announced (`user_milestone`).
        public var userMilestones: Set<Int> = [10, 100, 1_000]

        public init(directory: String, templatesDirectory: String, executable: String, brokerAddress: String, gatewayURL: String) {
            self.directory = directory
            self.templatesDirectory = templatesDirectory
            self.executable = executable
            self.brokerAddress = brokerAddress
            self.gatewayURL = gatewayURL
        }
    }

    public private(set) var settings: Settings
    let queue = DispatchQueue(label: "soulfra-control")
    let store: ControlStore
    let plane: ControlPlane
    public var driverName: String { plane.driver.name }
    let secret: [UInt8]
    let catalog: [WorldTemplate.Kind: WorldTemplate]
    let catalogTexts: [WorldTemplate.Kind: String]
    let publish: @Sendable (ControlTables) -> Void
    let log: @Sendable (String) -> Void
    var published: ControlTables?
    /// What the data plane sees of each world: instances attached and taking streams, and room viewers.
    public struct Live: Sendable {
        public var attached: [String: [String]] = [:]
        public var viewers: [String: Int] = [:]
        public var rooms: [String: Int] = [:]
        public var peers = StreamPeers(runtimeLinks: 0, vault: false)
        /// Each world's gateway latency, all routes: cumulative counts per bucket (upper bounds in µs).
        public var latency: [String: [UInt64]] = [:]
        public var latencyBoundsMicros: [UInt64] = []
        public init(attached: [String: [String]] = [:], viewers: [String: Int] = [:], rooms: [String: Int] = [:],
                    peers: StreamPeers = StreamPeers(runtimeLinks: 0, vault: false), latency: [String: [UInt64]] = [:],
                    latencyBoundsMicros: [UInt64] = []) {
            self.attached = attached
            self.viewers = viewers
            self.rooms = rooms
            self.peers = peers
            self.latency = latency
            self.latencyBoundsMicros = latencyBoundsMicros
        }
    }
    /// Set once the data plane runs.
    let liveSource = Mutex<(@Sendable () -> Live)?>(nil)
    var live: Live { liveSource.withLock { $0 }?() ?? Live() }
    var timer: DispatchSourceTimer?
    let startedAt = Date()
    var startedAtMilliseconds: Int64 { Int64(startedAt.timeIntervalSince1970 * 1000) }
    /// Webhooks: endpoints, messages and deliveries (state in control.db, decisions on this queue).
    public let webhooks: WebhookDispatcher
    /// When each alert text was last sent (the same alert goes at most once a minute).
    var alerted: [String: Int64] = [:]
    var lastTickError = ""
    let logs: LogFollowers
    /// Makes a world's vault key before its first event (set by the daemon when it runs a vault with a key
    /// directory; nil: a template asking for an encrypted vault is told it cannot have one here).
    public var prepareEncryption: (@Sendable (String) throws -> Void)?
    /// How worlds' events are read for their analytics, and where the documents go (set by the daemon before
    /// `start`; nil: no analytics).
    public var readEvents: EventReader?
    public var publishAnalytics: (@Sendable ([String: [UInt8]]) -> Void)?
    /// Removes a world's vault and key for good (`shutdown --purge`); the callback gets nil or what failed.
    public var purgeVault: (@Sendable (String, @escaping @Sendable (String?) -> Void) -> Void)?
    var analytics: [String: WorldAnalytics] = [:]
    /// Worlds with a read in flight, since when.
    var reading: [String: Int64] = [:]
    /// The last read failure per world (each new one is logged once).
    var analyticsErrors: [String: String] = [:]
    var lastRollUp: Int64 = 0
    /// Worlds whose vault is being purged (their row goes when it is done).
    var purging = Set<String>()
    /// `/metrics` lines from the roll-ups, ready for the admin listener's loop to read.
    public let metricsText = Mutex("")
    /// Instance log files rotated (status shows it).
    var logsRotated = 0
    /// The gateway's access log entries published since the last call (set by the daemon before `start`).
    public var readAccessLog: (@Sendable () -> [AccessEntry])?
    /// Each loop's per-key counts (set by the daemon before `start`; nil: no usage is counted).
    public var readUsage: (@Sendable () -> [[UInt64: KeyUsage]])?
    /// The loop counts the last written roll-up included, when it ran, and its last failure.
    var usageSeen: [[UInt64: KeyUsage]] = []
    var lastUsageRollUp: Int64 = 0
    var usageError = ""
    /// Budgeted keys' counters, shared with every loop through the key table and kept current by the roll-ups.
    var budgetCounters: [UInt64: BudgetCounter] = [:]
    var originsCache: [String: (spec: String, origins: [String])] = [:]
    /// Instances' CPU and memory as last sampled (every 10 s, off the control queue), by `world/id`.
    var resourceSamples: [String: InstanceUsage] = [:]
    /// The handle (pid, container) of each instance the last reading covered, by `world/id`.
    var sampledHandles: [String: String] = [:]
    /// Where the samples are read: the engine's stats can take seconds per container, which the control queue
    /// (the admin API, the passes) must not wait for. Serial: one sampling at a time.
    let sampler = DispatchQueue(label: "soulfra-control.stats")
    var sampling = false
    /// The panel's live feed: its followers and the samples rates are taken over.
    var liveFollowers: [@Sendable (ControlReply) -> Bool] = []
    var liveSamples: [LiveSample] = []
    var lastLivePush: Int64 = 0
    var lastResourceSample: Int64 = 0

    /// Opens the state (refusing a second daemon on the same directory), loads the templates and makes the
    /// driver. Nothing runs until `start`.
    public init(settings: Settings, driver: InstanceDriver, publish: @escaping @Sendable (ControlTables) -> Void,
                log: @escaping @Sendable (String) -> Void) throws {
        self.settings = settings
        self.store = try ControlStore(directory: settings.directory)
        self.secret = try Self.loadSecret(settings.directory + "/instance.secret")
        let catalog = try WorldTemplate.catalog(directory: settings.templatesDirectory)
        guard !catalog.isEmpty else {
            throw DriverError("no templates in \(settings.templatesDirectory) (kids.json, executive.json, sports.json, custom.json expected)")
        }
        self.catalog = catalog
        var texts: [WorldTemplate.Kind: String] = [:]
        for kind in catalog.keys {
            texts[kind] = try String(contentsOfFile: settings.templatesDirectory + "/" + kind.rawValue + ".json", encoding: .utf8)
        }
        self.catalogTexts = texts
        self.publish = publish
        self.log = log
        self.logs = LogFollowers(directory: Self.instanceDirectory(settings.directory))
        self.webhooks = WebhookDispatcher(store: store, queue: queue)
        var specOf: (WorldRecord, String) -> InstanceSpec? = { _, _ in nil }
        self.plane = ControlPlane(store: store, driver: driver) { specOf($0, $1) }
        plane.stopGraceMilliseconds = settings.stopGraceMilliseconds
        specOf = { [unowned self] w, id in instanceSpec(w, id) }
        webhooks.log = { [unowned self] line in self.log(line) }
    }

    /// Where a directory's instances keep their pid and log files.
    public static func instanceDirectory(_ directory: String) -> String { directory + "/instances" }

    /// Starts the passes (the first at once) and the log followers. Calls before this are answered 503.
    public func start(gatewayURL: String, live: @escaping @Sendable () -> Live) {
        liveSource.withLock { $0 = live }
        queue.sync { settings.gatewayURL = gatewayURL }
        queue.async { [self] in pass() }  // the first pass may start instances: not on the caller's thread
        let t = DispatchSource.makeTimerSource(queue: queue)
        t.schedule(deadline: .now() + .milliseconds(settings.tickMilliseconds), repeating: .milliseconds(settings.tickMilliseconds))
        t.setEventHandler { [unowned self] in pass() }
        t.resume()
        timer = t
        logs.start()
    }

    static func now() -> Int64 { Int64(Date().timeIntervalSince1970 * 1000) }

    /// One pass: reconcile, finish worlds that were shutting down, publish the tables if they changed.
    func pass() {
        let now = Self.now()
        do {
            try plane.tick(now: now)
            sampleResources(now: now)
            for exit in plane.reconciler.takeExits() {
                alert(world: exit.world, "instance \(exit.id) exited" + (exit.crashLooping ? "; it is crash-looping and stays down for a minute" : "; it is restarted"))
            }
            try finishShutdowns(now: now)
            try announceDeployments(now: now)
            webhooks.tick(now: now)
            pushLive(now: now)
            if now - lastUsageRollUp >= Self.usageIntervalMilliseconds { rollUpUsage(now: now) }
            let t = try tables(now: now)
            logs.worlds.withLock { $0 = Set(t.instanceTokens.keys) }
            writeAccessLog(worlds: Set(t.instanceTokens.keys))
            if now - lastRollUp >= 2_000 {
                lastRollUp = now
                // Only running worlds are read: one shutting down may be purged, and a read would open it again.
                rollUp(worlds: try store.worlds().filter { $0.state == "active" }.map { ($0.name, $0.createdAt) }, now: now)
                logsRotated += logs.rotate()
            }
            if t != published {
                published = t
                publish(t)
            }
            lastTickError = ""
        } catch {
            let text = "\(error)"
            if text != lastTickError { alert(world: "", "control: \(text)") }
            lastTickError = text
        }
    }

    /// Logs an `error_alert` line and sends it to the webhooks that want it (the same text at most once a minute).
    func alert(world: String, _ message: String) {
        if world.isEmpty { log("error_alert " + message) } else { note(world: world, message, level: "ERROR") }
        let now = Self.now()
        alerted = alerted.filter { now - $0.value < 60_000 }
        let key = world + "\u{0}" + message
        guard alerted[key] == nil else { return }
        alerted[key] = now
        webhooks.emit("error_alert", world: world, data: ["world": world, "message": message], now: now)
    }

    /// `deployment_complete`, once per world (kept in control.db): when all its wanted instances are attached
    /// and taking streams for the first time.
    func announceDeployments(now: Int64) throws(ControlError) {
        let pending = try store.worlds().filter { $0.state == "active" && $0.announcedAt == nil && $0.instances > 0 }
        guard !pending.isEmpty else { return }
        let attached = live.attached
        for w in pending where Set(attached[w.name] ?? []).count >= w.instances {
            guard try store.markAnnounced(world: w.name, now: now) else { continue }
            webhooks.emit("deployment_complete", world: w.name, data: [
                "world": w.name, "template": w.template, "instances": w.instances, "driver": driverName,
                "endpoint": "\(settings.gatewayURL)/v1/worlds/\(w.name)", "seconds": Double(now - w.createdAt) / 1000,
            ], now: now)
        }
    }

    /// Worlds being shut down whose instances have all stopped are removed (their keys and instance rows go).
    func finishShutdowns(now: Int64) throws(ControlError) {
        let stopping = try store.worlds().filter { $0.state == "stopping" || $0.state == "purging" }
        guard !stopping.isEmpty else { return }
        let running = Set(plane.driver.observe().map(\.world))
        for w in stopping where !running.contains(w.name) && !purging.contains(w.name) {
            guard w.state == "purging", let purgeVault else {
                try removeWorld(w.name, now: now)
                log("world \(w.name): shut down (its vault is kept)")
                continue
            }
            // The world stays (its name taken, `shutdown` waiting) until its vault is gone: a deploy under the
            // name must not open a log, or make a key, that the purge then removes.
            purging.insert(w.name)
            let name = w.name
            purgeVault(name) { [self] failure in
                queue.async { [self] in
                    purging.remove(name)
                    if let failure {
                        alert(world: name, "its vault was not purged (\(failure)); the world is removed, its files kept")
                    } else {
                        log("world \(name): shut down, vault purged")
                    }
                    try? removeWorld(name, now: Self.now())
                }
            }
        }
    }

    /// Deletes a stopped world's row (keys and instance rows go with it) and its instances' logs: a world
    /// deployed later under the name starts clean.
    func removeWorld(_ name: String, now: Int64) throws(ControlError) {
        try store.deleteWorld(name, actor: "control", now: now)
        try? FileManager.default.removeItem(atPath: Self.instanceDirectory(settings.directory) + "/" + name)
    }

    /// The data plane's tables from the state: worlds that run (or are draining) have an instance token; their
    /// live keys are admitted until they expire or their revocation (a rotation's grace) comes.
    func tables(now: Int64) throws(ControlError) -> ControlTables {
        var t = ControlTables()
        let resets = Self.monthStart(now).nextMonth
        for w in try store.worlds() {
            t.instanceTokens[w.name] = instanceToken(w.name)
            if w.state == "active", let o = origins(of: w), !o.isEmpty { t.origins[w.name] = o }
        }
        for k in try store.keys() where k.live(at: now) && t.instanceTokens[k.world] != nil {
            guard let digest = SecretDigest(raw: k.digest) else { continue }
            let q = KeyQuotas(json: k.quotas)
            let id = ControlTables.keyIDBase + UInt64(k.id)
            var permissions: Permissions = []
            for name in k.permissions { if let p = Permissions.names.first(where: { $0.0 == name }) { permissions.insert(p.1) } }
            let until = [k.expiresAt, k.revokedAt].compactMap { $0 }.min()
            var record = SoulfraLimits.KeyRecord(
                id: id, digest: digest, prefix: k.prefix, world: k.world, permissions: permissions,
                requestsPerSecond: UInt32(clamping: q.requestsPerSecond), burst: UInt32(clamping: q.burst),
                expiresAt: until.map { UInt64(max(0, $0) / 1000) })
            if q.monthlyInteractions > 0 {
                record.monthlyInteractions = UInt64(q.monthlyInteractions)
                record.budgetResetsAt = resets
                t.budgets[id] = budgetCounters[id] ?? freshCounter(id, now: now)
            }
            t.gatewayKeys.append(record)
            t.quotas.append(KeyQuota(keyID: id, world: k.world, maxStreams: q.concurrentStreams))
        }
        return t
    }

    /// A world's allowed browser origins, read from its stored spec once per change.
    func origins(of w: WorldRecord) -> [String]? {
        if let c = originsCache[w.name], c.spec == w.spec { return c.origins }
        guard let spec = try? WorldSpec.decode(name: w.name, json: w.spec) else { return nil }
        originsCache[w.name] = (w.spec, spec.corsOrigins)
        return spec.corsOrigins
    }

    /// A world's instance token: derived from the daemon's secret, so instances adopted after a restart still
    /// attach, and never stored.
    func instanceToken(_ world: String) -> String {
        hmacSHA256(key: secret, message: Array("soulfra instance token v1:\(world)".utf8)).map { String(format: "%02x", $0) }.joined()
    }

    /// How an instance of a world is run.
    func instanceSpec(_ w: WorldRecord, _ id: String) -> InstanceSpec? {
        guard let spec = try? WorldSpec.decode(name: w.name, json: w.spec) else { return nil }
        let t = spec.template
        var args = ["world", "--world", w.name, "--broker", settings.brokerAddress, "--name", id, "--stream-mode", spec.streamMode,
                    "--pacing-ms", String(t.pacingMilliseconds), "--backend", t.backend, "--template", t.kind.rawValue,
                    "--drain-seconds", String(max(1, (settings.stopGraceMilliseconds - 2_000) / 1000))]
        for a in spec.activeAgents { args += ["--agent", "\(a.name):\(a.style):\(a.greeting)"] }
        let agents = spec.activeAgents.map { a -> [String: Any] in
            ["name": a.name, "style": a.style, "greeting": a.greeting, "topics": a.topics, "knowledge": a.knowledge]
        }
        let agentsJSON = String(decoding: (try? JSONSerialization.data(withJSONObject: agents, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
        // A template's environment cannot reach the loader or pose as the daemon's own settings.
        var environment = t.environment.filter { !$0.key.hasPrefix("LD_") && !$0.key.hasPrefix("SOULFRA_") }
        environment["SOULFRA_INSTANCE_TOKEN"] = instanceToken(w.name)
        environment["SOULFRA_AGENTS"] = agentsJSON
        return InstanceSpec(world: w.name, id: id, arguments: args, environment: environment,
                            memoryBytes: t.resources.memoryBytes, cpus: t.resources.cpus, image: t.image, storageBytes: t.resources.storageBytes)
    }

    /// 32 random bytes, made once (mode 0600) and kept: the root of the instance tokens.
    static func loadSecret(_ path: String) throws -> [UInt8] {
        if let data = FileManager.default.contents(atPath: path), data.count == 32 { return Array(data) }
        var rng = SystemRandomNumberGenerator()
        let bytes = (0..<32).map { _ in UInt8.random(in: 0...255, using: &rng) }
        let fd = open(path + ".new", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw DriverError("cannot write \(path): \(String(cString: strerror(errno)))") }
        let ok = bytes.withUnsafeBytes { write(fd, $0.baseAddress, 32) } == 32 && fsync(fd) == 0
        close(fd)
        guard ok, rename(path + ".new", path) == 0 else { throw DriverError("cannot write \(path): \(String(cString: strerror(errno)))") }
        return bytes
    }

    /// Stops the passes and the followers (the instances keep running: a restarted daemon adopts them). Called
    /// once the loops have stopped, it rolls up their final counts.
    public func stop() {
        queue.sync {
            timer?.cancel()
            timer = nil
            rollUpUsage(now: Self.now())
        }
        logs.stop()
    }
}

/// A key's quotas as stored (JSON), with the template's names.
struct KeyQuotas: Equatable {
    var requestsPerSecond = 0
    var burst = 0
    var concurrentStreams = 0
    var monthlyInteractions = 0

    init(_ d: WorldTemplate.KeyDefaults) {
        requestsPerSecond = d.requestsPerSecond
        burst = d.burst
        concurrentStreams = d.concurrentStreams
        monthlyInteractions = d.monthlyInteractions
    }

    init(json: String) {
        let o = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] ?? [:]
        requestsPerSecond = o["requests_per_second"] as? Int ?? 0
        burst = o["burst"] as? Int ?? 0
        concurrentStreams = o["concurrent_streams"] as? Int ?? 0
        monthlyInteractions = o["monthly_interactions"] as? Int ?? 0
    }

    var object: [String: Any] {
        ["requests_per_second": requestsPerSecond, "burst": burst, "concurrent_streams": concurrentStreams,
         "monthly_interactions": monthlyInteractions]
    }

    var json: String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
    }
}
