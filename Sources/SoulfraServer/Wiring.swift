import Foundation
import SoulfraBroker
import SoulfraGateway
import SoulfraKeys
import SoulfraLoop
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraVault
import SoulfraWire

/// Joins one loop's broker, gateway and admin endpoints to its ring: loop events in, output and actions
/// out. Loop thread only.
///
/// The gateway reaches this loop's broker in process (a link with no socket: frames are handed across in
/// memory, `inProcessLink`) and every other loop's broker over a socket pair made at start-up.
final class Wiring: LoopDelegate {
    /// What a connection slot is.
    enum Role: UInt8 {
        /// A broker peer (the default).
        case broker
        /// Accepted by loop 0, HELLO not read yet (multi-loop only).
        case sorting
        case admin
        /// A gateway client.
        case http
        /// The gateway's link to another loop's broker.
        case gatewayLink
    }

    /// A connection accepted here whose HELLO has not been read yet (multi-loop only).
    struct Sorting {
        var bytes: [UInt8] = []
        let since: UInt64
        /// Set once the owning loop is known and the socket is being handed over.
        var target: Int?
    }

    /// The gateway's socket link to another loop's broker.
    final class RemoteLink {
        let loopIndex: Int
        var conn: UInt32
        var peer: PeerLink
        /// The link's frames on their way to the socket.
        let queue = SendQueue()
        init(loopIndex: Int, conn: UInt32, peer: PeerLink) {
            self.loopIndex = loopIndex
            self.conn = conn
            self.peer = peer
        }
    }

    let broker: Broker
    unowned let loop: EventLoop
    let inbox: BrokerServer.LoopInbox
    let inboxes: [BrokerServer.LoopInbox]
    let log: @Sendable (String) -> Void
    let statsIntervalNanos: UInt64
    var roles: [Role] = []
    var sorting: [UInt32: Sorting] = [:]
    var listenerRoles: [ListenerRole] = []
    var adminToken: SecretDigest?
    /// Admin HTTP connections.
    var admin: [UInt32: AdminConnection] = [:]
    /// What the admin listener serves (`makeAdminRoutes`).
    lazy var adminRoutes = makeAdminRoutes()
    /// The routes answered off the loop (the control plane's API), and the calls it has not finished
    /// answering, by ticket.
    var adminExtension: AdminExtension?
    /// The panel's sign-ins, shared by every loop.
    var panelSessions: PanelSessions?
    var extensionCalls: [UInt64: (conn: UInt32, replier: AdminReplier)] = [:]
    var nextExtensionTicket: UInt64 = 0
    var gateway: Gateway?
    /// The vault in this process (this loop's worlds), when the daemon runs one.
    var vault: InProcessVault?
    /// Reads asked of other loops' vaults, waiting for their pages (by ticket).
    var vaultReplies: [UInt64: (Result<VaultPage, VaultFailure>) -> Void] = [:]
    var nextVaultTicket: UInt64 = 0
    /// Peers in this process attached to this loop's broker without a socket (the gateway's link to it),
    /// under ids from `firstInProcessID` up: `inProcess[id - firstInProcessID]`.
    var inProcess: [InProcessLink] = []
    let firstInProcessID: UInt32
    var remoteLinks: [UInt32: RemoteLink] = [:]
    /// Gateway connections being handed to the loop of their world, by slot.
    var moving: [UInt32: Int] = [:]
    var lastSnapshot: UInt64 = 0
    var lastStats: UInt64 = 0
    var shutdownStarted: UInt64?
    var shutdownDrained = false

    init(broker: Broker, loop: EventLoop, inbox: BrokerServer.LoopInbox, inboxes: [BrokerServer.LoopInbox], statsInterval: UInt32,
         log: @escaping @Sendable (String) -> Void) {
        self.broker = broker
        self.loop = loop
        self.inbox = inbox
        self.inboxes = inboxes
        self.log = log
        self.statsIntervalNanos = UInt64(statsInterval) * 1_000_000
        self.firstInProcessID = UInt32(loop.limits.maxConnections)
    }

    @inline(__always) func role(_ conn: UInt32) -> Role {
        Int(conn) < roles.count ? roles[Int(conn)] : .broker
    }

    func setRole(_ conn: UInt32, _ r: Role) {
        let i = Int(conn)
        if i >= roles.count { roles.append(contentsOf: repeatElement(.broker, count: i - roles.count + 1)) }
        roles[i] = r
    }

    // MARK: - Loop events

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool {
        let lr = listener < listenerRoles.count ? listenerRoles[listener] : .broker
        switch lr {
        case .admin:
            setRole(conn, .admin)
            admin[conn] = AdminConnection(routes: { [unowned self] in adminRoutes },
                                          handOver: { [unowned self] _, request, route in handOver(conn: conn, request, route: route) })
            return true
        case .gateway, .gatewayTLS:
            guard let g = gateway else { return false }
            let address = loop.peerAddress(conn: conn).map { ClientAddress(high: $0.high, low: $0.low) }
            guard g.accepted(conn: conn, tls: lr == .gatewayTLS, address: address, now: now) else { return false }
            setRole(conn, .http)
            return true
        case .broker:
            guard broker.canAttach else { return false }
            if inboxes.count == 1 {
                setRole(conn, .broker)
                broker.attach(link: conn, now: now)
            } else {
                setRole(conn, .sorting)
                sorting[conn] = Sorting(since: now)
            }
            return true
        }
    }

