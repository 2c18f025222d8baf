import ArgumentParser
import Foundation

struct Keys: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Manage a world's API keys: create, list, revoke, rotate.",
        discussion: """
            A key's secret is shown once, when it is made; the daemon keeps only its SHA-256.

            Examples:
              soulfra keys create playground
              soulfra keys create playground --permissions world_access,agent_interaction --expires-in 30d
              soulfra keys list playground
              soulfra keys rotate playground 3 --grace 10m
              soulfra keys revoke playground 3
            """,
        subcommands: [KeysCreate.self, KeysList.self, KeysRevoke.self, KeysRotate.self]
    )
}

/// A rotation's body: `{"grace_seconds": n}` from `--grace` (nothing when it is not given).
func graceBody(_ grace: String?) throws(CLIError) -> [String: Any] {
    guard let grace else { return [:] }
    guard let s = seconds(grace) else { throw CLIError("--grace takes 24h, 10m, 90s or seconds", code: 5) }
    return ["grace_seconds": s]
}

/// "30d", "12h", "10m", "90s" or plain seconds.
func seconds(_ text: String) -> Int? {
    let units: [Character: Int] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
    let limit = 315_360_000  // ten years: what the daemon takes at most
    if let n = Int(text) { return (0...limit).contains(n) ? n : nil }
    guard let u = text.last.flatMap({ units[$0] }), let n = Int(text.dropLast()), n >= 0, n <= limit / u else { return nil }
    return n * u
}

struct KeysCreate: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "create", abstract: "Make a key for a world (its secret is printed once).")

    @Argument(help: "The world.") var world: String
    @Option(name: .long, help: "Permissions, comma-separated (default: the template's).") var permissions: String?
    @Option(name: .customLong("expires-in"), help: "Expire after 30d, 12h, 10m or seconds.") var expiresIn: String?
    @Option(name: .customLong("rps"), help: "Requests per second (0: unlimited; default: the template's).") var rps: Int?
    @Option(name: .long, help: "Burst (default: the template's).") var burst: Int?
    @Option(name: .customLong("monthly-interactions"), help: "Interactions a month (UTC) allows; past it, 429 usage_exceeded until the 1st (0: no budget; default: the template's).")
    var monthlyInteractions: Int?
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            var body: [String: Any] = [:]
            if let permissions { body["permissions"] = permissions.split(separator: ",").map(String.init) }
            if let expiresIn {
                guard let s = seconds(expiresIn) else { throw CLIError("--expires-in takes 30d, 12h, 10m, 90s or seconds", code: 5) }
                body["expires_in_seconds"] = s
            }
            if let rps { body["requests_per_second"] = rps }
            if let burst { body["burst"] = burst }
            if let monthlyInteractions { body["monthly_interactions"] = monthlyInteractions }
            let k = try client.call("POST", "/admin/v1/worlds/\(world)/keys", body: body)
            if json { return printJSON(k) }
            print("key \(k["id"] ?? "") for \(world) (shown once — store it now):")
            print("  \(k["secret"] ?? "")")
        }
    }
}

struct KeysList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List a world's keys (prefixes only).")

    @Argument(help: "The world.") var world: String
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let answer = try client.call("GET", "/admin/v1/worlds/\(world)/keys")
            if json { return printJSON(answer) }
            let keys = answer["keys"] as? [[String: Any]] ?? []
            printTable(["ID", "PREFIX", "STATE", "PERMISSIONS", "LAST USED"], keys.map { k in
                ["\(k["id"] ?? "")", "\(k["prefix"] ?? "")", "\(k["state"] ?? "")", (k["permissions"] as? [String] ?? []).joined(separator: ","),
                 (k["last_used_at_ms"] as? Int).map { duration(seconds: Int(Date().timeIntervalSince1970) - $0 / 1000) + " ago" } ?? "-"]
            })
        }
    }
}

struct KeysRevoke: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "revoke", abstract: "Revoke a key now (its open streams end).")

    @Argument(help: "The world.") var world: String
    @Argument(help: "The key's id (`soulfra keys list`).") var id: Int
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let k = try client.call("DELETE", "/admin/v1/worlds/\(world)/keys/\(id)")
            if json { return printJSON(k) }
            print("key \(id) (\(k["prefix"] ?? "")) of \(world): revoked")
        }
    }
}

struct KeysRotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate", abstract: "Replace a key: a new one now, the old one kept for a grace period (never past its expiry).")

    @Argument(help: "The world.") var world: String
    @Argument(help: "The key's id.") var id: Int
    @Option(name: .long, help: "How long the old key keeps working: 1h (default), 10m, 0 …") var grace: String?
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let k = try client.call("POST", "/admin/v1/worlds/\(world)/keys/\(id)/rotate", body: try graceBody(grace))
            if json { return printJSON(k) }
            let old = k["replaces"] as? [String: Any] ?? [:]
            print("key \(k["id"] ?? "") replaces key \(id) of \(world) (shown once — store it now):")
            print("  \(k["secret"] ?? "")")
            if let until = old["valid_until_ms"] as? Int {
                print("key \(id) keeps working for \(duration(seconds: max(0, until / 1000 - Int(Date().timeIntervalSince1970))))")
            }
        }
    }
}
