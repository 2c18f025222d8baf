import Foundation
import Testing

/// One unary message through the gateway with curl: the status and the body.
func sendUnary(endpoint: String, key: String, body: String) throws -> (status: Int, body: String) {
    let r = try runCapturing("/usr/bin/curl", ["-s", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", endpoint + "/messages",
                                               "-H", "Authorization: Bearer \(key)", "-d", body], timeout: 30)
    let lines = r.out.split(separator: "\n", omittingEmptySubsequences: false)
    return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
}

@Suite("Usage, budgets and cost through the daemon (process driver)", .serialized, .enabled(if: uringAvailable && curlAvailable))
struct UsageCLITests {
    /// The key's row in `soulfra usage <world> --by key`, once its requests reach `requests` (rolled up every 2 s).
    func keyUsage(_ w: CLIWorld, world: String, prefix: String, requests: Int) throws -> [String: Any] {
        var row: [String: Any] = [:]
        for _ in 0..<50 {
            let u = try w.json(["usage", world, "--by", "key"])
            let keys = ((u["worlds"] as? [[String: Any]])?.first { $0["world"] as? String == world }?["keys"] as? [[String: Any]]) ?? []
            row = keys.first { ($0["prefix"] as? String).map { prefix.hasPrefix($0.replacingOccurrences(of: "…", with: "")) } == true } ?? [:]
            if (row["requests"] as? Int ?? 0) >= requests { break }
            usleep(200_000)
        }
        return row
    }

