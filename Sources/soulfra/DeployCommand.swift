import ArgumentParser
import Foundation

struct Deploy: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Deploy a world from a template, and wait until it answers a first message.",
        discussion: """
            Stores the world, issues its API key, starts its instances (with the driver the daemon uses: docker \
            containers, or local processes), then sends one real message through the gateway — gateway → \
            instance → runtime → vault and back — and waits for the streamed reply. The key is printed once: \
            store it then.

            Examples:
              soulfra deploy --type kids --name playground --agents cal,domingo,arty --runtime balanced --stream 3way_full
              soulfra deploy --type executive --name boardroom --instances 2
              soulfra deploy --name therapy --template-file my-template.json --no-wait
              soulfra deploy --type sports --name arena --json

            Exit status: 0 live; 3 not found; 4 the name is taken; 5 invalid input; 69 no daemon; 75 no reply \
            within --timeout.
            """
    )

    @Option(name: .long, help: "Template: kids, executive, sports or custom (not needed with --template-file).")
    var type: String?

    @Option(name: .long, help: "The world's name: lowercase letters, digits and '-', starting with a letter.")
    var name: String

    @Option(name: .long, help: "Agents to run, comma-separated (default: all of the template's).")
    var agents: String?

    @Option(name: .long, help: "Runtime profile: balanced or enterprise (default: the template's).")
    var runtime: String?

    @Option(name: .long, help: "Stream mode: 3way_full (events shown once stored) or realtime (default: the template's).")
    var stream: String?

    @Option(name: .long, help: "Region label, shown in list and status (default: local).")
    var region: String?

    @Option(name: .long, help: "Instances to run (default: the template's scaling.min_instances).")
    var instances: Int?

    @Option(name: .customLong("cors-origin"), help: "A browser origin allowed to call the world (https://app.example.com, or *); repeat for more.")
    var corsOrigins: [String] = []

    @Option(name: .customLong("template-file"), help: "A template of your own (JSON, as config/templates/*.json).")
    var templateFile: String?

    @Flag(inversion: .prefixedNo, help: "Wait until a first message has gone through and back.")
    var wait = true

    @Option(name: .long, help: "Seconds to wait for the first reply.")
    var timeout: Double = 30

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let started = Date()
            var body: [String: Any] = ["name": name]
            if let type { body["type"] = type }
            if let agents { body["agents"] = agents }
            if let runtime { body["runtime"] = runtime }
            if let stream { body["stream"] = stream }
            if let region { body["region"] = region }
            if let instances { body["instances"] = instances }
            if !corsOrigins.isEmpty { body["cors_origins"] = corsOrigins }
            if let templateFile {
                guard let text = try? String(contentsOfFile: templateFile, encoding: .utf8) else {
                    throw CLIError("cannot read the template file \(templateFile)", code: 66)
                }
                body["template"] = text
            }
            let say: (String) -> Void = { line in if !json { print(line) } }
            say("==> Deploying world \"\(name)\"")
            var world = try client.call("POST", "/admin/v1/worlds", body: body)
            let key = world["key"] as? [String: Any] ?? [:]
            let secret = key["secret"] as? String ?? ""
            let agentList = (world["agents"] as? [String] ?? []).joined(separator: ", ")
            say("  [\(ms(started))] stored: \(world["type"] ?? "?") template, agents \(agentList), runtime \(world["runtime"] ?? "?"), "
                + "stream \(world["stream"] ?? "?"), \(world["instances_desired"] ?? 0) instance(s) on the \(world["driver"] ?? "?") driver; key issued")
            for note in world["unenforced"] as? [String] ?? [] { say("  note: \(note)") }
            say("  key (shown once — store it now): \(secret)")
            if wait {
                let endpoint = world["endpoint"] as? String ?? ""
                do throws(CLIError) {
                    world["first_reply"] = try firstReply(endpoint: endpoint, secret: secret, started: started, say: say)
                } catch {
                    // The world exists and its key will not be shown again: the error carries it.
                    throw CLIError(error.description + (json ? "\n\(name) is deployed; its key (shown once): \(secret)" : ""), code: error.code)
                }
            }
            let total = Date().timeIntervalSince(started)
            world["deploy_seconds"] = (total * 1000).rounded() / 1000
            if json {
                printJSON(world)
                return
            }
            print(wait ? "✓ \(name) is live in \(String(format: "%.2f", total)) s" : "✓ \(name) is deployed (not waited for)")
            print("  endpoint: \(world["endpoint"] ?? "")")
            print("  try it:   \(world["curl"] ?? "")")
        }
    }

    func ms(_ since: Date) -> String {
        let v = Int(Date().timeIntervalSince(since) * 1000)
        return String(repeating: " ", count: max(0, 5 - String(v).count)) + "\(v) ms"
    }

    /// Sends "hello" with the new key and reads the streamed reply; an instance that has not attached yet
    /// answers 503, so that is retried until `timeout`.
    func firstReply(endpoint: String, secret: String, started: Date, say: @escaping (String) -> Void) throws(CLIError) -> [String: Any] {
        guard endpoint.hasPrefix("http://"), let pathStart = endpoint.dropFirst(7).firstIndex(of: "/") else {
            throw CLIError("cannot send the first message to \(endpoint): deploy waits over cleartext HTTP (listen.gateway_tcp); use --no-wait with a TLS-only gateway", code: 6)
        }
        let gateway = HTTPClient(base: String(endpoint[..<pathStart]))
        let path = String(endpoint[pathStart...]) + "/messages"
        let deadline = started.addingTimeInterval(timeout)
        let message = Array(#"{"text":"hello","session":"soulfra-deploy"}"#.utf8)
        var attempts = 0
        while Date() < deadline {
            attempts += 1
            var firstToken: Double?
            var done: [String: Any]?
            var pending = ""
            var last = ""
            var notYet = false
            let response = try gateway.request("POST", path, headers: [("authorization", "Bearer \(secret)"), ("accept", "text/event-stream")],
                                               body: message, timeoutSeconds: max(1, deadline.timeIntervalSinceNow)) { bytes in
                pending += String(decoding: bytes, as: UTF8.self)
                while let end = pending.range(of: "\n\n") {
                    let event = String(pending[..<end.lowerBound])
                    pending = String(pending[end.upperBound...])
                    for line in event.split(separator: "\n") where line.hasPrefix("data: ") {
                        last = String(line.dropFirst(6))
                        let o = (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8))) as? [String: Any] ?? [:]
                        if o["event"] as? String == "token", firstToken == nil {
                            firstToken = Date().timeIntervalSince(started)
                            say("  [\(ms(started))] first reply token from \(o["agent"] ?? "?"): gateway → instance → runtime → vault → back")
                        }
                        if o["event"] as? String == "done" { done = o }
                        // A realtime stream answers 200 at once: no instance yet comes as an error event.
                        if o["event"] as? String == "error", (o["error"] as? [String: Any])?["code"] as? String == "no_healthy_instance" { notYet = true }
                    }
                }
                return done == nil && !notYet
            }
            // 503: no instance attached yet. 401 in the first second: the new key is still reaching the
            // gateway's other loops (it is installed on all of them just before the deploy is answered).
            if response.status == 503 || notYet || (response.status == 401 && Date().timeIntervalSince(started) < 1) {
                usleep(25_000)
                continue
            }
            guard response.status == 200, let done else {
                throw CLIError("the first message got HTTP \(response.status) and no reply: \((response.text.isEmpty ? last : response.text).prefix(300))", code: 70)
            }
            let total = Date().timeIntervalSince(started)
            say("  [\(ms(started))] reply complete from \(done["agent"] ?? "?") (stored in the world's vault)")
            return ["first_token_seconds": firstToken ?? total, "reply_seconds": total, "attempts": attempts, "text": done["text"] ?? ""]
        }
        throw CLIError("no reply from \(name) within \(Int(timeout)) s: `soulfra status \(name)` and `soulfra logs \(name)` show why", code: 75)
    }
}
