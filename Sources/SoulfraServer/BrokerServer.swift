import SoulfraConfig
import SoulfraLimits
import Foundation
import Synchronization
import SoulfraBroker
import SoulfraGateway
import SoulfraKeys
import SoulfraLoop
import SoulfraMetrics
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraTLS
import SoulfraRuntime
import SoulfraVault
import SoulfraWire

/// What a listener serves.
enum ListenerRole: Sendable {
    /// Broker peers speaking the wire protocol.
    case broker
    /// The admin HTTP endpoints.
    case admin
    /// The public gateway: cleartext HTTP/1.1 and h2c.
    case gateway
    /// The public gateway behind TLS.
    case gatewayTLS
}

/// Runs the broker as one io_uring loop per core, and lets other threads talk to the loops by message.
///
/// The loops share nothing: each owns the worlds that `Wire.loop(forWorld:count:)` assigns to it, with their
/// instances, rooms and keys' streams, so a stream never crosses loops. Loop 0 accepts every connection,
/// reads its HELLO and hands the socket to the loop it belongs to (instances: their world's loop; other
/// peers: the loop they ask for, one link per loop). Commands and hand-offs are queued under a mutex and the
/// target loop is woken through its eventfd: nothing on the data path locks.
public final class BrokerServer: Sendable {
    /// Messages to a loop.
    enum Command: Sendable {
        case shutdown
        case install(AccessTable, KeyTable)
        case setBalancer(BalancerPolicy, world: String)
        case publishSnapshot
        /// Read a page from this loop's vault and answer loop `replyTo` with `vaultPage` under `ticket`.
        case vaultRead(world: String, session: [UInt8], VaultRequest, ticket: UInt64, replyTo: Int)
        case vaultPage(ticket: UInt64, Result<VaultPage, VaultFailure>)
        /// An admin extension's answer (or part of a stream) for the call under `ticket`.
        case adminReply(ticket: UInt64, AdminReply)
        /// Read a page of a world's events for another thread (the control plane): `done` runs on this loop.
        case vaultReadFor(world: String, VaultRequest, done: @Sendable (Result<VaultPage, VaultFailure>) -> Void)
        /// Remove a world's vault (its files and key) for good; `done` runs off the loop.
        case vaultPurge(world: String, done: @Sendable (String?) -> Void)
        /// Each world's analytics document, answered by the gateway at `/v1/worlds/{w}/analytics`.
        case installAnalytics([String: [UInt8]])
        /// Which browser origins may call which worlds.
        case installCORS(CORSPolicy)
        /// The control plane takes the access log: keep it.
        case enableAccessLog
    }

    /// A socket moving to another loop, with the bytes already read from it (HELLO and anything after).
    struct Handoff: Sendable {
        let fd: Int32
        let bytes: [UInt8]
    }

    /// What other threads share with one loop.
    final class LoopInbox: Sendable {
        let index: Int
        let commands = Mutex<[Command]>([])
        let handoffs = Mutex<[Handoff]>([])
        /// Gateway client connections moving here from another loop: the socket and the connection's state.
        let arrivals = Mutex<[(fd: Int32, connection: MovingConnection)]>([])
        let mailbox = Mutex<LoopMailbox?>(nil)
        let latest = Mutex<(snapshot: BrokerSnapshot?, loop: LoopCounters, sequence: UInt64)>((nil, LoopCounters(), 0))
        let gatewayLatest = Mutex<GatewayCounters>(GatewayCounters())
        let vaultLatest = Mutex<VaultMetrics?>(nil)
        /// The gateway's per-key usage on this loop, as of its last publish.
        let usageLatest = Mutex<[UInt64: KeyUsage]>([:])
        /// Access log entries published and not yet taken by the control plane (at most `maxAccessPending`).
        let accessPending = Mutex<[AccessEntry]>([])
        static let maxAccessPending = 262_144
        let finished = Mutex<Bool>(false)
        init(index: Int) { self.index = index }