    @inline(__always)
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {
        switch role(conn) {
        case .broker: broker.receive(link: conn, bytes: bytes, now: now)
        case .http: gateway?.received(conn: conn, bytes: bytes, now: now)
        case .gatewayLink: remoteLinks[conn]?.peer.receive(bytes, nowMilliseconds: now / 1_000_000)
        case .admin: admin[conn]?.receive(bytes)
        case .sorting: sort(conn, bytes, now: now)
        }
    }

    @inline(__always)
    func loopSent(conn: UInt32, count: Int, now: UInt64) {
        switch role(conn) {
        case .broker: broker.sent(link: conn, count: count, now: now)
        case .http: gateway?.sent(conn: conn, count: count, now: now)
        case .gatewayLink:
            guard let p = remoteLinks[conn] else { return }
            p.queue.sent(count)
        case .admin:
            admin[conn]?.output.sent(count)
        case .sorting:
            break
        }
    }

    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) {
        moving.removeValue(forKey: conn)
        let r = role(conn)
        setRole(conn, .broker)
        switch r {
        case .broker: broker.detach(link: conn, now: now)
        case .http: gateway?.closed(conn: conn, now: now)
        case .gatewayLink:
            if let p = remoteLinks.removeValue(forKey: conn) { p.peer.transportClosed(reason: "socket to loop \(p.loopIndex) closed") }
        case .admin:
            admin.removeValue(forKey: conn)
            for (ticket, call) in extensionCalls where call.conn == conn {
                call.replier.markGone()
                extensionCalls.removeValue(forKey: ticket)
            }
        case .sorting:
            sorting.removeValue(forKey: conn)  // never reached the broker
        }
    }

    func loopTick(now: UInt64) {
        gateway?.now = now
        broker.tick(now: now)
        tickVault(now: now)
        if let g = gateway {
            g.unixSeconds = UInt64(time(nil))
            g.tick(now: now)
            if now &- lastSnapshot >= 1_000_000_000 { renewGatewayLinks(now: now) }
            if let started = shutdownStarted, g.idle || now &- started > UInt64(broker.limits.shutdownDrainMilliseconds) * 1_000_000 {
                g.closeAll()
            }
        }
        if !sorting.isEmpty {
            // A connection that does not finish HELLO in time goes to this loop's broker, which closes it with
            // ERROR handshake_timeout and counts it like any other link.
            let limit = UInt64(broker.limits.handshakeTimeoutMilliseconds) * 1_000_000
            for (conn, s) in sorting where s.target == nil && now &- s.since > limit {
                sorting.removeValue(forKey: conn)
                setRole(conn, .broker)
                broker.attach(link: conn, now: now)
                broker.failHandshake(link: conn)
            }
        }
        // A snapshot walks every link and stream: once a second is plenty for a scrape; `snapshotNow` asks
        // for a fresh one when a caller needs it.
        if now &- lastSnapshot >= 1_000_000_000 {
            lastSnapshot = now
            publish()
        }
        if statsIntervalNanos > 0 && now &- lastStats >= statsIntervalNanos {
            lastStats = now
            let s = broker.snapshot()
            log("stats loop=\(inbox.index) links=\(s.linksByKind.reduce(0, +)) streams=\(s.streamsOpen) "
                + "frames_in=\(s.framesIn.reduce(0, +)) frames_out=\(s.framesOut.reduce(0, +)) "
                + "paused=\(s.pausedLinks) congested=\(s.congestedLinks)")
        }
        if let started = shutdownStarted {
            // Hard stop: drain deadline plus flush deadline plus a second, whatever peers do.
            let limit = UInt64(broker.limits.shutdownDrainMilliseconds + loop.limits.closeFlushMilliseconds + 1_000) * 1_000_000
            if now &- started > limit { loop.stop() }
        }
    }

    func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        vault?.store.fileDone(file: file, operation: operation, result: result, now: now)
    }

    func loopPathDone(token: UInt64, operation: PathOperation, result: Int32, now: UInt64) {
        vault?.store.pathDone(token: token, result: result)
    }

    func publish() {
        gateway?.measureClientQueues()
        // Entries the control plane has not taken yet bound what waits: past that, they are dropped and counted.
        var dropped = 0
        gateway?.drainAccessLog { dropped = inbox.publish(access: $0) }
        gateway?.counters.accessLogDropped &+= UInt64(dropped)
        inbox.publish(broker.snapshot(), loop.counters, gateway: gateway?.countersSnapshot(), vault: vault?.metrics,
                      usage: gateway?.usageSnapshot())
    }

    func loopMailbox(now: UInt64) {
        gateway?.now = now
        vault?.store.mailbox(now: now)
        for a in inbox.takeArrivals() {
            guard let g = gateway, shutdownStarted == nil, let conn = loop.adopt(fd: a.fd) else {
                if gateway == nil || shutdownStarted != nil { Glibc.close(a.fd) }
                continue
            }
            setRole(conn, .http)
            g.adopt(a.connection, conn: conn, now: now)
        }
        for h in inbox.takeHandoffs() {
            guard let conn = loop.adopt(fd: h.fd) else { continue }
            setRole(conn, .broker)
            broker.attach(link: conn, now: now)
            h.bytes.withUnsafeBytes { broker.receive(link: conn, bytes: $0, now: now) }
        }
        for c in inbox.takeCommands() {
            switch c {
            case .shutdown:
                guard shutdownStarted == nil else { continue }
                shutdownStarted = now
                if inbox.index == 0 {
                    log("shutting down: GOAWAY sent, draining streams for up to \(broker.limits.shutdownDrainMilliseconds) ms")
                }
                loop.stopAccepting()
                for conn in sorting.keys { loop.close(conn: conn, flush: false, now: now) }
                for a in admin.values { a.finish() }
                gateway?.beginShutdown(now: now)
                broker.beginShutdown(now: now)
            case .install(let table, let keys):
                broker.install(access: table, now: now)
                gateway?.install(keys: keys)
            case .setBalancer(let p, let world):
                broker.setBalancer(p, forWorld: world)
            case .publishSnapshot:
                publish()
            case .vaultRead(let world, let session, let request, let ticket, let replyTo):
                readVault(world: world, session: session, request, now: now) { [inboxes] result in
                    inboxes[replyTo].commands.withLock { $0.append(.vaultPage(ticket: ticket, result)) }
                    inboxes[replyTo].wake()
                }
            case .vaultPage(let ticket, let result):
                vaultReplies.removeValue(forKey: ticket)?(result)
            case .adminReply(let ticket, let reply):
                deliverExtensionReply(ticket: ticket, reply, now: now)
            case .vaultReadFor(let world, let request, let done):
                readVault(world: world, session: [], request, now: now, done: done)
            case .vaultPurge(let world, let done):
                if let v = vault { v.store.purge(world: world, done: done) } else { done("no vault runs in this process") }
            case .installAnalytics(let documents):
                gateway?.analytics = documents
            case .installCORS(let policy):
                gateway?.cors = policy
            case .enableAccessLog:
                gateway?.accessLogEnabled = true
            }
        }
    }

    func applyBrokerActions(now: UInt64) {
        broker.drainActions { action in
            switch action {
            case .pauseRead(let l):
                if l >= firstInProcessID { inProcess[Int(l - firstInProcessID)].paused = true } else { loop.pauseRead(conn: l) }
            case .resumeRead(let l):
                if l >= firstInProcessID { inProcess[Int(l - firstInProcessID)].paused = false } else { loop.resumeRead(conn: l) }
            case .close(let l):
                if l >= firstInProcessID {
                    // The broker is done with an in-process link (shutdown, or it gave up on it): its streams
                    // end, and outside shutdown the gateway's is made again on the next tick.
                    inProcess[Int(l - firstInProcessID)].brokerClosed(broker, now: now)
                } else {
                    loop.close(conn: l, flush: true, now: now)
                }
            case .shutdownComplete: shutdownDrained = true
            }
        }
    }

    @inline(__always)
    func loopFlush(now: UInt64) {
        vault?.store.poll(now: now)
        if let g = gateway {
            g.now = now
            pumpInProcess(now: now)
            g.flush(now: now)
            for (conn, target) in g.takeMoves() {
                moving[conn] = target
                loop.handOff(conn: conn)
            }
            // Flushing may have granted credit or opened streams: carry them across at once, and apply the read
            // pauses that changed meanwhile.
            pumpInProcess(now: now)
            g.applyPendingReading()
            flushRemoteLinks()
        } else if !inProcess.isEmpty {
            pumpInProcess(now: now)
        } else {
            applyBrokerActions(now: now)
            broker.drainReady { l in
                guard loop.canSend(conn: l) else { return }
                let bytes = broker.takeOutput(link: l)
                if bytes.count > 0 { loop.send(conn: l, bytes: bytes) }
            }
        }
        if !admin.isEmpty { flushAdmin(now: now) }
        if shutdownDrained && loop.openConnections == 0 { loop.stop() }
    }
}

extension Wiring: GatewayTransport {
    func canSend(_ conn: UInt32) -> Bool { loop.canSend(conn: conn) }
    func send(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer) { loop.send(conn: conn, bytes: bytes) }
    func close(_ conn: UInt32) { loop.close(conn: conn, flush: true, now: monotonicNanoseconds()) }
    func abort(_ conn: UInt32) { loop.close(conn: conn, flush: false, now: monotonicNanoseconds()) }
    func pauseRead(_ conn: UInt32) { loop.pauseRead(conn: conn) }
    func resumeRead(_ conn: UInt32) { loop.resumeRead(conn: conn) }
}
