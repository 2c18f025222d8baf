import Foundation
import Synchronization
import SoulfraBroker
import SoulfraKeys
import SoulfraLoop
import SoulfraWire

/// What a listener serves.
enum ListenerRole: Sendable {
    /// Broker peers speaking the wire protocol.
    case broker
    /// The admin HTTP endpoints.
    case admin
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
        case install(AccessTable)
        case setBalancer(BalancerPolicy, world: String)
        case publishSnapshot
    }

    /// A socket moving to another loop, with the bytes already read from it (HELLO and anything after).
    struct Handoff: Sendable {
        let fd: Int32
        let bytes: [UInt8]
    }

    /// What other threads share with one loop.
    final class Shard: Sendable {
        let index: Int
        let commands = Mutex<[Command]>([])
        let handoffs = Mutex<[Handoff]>([])
        let mailbox = Mutex<LoopMailbox?>(nil)
        let latest = Mutex<(snapshot: BrokerSnapshot?, loop: LoopCounters, sequence: UInt64)>((nil, LoopCounters(), 0))
        let finished = Mutex<Bool>(false)
        init(index: Int) { self.index = index }

        func wake() { mailbox.withLock { $0?.wake() } }
        func publish(_ s: BrokerSnapshot, _ l: LoopCounters) { latest.withLock { $0 = (s, l, $0.sequence + 1) } }
        func takeCommands() -> [Command] { commands.withLock { c in defer { c.removeAll() }; return c } }
        func takeHandoffs() -> [Handoff] { handoffs.withLock { h in defer { h.removeAll() }; return h } }
    }

    /// Where the listeners ended up (TCP port 0 resolved).
    public let addresses: [ListenAddress]
    public let tcpPort: UInt16
    public let unixPath: String?
    /// The admin listener's port (0: disabled).
    public let adminPort: UInt16
    /// Loops (threads, rings) serving the broker.
    public let loopCount: Int
    let shards: [Shard]
    private let done = DispatchGroup()

    /// Binds the listeners and starts the loop threads. Throws before any thread starts if io_uring is
    /// unavailable or a listener cannot bind.
    public static func start(_ config: ServerConfig, log: @escaping @Sendable (String) -> Void = { _ in }) throws -> BrokerServer {
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
        let server = BrokerServer(bound: bound, admin: admin, loops: config.effectiveLoopCount)
        let ready = DispatchSemaphore(value: 0)
        // Loop 0 holds every listener; the admin listener comes last.
        let listeners = bound.map { ($0, ListenerRole.broker) } + (admin.map { [($0, ListenerRole.admin)] } ?? [])
        for shard in server.shards {
            server.done.enter()
            let thread = Thread {
                server.runLoop(shard, config: config, listeners: shard.index == 0 ? listeners : [], ready: ready, log: log)
                server.done.leave()
            }
            thread.name = "soulfra-loop-\(shard.index)"
            thread.stackSize = 8 << 20
            thread.start()
        }
        for _ in server.shards { ready.wait() }
        return server
    }

    private init(bound: [BoundListener], admin: BoundListener?, loops: Int) {
        adminPort = admin?.port ?? 0
        addresses = bound.map { b in
            if case .tcp(let host, _) = b.address { return .tcp(host: host, port: b.port) }
            return b.address
        }
        tcpPort = bound.first { if case .tcp = $0.address { true } else { false } }?.port ?? 0
        unixPath = bound.compactMap { if case .unix(let p) = $0.address { p } else { nil } }.first
        loopCount = loops
        shards = (0..<loops).map(Shard.init(index:))
    }

    /// Asks for a graceful shutdown: GOAWAY, drain, close. Returns at once; `wait()` for the end.
    public func shutdown() { post(.shutdown) }

    /// Replaces keys and tokens atomically on every loop (each swaps its snapshot on its next turn).
    public func install(access: AccessTable) { post(.install(access)) }

    /// Sets one world's balancer.
    public func setBalancer(_ policy: BalancerPolicy, forWorld world: String) { post(.setBalancer(policy, world: world)) }

    /// Blocks until every loop thread has exited.
    public func wait() { done.wait() }

    /// The broker's counters summed over loops, as published at most a second ago (see `snapshotNow`).
    public var snapshot: BrokerSnapshot? { merged(shards.compactMap { $0.latest.withLock { $0.snapshot } }) }

    /// The loops' own counters, per loop.
    public var loopCounters: [LoopCounters] { shards.map { $0.latest.withLock { $0.loop } } }

    /// Asks every loop for a fresh snapshot and waits for them (bounded); the sum over loops.
    public func snapshotNow(timeoutMilliseconds: Int = 2_000) -> BrokerSnapshot? {
        let before = shards.map { $0.latest.withLock { $0.sequence } }
        post(.publishSnapshot)
        for _ in 0..<timeoutMilliseconds {
            let fresh = zip(shards, before).allSatisfy { s, b in
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
        for s in shards {
            s.commands.withLock { $0.append(c) }
            s.wake()
        }
    }

    private func runLoop(
        _ shard: Shard, config: ServerConfig, listeners: [(BoundListener, ListenerRole)], ready: DispatchSemaphore,
        log: @escaping @Sendable (String) -> Void
    ) {
        let loop: EventLoop
        do {
            loop = try EventLoop(limits: config.loop)
        } catch {
            log("soulfra: loop \(shard.index): \(error)")
            shard.finished.withLock { $0 = true }
            ready.signal()
            return
        }
        let broker = Broker(limits: config.broker, access: config.accessTable, balancer: config.balancer,
                            loopIndex: shard.index, loopCount: shards.count)
        let wiring = Wiring(broker: broker, loop: loop, shard: shard, shards: shards,
                            statsInterval: config.statsIntervalMilliseconds, log: log)
        wiring.listenerRoles = listeners.map(\.1)
        wiring.adminToken = config.adminToken.isEmpty ? nil : SecretDigest(of: config.adminToken)
        loop.delegate = wiring
        for (l, _) in listeners { loop.add(listener: l) }
        shard.mailbox.withLock { $0 = loop.mailbox }
        ready.signal()
        // A command posted before the mailbox existed is picked up on the first turn.
        loop.mailbox.wake()
        loop.run()
        for (l, _) in listeners {
            if case .unix(let path) = l.address { unlink(path) }
        }
        shard.publish(broker.snapshot(), loop.counters)
        shard.mailbox.withLock { $0 = nil }
        shard.finished.withLock { $0 = true }
    }
}

extension Wiring {
    func flushAdmin(now: UInt64) {
        for (conn, a) in admin where adminSending[conn] == nil {
            if a.output.isEmpty {
                if a.closeAfterOutput { loop.close(conn: conn, flush: false, now: now) }
                continue
            }
            guard loop.canSend(conn: conn) else { continue }
            let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: a.output.count, alignment: 1)
            buf.copyBytes(from: a.output)
            a.output.removeAll()
            adminSending[conn] = buf
            loop.send(conn: conn, bytes: UnsafeRawBufferPointer(buf))
        }
    }

    /// `/metrics`: the broker summed over loops (this loop fresh, the others as last published, ≤ 1 s old),
    /// and every loop's own counters.
    func renderMetrics() -> String {
        var snap = broker.snapshot()
        var loops: [(Int, LoopCounters)] = [(shard.index, loop.counters)]
        for s in shards where s.index != shard.index {
            let (other, counters) = s.latest.withLock { ($0.snapshot, $0.loop) }
            if let other { snap = snap.merging(other) }
            loops.append((s.index, counters))
        }
        return snap.prometheusText() + LoopCounters.prometheusText(loops.sorted { $0.0 < $1.0 })
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
        ]
        var out = ""
        for (name, help, path) in families {
            out += "# HELP soulfra_loop_\(name) \(help)\n# TYPE soulfra_loop_\(name) counter\n"
            for (i, c) in loops { out += "soulfra_loop_\(name){loop=\"\(i)\"} \(c[keyPath: path])\n" }
        }
        return out
    }
}