        func wake() { mailbox.withLock { $0?.wake() } }
        /// Publishes a loop's figures. The gateway's counters are stored before the sequence moves, so a reader that
        /// waited for a new sequence never sees the gateway's older counters.
        func publish(_ s: BrokerSnapshot, _ l: LoopCounters, gateway: GatewayCounters?, vault: VaultMetrics? = nil,
                     usage: [UInt64: KeyUsage]? = nil) {
            if let gateway { gatewayLatest.withLock { $0 = gateway } }
            if let usage { usageLatest.withLock { $0 = usage } }
            if let vault { vaultLatest.withLock { $0 = vault } }
            latest.withLock { $0 = (s, l, $0.sequence + 1) }
        }

        /// Adds a loop's access log entries to what waits for the control plane; returns how many did not fit.
        func publish(access: [AccessEntry]) -> Int {
            let taken = accessPending.withLock { p in
                let room = max(0, Self.maxAccessPending - p.count)
                p.append(contentsOf: access.prefix(room))
                return min(room, access.count)
            }
            return access.count - taken
        }
        func takeCommands() -> [Command] { commands.withLock { c in defer { c.removeAll() }; return c } }
        func takeHandoffs() -> [Handoff] { handoffs.withLock { h in defer { h.removeAll() }; return h } }
        func takeArrivals() -> [(fd: Int32, connection: MovingConnection)] { arrivals.withLock { a in defer { a.removeAll() }; return a } }
    }

    /// Where the listeners ended up (TCP port 0 resolved).
    public let addresses: [ListenAddress]
    public let tcpPort: UInt16
    public let unixPath: String?
    /// The admin listener's port (0: disabled).
    public let adminPort: UInt16
    /// The gateway's cleartext and TLS ports (0: disabled).
    public let gatewayPort: UInt16
    public let gatewayTLSPort: UInt16
    /// Loops (threads, rings) serving the broker.
    public let loopCount: Int
    /// The control panel's sign-ins (sessions by cookie), shared by every loop's admin listener.
    public let panelSessions = PanelSessions()
    let inboxes: [LoopInbox]
    private let done = DispatchGroup()

