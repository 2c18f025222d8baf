import ArgumentParser
import Foundation

struct Webhooks: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Send world events to your endpoints, signed the Standard Webhooks way.",
        discussion: """
            Events: deployment_complete, scaling_event, error_alert, user_milestone, endpoint.disabled. Each \
            POST carries webhook-id, webhook-timestamp and webhook-signature (v1,<base64 HMAC-SHA256 of \
            id.timestamp.body> with the whsec_ secret, shown once). A failed delivery is retried after 5 s, \
            5 min, 30 min, 2 h, 5 h and 10 h; an endpoint whose every attempt fails for 5 days is disabled.

            Examples:
              soulfra webhooks add https://hooks.example.com/soulfra --events deployment_complete,error_alert
              soulfra webhooks add http://127.0.0.1:9000/hook --world playground
              soulfra webhooks list
              soulfra webhooks deliveries 1
              soulfra webhooks redeliver 1 msg_2V9c…
              soulfra webhooks rotate-secret 1 --grace 24h
              soulfra webhooks enable 1
              soulfra webhooks remove 1
            """,
        subcommands: [WebhooksAdd.self, WebhooksList.self, WebhooksRemove.self, WebhooksRotate.self, WebhooksDeliveries.self,
                      WebhooksRedeliver.self, WebhooksEnable.self]
    )
}

struct WebhooksAdd: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "add", abstract: "Add an endpoint (its secret is printed once).")
    @Argument(help: "The endpoint's URL (http:// or https://).") var url: String
    @Option(name: .long, help: "Events, comma-separated (default: all).") var events: String?
    @Option(name: .long, help: "Only this world's events (default: every world's).") var world: String?
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            var body: [String: Any] = ["url": url]
            if let events { body["events"] = events.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) } }
            if let world { body["world"] = world }
            let w = try client.call("POST", "/admin/v1/webhooks", body: body)
            if json { return printJSON(w) }
            print("webhook \(w["id"] ?? "") → \(url) (\((w["events"] as? [String] ?? []).joined(separator: ", ")))")
            print("signing secret (shown once — store it where your receiver can read it):")
            print("  \(w["secret"] ?? "")")
        }
    }
}

struct WebhooksList: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "list", abstract: "List the endpoints.")
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let answer = try client.call("GET", "/admin/v1/webhooks")
            if json { return printJSON(answer) }
            let hooks = answer["webhooks"] as? [[String: Any]] ?? []
            guard !hooks.isEmpty else { return print("no webhooks: soulfra webhooks add <url>") }
            printTable(["ID", "URL", "WORLD", "EVENTS", "STATE", "PENDING"], hooks.map { w in
                ["\(w["id"] ?? "")", "\(w["url"] ?? "")", (w["world"] as? String) ?? "*", (w["events"] as? [String] ?? []).joined(separator: ","),
                 "\(w["state"] ?? "")" + ((w["disabled_reason"] as? String).map { $0.isEmpty ? "" : " (\($0))" } ?? ""), "\(w["pending"] ?? 0)"]
            })
        }
    }
}

struct WebhooksRemove: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "remove", abstract: "Remove an endpoint and its deliveries.")
    @Argument(help: "The endpoint's id.") var id: Int
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            _ = try client.call("DELETE", "/admin/v1/webhooks/\(id)")
            print("webhook \(id): removed")
        }
    }
}

struct WebhooksRotate: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate-secret", abstract: "A new signing secret; the old one keeps signing (both signatures sent) for the grace.")
    @Argument(help: "The endpoint's id.") var id: Int
    @Option(name: .long, help: "How long the old secret signs too: 24h (default), 1h, 0 …") var grace: String?
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let w = try client.call("POST", "/admin/v1/webhooks/\(id)/rotate", body: try graceBody(grace))
            if json { return printJSON(w) }
            print("webhook \(id): new signing secret (shown once):")
            print("  \(w["secret"] ?? "")")
        }
    }
}

struct WebhooksDeliveries: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "deliveries", abstract: "An endpoint's latest messages and every attempt.")
    @Argument(help: "The endpoint's id.") var id: Int
    @Option(name: .shortAndLong, help: "How many messages (1-200).") var number = 20
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let answer = try client.call("GET", "/admin/v1/webhooks/\(id)/deliveries?limit=\(number)")
            if json { return printJSON(answer) }
            let list = answer["deliveries"] as? [[String: Any]] ?? []
            guard !list.isEmpty else { return print("webhook \(id): nothing sent yet") }
            printTable(["MESSAGE", "EVENT", "WORLD", "STATE", "ATTEMPTS", "LAST"], list.map { m in
                let attempts = m["attempts"] as? [[String: Any]] ?? []
                let last = attempts.last.map { a in (a["status"] as? Int).map { "HTTP \($0)" } ?? "\(a["error"] ?? "")" } ?? "-"
                return ["\(m["id"] ?? "")", "\(m["event"] ?? "")", "\(m["world"] ?? "")", "\(m["state"] ?? "")", "\(attempts.count)", last]
            })
        }
    }
}

struct WebhooksRedeliver: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "redeliver", abstract: "Send a message again now.")
    @Argument(help: "The endpoint's id.") var id: Int
    @Argument(help: "The message's id (msg_…, from deliveries).") var message: String
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            _ = try client.call("POST", "/admin/v1/webhooks/\(id)/deliveries/\(escape(message))/redeliver")
            print("\(message): queued again")
        }
    }
}

struct WebhooksEnable: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "enable", abstract: "Enable an endpoint that was disabled for failing.")
    @Argument(help: "The endpoint's id.") var id: Int
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            _ = try client.call("POST", "/admin/v1/webhooks/\(id)/enable")
            print("webhook \(id): enabled")
        }
    }
}
