import Foundation
import SoulfraNet
import Synchronization
import Testing

/// The product brief's commands, end to end with the process driver: `soulfra init` starts a daemon in a home
/// of its own; every other command is a client of its admin API; messages go through the gateway with curl.
struct CLIWorld {
    let home: String
    var env: [String: String] { ["SOULFRA_HOME": home] }

    init(_ name: String) throws {
        home = NSTemporaryDirectory() + "soulfra-cli-\(name)-\(getpid())"
        try? FileManager.default.removeItem(atPath: home)
        try FileManager.default.createDirectory(atPath: home, withIntermediateDirectories: true)
    }

    /// Runs `soulfra args…`; returns the exit status, stdout and stderr.
    @discardableResult
    func cli(_ args: [String], timeout: Double = 60) throws -> (status: Int32, out: String, err: String) {
        try runCapturing(soulfraBinary, args, environment: env, timeout: timeout)
    }

    /// Runs a reading command with `--json` and parses its answer; a failure is recorded.
    func json(_ args: [String]) throws -> [String: Any] {
        let r = try cli(args + ["--json"])
        #expect(r.status == 0, "soulfra \(args.joined(separator: " ")): \(r.err)")
        return (try? JSONSerialization.jsonObject(with: Data(r.out.utf8))) as? [String: Any] ?? [:]
    }

    /// `soulfra init` with the process driver on loopback ports of the system's choosing; true when it started.
    @discardableResult
    func initDaemon() throws -> Bool {
        try cli(["init", "--driver", "process", "--gateway", "127.0.0.1:0", "--gateway-tls", "", "--admin-listen", "127.0.0.1:0", "--broker-tcp", ""]).status == 0
    }

    var daemonPID: pid_t? {
        (try? String(contentsOfFile: home + "/serve.pid", encoding: .utf8)).flatMap { pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
    }

    /// Stops what this home started: its worlds' instances and its daemon (by the pids it recorded).
    func tearDown() {
        let instances = home + "/control/instances"
        for world in (try? FileManager.default.contentsOfDirectory(atPath: instances)) ?? [] {
            for f in (try? FileManager.default.contentsOfDirectory(atPath: instances + "/" + world)) ?? [] where f.hasSuffix(".pid") {
                if let text = try? String(contentsOfFile: instances + "/" + world + "/" + f, encoding: .utf8),
                   let pid = pid_t(text.split(separator: " ").first ?? "") { kill(-pid, SIGKILL) }
            }
        }
        if let pid = daemonPID { kill(pid, SIGKILL) }
        try? FileManager.default.removeItem(atPath: home)
    }
}

/// Runs a process to completion (bounded) with extra environment; stdout and stderr apart. With `group`, it
/// runs in a session of its own, and a timeout kills everything it started (a browser's children too).
func runCapturing(_ path: String, _ args: [String], environment: [String: String] = [:], timeout: Double = 60,
                  group: Bool = false) throws -> (status: Int32, out: String, err: String) {
    let p = Process()
    // setsid(1) execs in place (the child is no group leader), so the pid is the session's and its group's.
    p.executableURL = URL(fileURLWithPath: group ? "/usr/bin/setsid" : path)
    p.arguments = group ? [path] + args : args
    p.environment = ProcessInfo.processInfo.environment.merging(environment) { _, new in new }
    // Output goes to files, read once the process is gone: no thread waits on a pipe (the shared dispatch pool's
    // few threads stay free for the code under test), a grandchild keeping the output open cannot block the
    // read, and a chatty child never stalls on a full pipe.
    let base = NSTemporaryDirectory() + "soulfra-capture-\(getpid())-\(UInt64.random(in: 0...UInt64.max))"
    defer { unlink(base + ".out"); unlink(base + ".err") }
    guard FileManager.default.createFile(atPath: base + ".out", contents: nil), FileManager.default.createFile(atPath: base + ".err", contents: nil) else {
        throw CocoaError(.fileWriteUnknown)
    }
    let out = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".out")), err = try FileHandle(forWritingTo: URL(fileURLWithPath: base + ".err"))
    p.standardOutput = out
    p.standardError = err
    do { try p.run() } catch { try? out.close(); try? err.close(); throw error }
    try? out.close()  // the child has its own
    try? err.close()
    let deadline = Date().addingTimeInterval(timeout)
    while p.isRunning && Date() < deadline { usleep(5_000) }
    if p.isRunning { kill(group ? -p.processIdentifier : p.processIdentifier, SIGKILL) }
    p.waitUntilExit()
    let read = { (path: String) in String(decoding: FileManager.default.contents(atPath: path) ?? Data(), as: UTF8.self) }
    return (p.terminationStatus, read(base + ".out"), read(base + ".err"))
}