    /// Binds the listeners and starts the loop threads. Throws before any thread starts if io_uring is
    /// unavailable or a listener cannot bind.
    public static func start(_ config: ServerConfig, admin adminExtension: AdminExtension? = nil,
                             log: @escaping @Sendable (String) -> Void = { _ in }) throws -> BrokerServer {
        try config.validate()
        _ = try UringProbe.check()
        var bound: [BoundListener] = []
        do {
            for address in try config.listenAddresses() {
                if case .unix(let path) = address {
                    try FileManager.default.createDirectory(
                        atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
                }
                bound.append(try BoundListener.bind(address))
            }
        } catch {
            for b in bound { close(b.fd) }
            throw error
        }
        var admin: BoundListener?
        if !config.adminTCP.isEmpty {
            do {
                admin = try BoundListener.bind(try ServerConfig.parseHostPort(config.adminTCP, key: "listen.admin_tcp"))
            } catch {
                for b in bound { close(b.fd) }
                throw error
            }
        }
        let loops = config.effectiveLoopCount
        // The gateway listens on every loop (SO_REUSEPORT): the kernel spreads clients across cores.
        var gatewayListeners: [[(BoundListener, ListenerRole)]] = Array(repeating: [], count: loops)
        var tls: TLSContext?
        do {
            for (spec, role, key) in [(config.gatewayTCP, ListenerRole.gateway, "listen.gateway_tcp"),
                                      (config.gatewayTLS, ListenerRole.gatewayTLS, "listen.gateway_tls")] where !spec.isEmpty {
                guard case .tcp(let host, var port) = try ServerConfig.parseHostPort(spec, key: key) else { continue }
                for i in 0..<loops {
                    let l = try BoundListener.bind(.tcp(host: host, port: port), reusePort: true)
                    port = l.port
                    gatewayListeners[i].append((l, role))
                }
            }
            if !config.gatewayTLS.isEmpty { tls = try makeTLSContext(config, log: log) }
        } catch {
            for b in bound { close(b.fd) }
            if let admin { close(admin.fd) }
            for ls in gatewayListeners { for (l, _) in ls { close(l.fd) } }
            throw error
        }
        let tlsContext = tls
        let server = BrokerServer(bound: bound, admin: admin, gateway: gatewayListeners.first ?? [], loops: loops)
        let ready = DispatchSemaphore(value: 0)
        // Loop 0 holds the broker and admin listeners; every loop has its own gateway listeners.
        let listeners = bound.map { ($0, ListenerRole.broker) } + (admin.map { [($0, ListenerRole.admin)] } ?? [])
        // Socket pairs joining each loop's gateway to every other loop's broker.
        var pairs: [[Int32]] = Array(repeating: Array(repeating: -1, count: loops), count: loops)
        for x in 0..<loops {
            for y in 0..<loops where x != y {
                guard let (near, far) = unixSocketPair() else {
                    throw SocketError(call: "socketpair", errno: errno, address: "gateway link \(x)→\(y)")
                }
                pairs[x][y] = near
                server.inboxes[y].handoffs.withLock { $0.append(Handoff(fd: far, bytes: [])) }
            }
        }
        for inbox in server.inboxes {
            server.done.enter()
            let own = (inbox.index == 0 ? listeners : []) + gatewayListeners[inbox.index]
            let links = pairs[inbox.index]
            let thread = Thread {
                server.runLoop(inbox, config: config, listeners: own, gatewayLinks: links, tls: tlsContext, adminExtension: adminExtension,
                               ready: ready, log: log)
                server.done.leave()
            }
            thread.name = "soulfra-loop-\(inbox.index)"
            thread.stackSize = 8 << 20
            thread.start()
        }
        for _ in server.inboxes { ready.wait() }
        if config.runtimeWorkers > 0 && !config.runtimeToken.isEmpty, let address = server.selfAddress {
            var o = RuntimeThreads.Options(broker: address, token: config.runtimeToken, workers: config.runtimeWorkers,
                                           profile: RuntimeProfile.named(config.runtimeProfile) ?? .balanced)
            o.maxFrameBytes = config.broker.maxFrameBytes
            o.openai = config.openAISettings.map { OpenAISettings(baseURL: $0.baseURL, apiKey: $0.key, model: $0.model) }
            server.runtime.start(o, log: log)
        }
        return server
    }

    private init(bound: [BoundListener], admin: BoundListener?, gateway: [(BoundListener, ListenerRole)], loops: Int) {
        adminPort = admin?.port ?? 0
        gatewayPort = gateway.first { $0.1 == .gateway }?.0.port ?? 0
        gatewayTLSPort = gateway.first { $0.1 == .gatewayTLS }?.0.port ?? 0
        addresses = bound.map { b in
            if case .tcp(let host, _) = b.address { return .tcp(host: host, port: b.port) }
            return b.address
        }
        tcpPort = bound.first { if case .tcp = $0.address { true } else { false } }?.port ?? 0
        unixPath = bound.compactMap { if case .unix(let p) = $0.address { p } else { nil } }.first
        loopCount = loops
        inboxes = (0..<loops).map(LoopInbox.init(index:))
    }

    /// Asks for a graceful shutdown: GOAWAY, drain, close. Returns at once; `wait()` for the end.
    public func shutdown() {
        runtime.stop()
        post(.shutdown)
    }

    /// The runtime worker threads in this process (`runtime.workers`; none when 0).
    public let runtime = RuntimeThreads()

    /// Replaces keys and tokens atomically on every loop (each swaps its snapshot on its next turn).
    public func install(access: AccessTable, keys: KeyTable) { post(.install(access, keys)) }

    /// Removes a world's vault for good, on the loop whose vault stores it; `done` gets nil or what failed.
    public func purgeVault(world: String, done: @escaping @Sendable (String?) -> Void) {
        let target = inboxes[Wire.loop(forWorld: world, count: inboxes.count)]
        target.commands.withLock { $0.append(.vaultPurge(world: world, done: done)) }
        target.wake()
    }

    /// Replaces the analytics documents the gateway serves, on every loop.
    public func install(analytics: [String: [UInt8]]) { post(.installAnalytics(analytics)) }

    /// Replaces the gateway's CORS policy, on every loop.
    public func install(cors: CORSPolicy) { post(.installCORS(cors)) }

    /// Reads a page of `world`'s events (`VaultRequest.replay`) on the loop whose vault stores it; `done` runs
    /// on that loop and must only hand the page on.
    public func readVault(world: String, _ request: VaultRequest, done: @escaping @Sendable (Result<VaultPage, VaultFailure>) -> Void) {
        let target = inboxes[Wire.loop(forWorld: world, count: inboxes.count)]
        target.commands.withLock { $0.append(.vaultReadFor(world: world, request, done: done)) }
        target.wake()
    }

    /// The gateway's counters summed over loops (each published at most a second ago; `snapshotNow` refreshes).
    public var gatewayCounters: GatewayCounters {
        gatewayCountersByLoop.reduce(GatewayCounters()) { $0.merging($1) }
    }

    /// The gateway's per-key usage of each loop (published at most a second ago; after `wait`, final).
    public var keyUsageByLoop: [[UInt64: KeyUsage]] { inboxes.map { $0.usageLatest.withLock { $0 } } }

    /// The gateway's access log entries every loop published since the last call.
    public func takeAccessLog() -> [AccessEntry] {
        inboxes.flatMap { i in i.accessPending.withLock { p in defer { p.removeAll() }; return p } }
    }

    /// Turns the gateway's access log on, on every loop (off until something takes the entries).
    public func enableAccessLog() { post(.enableAccessLog) }

    /// The gateway's counters of each loop.
    public var gatewayCountersByLoop: [GatewayCounters] { inboxes.map { $0.gatewayLatest.withLock { $0 } } }

    /// Sets one world's balancer.
    public func setBalancer(_ policy: BalancerPolicy, forWorld world: String) { post(.setBalancer(policy, world: world)) }

    /// Blocks until every loop thread has exited.
    public func wait() {
        done.wait()
        runtime.wait()
    }

    /// Where peers in this process reach the broker: its unix socket, else its TCP listener.
    var selfAddress: PeerAddress? {
        if let p = unixPath { return .unix(path: p) }
        guard tcpPort != 0, case .tcp(let host, _)? = addresses.first(where: { if case .tcp = $0 { true } else { false } }) else { return nil }
        return .tcp(host: host == "0.0.0.0" ? "127.0.0.1" : host, port: tcpPort)
    }

    /// The broker's counters summed over loops, as published at most a second ago (see `snapshotNow`).
    public var snapshot: BrokerSnapshot? { merged(inboxes.compactMap { $0.latest.withLock { $0.snapshot } }) }

    /// The loops' own counters, per loop.
    public var loopCounters: [LoopCounters] { inboxes.map { $0.latest.withLock { $0.loop } } }

    /// Asks every loop for a fresh snapshot and waits for them (bounded); the sum over loops.
    public func snapshotNow(timeoutMilliseconds: Int = 2_000) -> BrokerSnapshot? {
        let before = inboxes.map { $0.latest.withLock { $0.sequence } }
        post(.publishSnapshot)
        for _ in 0..<timeoutMilliseconds {
            let fresh = zip(inboxes, before).allSatisfy { s, b in
                s.latest.withLock { $0.sequence } > b || s.finished.withLock { $0 }
            }
            if fresh { return snapshot }
            usleep(1_000)
        }
        return nil
    }

    private func merged(_ all: [BrokerSnapshot]) -> BrokerSnapshot? {
        guard var total = all.first else { return nil }
        for s in all.dropFirst() { total = total.merging(s) }
        return total
    }

    private func post(_ c: Command) {
        for s in inboxes {
            s.commands.withLock { $0.append(c) }
            s.wake()
        }
    }

    private func runLoop(
        _ inbox: LoopInbox, config: ServerConfig, listeners: [(BoundListener, ListenerRole)], gatewayLinks: [Int32],
        tls: TLSContext?, adminExtension: AdminExtension?, ready: DispatchSemaphore, log: @escaping @Sendable (String) -> Void
    ) {
        let loop: EventLoop
        do {
            loop = try EventLoop(limits: config.loop)
        } catch {
            log("soulfra: loop \(inbox.index): \(error)")
            inbox.finished.withLock { $0 = true }
            ready.signal()
            return
        }
        let broker = Broker(limits: config.broker, access: config.accessTable, balancer: config.balancer,
                            loopIndex: inbox.index, loopCount: inboxes.count)
        for (world, policy) in config.balancerByWorld { broker.setBalancer(policy, forWorld: world) }
        let wiring = Wiring(broker: broker, loop: loop, inbox: inbox, inboxes: inboxes,
                            statsInterval: config.statsIntervalMilliseconds, log: log)
        wiring.listenerRoles = listeners.map(\.1)
        wiring.adminToken = config.adminToken.isEmpty ? nil : SecretDigest(of: config.adminToken)
        wiring.adminExtension = adminExtension
        wiring.panelSessions = panelSessions
        loop.delegate = wiring
        for (l, _) in listeners { loop.add(listener: l) }
        if listeners.contains(where: { $0.1 == .gateway || $0.1 == .gatewayTLS }) {
            let token = config.gatewayToken
            let gateway = Gateway(limits: config.gateway, keys: config.keyTable, loopIndex: inbox.index, loopCount: inboxes.count,
                                  tls: tls) { i in
                PeerIdentity(kind: .gateway, token: token, maxFrameBytes: config.broker.maxFrameBytes, loop: UInt16(i))
            }
            wiring.attachGateway(gateway, links: gatewayLinks, now: monotonicNanoseconds())
        } else {
            for fd in gatewayLinks where fd >= 0 { close(fd) }
        }
        if !config.vaultDirectory.isEmpty {
            if config.vaultToken.isEmpty {
                if inbox.index == 0 { log("vault: tokens.vault is empty, so the in-process vault cannot attach: no vault in this process") }
            } else {
                do {
                    try wiring.attachVault(directory: config.vaultDirectory, limits: config.vault, encryptedWorlds: config.vaultEncryptedWorlds,
                                           keyDirectory: config.vaultKeyDirectory, token: config.vaultToken,
                                           maxFrameBytes: config.broker.maxFrameBytes, now: monotonicNanoseconds())
                } catch {
                    log("error_alert vault: loop \(inbox.index): \(error.reason) (errno \(error.errno)): no vault on this loop")
                }
            }
        }
        inbox.mailbox.withLock { $0 = loop.mailbox }
        ready.signal()
        // A command posted before the mailbox existed is picked up on the first turn.
        loop.mailbox.wake()
        loop.run()
        for (l, _) in listeners {
            if case .unix(let path) = l.address { unlink(path) }
        }
        wiring.gateway?.drainAccessLog { _ = inbox.publish(access: $0) }
        inbox.publish(broker.snapshot(), loop.counters, gateway: wiring.gateway?.countersSnapshot(), vault: wiring.vault?.metrics,
                      usage: wiring.gateway?.usageSnapshot())
        wiring.vault?.store.close()
        inbox.mailbox.withLock { $0 = nil }
        inbox.finished.withLock { $0 = true }
    }
}

extension LoopCounters {
    /// The io_uring loops' own counters, labelled by loop, in Prometheus text format.
    static func prometheusText(_ loops: [(Int, LoopCounters)]) -> String {
        let families: [(String, String, KeyPath<LoopCounters, UInt64>)] = [
            ("accepted_total", "Connections accepted.", \.accepted),
            ("refused_total", "Connections refused (slot table full, shutting down).", \.refused),
            ("accept_errors_total", "accept(2) failures (EMFILE, ENFILE, ENOMEM).", \.acceptErrors),
            ("recv_completions_total", "Receive completions with data.", \.recvCompletions),
            ("recv_bytes_total", "Bytes received.", \.recvBytes),
            ("recv_no_buffers_total", "Multishot receives stopped for lack of provided buffers (inbound backpressure).", \.recvNoBuffers),
            ("send_calls_total", "Sends submitted.", \.sendCalls),
            ("send_bytes_total", "Bytes sent.", \.sendBytes),
            ("io_errors_total", "Socket errors that closed a connection.", \.ioErrors),
            ("submits_total", "io_uring_enter calls.", \.submits),
            ("completions_total", "Completions reaped.", \.completions),
            ("sq_full_total", "Operations that found the submission queue full and waited for room (none is dropped).", \.sqFull),
            ("file_writes_total", "File writes completed through the ring.", \.fileWrites),
            ("file_write_bytes_total", "Bytes written to files through the ring.", \.fileWriteBytes),
            ("file_reads_total", "File reads completed through the ring.", \.fileReads),
            ("file_read_bytes_total", "Bytes read from files through the ring.", \.fileReadBytes),
            ("file_syncs_total", "fdatasync/fsync operations completed through the ring.", \.fileSyncs),
            ("file_errors_total", "File writes and syncs that failed (ENOSPC, EIO, ...).", \.fileErrors),
        ]
        var out = PrometheusText(prefix: "soulfra_loop")
        for (name, help, path) in families {
            out.family(name, .counter, help)
            for (i, c) in loops { out.sample(name, ["loop": String(i)], c[keyPath: path]) }
        }
        out.family("closes_total", .counter, "Connections closed, by what ended them first (local: Soulfra closed it).")
        for (i, c) in loops {
            for r in LoopCloseReason.allCases { out.sample("closes_total", ["loop": String(i), "reason": r.description], c.closes[r.rawValue]) }
        }
        return out.text
    }
}

extension ServerConfig {
    /// `loop.count`, with 0 meaning one loop per online CPU.
    public var effectiveLoopCount: Int {
        loopCount > 0 ? loopCount : max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }
}

/// The TLS listener's context: the configured certificate, or a self-signed development one (generated
/// once, kept in `tls.self_signed_directory`, announced in the log).
func makeTLSContext(_ config: ServerConfig, log: @Sendable (String) -> Void) throws -> TLSContext {
    if !config.tlsCertificatePath.isEmpty {
        return try TLSContext(certificatePath: config.tlsCertificatePath, keyPath: config.tlsKeyPath)
    }
    let dir = config.tlsSelfSignedDirectory
    // Certificate and key in one PEM file, renamed into place whole: daemons starting together never read
    // one's certificate with another's key.
    let pem = dir + "/dev.pem"
    if !FileManager.default.fileExists(atPath: pem) {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true,
                                                attributes: [.posixPermissions: 0o700])
        let tmp = dir + "/.dev-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try TLSContext.makeSelfSigned(certificatePath: tmp + ".crt", keyPath: tmp + ".key")
        defer { unlink(tmp + ".crt"); unlink(tmp + ".key") }
        let both = try Data(contentsOf: URL(fileURLWithPath: tmp + ".crt")) + Data(contentsOf: URL(fileURLWithPath: tmp + ".key"))
        FileManager.default.createFile(atPath: tmp + ".pem", contents: both, attributes: [.posixPermissions: 0o600])
        guard rename(tmp + ".pem", pem) == 0 else { throw SocketError(call: "rename", errno: errno, address: pem) }
        log("tls: no certificate configured (tls.certificate_path); generated a self-signed development certificate in \(pem) — not for production")
    } else {
        log("tls: no certificate configured (tls.certificate_path); using the self-signed development certificate in \(pem) — not for production")
    }
    return try TLSContext(certificatePath: pem, keyPath: pem)
}
