import Foundation
import SoulfraLimits

/// A world template: the brief's format (`type, name, agents, environment, resources`) plus what a world of
/// its kind needs to run — scaling rules, the permissions and quotas of its keys, the runtime profile and
/// backend, and the stream mode. `config/templates/<type>.json` ship with soulfra; users deploy their own
/// with `--template-file`. Everything is checked on load, and an error names the file, the field and the fix.
public struct WorldTemplate: Sendable, Equatable {
    public enum Kind: String, Sendable, CaseIterable { case kids, executive, sports, custom }

    public struct Agent: Sendable, Equatable {
        public var name: String
        public var style: String
        public var greeting: String
        public var topics: [String]
        public var knowledge: [String: String]
    }

    public struct Resources: Sendable, Equatable {
        /// Bytes of memory, CPUs (1.0 = one core), bytes of storage (0: not set).
        public var memoryBytes: UInt64
        public var cpus: Double
        public var storageBytes: UInt64
    }

    public struct Scaling: Sendable, Equatable {
        public var usersPerInstance: Int
        public var minInstances: Int
        public var maxInstances: Int
        /// What drives it: `users`, `viewers` or `tantrums_per_minute`.
        public var trigger: String
    }

    public struct KeyDefaults: Sendable, Equatable {
        public var permissions: [String]
        public var requestsPerSecond: Int
        public var burst: Int
        public var concurrentStreams: Int
        /// Interactions a key may make in a calendar month (0: no budget).
        public var monthlyInteractions: Int
    }

    public var kind: Kind
    public var name: String
    public var description: String
    public var image: String
    public var agents: [Agent]
    public var environment: [String: String]
    public var resources: Resources
    public var scaling: Scaling
    public var keys: KeyDefaults
    /// `balanced` or `enterprise`; `builtin` or `openai`; pacing of the builtin engine's words.
    public var runtimeProfile: String
    public var backend: String
    public var pacingMilliseconds: Int
    /// `3way_full` or `realtime`.
    public var streamMode: String

    /// The world's vault is encrypted at rest (`PRIVACY_MODE=maximum` or `SESSION_ENCRYPTION=enabled`).
    public var encryptsVault: Bool {
        environment["PRIVACY_MODE"] == "maximum" || environment["SESSION_ENCRYPTION"] == "enabled"
    }

    public static let styles = ["cheerful", "calm", "curious", "formal", "playful"]
    public static let permissions = ["world_access", "agent_interaction", "vault_storage", "analytics_read", "user_management"]
    public static let triggers = ["users", "viewers", "tantrums_per_minute"]
    public static let profiles = ["balanced", "enterprise"]
    public static let backends = ["builtin", "openai"]
    public static let streamModes = ["3way_full", "realtime"]

    /// A template that did not check out: where, what, and what to do.
    public struct Invalid: Error, CustomStringConvertible, Equatable {
        public let file: String
        public let field: String
        public let message: String
        public let fix: String
        public var description: String { "\(file): \(field.isEmpty ? "" : field + ": ")\(message)" + (fix.isEmpty ? "" : " — \(fix)") }
    }

