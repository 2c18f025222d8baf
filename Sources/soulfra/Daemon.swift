import SoulfraNet
import SoulfraConfig
import Foundation
import SoulfraLoop
import SoulfraServer
import SoulfraControl
import SoulfraWire
import SoulfraGateway

/// The daemon's bootstrap once its settings are known: file limits, signals, the loops, the key watch and
/// reloads, and the wait for shutdown.
struct Daemon {
    let config: ServerConfig
    /// The settings from file and environment, without flags: what a reload compares against.
    let fromFile: ServerConfig
    let configPath: String?
    let readyFile: String?

    func run() throws {
        raiseFileLimit()
        let signals = blockSignals()
        let sources = AccessSources(config: config)
        let control = makeControl(sources: sources)
        let server: BrokerServer
        do {
            server = try BrokerServer.start(config, admin: control.map(ControlAdmin.init(service:))) { line in logLine(line) }
        } catch let e as UringUnavailable {
            fail("soulfra: cannot start the broker: \(e.description)", code: 69)  // EX_UNAVAILABLE
        } catch {
            fail("soulfra: cannot start: \(error)", code: 71)
        }
        sources.attach(server)
        if let control {
            control.readEvents = { world, after, done in
                server.readVault(world: world, .replay(fromMilliseconds: 0, toMilliseconds: .max, after: after, limit: 1_000)) { result in
                    // A world that has stored nothing yet has no log: an empty page, not a failure.
                    if case .failure(let f) = result, f.errno == ENOENT { return done(.success(EventPage(events: [], next: after, more: false))) }
                    done(result.map { page in
                        EventPage(events: page.events.map {
                            EventPage.Event(session: String(decoding: $0.session, as: UTF8.self), kind: $0.kind, unixMilliseconds: $0.unixMilliseconds,
                                            payload: $0.payload)
                        }, next: page.next, more: page.more)
                    }.mapError { $0 as Error })
                }
            }
            control.publishAnalytics = { server.install(analytics: $0) }
            control.readUsage = { server.keyUsageByLoop }
            control.readAccessLog = { server.takeAccessLog() }
            server.enableAccessLog()
            if !config.vaultDirectory.isEmpty { control.purgeVault = { world, done in server.purgeVault(world: world, done: done) } }
            let gateway = server.gatewayPort != 0 ? "http://\(hostOf(config.gatewayTCP)):\(server.gatewayPort)"
                : "https://\(hostOf(config.gatewayTLS)):\(server.gatewayTLSPort)"
            control.start(gatewayURL: gateway) {
                let s = server.snapshot
                let peers = ControlService.StreamPeers(runtimeLinks: s?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0,
                                                       vault: !config.vaultDirectory.isEmpty || (s?.linksByKind[Int(PeerKind.vault.rawValue)] ?? 0) > 0)
                var latency: [String: [UInt64]] = [:]
                let width = GatewayCounters.bucketsMicros.count + 1
                for (world, l) in server.gatewayCounters.worldLatency {
                    var sum = [UInt64](repeating: 0, count: width)
                    for (i, n) in l.buckets.enumerated() { sum[i % width] &+= n }
                    latency[world] = sum
                }
                return ControlService.Live(attached: s?.attachedInstances ?? [:], viewers: s?.viewersByWorld ?? [:], rooms: s?.roomsByWorld ?? [:],
                                           peers: peers, latency: latency, latencyBoundsMicros: GatewayCounters.bucketsMicros)
            }
            logLine("control plane: \(control.driverName) driver, state in \(config.controlDirectory)/control.db")
        }
        announce(server)
        let reload = KeyReload(sources: sources, configPath: configPath, startup: fromFile, keysFile: config.keysFile)
        reload.watch()
        Thread { waitForSignals(signals, server: server, reload: reload) }.start()
        server.wait()
        control?.stop()
        logLine("broker stopped")
    }

    /// Every link is a file descriptor: the soft limit is raised to the hard one (commonly 1024 → 1M).
    func raiseFileLimit() {
        var nofile = rlimit()
        if getrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max {
            nofile.rlim_cur = nofile.rlim_max
            setrlimit(Int32(RLIMIT_NOFILE.rawValue), &nofile)
        }
        if nofile.rlim_cur < rlim_t(config.loop.maxConnections) {
            logLine("warning: the open-files limit (\(nofile.rlim_cur)) is below loop.max_connections (\(config.loop.maxConnections)); "
                    + "raise it with ulimit -n or LimitNOFILE=")
        }
    }

