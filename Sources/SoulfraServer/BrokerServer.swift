import Foundation
import Synchronization
import SoulfraBroker
import SoulfraLoop
import SoulfraWire

/// Runs a broker on an io_uring loop thread and lets other threads talk to it by message.
///
/// The loop thread owns the broker and the ring; this handle is the only thing other threads hold. Commands
/// are queued under a mutex and the loop is woken through its eventfd: nothing on the data path locks.
public final class BrokerServer: Sendable {
    /// Messages to the loop.
    enum Command: Sendable {
        case shutdown
        case install(AccessTable)
        case setBalancer(BalancerPolicy, world: String)
        case publishSnapshot
    }

    /// Where the listeners ended up (TCP port 0 resolved).
    public let addresses: [ListenAddress]
    public let tcpPort: UInt16
    public let unixPath: String?
    private let commands = Mutex<[Command]>([])
    private let latest = Mutex<(snapshot: BrokerSnapshot?, loop: LoopCounters, sequence: UInt64)>((nil, LoopCounters(), 0))
    private let mailboxSlot = Mutex<LoopMailbox?>(nil)
    private let finished = Mutex<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    private let ready = DispatchSemaphore(value: 0)

    /// Binds the listeners and starts the loop thread. Throws before any thread starts if io_uring is
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
        let server = BrokerServer(bound: bound)
        let listeners = bound
        let thread = Thread {
            server.runLoop(config: config, listeners: listeners, log: log)
        }
        thread.name = "soulfra-loop-0"
        thread.stackSize = 8 << 20
        thread.start()
        server.ready.wait()
        return server
    }

    private init(bound: [BoundListener]) {
        addresses = bound.map { b in
            if case .tcp(let host, _) = b.address { return .tcp(host: host, port: b.port) }
            return b.address
        }
        tcpPort = bound.first { if case .tcp = $0.address { true } else { false } }?.port ?? 0
        unixPath = bound.compactMap { if case .unix(let p) = $0.address { p } else { nil } }.first
    }

    /// Asks for a graceful shutdown: GOAWAY, drain, close. Returns at once; `wait()` for the end.
    public func shutdown() { post(.shutdown) }

    /// Replaces keys and tokens atomically (the loop swaps its snapshot on its next turn).
    public func install(access: AccessTable) { post(.install(access)) }

    /// Sets one world's balancer.
    public func setBalancer(_ policy: BalancerPolicy, forWorld world: String) { post(.setBalancer(policy, world: world)) }

    /// Blocks until the loop thread has exited.
    public func wait() {
        if finished.withLock({ $0 }) { return }
        done.wait()
        done.signal()
    }

    /// The broker's counters as of the last tick (≤ 100 ms old).
    public var snapshot: BrokerSnapshot? { latest.withLock { $0.snapshot } }
    /// The loop's own counters as of the last tick.
    public var loopCounters: LoopCounters { latest.withLock { $0.loop } }

    /// Asks the loop for a fresh snapshot and waits for it (bounded); nil if the loop has stopped.
    public func snapshotNow(timeoutMilliseconds: Int = 2_000) -> BrokerSnapshot? {
        let before = latest.withLock { $0.sequence }
        post(.publishSnapshot)
        for _ in 0..<timeoutMilliseconds {
            let (s, seq) = latest.withLock { ($0.snapshot, $0.sequence) }
            if seq > before { return s }
            if finished.withLock({ $0 }) { return s }
            usleep(1_000)
        }
        return nil
    }

    private func post(_ c: Command) {
        commands.withLock { $0.append(c) }
        mailboxSlot.withLock { $0?.wake() }
    }

    private func runLoop(config: ServerConfig, listeners: [BoundListener], log: @escaping @Sendable (String) -> Void) {
        let loop: EventLoop
        do {
            loop = try EventLoop(limits: config.loop)
        } catch {
            log("soulfra: \(error)")
            finished.withLock { $0 = true }
            ready.signal()
            done.signal()
            return
        }
        let broker = Broker(limits: config.broker, access: config.accessTable, balancer: config.balancer)
        let wiring = Wiring(broker: broker, loop: loop, server: self, statsInterval: config.statsIntervalMilliseconds, log: log)
        loop.delegate = wiring
        for l in listeners { loop.add(listener: l) }
        mailboxSlot.withLock { $0 = loop.mailbox }
        ready.signal()
        // A command posted before the mailbox existed is picked up on the first turn.
        loop.mailbox.wake()
        loop.run()
        for l in listeners {
            if case .unix(let path) = l.address { unlink(path) }
        }
        publish(broker.snapshot(), loop.counters)
        mailboxSlot.withLock { $0 = nil }
        finished.withLock { $0 = true }
        done.signal()
    }

    fileprivate func takeCommands() -> [Command] {
        commands.withLock { c in
            defer { c.removeAll() }
            return c
        }
    }

    fileprivate func publish(_ s: BrokerSnapshot, _ l: LoopCounters) {
        latest.withLock { $0 = (s, l, $0.sequence + 1) }
    }
}

