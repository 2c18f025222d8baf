import Foundation
import SoulfraConfig

/// A world as deployed: the template it was made from (its text kept, so the world does not change when the
/// template file does) and the choices made at deploy time. Stored as the world's spec in the control state.
public struct WorldSpec: Sendable, Equatable {
    public var name: String
    /// The template's JSON as deployed, and what it says.
    public var templateText: String
    public var template: WorldTemplate
    /// The agents this world runs (a subset of the template's, in the order given).
    public var agents: [String]
    public var runtimeProfile: String
    public var streamMode: String
    /// Where the world runs, for people and the panel ("local" on one machine).
    public var region: String
    /// Browser origins allowed to call the world's gateway routes (CORS; `*` for any).
    public var corsOrigins: [String] = []

    /// The template's agents this world runs, in order.
    public var activeAgents: [WorldTemplate.Agent] {
        agents.compactMap { name in template.agents.first { $0.name == name } }
    }

    /// The stored form.
    public var json: String {
        let object: [String: Any] = ["template": templateText, "agents": agents, "runtime": runtimeProfile,
                                     "stream": streamMode, "region": region, "cors_origins": corsOrigins]
        let data = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
        return String(decoding: data, as: UTF8.self)
    }

    /// Reads a stored spec back.
    public static func decode(name: String, json: String) throws(APIError) -> WorldSpec {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any],
              let text = o["template"] as? String else {
            throw APIError(500, "internal", "the stored spec of world \(name) is unreadable")
        }
        let template: WorldTemplate
        do { template = try WorldTemplate.parse(Data(text.utf8), file: "world \(name)") } catch {
            throw APIError(500, "internal", "the stored template of world \(name) no longer loads: \(error)")
        }
        return WorldSpec(name: name, templateText: text, template: template, agents: o["agents"] as? [String] ?? template.agents.map(\.name),
                         runtimeProfile: o["runtime"] as? String ?? template.runtimeProfile,
                         streamMode: o["stream"] as? String ?? template.streamMode, region: o["region"] as? String ?? "local",
                         corsOrigins: o["cors_origins"] as? [String] ?? [])
    }

    /// Checks browser origins: `scheme://host[:port]` (http or https, lowercase, no path), or `*`; at most 32.
    public static func checkOrigins(_ origins: [String]) throws(APIError) -> [String] {
        guard origins.count <= 32 else { throw APIError(400, "invalid_origin", "at most 32 allowed origins") }
        for o in origins where o != "*" {
            let rest = o.hasPrefix("https://") ? o.dropFirst(8) : o.hasPrefix("http://") ? o.dropFirst(7) : nil
            let ok = rest.map { r in
                !r.isEmpty && r.count <= 253 && r.allSatisfy { $0.isLowercase || $0.isNumber || $0 == "." || $0 == "-" || $0 == ":" || $0 == "[" || $0 == "]" }
            } ?? false
            guard ok else {
                throw APIError(400, "invalid_origin", "\"\(o)\" is not an origin — write scheme://host[:port] in lowercase with no path (https://app.example.com), or *")
            }
        }
        return Array(Set(origins)).sorted()
    }
}

/// What `POST /admin/v1/worlds` asks for (docs/api.md, Worlds).
public struct DeployRequest: Sendable {
    public var type: String?
    public var name: String
    public var agents: [String]?
    public var runtime: String?
    public var stream: String?
    public var region: String?
    public var instances: Int?
    /// A template of the user's own (`--template-file`), as JSON text; its type need not be given then.
    public var templateText: String?
    /// Browser origins allowed to call the world (CORS).
    public var corsOrigins: [String] = []

    public init(type: String?, name: String, agents: [String]? = nil, runtime: String? = nil, stream: String? = nil,
                region: String? = nil, instances: Int? = nil, templateText: String? = nil) {
        self.type = type
        self.name = name
        self.agents = agents
        self.runtime = runtime
        self.stream = stream
        self.region = region
        self.instances = instances
        self.templateText = templateText
    }