    /// Reads and checks the template at `path`.
    public static func load(path: String) throws(Invalid) -> WorldTemplate {
        let data: Data
        do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
            throw Invalid(file: path, field: "", message: "cannot be read (\(error.localizedDescription))",
                          fix: "give the path of a template file (config/templates/ has examples)")
        }
        return try parse(data, file: path)
    }

    /// Checks a template's JSON; `file` names it in errors.
    public static func parse(_ data: Data, file: String) throws(Invalid) -> WorldTemplate {
        guard let top = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw Invalid(file: file, field: "", message: "is not a JSON object", fix: "a template is one object: {\"type\": …, \"name\": …, \"agents\": […]}")
        }
        do {
            return try TemplateReader(file: file).read(top)
        } catch let e as Invalid {
            throw e
        } catch let e as SettingError {
            throw Invalid(file: file, field: e.key, message: e.message, fix: "")
        } catch {
            throw Invalid(file: file, field: "", message: "\(error)", fix: "")
        }
    }

    /// The templates in `directory` (`<type>.json` each), by type.
    public static func catalog(directory: String) throws(Invalid) -> [Kind: WorldTemplate] {
        var out: [Kind: WorldTemplate] = [:]
        for kind in Kind.allCases {
            let path = directory + "/" + kind.rawValue + ".json"
            guard FileManager.default.fileExists(atPath: path) else { continue }
            let t = try load(path: path)
            guard t.kind == kind else {
                throw Invalid(file: path, field: "type", message: "is \"\(t.kind.rawValue)\" in \(kind.rawValue).json",
                              fix: "a template in config/templates/ is named after its type")
            }
            out[kind] = t
        }
        return out
    }

    /// "512MB", "2GB", "1.5G", "64M", or bytes: a size in bytes.
    static func bytes(_ text: String) -> UInt64? {
        let s = text.trimmingCharacters(in: .whitespaces).uppercased()
        let gib = 1_073_741_824.0, mib = 1_048_576.0, kib = 1_024.0
        let units: [(String, Double)] = [("GIB", gib), ("MIB", mib), ("KIB", kib), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3),
                                         ("G", gib), ("M", mib), ("K", kib), ("B", 1)]
        for (unit, factor) in units where s.hasSuffix(unit) {
            guard let n = Double(s.dropLast(unit.count).trimmingCharacters(in: .whitespaces)), n > 0, n.isFinite else { return nil }
            return UInt64(n * factor)
        }
        return UInt64(s)
    }
}

/// Reads a template object field by field (`JSONReader`), with the checks and the fixes to suggest.
struct TemplateReader {
    let file: String

    func fail(_ field: String, _ message: String, _ fix: String) -> WorldTemplate.Invalid {
        WorldTemplate.Invalid(file: file, field: field, message: message, fix: fix)
    }

    func oneOf(_ value: String, _ allowed: [String], field: String) throws -> String {
        guard allowed.contains(value) else { throw fail(field, "\"\(value)\" is not allowed", "use one of \(allowed.joined(separator: ", "))") }
        return value
    }

    func checkName(_ value: String, field: String, max: Int) throws -> String {
        let ok = !value.isEmpty && value.count <= max && value.utf8.allSatisfy { b in
            (b >= 0x61 && b <= 0x7A) || (b >= 0x30 && b <= 0x39) || b == 0x2D || b == 0x5F
        }
        guard ok else { throw fail(field, "\"\(value)\" is not a name", "1 to \(max) characters of a-z, 0-9, - and _") }
        return value
    }

    func read(_ top: [String: Any]) throws -> WorldTemplate {
        var r = JSONReader(object: top, path: "")
        guard let typeText = try r.string("type") else { throw fail("type", "is missing", "one of kids, executive, sports, custom") }
        guard let kind = WorldTemplate.Kind(rawValue: typeText) else {
            throw fail("type", "\"\(typeText)\" is not a world type", "use one of kids, executive, sports, custom")
        }
        guard let nameText = try r.string("name") else { throw fail("name", "is missing", "the template's name, e.g. \"\(kind.rawValue)-world\"") }
        let name = try checkName(nameText, field: "name", max: 64)
        let description = try r.string("description") ?? ""
        let image = try r.string("image") ?? (kind == .custom ? "soulfra/base-world:latest" : "soulfra/\(kind.rawValue)-world:latest")

        let agents = try readAgents(try r.array("agents"))
        let environment = try readEnvironment(try r.object("environment"))
        let resources = try readResources(try r.object("resources"))
        let scaling = try readScaling(try r.object("scaling"), kind: kind)
        let keys = try readKeys(try r.object("keys"), kind: kind)
        let runtime = try readRuntime(try r.object("runtime"))
        let streamMode = try oneOf(try r.string("stream_mode") ?? "3way_full", WorldTemplate.streamModes, field: "stream_mode")
        if let extra = r.remainingKeys.first {
            throw fail(extra, "is not a template field",
                       "the fields are type, name, description, image, agents, environment, resources, scaling, keys, runtime, stream_mode")
        }
        return WorldTemplate(kind: kind, name: name, description: description, image: image, agents: agents, environment: environment,
                             resources: resources, scaling: scaling, keys: keys, runtimeProfile: runtime.profile, backend: runtime.backend,
                             pacingMilliseconds: runtime.pacing, streamMode: streamMode)
    }