/// Joins the broker to the loop: loop events in, broker output and actions out. Loop thread only.
final class Wiring: LoopDelegate {
    let broker: Broker
    unowned let loop: EventLoop
    let server: BrokerServer
    let log: @Sendable (String) -> Void
    let statsIntervalNanos: UInt64
    var lastSnapshot: UInt64 = 0
    var lastStats: UInt64 = 0
    var shutdownStarted: UInt64?
    var shutdownDrained = false

    init(broker: Broker, loop: EventLoop, server: BrokerServer, statsInterval: UInt32, log: @escaping @Sendable (String) -> Void) {
        self.broker = broker
        self.loop = loop
        self.server = server
        self.log = log
        self.statsIntervalNanos = UInt64(statsInterval) * 1_000_000
    }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool {
        guard broker.canAttach else { return false }
        broker.attach(link: conn, now: now)
        return true
    }

    @inline(__always)
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {
        broker.receive(link: conn, bytes: bytes, now: now)
    }

    @inline(__always)
    func loopSent(conn: UInt32, count: Int, now: UInt64) {
        broker.sent(link: conn, count: count, now: now)
    }

    func loopClosed(conn: UInt32, now: UInt64) {
        broker.detach(link: conn, now: now)
    }

    func loopTick(now: UInt64) {
        broker.tick(now: now)
        if now &- lastSnapshot >= 100_000_000 {
            lastSnapshot = now
            server.publish(broker.snapshot(), loop.counters)
        }
        if statsIntervalNanos > 0 && now &- lastStats >= statsIntervalNanos {
            lastStats = now
            let s = broker.snapshot()
            log("stats links=\(s.linksByKind.reduce(0, +)) streams=\(s.streamsOpen) frames_in=\(s.framesIn.reduce(0, +)) "
                + "frames_out=\(s.framesOut.reduce(0, +)) paused=\(s.pausedLinks) congested=\(s.congestedLinks)")
        }
        if let started = shutdownStarted {
            // Hard stop: drain deadline plus flush deadline plus a second, whatever peers do.
            let limit = UInt64(broker.limits.shutdownDrainMilliseconds + loop.limits.closeFlushMilliseconds + 1_000) * 1_000_000
            if now &- started > limit { loop.stop() }
        }
    }

    func loopMailbox(now: UInt64) {
        for c in server.takeCommands() {
            switch c {
            case .shutdown:
                guard shutdownStarted == nil else { continue }
                shutdownStarted = now
                log("shutting down: GOAWAY sent, draining streams for up to \(broker.limits.shutdownDrainMilliseconds) ms")
                loop.stopAccepting()
                broker.beginShutdown(now: now)
            case .install(let table):
                broker.install(access: table, now: now)
            case .setBalancer(let p, let world):
                broker.setBalancer(p, forWorld: world)
            case .publishSnapshot:
                server.publish(broker.snapshot(), loop.counters)
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
        if shutdownDrained && loop.openConnections == 0 { loop.stop() }
    }
}
