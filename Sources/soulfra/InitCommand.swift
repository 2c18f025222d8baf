import ArgumentParser
import Foundation
import SoulfraConfig
import SoulfraControl
import SoulfraDocker

struct Init: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Set up Soulfra's home and start the daemon in the background (safe to run again).",
        discussion: """
            The first run writes <home>/soulfra.json (listeners on loopback, fresh random tokens, the vault, \
            control state and TLS certificate under <home>) and <home>/admin.token (mode 0600), which the other \
            commands use. Every run starts the daemon if it is not running (its log: <home>/serve.log) and says \
            which driver runs instances.

            Examples:
              soulfra init
              soulfra init --home /var/lib/soulfra --gateway 0.0.0.0:8080
              SOULFRA_HOME=/tmp/sf-test soulfra init --gateway 127.0.0.1:0 --admin 127.0.0.1:0
            """
    )

    @Option(name: .long, help: "The gateway's cleartext listener (HTTP/1.1, h2c), written on the first run.")
    var gateway = "127.0.0.1:8080"

    @Option(name: .customLong("gateway-tls"), help: "The gateway's TLS listener (\"\" for none), written on the first run.")
    var gatewayTLS = "127.0.0.1:8443"

    @Option(name: .customLong("admin-listen"), help: "The admin API's listener, written on the first run.")
    var adminListen = "127.0.0.1:7401"

    @Option(name: .customLong("broker-tcp"), help: "The broker's TCP listener for remote peers (\"\" for none), written on the first run.")
    var brokerTCP = "127.0.0.1:7400"

    @Option(name: .long, help: "Which driver runs instances: auto (docker when an engine answers, else process), process or docker; written on the first run.")
    var driver = "auto"

    @Option(name: .long, help: "The world templates directory (default: config/templates next to the binary's checkout, or here).")
    var templates: String?

    @Flag(name: .customLong("no-start"), help: "Write the config and token only; start nothing (a container's entrypoint starts the daemon).")
    var noStart = false

    @Flag(name: .long, help: "Print the result as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let home = client.homeDirectory
            try makeDirectory(home)
            var wrote = false
            if !FileManager.default.fileExists(atPath: client.configPath) {
                try writeConfig(home: home)
                wrote = true
            }
            guard ["auto", "process", "docker"].contains(driver) else { throw CLIError("--driver takes auto, process or docker", code: 5) }
            if noStart {
                if !json { print(wrote ? "wrote \(client.configPath) and \(home)/admin.token" : "\(client.configPath) exists; kept") }
                // On a host (not inside the daemon's own container) the images are made ready for docker-compose.
                if FileManager.default.isExecutableFile(atPath: "/usr/bin/ldd") {
                    try buildImages(executable: (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
                }
                return
            }
            let pidPath = home + "/serve.pid"
            var started = false
            if let pid = runningDaemon(pidPath) {
                if !json { print("daemon already running (pid \(pid)); its log: \(home)/serve.log") }
            } else {
                try? FileManager.default.removeItem(atPath: home + "/ready")
                let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
                try buildImages(executable: exe)
                let pid: pid_t
                do {
                    pid = try spawnDetached(exe, ["serve", "--config", client.configPath, "--ready-file", home + "/ready"], logPath: home + "/serve.log")
                } catch {
                    throw CLIError("cannot start the daemon: \(error)", code: 71)
                }
                try? "\(pid)\n".write(toFile: pidPath, atomically: true, encoding: .utf8)
                try waitReady(pid: pid, home: home)
                started = true
            }
            let status = try client.call("GET", "/admin/v1/status")
            if json {
                return printJSON(["home": home, "config": client.configPath, "config_written": wrote, "daemon_started": started,
                                  "admin": client.adminURL(), "driver": status["driver"] ?? "", "gateway": status["gateway"] ?? ""])
            }
            if wrote { print("wrote \(client.configPath) and \(home)/admin.token") }
            if started { print("daemon started (pid \(runningDaemon(pidPath) ?? 0)); its log: \(home)/serve.log") }
            print("driver: \(status["driver"] ?? "?") · gateway: \(status["gateway"] ?? "?") · admin: \(client.adminURL())")
            print("next: soulfra deploy --type kids --name playground")
        }
    }

    /// Makes the directory (0700), or takes an existing one only if it is a real directory of this user's:
    /// another local user's (or a symlink planted in /tmp) could swap the config and tokens.
    func makeDirectory(_ path: String) throws(CLIError) {
        do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
            throw CLIError("cannot make \(path): \(error.localizedDescription)", code: 73)
        }
        var st = stat()
        guard lstat(path, &st) == 0, (st.st_mode & S_IFMT) == S_IFDIR, st.st_uid == geteuid() else {
            throw CLIError("\(path) is not a directory of this user's (a symlink, or owned by uid \(st.st_uid)): choose another --home", code: 73)
        }
        chmod(path, 0o700)
    }

    /// The templates shipped in the checkout this binary was built in (…/.build/<config>/soulfra), else here.
    func templatesDirectory() -> String {
        if let templates { return templates.hasPrefix("/") ? templates : FileManager.default.currentDirectoryPath + "/" + templates }
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        for _ in 0..<4 {
            if FileManager.default.fileExists(atPath: dir.path + "/config/templates/kids.json") { return dir.path + "/config/templates" }
            dir = dir.deletingLastPathComponent()
        }
        return FileManager.default.currentDirectoryPath + "/config/templates"
    }

    func writeConfig(home: String) throws(CLIError) {
        var rng = SystemRandomNumberGenerator()
        func token() -> String { (0..<16).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined() }
        let admin = token()
        let config: [String: Any] = [
            "listen": ["broker_unix_path": home + "/run/broker.sock", "broker_tcp": brokerTCP, "admin_tcp": adminListen,
                       "gateway_tcp": gateway, "gateway_tls": gatewayTLS],
            "tls": ["self_signed_directory": home + "/tls"],
            "vault": ["directory": home + "/vault", "key_directory": home + "/vault-keys"],
            "control": ["directory": home + "/control", "templates_directory": templatesDirectory(), "driver": driver],
            "tokens": ["admin": admin, "vault": token(), "runtime": token(), "gateway": token()],
        ]
        do {
            let data = try JSONSerialization.data(withJSONObject: config, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])
            try makeDirectory(home + "/run")
            guard FileManager.default.createFile(atPath: home + "/admin.token", contents: Data((admin + "\n").utf8), attributes: [.posixPermissions: 0o600]),
                  FileManager.default.createFile(atPath: client.configPath, contents: data, attributes: [.posixPermissions: 0o600]) else {
                throw CLIError("cannot write \(client.configPath) or \(home)/admin.token", code: 73)
            }
        } catch let e as CLIError {
            throw e
        } catch {
            throw CLIError("cannot write \(client.configPath): \(error.localizedDescription)", code: 73)
        }
    }

    /// With a docker engine (and a driver that may use it), the world images are built (or found current)
    /// before the daemon starts, with the time it took.
    func buildImages(executable: String) throws(CLIError) {
        let configured = ((try? ServerConfig.load(path: client.configPath)) ?? ServerConfig()).controlDriver
        let docker = DockerClient()
        guard configured != "process", docker.ping() else { return }
        let started = Date()
        do {
            let built = try WorldImages(client: docker, executable: executable).ensure()
            if !built.isEmpty && !json {
                print("built \(built.joined(separator: ", ")) in \(String(format: "%.1f", Date().timeIntervalSince(started))) s")
            }
        } catch {
            throw CLIError("cannot build the world images: \(error)", code: 69)
        }
    }

    /// Waits for the ready file and a healthy admin listener; a daemon that exits says why (its log).
    func waitReady(pid: pid_t, home: String) throws(CLIError) {
        let deadline = Date().addingTimeInterval(60)
        while Date() < deadline {
            var status: Int32 = 0
            if waitpid(pid, &status, WNOHANG) == pid || kill(pid, 0) != 0 {
                let log = (try? String(contentsOfFile: home + "/serve.log", encoding: .utf8)) ?? ""
                throw CLIError("the daemon exited at start-up; the end of \(home)/serve.log:\n" + log.split(separator: "\n").suffix(8).joined(separator: "\n"), code: 71)
            }
            if FileManager.default.fileExists(atPath: home + "/ready"),
               let r = try? HTTPClient(base: client.adminURL()).request("GET", "/healthz", timeoutSeconds: 2), r.status == 200 {
                return
            }
            usleep(20_000)
        }
        throw CLIError("the daemon did not become ready within 60 s: see \(home)/serve.log", code: 75)
    }
}

