import Foundation
import SoulfraConfig
import SoulfraKeys

/// One admin API call as the control plane sees it (the admin listener has checked the admin token).
public struct ControlRequest: Sendable {
    public var method: String
    public var parameters: [String: String]
    public var query: [(String, String)]
    public var body: [UInt8]
    /// The client asked for `text/event-stream` (a follow).
    public var wantsEvents: Bool

    public init(method: String, parameters: [String: String], query: [(String, String)] = [], body: [UInt8] = [], wantsEvents: Bool = false) {
        self.method = method
        self.parameters = parameters
        self.query = query
        self.body = body
        self.wantsEvents = wantsEvents
    }

    func value(_ name: String) -> String? { query.last { $0.0 == name }?.1 }
    var world: String { parameters["world"] ?? "" }

    /// The body as a JSON object ({} when empty).
    func object() throws(APIError) -> [String: Any] {
        guard !body.isEmpty else { return [:] }
        guard let o = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            throw APIError(400, "invalid_request", "the body must be a JSON object")
        }
        return o
    }
}

/// What the control plane answers: a JSON document, or a stream of server-sent events.
public enum ControlReply: Sendable {
    case json(status: Int, String)
    case streamHead
    case event(String)
    case end
}

/// The admin API's routes (docs/api.md): a table of method, pattern and handler. Handlers run on the control
/// queue; a follow (logs) hands its stream to the followers and returns nil.
extension ControlService {
    typealias Handler = @Sendable (ControlService, ControlRequest, @escaping @Sendable (ControlReply) -> Bool) throws -> (Int, Any)?

    static let routeTable: [(method: String, pattern: String, handler: Handler)] = worldRoutes + webhookRoutes

    static let worldRoutes: [(method: String, pattern: String, handler: Handler)] = [
        ("GET", "/admin/v1/status", { s, _, _ in (200, try s.status()) }),
        ("GET", "/admin/v1/worlds", { s, _, _ in (200, ["worlds": try s.worldList()]) }),
        ("POST", "/admin/v1/worlds", { s, r, _ in (201, try s.deploy(r)) }),
        ("GET", "/admin/v1/worlds/{world}", { s, r, _ in (200, try s.worldDetail(r.world)) }),
        ("DELETE", "/admin/v1/worlds/{world}", { s, r, _ in (202, try s.shutdown(r)) }),
        ("POST", "/admin/v1/worlds/{world}/scale", { s, r, _ in (200, try s.scale(r)) }),
        ("POST", "/admin/v1/worlds/{world}/cors", { s, r, _ in (200, try s.setCORS(r)) }),
        ("GET", "/admin/v1/worlds/{world}/keys", { s, r, _ in (200, ["keys": try s.keyList(r.world)]) }),
        ("POST", "/admin/v1/worlds/{world}/keys", { s, r, _ in (201, try s.createKey(r)) }),
        ("DELETE", "/admin/v1/worlds/{world}/keys/{key}", { s, r, _ in (200, try s.revokeKey(r)) }),
        ("POST", "/admin/v1/worlds/{world}/keys/{key}/rotate", { s, r, _ in (201, try s.rotateKey(r)) }),
        ("GET", "/admin/v1/worlds/{world}/logs", { s, r, reply in try s.logs(r, reply: reply) }),
        ("GET", "/admin/v1/events", { s, r, _ in (200, try s.events(r)) }),
        ("GET", "/admin/v1/usage", { s, r, _ in (200, try s.usage(r)) }),
        ("GET", "/admin/v1/live", { s, r, reply in try s.live(r, reply: reply) }),
    ]

    /// `(method, pattern)` of every route, for the admin listener's table.
    public static var routes: [(method: String, pattern: String)] { routeTable.map { ($0.method, $0.pattern) } }