extension ServerConfig {
    /// `loop.count`, with 0 meaning one loop per online CPU.
    public var effectiveLoopCount: Int {
        loopCount > 0 ? loopCount : max(1, Int(sysconf(Int32(_SC_NPROCESSORS_ONLN))))
    }
}

/// Joins one loop's broker to its ring: loop events in, broker output and actions out. Loop thread only.
final class Wiring: LoopDelegate {
    /// A connection accepted here whose HELLO has not been read yet (multi-loop only).
    struct Sorting {
        var bytes: [UInt8] = []
        let since: UInt64
        /// Set once the owning loop is known and the socket is being handed over.
        var target: Int?
    }

    let broker: Broker
    unowned let loop: EventLoop
    let shard: BrokerServer.Shard
    let shards: [BrokerServer.Shard]
    let log: @Sendable (String) -> Void
    let statsIntervalNanos: UInt64
    var sorting: [UInt32: Sorting] = [:]
    var listenerRoles: [ListenerRole] = []
    var adminToken: SecretDigest?
    /// Admin HTTP connections, and the response bytes a send in flight points at (freed on completion).
    var admin: [UInt32: AdminSession] = [:]
    var adminSending: [UInt32: UnsafeMutableRawBufferPointer] = [:]
    var lastSnapshot: UInt64 = 0
    var lastStats: UInt64 = 0
    var shutdownStarted: UInt64?
    var shutdownDrained = false

