import ArgumentParser
import Foundation
import SoulfraLoop
import SoulfraServer

@main
struct Soulfra: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soulfra",
        abstract: "Deploy and run isolated AI worlds behind one gateway.",
        discussion: """
            The daemon (`soulfra serve`) runs, on one io_uring loop per core, the HTTP/2 gateway apps talk to
            (HTTP/1.1, h2c and TLS; API keys, quotas, balancing across a world's instances; docs/api.md) and
            the broker that routes World ↔ Runtime ↔ Vault frames. Instances, runtimes and vaults attach to
            the broker over its unix socket or TCP and speak the wire protocol in docs/protocol.md.
            """,
        subcommands: [Serve.self, Probe.self]
    )
}

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: the gateway, the broker and the admin endpoints.",
        discussion: """
            Settings come from, in order: built-in defaults, the config file (config/soulfra.json when it \
            exists, or --config), SOULFRA_* environment variables, then these flags. Every value is checked \
            at start-up; an error names the key and its allowed range.

            Keys and tokens are re-read when the keys file (--keys-file, or the config file) changes, polled \
            four times a second, and on SIGHUP; they are swapped in atomically on every loop (a revoked key is \
            refused from the next request and its open streams end). Other settings need a restart.

            SIGINT or SIGTERM starts a graceful shutdown: HTTP/2 clients and peers get GOAWAY, open requests \
            and streams get up to broker.shutdown_drain_milliseconds to finish, then connections close and the \
            process exits 0. A second signal exits at once.

            Environment: SOULFRA_BROKER_UNIX, SOULFRA_BROKER_TCP, SOULFRA_RUNTIME_TOKEN, SOULFRA_VAULT_TOKEN, \
            SOULFRA_GATEWAY_TOKEN, SOULFRA_ADMIN_TOKEN, SOULFRA_ADMIN_TCP, SOULFRA_GATEWAY_TCP, SOULFRA_GATEWAY_TLS, \
            SOULFRA_KEYS_FILE, SOULFRA_LOOPS, SOULFRA_STATS_INTERVAL_MILLISECONDS.
            """
    )

    @Option(name: .long, help: "JSON config file (default: config/soulfra.json if present).")
    var config: String?

    @Option(name: .customLong("broker-unix"), help: "Unix socket path for local peers (\"\" disables).")
    var brokerUnix: String?

    @Option(name: .customLong("broker-tcp"), help: "TCP host:port for remote peers (\"\" disables; port 0 picks one).")
    var brokerTCP: String?

    @Option(name: .customLong("admin-tcp"), help: "Admin endpoints host:port (/healthz, /readyz, /metrics; \"\" disables).")
    var adminTCP: String?

    @Option(name: .customLong("gateway-tcp"), help: "Gateway cleartext listener host:port, HTTP/1.1 and h2c (\"\" disables; port 0 picks one).")
    var gatewayTCP: String?

    @Option(name: .customLong("gateway-tls"), help: "Gateway TLS listener host:port, ALPN h2 and http/1.1 (\"\" disables; port 0 picks one).")
    var gatewayTLS: String?

    @Option(name: .customLong("keys-file"), help: "JSON file of API keys ({\"keys\": [...]}), re-read whenever it changes.")
    var keysFile: String?

    @Option(name: .customLong("loops"), help: "Broker loops, one thread and ring each (0: one per CPU).")
    var loops: Int?

    @Option(name: .customLong("stats-interval-ms"), help: "Print a broker summary line to stderr at this interval (0: off).")
    var statsInterval: UInt32?

    @Option(name: .customLong("ready-file"), help: "Write the bound TCP port here once listening (for scripts and tests).")
    var readyFile: String?

    func run() throws {
        var cfg = ServerConfig()
        var fromFile = cfg  // file + environment, without flags: what SIGHUP compares a reload against
        let env = ProcessInfo.processInfo.environment
        do {
            let path = config ?? (FileManager.default.fileExists(atPath: "config/soulfra.json") ? "config/soulfra.json" : nil)
            if let path { cfg = try ServerConfig.load(path: path) }
            try cfg.applyEnvironment(env)
            fromFile = cfg
            if let v = brokerUnix { cfg.brokerUnixPath = v }
            if let v = brokerTCP { cfg.brokerTCP = v }
            if let v = statsInterval { cfg.statsIntervalMilliseconds = v }
            if let v = loops { cfg.loopCount = v }
            if let v = adminTCP { cfg.adminTCP = v }
            if let v = gatewayTCP { cfg.gatewayTCP = v }
            if let v = gatewayTLS { cfg.gatewayTLS = v }
            if let v = keysFile { cfg.keysFile = v }
            try cfg.loadKeysFile()
            try cfg.validate()
        } catch {
            fail(error.description, code: 78)  // EX_CONFIG
        }

        // Every link is a file descriptor: raise the soft limit to the hard one (commonly 1024 → 1M).
        var nofile = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max {
            nofile.rlim_cur = nofile.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile)
        }
        if nofile.rlim_cur < rlim_t(cfg.loop.maxConnections) {
            logLine("warning: the open-files limit (\(nofile.rlim_cur)) is below loop.max_connections (\(cfg.loop.maxConnections)); "
                    + "raise it with ulimit -n or LimitNOFILE=")
        }

        // Signals are taken by a sigwait on this thread: block them before any other thread exists.
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)

        let server: BrokerServer
        do {
            server = try BrokerServer.start(cfg) { line in logLine(line) }
        } catch let e as UringUnavailable {
            fail("soulfra: cannot start the broker: \(e.description)", code: 69)  // EX_UNAVAILABLE
        } catch {
            fail("soulfra: cannot start: \(error)", code: 71)
        }
        if server.adminPort != 0, case .tcp(let host, _)? = try? ServerConfig.parseHostPort(cfg.adminTCP, key: "listen.admin_tcp") {
            logLine("admin endpoints (/healthz, /readyz, /metrics) on \(ListenAddress.tcp(host: host, port: server.adminPort))")
        }
        logLine("broker listening on \(server.addresses.map(\.description).joined(separator: ", ")) "
                + "with \(server.loopCount) loop\(server.loopCount == 1 ? "" : "s") (pid \(getpid()))")
        if server.gatewayPort != 0 || server.gatewayTLSPort != 0 {
            var parts: [String] = []
            if server.gatewayPort != 0 { parts.append("http://\(hostOf(cfg.gatewayTCP)):\(server.gatewayPort) (HTTP/1.1, h2c)") }
            if server.gatewayTLSPort != 0 { parts.append("https://\(hostOf(cfg.gatewayTLS)):\(server.gatewayTLSPort) (TLS: h2, HTTP/1.1)") }
            logLine("gateway listening on \(parts.joined(separator: " and ")) with \(cfg.gatewayKeys.count) API key\(cfg.gatewayKeys.count == 1 ? "" : "s")")
        }
        if let readyFile {
            // Broker TCP port, then the gateway's cleartext, TLS and admin ports (0: disabled).
            try? "\(server.tcpPort)\n\(server.gatewayPort)\n\(server.gatewayTLSPort)\n\(server.adminPort)\n"
                .write(toFile: readyFile, atomically: true, encoding: .utf8)
        }

        let signals = set
        let configPath = config ?? (FileManager.default.fileExists(atPath: "config/soulfra.json") ? "config/soulfra.json" : nil)
        let startup = fromFile
        let keysPath = cfg.keysFile
        // Keys change without a signal too: the key file (or the config file) is polled four times a second,
        // so a revoked key stops working within a second.
        let watcher = Thread {
            var last = fileStamp(keysPath.isEmpty ? configPath : keysPath)
            while true {
                usleep(250_000)
                let now = fileStamp(keysPath.isEmpty ? configPath : keysPath)
                if now != last {
                    last = now
                    reloadAccess(server: server, path: configPath, startup: startup, keysFile: keysPath, why: "file changed")
                }
            }
        }
        watcher.start()
        let waiter = Thread {
            var set = signals
            var sig: Int32 = 0
            var stopping = false
            while true {
                sigwait(&set, &sig)
                if sig == SIGHUP {
                    reloadAccess(server: server, path: configPath, startup: startup, keysFile: keysPath, why: "SIGHUP")
                    continue
                }
                if stopping {
                    logLine("second signal: exiting now")
                    Glibc.exit(1)
                }
                stopping = true
                logLine("received signal \(sig): graceful shutdown")
                server.shutdown()
            }
        }
        waiter.start()
        server.wait()
        logLine("broker stopped")
    }
}