    /// Answers a call to `routes[route]` on the control queue; `reply` may be called from any thread and
    /// returns false once the client is gone.
    public func handle(_ request: ControlRequest, route: Int, reply: @escaping @Sendable (ControlReply) -> Bool) {
        queue.async { [self] in
            guard !settings.gatewayURL.isEmpty else {
                _ = reply(.json(status: 503, APIError(503, "starting", "the control plane is starting: try again in a moment").json + "\n"))
                return
            }
            let answer: (Int, Any)?
            do {
                answer = try Self.routeTable[route].handler(self, request, reply)
            } catch let e as APIError {
                _ = reply(.json(status: e.status, e.json + "\n"))
                return
            } catch {
                _ = reply(.json(status: 500, APIError(500, "internal", "\(error)").json + "\n"))
                return
            }
            guard let (status, body) = answer else { return }
            // A change takes effect before it is answered: the new keys are on their way to the loops (ahead
            // of this answer on the admin loop) and the instances are starting.
            if request.method == "POST" || request.method == "DELETE" { pass() }  // the loops have the change before the answer
            _ = reply(.json(status: status, Self.render(body)))
        }
    }

    static func render(_ value: Any) -> String {
        let data = (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data()
        return String(decoding: data, as: UTF8.self) + "\n"
    }

    func wrap<T>(_ body: () throws(ControlError) -> T) throws(APIError) -> T {
        do { return try body() } catch { throw APIError.from(error) }
    }

    func existingWorld(_ name: String) throws(APIError) -> WorldRecord {
        guard let w = try wrap({ () throws(ControlError) in try store.world(name) }), w.state == "active" else {
            throw APIError(404, "world_not_found", "no world named \"\(name)\" — `soulfra list` shows the worlds")
        }
        return w
    }

    // MARK: - Worlds

    func status() throws(APIError) -> [String: Any] {
        let worlds = try wrap { () throws(ControlError) in try store.worlds() }
        let observed = plane.driver.observe()
        return ["driver": driverName, "control_directory": settings.directory, "worlds": worlds.count,
                "instances": observed.filter { if case .running = $0.state { true } else { false } }.count,
                "uptime_seconds": Int(Date().timeIntervalSince(startedAt)), "gateway": settings.gatewayURL,
                "templates": catalog.keys.map(\.rawValue).sorted(), "logs_rotated": logsRotated,
                "template_agents": Dictionary(uniqueKeysWithValues: catalog.map { ($0.key.rawValue, $0.value.agents.map(\.name)) }),
                "template_defaults": Dictionary(uniqueKeysWithValues: catalog.map { ($0.key.rawValue, ["runtime": $0.value.runtimeProfile, "stream": $0.value.streamMode,
                                                                                                      "instances": $0.value.scaling.minInstances,
                                                                                                      "max_instances": $0.value.scaling.maxInstances] as [String: Any]) }),
                "log_rotate_bytes": LogFollowers.rotateBytes]
    }

    func deploy(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let request = try DeployRequest.parse(r.body)
        let (spec, count) = try request.resolve(catalog: catalog, catalogTexts: catalogTexts)
        let now = Self.now()
        if let old = try wrap({ () throws(ControlError) in try store.world(spec.name) }) {
            throw APIError(409, "world_exists", old.state != "active"
                ? "world \"\(spec.name)\" is still shutting down — wait for it to go, then deploy again"
                : "world \"\(spec.name)\" already exists — pick another name, or `soulfra shutdown \(spec.name)` first")
        }
        var vault = "plain"
        if spec.template.encryptsVault {
            guard let prepareEncryption else {
                throw APIError(422, "encryption_unavailable", "the \(spec.template.kind.rawValue) template asks for an encrypted vault (\(spec.template.environment.filter { $0.key.contains("PRIVACY") || $0.key.contains("ENCRYPTION") }.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: ", "))), but this daemon has no vault key directory (vault.key_directory)")
            }
            do { try prepareEncryption(spec.name) } catch let e as ControlError {
                throw APIError(409, "vault_kept", "world \(spec.name)'s template asks for an encrypted vault, but there is \(e.description)")
            } catch {
                throw APIError(500, "encryption_failed", "cannot make the vault key of \(spec.name): \(error)")
            }
            vault = "encrypted (AES-256-GCM)"
        }
        try wrap { () throws(ControlError) in
            try store.createWorld(WorldRecord(name: spec.name, template: spec.template.kind.rawValue, spec: spec.json, instances: count,
                                              createdAt: now, updatedAt: now), actor: "admin", now: now)
        }
        let key: [String: Any]
        do { key = try issueKey(world: spec.name, template: spec.template, options: [:], now: now) } catch {
            _ = try? store.deleteWorld(spec.name, actor: "control", now: now)  // no world without its first key
            throw error
        }
        var out = try worldDetail(spec.name)
        out["key"] = key
        out["curl"] = curl(world: spec.name, secret: key["secret"] as? String ?? "")
        out["vault"] = vault
        let r = spec.template.resources
        let notes = plane.driver.unenforced(InstanceSpec(world: spec.name, id: "", arguments: [], memoryBytes: r.memoryBytes, cpus: r.cpus,
                                                         image: spec.template.image, storageBytes: r.storageBytes))
        if !notes.isEmpty { out["unenforced"] = notes }
        note(world: spec.name, "deployed from the \(spec.template.kind.rawValue) template, \(count) instance\(count == 1 ? "" : "s") (\(driverName) driver)")
        return out
    }

    func curl(world: String, secret: String) -> String {
        "curl -sN \(settings.gatewayURL)/v1/worlds/\(world)/messages -H 'Authorization: Bearer \(secret)' "
            + "-H 'accept: text/event-stream' -d '{\"text\":\"hello\",\"session\":\"me\"}'"
    }

    func worldList() throws(APIError) -> [[String: Any]] {
        let worlds = try wrap { () throws(ControlError) in try store.worlds() }
        let live = live
        let observed = plane.driver.observe()
        return worlds.map { w in summary(w, live: live, observed: observed.filter { $0.world == w.name }) }
    }

    func summary(_ w: WorldRecord, live: Live, observed: [ObservedInstance]) -> [String: Any] {
        let spec = try? WorldSpec.decode(name: w.name, json: w.spec)
        let attached = live.attached[w.name] ?? []
        return ["name": w.name, "viewers": live.viewers[w.name] ?? 0, "rooms": live.rooms[w.name] ?? 0,
                "users": analytics[w.name]?.users.count ?? 0, "interactions": analytics[w.name]?.interactions ?? 0, "type": w.template, "state": w.state, "instances_desired": w.instances,
                "instances_ready": Set(attached).count, "instances_running": observed.filter { if case .running = $0.state { true } else { false } }.count,
                "driver": driverName, "region": spec?.region ?? "local", "stream": spec?.streamMode ?? "",
                "agents": spec?.agents ?? [], "runtime": spec?.runtimeProfile ?? "", "cors_origins": spec?.corsOrigins ?? [],
                "created_at_ms": w.createdAt, "uptime_seconds": max(0, (Self.now() - w.createdAt) / 1000),
                "endpoint": "\(settings.gatewayURL)/v1/worlds/\(w.name)"]
    }

    func worldDetail(_ name: String) throws(APIError) -> [String: Any] {
        guard let w = try wrap({ () throws(ControlError) in try store.world(name) }) else {
            throw APIError(404, "world_not_found", "no world named \"\(name)\" — `soulfra list` shows the worlds")
        }
        let live = live
        let attached = live.attached[name] ?? []
        let observed = plane.driver.observe().filter { $0.world == name }
        var out = summary(w, live: live, observed: observed)
        out["instances"] = observed.map { o -> [String: Any] in
            var i: [String: Any] = ["id": o.id, "handle": o.handle, "started_at_ms": o.startedAt]
            switch o.state {
            case .running: i["health"] = attached.contains(o.id) ? "ready" : "starting"
            case .exited(let code): i["health"] = "exited"; i["exit_code"] = code.map { Int($0) } ?? NSNull()
            }
            if o.state == .running, let u = resourceSample(o) {
                i["cpu_seconds"] = u.cpuSeconds
                i["memory_bytes"] = u.memoryBytes
            }
            if let p = plane.problems[name + "/" + o.id] { i["problem"] = p }
            return i
        }
        out["keys"] = (try? keyList(name)) ?? []
        out["recent_errors"] = plane.problems.filter { $0.key.hasPrefix(name + "/") }.map { "\($0.key.dropFirst(name.count + 1)): \($0.value)" }.sorted()
            + logs.recent(world: name, lines: 200).filter { $0.level == "ERROR" }.suffix(5).map(\.text)
        return out
    }

    func shutdown(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let w = try existingWorld(r.world)
        let purge = r.value("purge") == "true" || r.value("purge") == "1"
        if purge && purgeVault == nil {
            throw APIError(501, "purge_unsupported", "this daemon runs no vault of its own (vault.directory is empty): purge the world in the vault process")
        }
        let now = Self.now()
        try wrap { () throws(ControlError) in
            try store.beginShutdown(world: w.name, purge: purge, actor: "admin", now: now)
        }
        note(world: w.name, "shutting down (instances drain, keys revoked\(purge ? ", then its vault is removed" : ""))")
        return ["name": w.name, "state": purge ? "purging" : "stopping", "vault": purge ? "purged once the instances stop" : "kept"]
    }

    func scale(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let w = try existingWorld(r.world)
        let value = try r.object()["instances"]
        guard let n = jsonInteger(value) else {
            throw APIError(400, "invalid_request", #"the body must say how many: {"instances": 3}"#)
        }
        let spec = try WorldSpec.decode(name: w.name, json: w.spec)
        try DeployRequest.checkInstances(n, spec.template)
        try wrap { () throws(ControlError) in try store.scale(world: w.name, instances: n, actor: "admin", now: Self.now()) }
        note(world: w.name, "scaled from \(w.instances) to \(n) instance\(n == 1 ? "" : "s")")
        webhooks.emit("scaling_event", world: w.name, data: ["world": w.name, "from": w.instances, "to": n, "actor": "admin"], now: Self.now())
        return try worldDetail(w.name)
    }

    /// Replaces the browser origins allowed to call a world (`{"allowed_origins": [...]}`; `[]`: none).
    func setCORS(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let w = try existingWorld(r.world)
        guard let list = try r.object()["allowed_origins"] as? [String] else {
            throw APIError(400, "invalid_request", #"the body must list the origins: {"allowed_origins": ["https://app.example.com"]}"#)
        }
        var spec = try WorldSpec.decode(name: w.name, json: w.spec)
        spec.corsOrigins = try WorldSpec.checkOrigins(list)
        let detail = "cors_origins=" + spec.corsOrigins.joined(separator: ",")
        try wrap { () throws(ControlError) in try store.updateSpec(world: w.name, spec: spec.json, detail: detail, actor: "admin", now: Self.now()) }
        note(world: w.name, "browser origins \(spec.corsOrigins.isEmpty ? "none" : spec.corsOrigins.joined(separator: ", "))")
        return try worldDetail(w.name)
    }

    func events(_ r: ControlRequest) throws(APIError) -> [String: Any] {
        let after = Int64(r.value("after") ?? "0") ?? 0
        let limit = min(1000, max(1, Int(r.value("limit") ?? "100") ?? 100))
        let entries = try wrap { () throws(ControlError) in try store.auditLog(after: after, limit: limit) }
        return ["events": entries.map { ["seq": $0.seq, "at_ms": $0.at, "actor": $0.actor, "action": $0.action, "target": $0.target, "detail": $0.detail] },
                "next_after": entries.last?.seq ?? after]
    }
}