    /// Reads the request body; every problem names the field.
    public static func parse(_ body: [UInt8]) throws(APIError) -> DeployRequest {
        guard let o = (try? JSONSerialization.jsonObject(with: Data(body))) as? [String: Any] else {
            throw APIError(400, "invalid_request", #"the body must be a JSON object: {"type": "kids", "name": "playground"}"#)
        }
        let known: Set = ["type", "name", "agents", "runtime", "stream", "region", "instances", "template", "cors_origins"]
        if let extra = o.keys.sorted().first(where: { !known.contains($0) }) {
            throw APIError(400, "invalid_request", "unknown field \"\(extra)\" (fields: \(known.sorted().joined(separator: ", ")))")
        }
        func string(_ k: String) throws(APIError) -> String? {
            guard let v = o[k] else { return nil }
            guard let s = v as? String else { throw APIError(400, "invalid_request", "\(k) must be a string") }
            return s
        }
        guard let name = try string("name") else { throw APIError(400, "invalid_request", "name is required") }
        var agents: [String]?
        if let a = o["agents"] {
            if let list = a as? [String] { agents = list } else if let s = a as? String {
                agents = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            } else { throw APIError(400, "invalid_request", "agents must be a list of names or \"cal,domingo\"") }
        }
        var instances: Int?
        if let n = o["instances"] {
            guard let v = jsonInteger(n) else { throw APIError(400, "invalid_request", "instances must be a whole number") }
            instances = v
        }
        var r = DeployRequest(type: try string("type"), name: name, agents: agents, runtime: try string("runtime"), stream: try string("stream"),
                              region: try string("region"), instances: instances, templateText: try string("template"))
        if let c = o["cors_origins"] {
            guard let list = c as? [String] else { throw APIError(400, "invalid_request", "cors_origins must be a list of origins") }
            r.corsOrigins = try WorldSpec.checkOrigins(list)
        }
        return r
    }

    /// World names: what a URL path, a directory, a container name and a key's world label all take.
    public static func checkName(_ name: String) throws(APIError) {
        let ok = (1...40).contains(name.utf8.count) && name.utf8.first.map { $0 >= 0x61 && $0 <= 0x7A } == true
            && name.utf8.allSatisfy { ($0 >= 0x61 && $0 <= 0x7A) || ($0 >= 0x30 && $0 <= 0x39) || $0 == 0x2D }
            && !name.hasSuffix("-")
        guard ok else {
            throw APIError(400, "invalid_name",
                           "world name \"\(name)\" is not allowed — use 1 to 40 lowercase letters, digits and '-', starting with a letter (e.g. playground)")
        }
    }

    /// The spec and instance count this request makes from the catalog (or its own template).
    public func resolve(catalog: [WorldTemplate.Kind: WorldTemplate], catalogTexts: [WorldTemplate.Kind: String]) throws(APIError) -> (WorldSpec, Int) {
        try Self.checkName(name)
        let (template, text) = try chooseTemplate(catalog: catalog, texts: catalogTexts)
        let names = template.agents.map(\.name)
        let chosen = agents ?? names
        guard !chosen.isEmpty else { throw APIError(400, "invalid_agents", "name at least one agent (this template has \(names.joined(separator: ", ")))") }
        for a in chosen where !names.contains(a) {
            throw APIError(400, "unknown_agent", "agent \"\(a)\" is not in the \(template.kind.rawValue) template — use some of: \(names.joined(separator: ", "))")
        }
        guard Set(chosen).count == chosen.count else { throw APIError(400, "invalid_agents", "an agent is named twice") }
        let profile = runtime ?? template.runtimeProfile
        guard WorldTemplate.profiles.contains(profile) else {
            throw APIError(400, "invalid_runtime", "runtime \"\(profile)\" is unknown — use one of: \(WorldTemplate.profiles.joined(separator: ", "))")
        }
        let mode = stream ?? template.streamMode
        guard ["3way_full", "realtime"].contains(mode) else {
            throw APIError(400, "invalid_stream", "stream \"\(mode)\" is unknown — use 3way_full or realtime")
        }
        let count = instances ?? template.scaling.minInstances
        try Self.checkInstances(count, template)
        let region = region ?? "local"
        guard (1...40).contains(region.utf8.count) else { throw APIError(400, "invalid_region", "region must be 1 to 40 characters") }
        return (WorldSpec(name: name, templateText: text, template: template, agents: chosen, runtimeProfile: profile,
                          streamMode: mode, region: region, corsOrigins: corsOrigins), count)
    }

    func chooseTemplate(catalog: [WorldTemplate.Kind: WorldTemplate], texts: [WorldTemplate.Kind: String]) throws(APIError) -> (WorldTemplate, String) {
        if let templateText {
            let t: WorldTemplate
            do { t = try WorldTemplate.parse(Data(templateText.utf8), file: "template") } catch {
                throw APIError(422, "invalid_template", error.description)
            }
            if let type, type != t.kind.rawValue {
                throw APIError(400, "invalid_type", "--type \(type) does not match the template's type \"\(t.kind.rawValue)\" — leave --type out or make them agree")
            }
            return (t, templateText)
        }
        let kinds = WorldTemplate.Kind.allCases.map(\.rawValue).joined(separator: ", ")
        guard let type else { throw APIError(400, "invalid_type", "type is required (one of \(kinds)), or a template") }
        guard let kind = WorldTemplate.Kind(rawValue: type), let t = catalog[kind], let text = texts[kind] else {
            throw APIError(400, "unknown_type", "world type \"\(type)\" is unknown — use one of \(kinds), or --template-file")
        }
        return (t, text)
    }

    public static func checkInstances(_ count: Int, _ template: WorldTemplate) throws(APIError) {
        let s = template.scaling
        guard count >= 0 && count <= s.maxInstances else {
            throw APIError(422, "scale_out_of_range",
                           "\(count) instances is outside what the \(template.kind.rawValue) template allows (0 to \(s.maxInstances); scaling.max_instances)")
        }
    }
}

/// An admin API error: the status, a stable code and what to do (`{"error": {"code", "message"}}`).
public struct APIError: Error, CustomStringConvertible, Equatable {
    public let status: Int
    public let code: String
    public let message: String
    public init(_ status: Int, _ code: String, _ message: String) {
        self.status = status
        self.code = code
        self.message = message
    }
    public var description: String { message }

    public var json: String {
        let o: [String: Any] = ["error": ["code": code, "message": message]]
        return String(decoding: (try? JSONSerialization.data(withJSONObject: o, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
    }

    static func from(_ e: ControlError) -> APIError {
        switch e {
        case .exists(let what): APIError(409, "exists", "\(what) already exists")
        case .notFound(let what): APIError(404, "not_found", "no \(what)")
        default: APIError(500, "internal", e.description)
        }
    }
}

/// A JSON whole number as JSONSerialization gives it: not a boolean (which also casts to Int), not a fraction.
func jsonInteger(_ value: Any?) -> Int? {
    guard let n = value as? NSNumber, String(cString: n.objCType) != "c" else { return nil }
    let d = n.doubleValue
    guard d == d.rounded(), abs(d) < 9e15 else { return nil }
    return n.intValue
}
