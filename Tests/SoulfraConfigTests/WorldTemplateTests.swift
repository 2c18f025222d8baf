import Foundation
import Testing
@testable import SoulfraConfig

let templatesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().appendingPathComponent("config/templates").path

/// Parses `json` as a template named `t.json`; the error's text when it fails.
func problem(_ json: String) -> String? {
    do {
        _ = try WorldTemplate.parse(Data(json.utf8), file: "t.json")
        return nil
    } catch {
        return error.description
    }
}

let minimal = #""type": "kids", "name": "k", "agents": ["cal"]"#

@Suite("World templates")
struct WorldTemplateTests {
    @Test("the shipped templates load: kids, executive, sports, custom, with the brief's agents and the custom one encrypted")
    func shipped() throws {
        let catalog = try WorldTemplate.catalog(directory: templatesDirectory)
        #expect(Set(catalog.keys) == Set(WorldTemplate.Kind.allCases))
        #expect(catalog[.kids]?.agents.map(\.name) == ["cal", "domingo", "arty"])
        #expect(catalog[.executive]?.agents.map(\.name) == ["bucky", "diana", "chatty"])
        #expect(catalog[.executive]?.keys.permissions.contains("user_management") == true)
        #expect(catalog[.sports]?.scaling.trigger == "viewers" && catalog[.sports]?.scaling.usersPerInstance == 500)
        #expect(catalog[.kids]?.scaling.usersPerInstance == 100 && catalog[.executive]?.scaling.usersPerInstance == 25)
        let custom = try #require(catalog[.custom])
        #expect(custom.encryptsVault && custom.name == "therapy-assistant")
        #expect(custom.resources.memoryBytes == 2_000_000_000 && custom.resources.cpus == 2.0 && custom.resources.storageBytes == 10_000_000_000)
        #expect(catalog[.kids]?.encryptsVault == false)
        #expect(catalog[.kids]?.agents[0].knowledge["mars"]?.contains("red planet") == true)
    }

    @Test("the brief's own custom-template example loads as written (agents as plain names)")
    func briefExample() throws {
        let json = """
        {"type": "custom", "name": "therapy-assistant", "agents": ["empathy-bot", "wellness-guide"],
         "environment": {"WORLD_TYPE": "therapy", "PRIVACY_MODE": "maximum", "SESSION_ENCRYPTION": "enabled", "HIPAA_COMPLIANCE": "enabled"},
         "resources": {"memory": "2GB", "cpu": "2.0", "storage": "10GB"}}
        """
        let t = try WorldTemplate.parse(Data(json.utf8), file: "brief.json")
        #expect(t.agents.map(\.name) == ["empathy-bot", "wellness-guide"] && t.agents[0].style == "calm")
        #expect(t.encryptsVault && t.streamMode == "3way_full" && t.runtimeProfile == "balanced" && t.image == "soulfra/base-world:latest")
    }

    @Test("errors name the file, the field and the fix", arguments: [
        (#"{"name": "k", "agents": ["cal"]}"#, "t.json: type: is missing — one of kids, executive, sports, custom"),
        (#"{"type": "zoo", "name": "k", "agents": ["cal"]}"#, "t.json: type: \"zoo\" is not a world type — use one of kids, executive, sports, custom"),
        (#"{"type": "kids", "name": "k", "agents": []}"#, "t.json: agents: is missing or empty"),
        (#"{"type": "kids", "name": "k", "agents": ["Cal!"]}"#, "t.json: agents[0]: \"Cal!\" is not a name — 1 to 32 characters of a-z, 0-9, - and _"),
        (#"{"type": "kids", "name": "k", "agents": ["cal", "cal"]}"#, "t.json: agents[1].name: \"cal\" is there twice"),
        (#"{"type": "kids", "name": "k", "agents": [{"name": "cal", "style": "grumpy"}]}"#, "t.json: agents[0].style: \"grumpy\" is not allowed — use one of cheerful, calm, curious, formal, playful"),
        (#"{"type": "kids", "name": "k", "agents": [{"name": "cal", "mood": "x"}]}"#, "t.json: agents[0].mood: unknown key"),
        ("{\(minimal), \"agnets\": []}", "t.json: agnets: is not a template field"),
        ("{\(minimal), \"resources\": {\"memory\": \"lots\"}}", "t.json: resources.memory: \"lots\" is not a memory size of at least 16 MB — e.g. \"512MB\" or \"2GB\""),
        ("{\(minimal), \"resources\": {\"cpu\": 0}}", "t.json: resources.cpu:"),
        ("{\(minimal), \"scaling\": {\"min_instances\": 5, \"max_instances\": 2}}", "t.json: scaling.min_instances: 5 is above max_instances (2) — lower min_instances or raise max_instances"),
        ("{\(minimal), \"scaling\": {\"trigger\": \"tantrums_per_minute\"}}", "t.json: scaling.trigger: tantrums_per_minute is an executive world's metric"),
        ("{\(minimal), \"keys\": {\"permissions\": [\"user_management\"]}}", "t.json: keys.permissions: user_management is for executive worlds only"),
        ("{\(minimal), \"keys\": {\"permissions\": [\"everything\"]}}", "t.json: keys.permissions[0]: \"everything\" is not allowed"),
        ("{\(minimal), \"keys\": {\"quotas\": {\"requests_per_second\": 50, \"burst\": 10}}}", "t.json: keys.quotas.burst: 10 is below requests_per_second (50)"),
        ("{\(minimal), \"runtime\": {\"profile\": \"turbo\"}}", "t.json: runtime.profile: \"turbo\" is not allowed — use one of balanced, enterprise"),
        ("{\(minimal), \"stream_mode\": \"fast\"}", "t.json: stream_mode: \"fast\" is not allowed — use one of 3way_full, realtime"),
        ("{\(minimal), \"environment\": {\"PRIVACY_MODE\": \"total\"}}", "t.json: environment.PRIVACY_MODE: \"total\" is not allowed"),
        ("{\(minimal), \"environment\": {\"DEBUG\": 1}}", "t.json: environment.DEBUG: must be a string"),
        ("[1, 2]", "t.json: is not a JSON object"),
    ])
    func errors(json: String, expected: String) {
        let got = problem(json)
        #expect(got?.hasPrefix(expected) == true, "got: \(got ?? "no error")")
    }

    @Test("a missing file says so, and a template in the catalog must be named after its type")
    func files() throws {
        #expect(throws: WorldTemplate.Invalid.self) { _ = try WorldTemplate.load(path: "/nonexistent/t.json") }
        let dir = NSTemporaryDirectory() + "soulfra-templates-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try #"{"type": "sports", "name": "s", "agents": ["coach"]}"#.write(toFile: dir + "/kids.json", atomically: true, encoding: .utf8)
        do {
            _ = try WorldTemplate.catalog(directory: dir)
            Issue.record("a sports template was taken as kids")
        } catch {
            #expect(error.field == "type" && error.description.contains("kids.json"))
        }
    }

    @Test("sizes read as people write them")
    func sizes() {
        #expect(WorldTemplate.bytes("512MB") == 512_000_000 && WorldTemplate.bytes("2GB") == 2_000_000_000)
        #expect(WorldTemplate.bytes("64M") == 64 << 20 && WorldTemplate.bytes("1.5G") == UInt64(1.5 * Double(1 << 30)))
        #expect(WorldTemplate.bytes("4096") == 4_096 && WorldTemplate.bytes("lots") == nil && WorldTemplate.bytes("-1GB") == nil)
    }
}