    func readAgents(_ list: [Any]?) throws -> [WorldTemplate.Agent] {
        guard let rawAgents = list, !rawAgents.isEmpty else {
            throw fail("agents", "is missing or empty", "list the world's agents, e.g. [\"cal\", \"domingo\"] or objects with name, style, greeting")
        }
        var agents: [WorldTemplate.Agent] = []
        for (i, raw) in rawAgents.enumerated() {
            let field = "agents[\(i)]"
            if let s = raw as? String {
                agents.append(.init(name: try checkName(s, field: field, max: 32), style: "calm", greeting: "", topics: [], knowledge: [:]))
                continue
            }
            guard let o = raw as? [String: Any] else { throw fail(field, "must be a name or an object", "e.g. {\"name\": \"cal\", \"style\": \"cheerful\"}") }
            var a = JSONReader(object: o, path: field + ".")
            guard let n = try a.string("name") else { throw fail(field + ".name", "is missing", "every agent has a name") }
            let style = try oneOf(try a.string("style") ?? "calm", WorldTemplate.styles, field: field + ".style")
            let greeting = try a.string("greeting") ?? ""
            var topics: [String] = []
            for t in try a.array("topics") ?? [] {
                guard let s = t as? String else { throw fail(field + ".topics", "must be strings", "e.g. [\"space\", \"dinosaurs\"]") }
                topics.append(s)
            }
            var knowledge: [String: String] = [:]
            if let k = try a.object("knowledge") {
                for (key, value) in k.object {
                    guard let s = value as? String else { throw fail(field + ".knowledge." + key, "must be a string", "a fact to tell when the word comes up") }
                    knowledge[key.lowercased()] = s
                }
            }
            try a.finish()
            agents.append(.init(name: try checkName(n, field: field + ".name", max: 32), style: style, greeting: greeting, topics: topics, knowledge: knowledge))
        }
        var seen = Set<String>()
        for (i, a) in agents.enumerated() where !seen.insert(a.name).inserted {
            throw fail("agents[\(i)].name", "\"\(a.name)\" is there twice", "agents' names are unique in a world")
        }
        return agents
    }

    func readEnvironment(_ reader: JSONReader?) throws -> [String: String] {

        var environment: [String: String] = [:]
        if let e = reader {
            for (key, value) in e.object {
                guard let s = value as? String else { throw fail("environment." + key, "must be a string", "environment values are strings, e.g. \"enabled\"") }
                environment[key] = s
            }
        }
        if let v = environment["PRIVACY_MODE"] { _ = try oneOf(v, ["standard", "high", "maximum"], field: "environment.PRIVACY_MODE") }
        if let v = environment["SESSION_ENCRYPTION"] { _ = try oneOf(v, ["enabled", "disabled"], field: "environment.SESSION_ENCRYPTION") }
        return environment
    }

    func readResources(_ reader: JSONReader?) throws -> WorldTemplate.Resources {

        var resources = WorldTemplate.Resources(memoryBytes: 256 << 20, cpus: 0.5, storageBytes: 0)
        if var o = reader {
            if let m = try o.string("memory") {
                guard let b = WorldTemplate.bytes(m), b >= 16 << 20 else { throw fail("resources.memory", "\"\(m)\" is not a memory size of at least 16 MB", "e.g. \"512MB\" or \"2GB\"") }
                resources.memoryBytes = b
            }
            if let c = o.raw("cpu") {
                let v = (c as? String).flatMap(Double.init) ?? (c as? NSNumber)?.doubleValue
                guard let v, v > 0, v <= 64 else { throw fail("resources.cpu", "\"\(c)\" is not a CPU count", "a number of cores above 0, e.g. \"0.5\" or \"2.0\"") }
                resources.cpus = v
            }
            if let s = try o.string("storage") {
                guard let b = WorldTemplate.bytes(s) else { throw fail("resources.storage", "\"\(s)\" is not a size", "e.g. \"10GB\"") }
                resources.storageBytes = b
            }
            try o.finish()
        }
        return resources
    }