/// Whether a process runs (a zombie waiting for its reaper does not).
func alive(_ pid: pid_t) -> Bool {
    guard kill(pid, 0) == 0, let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    return !stat[stat.index(after: close)...].hasPrefix(" Z")
}

/// One message through the gateway with curl: the HTTP status and the streamed events' text.
func sendMessage(endpoint: String, key: String, session: String, text: String = "hello") throws -> (status: Int, body: String) {
    let body = #"{"text":"\#(text)","session":"\#(session)"}"#
    let r = try runCapturing("/usr/bin/curl", ["-sN", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", endpoint + "/messages",
                                               "-H", "Authorization: Bearer \(key)", "-H", "accept: text/event-stream", "-d", body], timeout: 30)
    let lines = r.out.split(separator: "\n", omittingEmptySubsequences: false)
    return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
}

let curlAvailable = FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")

/// Tries `attempt` until it holds or `seconds` have passed (however long each try takes), pausing between tries.
func retry(for seconds: UInt64, pause: useconds_t = 100_000, _ attempt: () throws -> Bool) rethrows -> Bool {
    let until = monotonicMilliseconds() + seconds * 1000
    repeat {
        if try attempt() { return true }
        usleep(pause)
    } while monotonicMilliseconds() < until
    return false
}

@Suite("The brief's commands with the process driver", .serialized, .enabled(if: uringAvailable && curlAvailable))
struct WorldsCLITests {
    @Test("init → deploy kids, executive, sports → streamed replies → list/status → scale 5 and back to 1 under load, no failed request → kill -9 an instance: replaced, session re-pinned → daemon kill -9 and restart: adopted, not duplicated → shutdown → gone")
    func briefSequence() throws {
        let w = try CLIWorld("brief")
        defer { w.tearDown() }
        let initialized = try w.json(["init", "--driver", "process", "--gateway", "127.0.0.1:0", "--gateway-tls", "", "--admin-listen", "127.0.0.1:0", "--broker-tcp", ""])
        #expect(initialized["driver"] as? String == "process")
        #expect(try w.cli(["init"]).out.contains("already running"), "init is idempotent")
        var worlds: [String: (endpoint: String, key: String)] = [:]
        for (type, name, agent) in [("kids", "playground", "cal"), ("executive", "boardroom", "bucky"), ("sports", "arena", "")] {
            let d = try w.json(["deploy", "--type", type, "--name", name] + (type == "kids" ? ["--agents", "cal,domingo,arty", "--runtime", "balanced", "--stream", "3way_full"] : []))
            let key = (d["key"] as? [String: Any])?["secret"] as? String ?? ""
            #expect(key.hasPrefix("sk-slfr_\(type)_"), "deploy prints the key once")
            #expect((d["first_reply"] as? [String: Any])?["text"] as? String != nil, "deploy waited for a real reply")
            worlds[name] = (d["endpoint"] as? String ?? "", key)
            let reply = try sendMessage(endpoint: worlds[name]!.endpoint, key: key, session: "me")
            #expect(reply.status == 200 && reply.body.contains(#""event":"done""#), "\(name): \(reply.body.suffix(300))")
            if !agent.isEmpty { #expect(reply.body.contains(#""agent":"\#(agent)""#), "\(name)'s first agent answers") }
        }
        try templateRules(w, worlds)
        let list = try w.json(["list"])["worlds"] as? [[String: Any]] ?? []
        #expect(Set(list.map { $0["name"] as? String ?? "" }) == ["playground", "boardroom", "arena"])
        let status = try w.json(["status", "playground"])
        #expect((status["instances"] as? [[String: Any]])?.first?["health"] as? String == "ready")
        #expect((status["keys"] as? [[String: Any]])?.count == 1)
        try scaleUnderLoad(w, endpoint: worlds["playground"]!.endpoint, key: worlds["playground"]!.key)
        try killedInstanceIsReplaced(w, endpoint: worlds["playground"]!.endpoint, key: worlds["playground"]!.key)
        try daemonRestartAdopts(w, key: worlds["playground"]!.key)
        for name in worlds.keys {
            let pids = instancePIDs(w, world: name)
            let endpoint = try w.json(["status", name])["endpoint"] as? String ?? ""  // the gateway's port changed with the restart
            let r = try w.cli(["shutdown", name])
            #expect(r.status == 0, "\(r.err)")
            #expect(try sendMessage(endpoint: endpoint, key: worlds[name]!.key, session: "me").status == 401, "\(name)'s key is revoked")
            #expect(pids.allSatisfy { !alive($0) }, "\(name)'s instances are gone")
        }
        #expect((try w.json(["list"])["worlds"] as? [Any])?.isEmpty == true)
    }

    /// The templates' rules, seen through the gateway and the logs: kids moderate and keep a trust score (from
    /// the template's knowledge, cal knows about Mars); executive counts tantrums.
    func templateRules(_ w: CLIWorld, _ worlds: [String: (endpoint: String, key: String)]) throws {
        let kids = worlds["playground"]!
        let refused = try sendMessage(endpoint: kids.endpoint, key: kids.key, session: "tim", text: "where can I buy a gun")
        #expect(refused.status == 200 && refused.body.contains(#""moderated":true"#) && refused.body.contains("friendly and safe"), "\(refused.body)")
        let mars = try sendMessage(endpoint: kids.endpoint, key: kids.key, session: "tim", text: "tell me about mars")
        #expect(mars.body.contains("red planet"), "the template's knowledge reaches the agent: \(mars.body.suffix(300))")
        let exec = worlds["boardroom"]!
        #expect(try sendMessage(endpoint: exec.endpoint, key: exec.key, session: "ceo", text: "WHY IS THIS NOT DONE YET!!!").status == 200)
        var logs = ""
        for _ in 0..<20 {
            logs = try w.cli(["logs", "playground", "-n", "200"]).out + (try w.cli(["logs", "boardroom", "--filter", "level=warn"]).out)
            if logs.contains("tantrum") && logs.contains("now -5") { break }
            usleep(100_000)
        }
        #expect(logs.contains("INFO: New user connected to playground"), "\(logs)")
        #expect(logs.contains("WARN: moderation refused a message in session tim: blocked word \"gun\""), "\(logs)")
        #expect(logs.contains("INFO: Trust score updated: -10 (session tim, now -10)") && logs.contains("INFO: Trust score updated: +5 (session tim, now -5)"), "\(logs)")
        #expect(logs.contains("boardroom-1 | ") && logs.contains("WARN: tantrum in session ceo"), "\(logs)")
        try worldMetrics(w)  // while the tantrum is in its last minute, however slow what follows is
        try sportsRoom(w, worlds["arena"]!)
        try executiveUsers(exec, kidsKey: kids.key)
    }

    /// Executive: `/users` made, listed, read, removed (kept in the vault); a key without user_management is refused.
    func executiveUsers(_ exec: (endpoint: String, key: String), kidsKey: String) throws {
        func call(_ method: String, _ path: String, key: String, body: String? = nil) throws -> (status: Int, json: [String: Any]) {
            let r = try runCapturing("/usr/bin/curl", ["-s", "-m", "10", "-X", method, "-o", "-", "-w", "\n%{http_code}", exec.endpoint + path, "-H", "Authorization: Bearer \(key)"]
                                     + (body.map { ["-d", $0] } ?? []), timeout: 30)
            let lines = r.out.split(separator: "\n")
            let json = (try? JSONSerialization.jsonObject(with: Data((lines.dropLast().joined(separator: "\n")).utf8))) as? [String: Any] ?? [:]
            return (Int(lines.last ?? "") ?? 0, json)
        }
        let made = try call("POST", "/users", key: exec.key, body: #"{"name":"Ada","role":"cfo"}"#)
        #expect(made.status == 201, "\(made)")
        let id = (made.json["user"] as? [String: Any])?["id"] as? String ?? ""
        #expect(id.hasPrefix("u_"))
        #expect(try call("GET", "/users", key: exec.key).json["count"] as? Int == 1)
        #expect(try call("GET", "/users/\(id)", key: exec.key).status == 200)
        #expect(try call("POST", "/users", key: exec.key, body: "{}").status == 400, "a user needs a name")
        #expect(try call("DELETE", "/users/\(id)", key: exec.key).status == 200)
        #expect(try call("GET", "/users/\(id)", key: exec.key).status == 404)
        #expect(try call("DELETE", "/users/\(id)", key: exec.key).status == 404)
        // A directory larger than the gateway's opening window still answers whole (it goes in pieces).
        for i in 0..<80 { _ = try call("POST", "/users", key: exec.key, body: #"{"name":"Member \#(i) of the board","email":"member\#(i)@example.com"}"#) }
        let all = try call("GET", "/users", key: exec.key)
        #expect(all.status == 200 && all.json["count"] as? Int == 80 && (all.json["users"] as? [Any])?.count == 80, "\(all.status)")
        // The directory's own session is not an app's to read or write.
        #expect(try call("GET", "/sessions/_users", key: exec.key).status == 404)
        #expect(try call("POST", "/messages", key: exec.key, body: #"{"text":"hi","session":"_users"}"#).status == 400)
        #expect(try call("DELETE", "/users", key: exec.key).status == 405)
        let refused = try call("GET", "/users", key: kidsKey)
        #expect(refused.status == 403, "a kids key is for another world (and has no user_management): \(refused)")
        // Analytics, rolled up from the world's events every two seconds: the deploy's message, the first
        // message ("me") and the tantrum ("ceo").
        var figures: [String: Any] = [:]
        let until = monotonicMilliseconds() + 30_000
        while monotonicMilliseconds() < until {
            let a = try call("GET", "/analytics", key: exec.key)
            figures = a.json
            if a.status == 200, (figures["interactions"] as? Int ?? 0) >= 3, (figures["replies"] as? Int ?? 0) >= 3 { break }
            usleep(200_000)
        }
        #expect(figures["users"] as? Int == 3 && figures["interactions"] as? Int == 3, "\(figures)")
        #expect((figures["replies_by_agent"] as? [String: Int])?["bucky"] == 3, "\(figures)")
        #expect((figures["reply_ms"] as? [String: Any])?["p99_at_most"] is Double, "\(figures)")
        #expect(figures["tantrums"] as? Int == 1, "\(figures)")  // its last minute is checked on /metrics, right after it
    }

    /// The roll-ups on /metrics: per-world users, interactions and the executive world's tantrums per minute,
    /// in text promtool accepts.
    func worldMetrics(_ w: CLIWorld) throws {
        let port = (try String(contentsOfFile: w.home + "/ready", encoding: .utf8)).split(separator: "\n")[3]
        let token = try String(contentsOfFile: w.home + "/admin.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        // Rolled up every two seconds.
        var metrics = ""
        _ = try retry(for: 30, pause: 200_000) {
            metrics = try runCapturing("/usr/bin/curl", ["-s", "-m", "5", "http://127.0.0.1:\(port)/metrics", "-H", "Authorization: Bearer \(token)"]).out
            return metrics.contains(#"soulfra_world_tantrums_per_minute{world="boardroom"} 1"#) && metrics.contains(#"soulfra_world_users{world="boardroom"} 3"#)
        }
        #expect(metrics.contains(#"soulfra_world_tantrums_per_minute{world="boardroom"} 1"#), "\(metrics.suffix(600))")
        #expect(metrics.contains(#"soulfra_world_users{world="boardroom"} 3"#))
        if FileManager.default.isExecutableFile(atPath: "/usr/bin/promtool") {
            let file = w.home + "/metrics.txt"
            try metrics.write(toFile: file, atomically: true, encoding: .utf8)
            let check = try runCapturing("/bin/sh", ["-c", "/usr/bin/promtool check metrics < \(file)"])
            #expect(check.status == 0, "\(check.out) \(check.err)")
        }
    }

    /// Sports: a viewer of the room `live` is counted, and sees every reply fanned out to it.
    func sportsRoom(_ w: CLIWorld, _ arena: (endpoint: String, key: String)) throws {
        let seenPath = w.home + "/viewer.out"
        let viewer = Process()
        viewer.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        viewer.arguments = ["-sN", "--max-time", "120", "-o", seenPath, arena.endpoint + "/rooms/live", "-H", "Authorization: Bearer \(arena.key)"]
        try viewer.run()
        defer { if viewer.isRunning { kill(viewer.processIdentifier, SIGKILL) } }
        var viewers = 0
        _ = try retry(for: 30) {
            viewers = try w.json(["status", "arena"])["viewers"] as? Int ?? 0
            return viewers > 0
        }
        #expect(viewers == 1, "the viewer is counted")
        #expect(try sendMessage(endpoint: arena.endpoint, key: arena.key, session: "fan", text: "what a goal").status == 200)
        var seen = ""
        _ = retry(for: 15, pause: 50_000) {
            seen = (try? String(contentsOfFile: seenPath, encoding: .utf8)) ?? ""
            return seen.contains(#""event":"commentary""#) && seen.contains(#""session":"fan""#)
        }
        #expect(seen.contains(#""event":"commentary""#) && seen.contains(#""session":"fan""#), "the reply was fanned out to the room: \(seen.prefix(400))")
    }

    /// The pids of a world's instances, from their pid files.
    func instancePIDs(_ w: CLIWorld, world: String) -> [pid_t] {
        let dir = w.home + "/control/instances/" + world
        return ((try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []).filter { $0.hasSuffix(".pid") }.compactMap {
            (try? String(contentsOfFile: dir + "/" + $0, encoding: .utf8)).flatMap { pid_t($0.split(separator: " ").first ?? "") }
        }
    }

    /// Three clients send messages back to back while the world scales 1 → 5 → 1: every one is answered.
    func scaleUnderLoad(_ w: CLIWorld, endpoint: String, key: String) throws {
        let stop = Atomic<Bool>(false)
        let results = Mutex<[Int]>([])
        let group = DispatchGroup()
        for c in 0..<3 {
            group.enter()
            Thread {
                defer { group.leave() }
                var n = 0
                while !stop.load(ordering: .acquiring) && n < 200 {
                    n += 1
                    let r = (try? sendMessage(endpoint: endpoint, key: key, session: "load-\(c)-\(n)")) ?? (status: 0, body: "")
                    results.withLock { $0.append(r.status == 200 && r.body.contains(#""event":"done""#) ? 200 : r.status == 200 ? -1 : r.status) }
                }
            }.start()
        }
        usleep(300_000)
        let up = try w.cli(["scale", "playground", "--instances", "5", "--wait"])
        #expect(up.status == 0, "\(up.err)")
        #expect(instancePIDs(w, world: "playground").count == 5)
        usleep(1_500_000)
        let down = try w.cli(["scale", "playground", "--instances", "1", "--wait"])
        #expect(down.status == 0, "\(down.err)")
        usleep(1_000_000)
        stop.store(true, ordering: .releasing)
        group.wait()
        let all = results.withLock { $0 }
        #expect(all.count >= 6, "the load ran (\(all.count) requests)")
        #expect(all.allSatisfy { $0 == 200 }, "every request during scaling was answered in full: \(all)")
        #expect(instancePIDs(w, world: "playground").count == 1)
    }

    /// kill -9 of the instance a session is pinned to: a replacement starts and the session's next message is
    /// answered there.
    func killedInstanceIsReplaced(_ w: CLIWorld, endpoint: String, key: String) throws {
        #expect(try sendMessage(endpoint: endpoint, key: key, session: "pinned").status == 200)
        let before = instancePIDs(w, world: "playground")
        #expect(before.count == 1)
        kill(before[0], SIGKILL)
        var replaced: [pid_t] = []
        for _ in 0..<100 {
            replaced = instancePIDs(w, world: "playground").filter { !before.contains($0) && alive($0) }
            if !replaced.isEmpty { break }
            usleep(100_000)
        }
        #expect(replaced.count == 1, "a new instance replaced the killed one")
        let answered = try retry(for: 60) {
            let r = try sendMessage(endpoint: endpoint, key: key, session: "pinned")
            return r.status == 200 && r.body.contains(#""event":"done""#)
        }
        #expect(answered, "the pinned session is answered by the replacement")
        let logs = try w.cli(["logs", "playground", "-n", "50"])
        #expect(logs.out.contains("playground-1 |"), "logs interleave the instances with a prefix: \(logs.out.prefix(500))")
    }

    /// The daemon is killed with -9 and started again by init: the running instances are adopted (same pids,
    /// no duplicates) and the world answers.
    func daemonRestartAdopts(_ w: CLIWorld, key: String) throws {
        let before = Set(instancePIDs(w, world: "arena") + instancePIDs(w, world: "playground") + instancePIDs(w, world: "boardroom"))
        guard let daemon = w.daemonPID else { Issue.record("no daemon pid"); return }
        kill(daemon, SIGKILL)
        for _ in 0..<100 where kill(daemon, 0) == 0 { usleep(20_000) }
        let again = try w.cli(["init"])
        #expect(again.status == 0 && again.out.contains("daemon started"), "\(again.err)")
        let endpoint = try w.json(["status", "playground"])["endpoint"] as? String ?? ""
        let answered = try retry(for: 60, pause: 50_000) { try sendMessage(endpoint: endpoint, key: key, session: "me").status == 200 }
        #expect(answered, "the world answers as soon as the gateway is back")
        usleep(600_000)  // a few control passes: any duplicate would have been started by now
        let after = Set(instancePIDs(w, world: "arena") + instancePIDs(w, world: "playground") + instancePIDs(w, world: "boardroom"))
        #expect(after == before, "the same instances, adopted: \(before) → \(after)")
        let list = try w.json(["list"])["worlds"] as? [[String: Any]] ?? []
        #expect(list.allSatisfy { ($0["instances_running"] as? Int) == ($0["instances_desired"] as? Int) })
    }

    @Test("bad input: clear errors and exit statuses, nothing changed — names, types, agents, templates, scale limits, taken names, no daemon, a key on another world")
    func badInput() throws {
        let w = try CLIWorld("bad")
        defer { w.tearDown() }
        let none = try w.cli(["list", "--admin", "http://127.0.0.1:1", "--token", "x"])
        #expect(none.status == 69 && none.err.contains("no daemon at http://127.0.0.1:1") && none.err.contains("init"), "\(none.err)")
        let noToken = try w.cli(["list"])
        #expect(noToken.status == 77 && noToken.err.contains("run ./soulfra-deploy.sh init"), "\(noToken.err)")
        #expect(try w.cli(["init", "--driver", "process", "--gateway", "127.0.0.1:0", "--gateway-tls", "", "--admin-listen", "127.0.0.1:0", "--broker-tcp", ""]).status == 0)
        let cases: [([String], Int32, String)] = [
            (["deploy", "--type", "kids", "--name", "Bad Name"], 5, "lowercase letters"),
            (["deploy", "--type", "kids", "--name=9lives"], 5, "starting with a letter"),
            (["deploy", "--type", "spaceship", "--name", "x"], 5, "use one of kids, executive, sports, custom"),
            (["deploy", "--type", "kids", "--name", "x", "--agents", "cal,bucky"], 5, "agent \"bucky\" is not in the kids template"),
            (["deploy", "--type", "kids", "--name", "x", "--runtime", "turbo"], 5, "runtime \"turbo\" is unknown"),
            (["deploy", "--type", "kids", "--name", "x", "--stream", "4way"], 5, "use 3way_full or realtime"),
            (["deploy", "--type", "kids", "--name", "x", "--instances", "11"], 5, "0 to 10"),
            (["deploy", "--name", "x", "--template-file", w.home + "/bad-template.json"], 5, "agents[0].style"),
            (["deploy", "--name", "x", "--template-file", w.home + "/missing.json"], 66, "cannot read the template file"),
            (["scale", "nowhere", "--instances", "2"], 3, "no world named \"nowhere\""),
            (["status", "nowhere"], 3, "soulfra list"),
            (["logs", "nowhere"], 3, "no world named"),
            (["keys", "revoke", "nowhere", "1"], 3, "no world named"),
            (["shutdown", "nowhere"], 3, "no world named"),
        ]
        try #"{"type": "custom", "name": "mine", "agents": [{"name": "a", "style": "grumpy"}]}"#.write(toFile: w.home + "/bad-template.json", atomically: true, encoding: .utf8)
        for (args, status, text) in cases {
            let r = try w.cli(args)
            #expect(r.status == status && r.err.contains(text), "soulfra \(args.joined(separator: " ")) → \(r.status): \(r.err)")
        }
        #expect((try w.json(["list"])["worlds"] as? [Any])?.isEmpty == true, "nothing was made by the refused deploys")
        let kids = try w.json(["deploy", "--type", "kids", "--name", "one", "--no-wait"])
        let exec = try w.json(["deploy", "--type", "executive", "--name", "two"])
        let taken = try w.cli(["deploy", "--type", "sports", "--name", "one"])
        #expect(taken.status == 4 && taken.err.contains("already exists"), "\(taken.err)")
        let over = try w.cli(["scale", "two", "--instances", "9"])
        #expect(over.status == 5 && over.err.contains("0 to 8"), "\(over.err)")
        let kidsKey = (kids["key"] as? [String: Any])?["secret"] as? String ?? ""
        let wrong = try sendMessage(endpoint: exec["endpoint"] as? String ?? "", key: kidsKey, session: "me")
        #expect(wrong.status == 403 && wrong.body.contains("wrong_world"), "a key of one world is refused on another: \(wrong)")
        let status = try w.json(["status", "two"])
        #expect((status["instances_desired"] as? Int) == 1, "the refused scale changed nothing")
        try hostileAdminCalls(w)
    }

    /// Calls that once stopped the daemon: an empty query pair, numbers that overflow, a boolean for a count.
    func hostileAdminCalls(_ w: CLIWorld) throws {
        let port = (try String(contentsOfFile: w.home + "/ready", encoding: .utf8)).split(separator: "\n")[3]
        let token = try String(contentsOfFile: w.home + "/admin.token", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        func admin(_ method: String, _ path: String, _ body: String? = nil) throws -> String {
            try runCapturing("/usr/bin/curl", ["-s", "-X", method, "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)" + path,
                                               "-H", "Authorization: Bearer \(token)"] + (body.map { ["-d", $0] } ?? []), timeout: 30).out
        }
        #expect(try admin("GET", "/admin/v1/status?=&a&=b") == "200")
        #expect(try admin("POST", "/admin/v1/worlds/one/keys", #"{"expires_in_seconds": 9300000000000000}"#) == "400")
        #expect(try admin("POST", "/admin/v1/worlds/one/keys/1/rotate", #"{"grace_seconds": 9300000000000000}"#) == "400")
        #expect(try admin("GET", "/admin/v1/worlds/one/logs?since=9999999999999999s") == "400")
        #expect(try admin("POST", "/admin/v1/worlds/one/scale", #"{"instances": true}"#) == "400")
        #expect(try w.cli(["keys", "create", "one", "--expires-in", "9300000000000000"]).status == 5)
        #expect(try admin("GET", "/admin/v1/status") == "200", "the daemon is still there")
    }

    @Test("custom: the template's privacy settings turn on vault encryption — a key is made at deploy and nothing said is on disk in the clear; shutdown --purge removes the vault and key")
    func privacyEncryptsTheVault() throws {
        let w = try CLIWorld("privacy")
        defer { w.tearDown() }
        #expect(try w.cli(["init", "--driver", "process", "--gateway", "127.0.0.1:0", "--gateway-tls", "", "--admin-listen", "127.0.0.1:0", "--broker-tcp", ""]).status == 0)
        let d = try w.json(["deploy", "--type", "custom", "--name", "therapy"])
        #expect((d["vault"] as? String)?.hasPrefix("encrypted") == true, "\(d["vault"] ?? "")")
        #expect(FileManager.default.fileExists(atPath: w.home + "/vault-keys/therapy.key"), "the world's key was made before its first event")
        let secret = "my-very-private-worry-\(getpid())"
        let reply = try sendMessage(endpoint: d["endpoint"] as? String ?? "", key: (d["key"] as? [String: Any])?["secret"] as? String ?? "",
                                    session: "client", text: secret)
        #expect(reply.status == 200 && reply.body.contains(#""event":"done""#), "the agent answered")
        var onDisk = Data()
        for f in (try? FileManager.default.contentsOfDirectory(atPath: w.home + "/vault/therapy")) ?? [] {
            onDisk += FileManager.default.contents(atPath: w.home + "/vault/therapy/" + f) ?? Data()
        }
        #expect(!onDisk.isEmpty, "the vault stored the conversation")
        #expect(onDisk.range(of: Data(secret.utf8)) == nil, "…encrypted: the words are not on disk")
        let plain = try w.json(["deploy", "--type", "kids", "--name", "plain"])  // waits: its first message is in its vault
        #expect(plain["vault"] as? String == "plain")
        // shutdown keeps a vault; --purge removes it and its key once the instances are gone.
        #expect(try w.cli(["shutdown", "plain"]).status == 0)
        let purged = try w.cli(["shutdown", "therapy", "--purge"])
        #expect(purged.status == 0 && purged.out.contains("vault purged"), "\(purged.out) \(purged.err)")
        for _ in 0..<100 where FileManager.default.fileExists(atPath: w.home + "/vault/therapy") { usleep(20_000) }
        #expect(!FileManager.default.fileExists(atPath: w.home + "/vault/therapy"), "the world's log is gone")
        #expect(!FileManager.default.fileExists(atPath: w.home + "/vault-keys/therapy.key"), "and its key")
        let again = try w.json(["deploy", "--type", "custom", "--name", "therapy"])
        #expect((again["first_reply"] as? [String: Any])?["text"] != nil, "the name deploys again, on a fresh vault")
        // A vault kept in the clear is not passed off as encrypted: that deploy is refused until it is purged.
        let over = try w.cli(["deploy", "--type", "custom", "--name", "plain"])
        #expect(over.status == 4 && over.err.contains("unencrypted vault kept"), "\(over.err)")
    }
}