    init(broker: Broker, loop: EventLoop, shard: BrokerServer.Shard, shards: [BrokerServer.Shard], statsInterval: UInt32,
         log: @escaping @Sendable (String) -> Void) {
        self.broker = broker
        self.loop = loop
        self.shard = shard
        self.shards = shards
        self.log = log
        self.statsIntervalNanos = UInt64(statsInterval) * 1_000_000
    }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool {
        if listener < listenerRoles.count && listenerRoles[listener] == .admin {
            admin[conn] = AdminSession(adminToken: adminToken, metrics: { [unowned self] in renderMetrics() },
                                       ready: { [unowned self] in shutdownStarted == nil })
            return true
        }
        guard broker.canAttach else { return false }
        if shards.count == 1 {
            broker.attach(link: conn, now: now)
        } else {
            sorting[conn] = Sorting(since: now)
        }
        return true
    }

    @inline(__always)
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {
        if !admin.isEmpty, let a = admin[conn] {
            a.receive(bytes)
            return
        }
        if !sorting.isEmpty, sorting[conn] != nil {
            sort(conn, bytes, now: now)
            return
        }
        broker.receive(link: conn, bytes: bytes, now: now)
    }

    /// Reads the first frame of a new connection to find the loop it belongs to.
    func sort(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer, now: UInt64) {
        sorting[conn]!.bytes.append(contentsOf: bytes)
        guard sorting[conn]!.target == nil else { return }  // being handed off: keep what arrives
        let buffered = sorting[conn]!.bytes
        var target = shard.index
        let complete: Bool = buffered.withUnsafeBytes { raw in
            guard raw.count >= Wire.headerBytes else { return false }
            // Anything that is not a well-formed HELLO stays here; this loop's broker rejects it properly.
            guard let h = try? FrameDecoder.parseHeader(raw, limit: Wire.handshakeFrameBytes), h.type == .hello else { return true }
            let total = Wire.headerBytes + Int(h.length)
            guard raw.count >= total else { return false }
            guard case .hello(let hello)? = try? Frame.parse(h, UnsafeRawBufferPointer(rebasing: raw[Wire.headerBytes..<total])) else {
                return true
            }
            if hello.kind == .instance && !hello.world.isEmpty {
                target = Wire.loop(forWorld: hello.world, count: shards.count)
            } else if Int(hello.loop) < shards.count {
                target = Int(hello.loop)
            }
            return true
        }
        guard complete else { return }
        if target == shard.index {
            sorting.removeValue(forKey: conn)
            broker.attach(link: conn, now: now)
            buffered.withUnsafeBytes { broker.receive(link: conn, bytes: $0, now: now) }
        } else {
            sorting[conn]!.target = target
            loop.handOff(conn: conn)
        }
    }

    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {
        guard let s = sorting.removeValue(forKey: conn), let target = s.target else {
            close(fd)
            return
        }
        let dest = shards[target]
        dest.handoffs.withLock { $0.append(BrokerServer.Handoff(fd: fd, bytes: s.bytes)) }
        dest.wake()
    }

