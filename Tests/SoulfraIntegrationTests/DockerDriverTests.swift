import Foundation
import Testing
import SoulfraDocker
import SoulfraKeys
import SoulfraClient

let dockerAvailable = DockerClient().ping()
let dockerCLI = ["/usr/bin/docker", "/usr/local/bin/docker"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "docker"

/// `docker args…`: stdout, trimmed.
func docker(_ args: [String]) throws -> String {
    try runCapturing(dockerCLI, args, timeout: 60).out.trimmingCharacters(in: .whitespacesAndNewlines)
}

@Suite("The brief's commands with the docker driver, on a real engine", .serialized,
       .enabled(if: uringAvailable && curlAvailable && dockerAvailable,
                "NO DOCKER ENGINE answers at /var/run/docker.sock: the docker driver was NOT tested (the test command starts dockerd where it can)"))
struct DockerDriverTests {
    /// The daemon id in this home's container names and labels.
    func daemonID(_ w: CLIWorld) -> String { sha256(Array((w.home + "/control").utf8)).prefix(6).map { String(format: "%02x", $0) }.joined() }

    /// The container of instance `id` of this home's daemon.
    func container(_ w: CLIWorld, _ id: String) -> String { "soulfra-\(daemonID(w))-\(id)" }

    /// The containers this home's daemon made (by its label), with their state.
    func containers(_ w: CLIWorld) throws -> [(name: String, id: String, state: String)] {
        let out = try docker(["ps", "-a", "--no-trunc", "--filter", "label=soulfra.world", "--format", "{{.Names}} {{.ID}} {{.State}} {{.Label \"soulfra.daemon\"}}"])
        let daemon = daemonID(w)
        return out.split(separator: "\n").compactMap { line in
            let f = line.split(separator: " ").map(String.init)
            return f.count == 4 && f[3] == daemon ? (f[0], f[1], f[2]) : nil
        }
    }

    @Test("init builds the images → deploy kids and sports in containers → replies → no network (inspected, loopback only inside), memory and CPU limits applied → docker kill healed → scale 3 and back → daemon kill -9: containers adopted → shutdown: none left")
    func containersEndToEnd() throws {
        let w = try CLIWorld("docker")
        defer {
            for c in (try? containers(w)) ?? [] { _ = try? docker(["rm", "-f", c.id]) }
            w.tearDown()
        }
        let started = try w.json(["init", "--driver", "docker", "--gateway", "127.0.0.1:0", "--gateway-tls", "", "--admin-listen", "127.0.0.1:0", "--broker-tcp", ""])
        #expect(started["driver"] as? String == "docker")
        var keys: [String: String] = [:]
        for (type, name) in [("kids", "playground"), ("sports", "arena")] {
            let d = try w.json(["deploy", "--type", type, "--name", name])
            keys[name] = (d["key"] as? [String: Any])?["secret"] as? String ?? ""
            #expect(d["driver"] as? String == "docker")
            #expect((d["first_reply"] as? [String: Any])?["text"] != nil, "\(name) answered from its container")
            #expect((d["unenforced"] as? [String] ?? []).allSatisfy { $0.hasPrefix("resources.storage") }, "only a disk quota can go unenforced here")
        }
        let names = Set(try containers(w).map(\.name))
        #expect(names == [container(w, "playground-1"), container(w, "arena-1")], "\(names)")
        let inspect = try docker(["inspect", container(w, "playground-1"), "--format",
                                  "{{.HostConfig.NetworkMode}} {{.HostConfig.Memory}} {{.HostConfig.MemorySwap}} {{.HostConfig.NanoCpus}} {{.HostConfig.RestartPolicy.Name}} {{.HostConfig.ReadonlyRootfs}} {{.HostConfig.PidsLimit}}"])
        #expect(inspect == "none 256000000 256000000 500000000 no true 256",
                "network none, the kids template's 256MB (no swap past it) and 0.5 CPU, no restart policy, read-only root, pids bounded: \(inspect)")
        #expect(try docker(["exec", container(w, "playground-1"), "/soulfra", "interfaces"]) == "lo", "inside, loopback is the only interface")
        // CPU and memory from the engine's stats, sampled every 10 s off the control queue.
        var sampled: [[String: Any]] = []
        for _ in 0..<60 {
            sampled = try w.json(["status", "arena"])["instances"] as? [[String: Any]] ?? []
            if (sampled.first?["memory_bytes"] as? Int ?? 0) > 0 { break }
            usleep(500_000)
        }
        #expect((sampled.first?["memory_bytes"] as? Int ?? 0) > 100_000 && sampled.first?["cpu_seconds"] is Double, "the engine's stats: \(sampled)")
        let endpoint = { (name: String) throws -> String in try w.json(["status", name])["endpoint"] as? String ?? "" }
        let before = try containers(w).first { $0.name == container(w, "playground-1") }!.id
        _ = try docker(["kill", container(w, "playground-1")])
        var healed = false
        for _ in 0..<100 where !healed {
            healed = try containers(w).contains { $0.name == container(w, "playground-1") && $0.id != before && $0.state == "running" }
            if !healed { usleep(100_000) }
        }
        #expect(healed, "a killed container is replaced")
        let answered = try retry(for: 60) { try sendMessage(endpoint: try endpoint("playground"), key: keys["playground"]!, session: "me").body.contains(#""event":"done""#) }
        #expect(answered, "the replacement answers")
        #expect(try w.cli(["scale", "arena", "--instances", "3", "--wait"]).status == 0)
        #expect(try containers(w).filter { $0.name.hasPrefix(container(w, "arena-")) && $0.state == "running" }.count == 3)
        #expect(try w.cli(["scale", "arena", "--instances", "1", "--wait"]).status == 0)
        try restartAdopts(w, keys: keys, endpoint: endpoint)
        for name in ["playground", "arena"] { #expect(try w.cli(["shutdown", name]).status == 0) }
        #expect(try containers(w).isEmpty, "shutdown leaves no container behind")
    }

    /// kill -9 of the daemon, then init: the same containers (by id), none added, and the worlds answer.
    func restartAdopts(_ w: CLIWorld, keys: [String: String], endpoint: (String) throws -> String) throws {
        var running: [(name: String, id: String, state: String)] = []
        for _ in 0..<100 {
            running = try containers(w).filter { $0.state == "running" }
            if running.count == 2 { break }
            usleep(100_000)  // the scaled-down ones drain and go
        }
        #expect(running.count == 2)
        if let pid = w.daemonPID { kill(pid, SIGKILL) }
        usleep(200_000)
        #expect(try w.cli(["init"]).status == 0)
        let answered = try retry(for: 60) { try sendMessage(endpoint: try endpoint("arena"), key: keys["arena"]!, session: "me").body.contains(#""event":"done""#) }
        #expect(answered, "the world answers after the restart")
        usleep(600_000)
        #expect(Set(try containers(w).map(\.id)) == Set(running.map(\.id)), "the same containers, adopted, none duplicated")
    }

    @Test("docker-compose up -d runs the daemon itself in a container (io_uring allowed by the shipped seccomp profile); the CLI on the host deploys a world through it",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/docker-compose"), "docker-compose (1.29) is not installed: the compose path was NOT tested"))
    func compose() throws {
        let w = try CLIWorld("compose")
        let project = "sfcompose\(getpid())"
        let compose = ["-f", repoRoot.appendingPathComponent("docker-compose.yml").path, "-p", project]
        let ports = (gateway: try freePort(), admin: try freePort())
        let env = ["SOULFRA_DATA": w.home, "SOULFRA_GATEWAY": "127.0.0.1:\(ports.gateway)", "SOULFRA_ADMIN": "127.0.0.1:\(ports.admin)",
                   "SOULFRA_GATEWAY_TLS": ""]
        defer {
            _ = try? runCapturing("/usr/bin/docker-compose", compose + ["down", "-t", "5"], environment: env, timeout: 120)
            for c in (try? containers(w)) ?? [] { _ = try? docker(["rm", "-f", c.id]) }
            try? FileManager.default.removeItem(atPath: w.home)
        }
        // The images the compose file runs are made on the host (from this build's binary).
        let prepared = try runCapturing(soulfraBinary, ["init", "--no-start", "--home", w.home + "-images"], timeout: 300)
        try? FileManager.default.removeItem(atPath: w.home + "-images")
        #expect(prepared.status == 0, "\(prepared.err)")
        let up = try runCapturing("/usr/bin/docker-compose", compose + ["up", "-d"], environment: env, timeout: 120)
        #expect(up.status == 0, "\(up.err)")
        for _ in 0..<1_200 where !FileManager.default.fileExists(atPath: w.home + "/ready") { usleep(50_000) }  // 60 s at most
        let status = try w.json(["status"])
        #expect(status["driver"] as? String == "docker", "the daemon in its container drives the host's engine")
        let d = try w.json(["deploy", "--type", "kids", "--name", "composed"])
        #expect((d["first_reply"] as? [String: Any])?["text"] != nil, "a world deployed through the containerized daemon answers")
        #expect(try w.cli(["shutdown", "composed"]).status == 0)
        #expect(try containers(w).isEmpty)
    }
}

/// A loopback TCP port nothing listens on now (bound to port 0, read, released).
func freePort() throws -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var a = sockaddr_in()
    a.sin_family = sa_family_t(AF_INET)
    a.sin_addr.s_addr = inet_addr("127.0.0.1")
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    let ok = withUnsafeMutablePointer(to: &a) { p in
        p.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0 }
    }
    guard ok else { throw ClientError("no free port") }
    return Int(UInt16(bigEndian: a.sin_port))
}