struct Down: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Stop the daemon `init` started (worlds' instances keep running and are adopted by the next start).",
        discussion: "Example:  soulfra down")

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let path = client.homeDirectory + "/serve.pid"
            guard let pid = runningDaemon(path) else {
                print("no daemon running from \(client.homeDirectory)")
                return
            }
            kill(pid, SIGTERM)
            for _ in 0..<300 where runningDaemon(path) != nil { usleep(50_000) }
            guard runningDaemon(path) == nil else { throw CLIError("the daemon (pid \(pid)) is still running after 15 s", code: 75) }
            try? FileManager.default.removeItem(atPath: path)
            print("daemon stopped (pid \(pid))")
        }
    }
}

/// The pid in `path` if that process is alive.
func runningDaemon(_ path: String) -> pid_t? {
    guard let text = try? String(contentsOfFile: path, encoding: .utf8), let pid = pid_t(text.trimmingCharacters(in: .whitespacesAndNewlines)),
          pid > 0, kill(pid, 0) == 0 else { return nil }
    // A killed daemon not yet reaped (a zombie) is not running; nor is a reused pid that is not soulfra serve.
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8), let close = stat.lastIndex(of: ")"),
          !stat[stat.index(after: close)...].hasPrefix(" Z"),
          let cmdline = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline"),
          String(decoding: cmdline, as: UTF8.self).split(separator: "\0").contains("serve") else { return nil }
    return pid
}