    func readScaling(_ reader: JSONReader?, kind: WorldTemplate.Kind) throws -> WorldTemplate.Scaling {
        let defaults: (users: Int, trigger: String) = switch kind {
        case .kids: (100, "users")
        case .executive: (25, "users")
        case .sports: (500, "viewers")
        case .custom: (100, "users")
        }
        var scaling = WorldTemplate.Scaling(usersPerInstance: defaults.users, minInstances: 1, maxInstances: 10, trigger: defaults.trigger)
        if var o = reader {
            scaling.usersPerInstance = try o.int("users_per_instance") ?? scaling.usersPerInstance
            scaling.minInstances = try o.int("min_instances") ?? scaling.minInstances
            scaling.maxInstances = try o.int("max_instances") ?? scaling.maxInstances
            scaling.trigger = try oneOf(try o.string("trigger") ?? scaling.trigger, WorldTemplate.triggers, field: "scaling.trigger")
            try o.finish()
        }
        guard scaling.usersPerInstance >= 1 else { throw fail("scaling.users_per_instance", "must be at least 1", "how many users one instance serves") }
        guard scaling.maxInstances >= 1 && scaling.maxInstances <= 1_000 else { throw fail("scaling.max_instances", "must be 1 to 1000", "") }
        guard scaling.minInstances <= scaling.maxInstances else {
            throw fail("scaling.min_instances", "\(scaling.minInstances) is above max_instances (\(scaling.maxInstances))", "lower min_instances or raise max_instances")
        }
        if scaling.trigger == "tantrums_per_minute" && kind != .executive {
            throw fail("scaling.trigger", "tantrums_per_minute is an executive world's metric", "use users or viewers")
        }
        return scaling
    }

    func readKeys(_ reader: JSONReader?, kind: WorldTemplate.Kind) throws -> WorldTemplate.KeyDefaults {

        var keys = WorldTemplate.KeyDefaults(permissions: ["world_access", "agent_interaction", "vault_storage"],
                                             requestsPerSecond: 50, burst: 100, concurrentStreams: 32, monthlyInteractions: 0)
        if kind == .executive { keys.permissions.append("user_management") }
        if var o = reader {
            if let p = try o.array("permissions") {
                var list: [String] = []
                for (i, v) in p.enumerated() {
                    guard let s = v as? String else { throw fail("keys.permissions[\(i)]", "must be a string", "") }
                    list.append(try oneOf(s, WorldTemplate.permissions, field: "keys.permissions[\(i)]"))
                }
                keys.permissions = list
            }
            if var q = try o.object("quotas") {
                keys.requestsPerSecond = try q.int("requests_per_second") ?? keys.requestsPerSecond
                keys.burst = try q.int("burst") ?? keys.burst
                keys.concurrentStreams = try q.int("concurrent_streams") ?? keys.concurrentStreams
                keys.monthlyInteractions = try q.int("monthly_interactions") ?? keys.monthlyInteractions
                try q.finish()
            }
            try o.finish()
        }
        if keys.permissions.contains("user_management") && kind != .executive {
            throw fail("keys.permissions", "user_management is for executive worlds only", "remove it, or use type executive")
        }
        guard keys.requestsPerSecond >= 1 else { throw fail("keys.quotas.requests_per_second", "must be at least 1", "") }
        guard keys.burst >= keys.requestsPerSecond else {
            throw fail("keys.quotas.burst", "\(keys.burst) is below requests_per_second (\(keys.requestsPerSecond))", "a burst holds at least one second of requests")
        }
        guard keys.concurrentStreams >= 1 else { throw fail("keys.quotas.concurrent_streams", "must be at least 1", "") }
        return keys
    }

    func readRuntime(_ reader: JSONReader?) throws -> (profile: String, backend: String, pacing: Int) {

        var profile = "balanced", backend = "builtin", pacing = 30
        if var o = reader {
            profile = try oneOf(try o.string("profile") ?? profile, WorldTemplate.profiles, field: "runtime.profile")
            backend = try oneOf(try o.string("backend") ?? backend, WorldTemplate.backends, field: "runtime.backend")
            pacing = try o.int("pacing_ms") ?? pacing
            guard pacing <= 10_000 else { throw fail("runtime.pacing_ms", "\(pacing) is above 10000", "milliseconds between words; 0 for none") }
            try o.finish()
        }
        return (profile, backend, pacing)
    }
}