    /// Signals are taken by a sigwait on one thread: they are blocked before any other thread exists.
    func blockSignals() -> sigset_t {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGHUP)
        pthread_sigmask(SIG_BLOCK, &set, nil)
        signal(SIGPIPE, SIG_IGN)
        return set
    }

    /// Where everything listens, on stderr, and in `--ready-file` for scripts.
    func announce(_ server: BrokerServer) {
        if server.adminPort != 0, case .tcp(let host, _)? = try? ServerConfig.parseHostPort(config.adminTCP, key: "listen.admin_tcp") {
            logLine("admin endpoints (/healthz, /readyz, /metrics) on \(ListenAddress.tcp(host: host, port: server.adminPort))")
        }
        logLine("broker listening on \(server.addresses.map(\.description).joined(separator: ", ")) "
                + "with \(server.loopCount) loop\(server.loopCount == 1 ? "" : "s") (pid \(getpid()))")
        if server.gatewayPort != 0 || server.gatewayTLSPort != 0 {
            var parts: [String] = []
            if server.gatewayPort != 0 { parts.append("http://\(hostOf(config.gatewayTCP)):\(server.gatewayPort) (HTTP/1.1, h2c)") }
            if server.gatewayTLSPort != 0 { parts.append("https://\(hostOf(config.gatewayTLS)):\(server.gatewayTLSPort) (TLS: h2, HTTP/1.1)") }
            let keys = config.gatewayKeys.count
            logLine("gateway listening on \(parts.joined(separator: " and ")) with \(keys) API key\(keys == 1 ? "" : "s")")
        }
        if let readyFile {
            // Broker TCP port, then the gateway's cleartext, TLS and admin ports (0: disabled).
            try? "\(server.tcpPort)\n\(server.gatewayPort)\n\(server.gatewayTLSPort)\n\(server.adminPort)\n"
                .write(toFile: readyFile, atomically: true, encoding: .utf8)
        }
    }
}

/// SIGHUP reloads keys and tokens; SIGINT or SIGTERM starts a graceful shutdown, and a second one exits now.
func waitForSignals(_ signals: sigset_t, server: BrokerServer, reload: KeyReload) {
    var set = signals
    var sig: Int32 = 0
    var stopping = false
    while true {
        sigwait(&set, &sig)
        if sig == SIGHUP {
            reload.run(why: "SIGHUP")
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

/// Keys and tokens, re-read on SIGHUP and whenever the key file (or the config file) changes.
struct KeyReload: Sendable {
    let sources: AccessSources
    let configPath: String?
    /// The settings the daemon started with (file and environment): a reload that changes anything else says
    /// it takes effect on restart.
    let startup: ServerConfig
    let keysFile: String

    /// Polls the file four times a second, so a revoked key stops working within a second without a signal.
    func watch() {
        let path = keysFile.isEmpty ? configPath : keysFile
        Thread {
            var last = fileStamp(path)
            while true {
                usleep(250_000)
                let now = fileStamp(path)
                if now != last {
                    last = now
                    run(why: "file changed")
                }
            }
        }.start()
    }

    /// Re-reads keys and tokens; environment overrides still apply. A bad file leaves the old tables.
    func run(why: String) {
        guard configPath != nil || !keysFile.isEmpty else {
            logLine("\(why): no config file to reload (started without one)")
            return
        }
        do {
            var fresh = startup
            if let configPath { fresh = try ServerConfig.load(path: configPath) }
            try fresh.applyEnvironment(ProcessInfo.processInfo.environment)
            if !keysFile.isEmpty { fresh.keysFile = keysFile }
            try fresh.loadKeysFile()
            try fresh.validate()
            if let configPath, fresh.withoutAccess != startup.withoutAccess {
                logLine("\(why): settings other than keys and tokens changed in \(configPath); they take effect on restart")
            }
            sources.set(config: fresh)
            logLine("\(why): reloaded \(fresh.keys.count) keys (\(fresh.gatewayKeys.count) for the gateway) and the peer tokens")
        } catch {
            logLine("\(why): kept the current keys and tokens: \(error)")
        }
    }
}

/// Modification time, size and inode of a file, to notice changes (nil: missing).
func fileStamp(_ path: String?) -> [Int]? {
    guard let path else { return nil }
    var st = stat()
    guard stat(path, &st) == 0 else { return nil }
    return [Int(st.st_mtim.tv_sec), Int(st.st_mtim.tv_nsec), Int(st.st_size), Int(st.st_ino)]
}