struct Probe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check that io_uring and the features the broker needs are available here.")

    func run() throws {
        do {
            let f = try UringProbe.check()
            print("ok: \(f)")
        } catch {
            fail(error.description, code: 69)
        }
    }
}

/// SIGHUP, or the key file changed: re-read keys and tokens; environment overrides still apply. A bad file
/// leaves the old tables.
func reloadAccess(server: BrokerServer, path: String?, startup: ServerConfig, keysFile: String, why: String) {
    guard path != nil || !keysFile.isEmpty else {
        logLine("\(why): no config file to reload (started without one)")
        return
    }
    do {
        var fresh = startup
        if let path { fresh = try ServerConfig.load(path: path) }
        try fresh.applyEnvironment(ProcessInfo.processInfo.environment)
        if !keysFile.isEmpty { fresh.keysFile = keysFile }
        try fresh.loadKeysFile()
        try fresh.validate()
        if let path, fresh.withoutAccess != startup.withoutAccess {
            logLine("\(why): settings other than keys and tokens changed in \(path); they take effect on restart")
        }
        server.install(access: fresh.accessTable, keys: fresh.keyTable)
        logLine("\(why): reloaded \(fresh.keys.count) keys (\(fresh.gatewayKeys.count) for the gateway) and the peer tokens")
    } catch {
        logLine("\(why): kept the current keys and tokens: \(error)")
    }
}

/// Modification time and size of a file, to notice changes (nil: missing).
func fileStamp(_ path: String?) -> [Int]? {
    guard let path else { return nil }
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return [Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec), Int(st.st_size), Int(st.st_ino)]
}

func hostOf(_ hostPort: String) -> String {
    if case .tcp(let h, _)? = try? ServerConfig.parseHostPort(hostPort, key: "") { return h.contains(":") ? "[\(h)]" : h }
    return hostPort
}

func logLine(_ s: String) {
    let ts = ISO8601DateFormatter().string(from: Date())
    FileHandle.standardError.write(Data("[\(ts)] \(s)\n".utf8))
}

func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    Glibc.exit(code)
}