    @Test("usage is exact after a known load (requests counted = requests sent), a monthly budget ends in 429 usage_exceeded, a graceful stop loses nothing, cost comes from the price table")
    func usageBudgetsCost() throws {
        let w = try CLIWorld("usage")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let d = try w.json(["deploy", "--type", "kids", "--name", "metered"])
        let endpoint = d["endpoint"] as? String ?? ""
        // A key with a budget of 5: five answers, then usage_exceeded with the reset time.
        let small = try w.json(["keys", "create", "metered", "--monthly-interactions", "5", "--rps", "0"])
        let smallKey = small["secret"] as? String ?? ""
        var statuses: [Int] = []
        for i in 0..<7 {
            let r = try sendUnary(endpoint: endpoint, key: smallKey, body: #"{"text":"hello \#(i)","session":"budget"}"#)
            statuses.append(r.status)
            if r.status == 429 { #expect(r.body.contains("usage_exceeded") && r.body.contains("resets at"), "\(r.body)") }
        }
        #expect(statuses == [200, 200, 200, 200, 200, 429, 429], "\(statuses)")
        // A known load on another key: every request and its bytes counted.
        let big = try w.json(["keys", "create", "metered", "--rps", "0"])
        let bigKey = big["secret"] as? String ?? ""
        var sentBytes = 0
        for i in 0..<20 {
            let body = #"{"text":"tell me about space \#(i)","session":"load-\#(i % 4)"}"#
            sentBytes += body.utf8.count
            #expect(try sendUnary(endpoint: endpoint, key: bigKey, body: body).status == 200)
        }
        let row = try keyUsage(w, world: "metered", prefix: bigKey, requests: 20)
        #expect(row["requests"] as? Int == 20 && row["interactions"] as? Int == 20, "\(row)")
        #expect(row["bytes_in"] as? Int == sentBytes, "\(row)")
        #expect((row["tokens_out"] as? Int ?? 0) > 0 && (row["bytes_out"] as? Int ?? 0) > 0, "\(row)")
        let smallRow = try keyUsage(w, world: "metered", prefix: smallKey, requests: 7)
        #expect(smallRow["requests"] as? Int == 7 && smallRow["interactions"] as? Int == 5, "refusals are requests, not interactions: \(smallRow)")
        // Three more, then a graceful stop at once: they are in the final roll-up.
        for i in 0..<3 { #expect(try sendUnary(endpoint: endpoint, key: bigKey, body: #"{"text":"more \#(i)"}"#).status == 200) }
        #expect(try w.cli(["down"]).status == 0)
        #expect(try w.cli(["init"]).status == 0)
        let after = try keyUsage(w, world: "metered", prefix: bigKey, requests: 23)
        #expect(after["requests"] as? Int == 23, "nothing lost on a graceful stop: \(after)")
        // The budget holds across the restart (the month's count is in SQLite).
        let later = try w.json(["status", "metered"])["endpoint"] as? String ?? ""
        #expect(try sendUnary(endpoint: later, key: smallKey, body: #"{"text":"again"}"#).status == 429)
        // Cost: instance time and interactions priced by the table.
        let u = try w.json(["usage", "--by", "day"])
        let world = (u["worlds"] as? [[String: Any]])?.first { $0["world"] as? String == "metered" } ?? [:]
        #expect((world["instance_seconds"] as? Double ?? 0) > 0, "\(world)")
        let cost = world["cost"] as? [String: Any] ?? [:]
        #expect((cost["interactions"] as? Double ?? 0) > 0 && (cost["total"] as? Double ?? 0) > 0, "\(cost)")
        #expect((world["days"] as? [[String: Any]])?.count == 1)
        #expect(try w.cli(["usage", "--since", "yesterday"]).status != 0, "a bad --since is refused")
        let table = try w.cli(["usage"])
        #expect(table.status == 0 && table.out.contains("metered") && table.out.contains("COST"), "\(table.out)")
    }

    /// A CORS preflight with curl: the status and the allowed origin it names.
    func preflight(_ endpoint: String, origin: String) throws -> (status: Int, allowed: String) {
        let r = try runCapturing("/usr/bin/curl", ["-s", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}", "-X", "OPTIONS", endpoint + "/messages",
                                                   "-H", "Origin: \(origin)", "-H", "Access-Control-Request-Method: POST"], timeout: 20)
        let allowed = r.out.split(separator: "\r\n").first { $0.lowercased().hasPrefix("access-control-allow-origin:") }
        return (Int(r.out.suffix(3)) ?? 0, allowed.map { String($0.split(separator: " ", maxSplits: 1).last ?? "") } ?? "")
    }

    @Test("CORS through the daemon: deploy --cors-origin allows a page's preflight, soulfra cors changes the list on every loop at once, bad origins are refused")
    func corsOrigins() throws {
        let w = try CLIWorld("cors")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let d = try w.json(["deploy", "--type", "kids", "--name", "webapp", "--cors-origin", "https://app.example.com", "--no-wait"])
        let endpoint = d["endpoint"] as? String ?? ""
        #expect(try preflight(endpoint, origin: "https://app.example.com") == (204, "https://app.example.com"))
        #expect(try preflight(endpoint, origin: "https://other.example").status == 403)
        #expect(try w.cli(["cors", "webapp", "https://other.example"]).status == 0)
        #expect(try preflight(endpoint, origin: "https://other.example") == (204, "https://other.example"), "changed before the command returned")
        #expect(try preflight(endpoint, origin: "https://app.example.com").status == 403)
        let bad = try w.cli(["cors", "webapp", "https://App.example.com/path"])
        #expect(bad.status == 5 && bad.err.contains("not an origin"), "\(bad.err)")
        #expect(try w.cli(["cors", "webapp", "--clear"]).status == 0)
        #expect(try preflight(endpoint, origin: "https://other.example").status == 403)
        #expect(try w.json(["cors", "webapp"])["cors_origins"] as? [String] == [])
    }
}

/// The admin listener's URL and token of a CLI world's daemon.
func adminOf(_ w: CLIWorld) throws -> (url: String, token: String) {
    let port = (try String(contentsOfFile: w.home + "/ready", encoding: .utf8)).split(separator: "\n")[3]
    let token = try String(contentsOfFile: w.home + "/admin.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
    return ("http://127.0.0.1:\(port)", token)
}

/// Runs many requests through one curl (a config file of `url`/`next` entries); returns what each printed.
func curlMany(_ w: CLIWorld, _ entries: [[String]], parallel: Int = 1) throws -> [String] {
    let config = entries.map { $0.joined(separator: "\n") }.joined(separator: "\nnext\n") + "\n"
    let file = w.home + "/curl-\(UInt32.random(in: 0...UInt32.max)).cfg"
    try config.write(toFile: file, atomically: true, encoding: .utf8)
    defer { try? FileManager.default.removeItem(atPath: file) }
    let flags = parallel > 1 ? ["-Z", "--parallel-max", String(parallel)] : []
    return try runCapturing("/usr/bin/curl", ["-s"] + flags + ["-K", file], timeout: 120).out.split(separator: "\n").map(String.init)
}

@Suite("Metrics through the daemon: cardinality and promtool", .serialized, .enabled(if: uringAvailable && curlAvailable))
struct MetricsCLITests {
    func metrics(_ w: CLIWorld) throws -> String {
        let admin = try adminOf(w)
        return try runCapturing("/usr/bin/curl", ["-s", "-m", "10", admin.url + "/metrics", "-H", "Authorization: Bearer \(admin.token)"]).out
    }

    /// `/metrics` once `ready` holds of it (the control plane's part is rolled up every 2 s), or after 30 s.
    func metrics(_ w: CLIWorld, when ready: (String) -> Bool) throws -> String {
        var text = ""
        _ = try retry(for: 30, pause: 250_000) {
            text = try metrics(w)
            return ready(text)
        }
        return text
    }

    /// A sample's value in Prometheus text (0 when it is not there).
    func value(_ text: String, _ series: String) -> Double {
        text.split(separator: "\n").first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
    }

    func promtool(_ w: CLIWorld, _ text: String) throws {
        guard FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") else { return }
        let file = w.home + "/metrics.txt"
        try text.write(toFile: file, atomically: true, encoding: .utf8)
        let check = try runCapturing("/bin/sh", ["-c", "/usr/bin/promtool check metrics < \(file)"])
        #expect(check.status == 0 && check.out.isEmpty && check.err.isEmpty, "\(check.out) \(check.err)")
    }

    @Test("1,000 keys used at once add no series (no key label by default); metrics.per_key_labels adds one per key used; promtool-clean both ways")
    func cardinality() throws {
        let w = try CLIWorld("cardinality")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        // The kids template without its token pacing: a thousand replies in seconds, not minutes.
        let template = try String(contentsOf: repoRoot.appendingPathComponent("config/templates/kids.json"), encoding: .utf8)
            .replacingOccurrences(of: #""pacing_ms": 30"#, with: #""pacing_ms": 0"#)
        try template.write(toFile: w.home + "/fast-kids.json", atomically: true, encoding: .utf8)
        let d = try w.json(["deploy", "--name", "many", "--template-file", w.home + "/fast-kids.json"])
        let endpoint = d["endpoint"] as? String ?? ""
        for _ in 0..<3 { _ = try sendUnary(endpoint: endpoint, key: (d["key"] as? [String: Any])?["secret"] as? String ?? "", body: #"{"text":"hi"}"#) }
        // Counted from when the world's every family is there (its requests, its replies' histograms, its instance's sample).
        let before = try metrics(w) { t in
            value(t, #"soulfra_world_requests_total{world="many"}"#) >= 3 && t.contains(#"soulfra_world_ai_reply_seconds_count{world="many"}"#)
                && t.contains(#"soulfra_world_instance_memory_bytes{world="many","#)
        }.split(separator: "\n").filter { !$0.hasPrefix("#") }.count
        let admin = try adminOf(w)
        let made = try curlMany(w, (0..<1_000).map { _ in
            ["url = \"\(admin.url)/admin/v1/worlds/many/keys\"", "request = \"POST\"", "header = \"Authorization: Bearer \(admin.token)\"",
             "data = \"{}\"", "write-out = \"\\n\""]
        })
        // Answers are pretty-printed JSON: each secret is on a line of its own.
        let secrets = made.compactMap { line -> String? in
            guard let r = line.range(of: #""secret" : ""#) else { return nil }
            return String(line[r.upperBound...].prefix { $0 != "\"" })
        }
        #expect(secrets.count == 1_000)
        let answers = try curlMany(w, secrets.map { s in
            ["url = \"\(endpoint)/messages\"", "header = \"Authorization: Bearer \(s)\"", "data = \"{\\\"text\\\":\\\"hi\\\"}\"",
             "output = \"/dev/null\"", "write-out = \"%{http_code}\\n\""]
        }, parallel: 64)  // each reply takes the kids template's pacing (~0.8 s)
        #expect(answers.filter { $0 == "200" }.count == 1_000, "\(Set(answers))")
        let text = try metrics(w) { value($0, #"soulfra_world_requests_total{world="many"}"#) >= 1_003 }
        let after = text.split(separator: "\n").filter { !$0.hasPrefix("#") }.count
        #expect(after - before < 40, "series grew from \(before) to \(after) with 1,000 keys")
        #expect(!text.contains("key=\""), "no key label by default")
        #expect(text.contains(#"soulfra_world_requests_total{world="many"} "#))
        try promtool(w, text)
        // Asked for, a series per key used (bounded by the keys), still valid.
        #expect(try w.cli(["down"]).status == 0)
        var config = (try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: w.home + "/soulfra.json")))) as? [String: Any] ?? [:]
        config["metrics"] = ["per_key_labels": true]
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: w.home + "/soulfra.json"))
        #expect(try w.cli(["init"]).status == 0)
        let restarted = try w.json(["status", "many"])["endpoint"] as? String ?? ""
        for s in secrets.prefix(10) { _ = try sendUnary(endpoint: restarted, key: s, body: #"{"text":"again"}"#) }
        let perKey = try metrics(w) { $0.split(separator: "\n").filter { $0.hasPrefix("soulfra_key_requests_total{") }.count >= 10 }
        let keyed = perKey.split(separator: "\n").filter { $0.hasPrefix("soulfra_key_requests_total{") }
        #expect(keyed.count == 10, "one series per key used since the start: \(keyed.count)")
        try promtool(w, perKey)
    }

    @Test("three worlds: every per-world family is there, promtool-clean")
    func families() throws {
        let w = try CLIWorld("families")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        for (type, name) in [("kids", "k1"), ("executive", "e1"), ("sports", "s1")] {
            let d = try w.json(["deploy", "--type", type, "--name", name])
            _ = try sendMessage(endpoint: d["endpoint"] as? String ?? "", key: (d["key"] as? [String: Any])?["secret"] as? String ?? "", session: "fan")
        }
        // Instance CPU and memory are sampled every 10 s, off the control queue: each instance gets its series.
        let text = try metrics(w) { t in ["k1", "e1", "s1"].allSatisfy { t.contains(#"soulfra_world_instance_memory_bytes{world="\#($0)",instance="#) } }
        for world in ["k1", "e1", "s1"] {
            let memory = text.split(separator: "\n").first { $0.hasPrefix(#"soulfra_world_instance_memory_bytes{world="\#(world)","#) }
            #expect((memory?.split(separator: " ").last.flatMap { Double($0) } ?? 0) > 1_000_000, "\(world)'s resident set: \(memory ?? "no series")")
            #expect(text.contains(#"soulfra_world_instance_cpu_seconds_total{world="\#(world)",instance="#), "\(world)'s CPU time")
            let instances = try w.json(["status", world])["instances"] as? [[String: Any]] ?? []
            #expect(instances.count == 1 && (instances.first?["memory_bytes"] as? Int ?? 0) > 1_000_000, "status shows the sample: \(instances)")
        }
        for family in ["soulfra_world_users", "soulfra_world_active_users", "soulfra_world_interactions_total", "soulfra_world_requests_total",
                       "soulfra_world_bytes_total", "soulfra_world_tokens_total", "soulfra_world_ai_time_to_first_token_seconds",
                       "soulfra_world_ai_reply_seconds", "soulfra_world_instances", "soulfra_world_stream_peers", "soulfra_world_instance_cpu_seconds_total",
                       "soulfra_world_instance_memory_bytes", "soulfra_gateway_world_request_duration_seconds", "soulfra_webhook_deliveries_total",
                       "soulfra_vault_appends_total", "soulfra_vault_commit_seconds"] {
            #expect(text.contains("# TYPE \(family) "), "\(family) missing")
        }
        #expect(text.contains("# TYPE soulfra_vault_commit_seconds histogram"), "fsync latency as a histogram")
        let commits = text.split(separator: "\n").first { $0.hasPrefix(#"soulfra_vault_commit_seconds_bucket{le="+Inf"}"#) }
        #expect((commits?.split(separator: " ").last.flatMap { Int($0) } ?? 0) > 0, "\(commits ?? "no +Inf bucket")")
        for world in ["k1", "e1", "s1"] {
            #expect(text.contains(#"soulfra_world_instances{world="\#(world)",state="ready"} 1"#), "\(world) ready")
            #expect(text.contains(#"soulfra_gateway_world_request_duration_seconds_count{world="\#(world)",route="message_stream"}"#))
        }
        try promtool(w, text)
    }
}

@Suite("Per-world logs: the gateway's access log and the control plane's notes", .serialized, .enabled(if: uringAvailable && curlAvailable))
struct WorldLogsCLITests {
    @Test("soulfra logs shows the world's access log (keys and access_token cut to their prefix, refusals as WARN) and what the control plane did, from the same files")
    func accessLog() throws {
        let w = try CLIWorld("access")
        defer { w.tearDown() }
        #expect(try w.initDaemon())
        let d = try w.json(["deploy", "--type", "kids", "--name", "logged"])
        let endpoint = d["endpoint"] as? String ?? ""
        let key = (d["key"] as? [String: Any])?["secret"] as? String ?? ""
        #expect(try sendUnary(endpoint: endpoint, key: key, body: #"{"text":"hello"}"#).status == 200)
        #expect(try sendUnary(endpoint: endpoint, key: "sk-slfr_kids_notavalidkeyatall", body: #"{"text":"hello"}"#).status == 401)
        _ = try runCapturing("/usr/bin/curl", ["-s", "--max-time", "1", endpoint + "/rooms/live?access_token=\(key)"], timeout: 10)
        #expect(try w.cli(["scale", "logged", "--instances", "2"]).status == 0)
        var lines: [[String: Any]] = []
        for _ in 0..<50 {
            // --json prints one object a line (as a follow does).
            lines = try w.cli(["logs", "logged", "-n", "200", "--json"]).out.split(separator: "\n").compactMap {
                (try? JSONSerialization.jsonObject(with: Data($0.utf8))) as? [String: Any]
            }
            if lines.contains(where: { ($0["message"] as? String)?.contains("/rooms/live") == true }) { break }
            usleep(200_000)
        }
        let gateway = lines.filter { $0["instance"] as? String == "gateway" }.compactMap { $0["message"] as? String }
        let prefix = String(key.prefix(19))  // sk-slfr_kids_ and six more
        #expect(gateway.contains { $0.hasPrefix("POST /v1/worlds/logged/messages 200 ") && $0.contains("key=\(prefix)…") }, "\(gateway)")
        #expect(lines.contains { $0["instance"] as? String == "gateway" && $0["level"] as? String == "WARN" && ($0["message"] as? String)?.contains(" 401 ") == true })
        #expect(gateway.contains { $0.contains("/rooms/live?access_token=\(prefix)…") }, "access_token cut to its prefix: \(gateway)")
        let control = lines.filter { $0["instance"] as? String == "control" }.compactMap { $0["message"] as? String }
        #expect(control.contains { $0.contains("deployed from the kids template") } && control.contains { $0.contains("scaled from 1 to 2") }, "\(control)")
        let file = (try? String(contentsOfFile: w.home + "/control/instances/logged/gateway.log", encoding: .utf8)) ?? ""
        #expect(!file.isEmpty && !file.contains(key), "the whole key is never written")
        let filtered = try w.cli(["logs", "logged", "--filter", "instance=gateway", "--filter", "level=warn"])
        #expect(filtered.status == 0 && filtered.out.contains("gateway | ") && filtered.out.contains(" 401 ") && !filtered.out.contains(" 200 "), "\(filtered.out)")
    }
}