    @inline(__always)
    func loopSent(conn: UInt32, count: Int, now: UInt64) {
        if !adminSending.isEmpty, let buf = adminSending.removeValue(forKey: conn) {
            // Admin responses are small; a short send re-queues the rest in front.
            if count < buf.count, count > 0, let a = admin[conn] { a.output.insert(contentsOf: buf[count...], at: 0) }
            buf.deallocate()
            return
        }
        broker.sent(link: conn, count: count, now: now)
    }

    func loopClosed(conn: UInt32, now: UInt64) {
        if !admin.isEmpty, admin.removeValue(forKey: conn) != nil {
            adminSending.removeValue(forKey: conn)?.deallocate()
            return
        }
        if sorting.removeValue(forKey: conn) != nil { return }  // never reached the broker
        broker.detach(link: conn, now: now)
    }

    func loopTick(now: UInt64) {
        broker.tick(now: now)
        if !sorting.isEmpty {
            // A connection that does not finish HELLO in time is closed here, before any broker saw it.
            let limit = UInt64(broker.limits.handshakeTimeoutMilliseconds) * 1_000_000
            for (conn, s) in sorting where s.target == nil && now &- s.since > limit {
                loop.close(conn: conn, flush: false, now: now)
            }
        }
        // A snapshot walks every link and stream: once a second is plenty for a scrape; `snapshotNow` asks
        // for a fresh one when a caller needs it.
        if now &- lastSnapshot >= 1_000_000_000 {
            lastSnapshot = now
            shard.publish(broker.snapshot(), loop.counters)
        }
        if statsIntervalNanos > 0 && now &- lastStats >= statsIntervalNanos {
            lastStats = now
            let s = broker.snapshot()
            log("stats loop=\(shard.index) links=\(s.linksByKind.reduce(0, +)) streams=\(s.streamsOpen) "
                + "frames_in=\(s.framesIn.reduce(0, +)) frames_out=\(s.framesOut.reduce(0, +)) "
                + "paused=\(s.pausedLinks) congested=\(s.congestedLinks)")
        }
        if let started = shutdownStarted {
            // Hard stop: drain deadline plus flush deadline plus a second, whatever peers do.
            let limit = UInt64(broker.limits.shutdownDrainMilliseconds + loop.limits.closeFlushMilliseconds + 1_000) * 1_000_000
            if now &- started > limit { loop.stop() }
        }
    }

    func loopMailbox(now: UInt64) {
        for h in shard.takeHandoffs() {
            guard let conn = loop.adopt(fd: h.fd) else { continue }
            broker.attach(link: conn, now: now)
            h.bytes.withUnsafeBytes { broker.receive(link: conn, bytes: $0, now: now) }
        }
        for c in shard.takeCommands() {
            switch c {
            case .shutdown:
                guard shutdownStarted == nil else { continue }
                shutdownStarted = now
                if shard.index == 0 {
                    log("shutting down: GOAWAY sent, draining streams for up to \(broker.limits.shutdownDrainMilliseconds) ms")
                }
                loop.stopAccepting()
                for conn in sorting.keys { loop.close(conn: conn, flush: false, now: now) }
                for a in admin.values { a.finish() }
                broker.beginShutdown(now: now)
            case .install(let table):
                broker.install(access: table, now: now)
            case .setBalancer(let p, let world):
                broker.setBalancer(p, forWorld: world)
            case .publishSnapshot:
                shard.publish(broker.snapshot(), loop.counters)
            }
        }
    }

    @inline(__always)
    func loopFlush(now: UInt64) {
        broker.drainActions { action in
            switch action {
            case .pauseRead(let l): loop.pauseRead(conn: l)
            case .resumeRead(let l): loop.resumeRead(conn: l)
            case .close(let l): loop.close(conn: l, flush: true, now: now)
            case .shutdownComplete: shutdownDrained = true
            }
        }
        broker.drainReady { l in
            guard loop.canSend(conn: l) else { return }
            let bytes = broker.takeOutput(link: l)
            if bytes.count > 0 { loop.send(conn: l, bytes: bytes) }
        }
        if !admin.isEmpty { flushAdmin(now: now) }
        if shutdownDrained && loop.openConnections == 0 { loop.stop() }
    }
}
