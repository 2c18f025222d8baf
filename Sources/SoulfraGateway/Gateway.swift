import SoulfraLimits
import SoulfraPeerLink
import SoulfraTLS

/// A connection on its way between loops: owned by no gateway until adopted. Only one thread touches it at
/// a time (the hand-off queue orders them).
public final class MovingConnection: @unchecked Sendable {
    let connection: Connection
    init(_ c: Connection) { connection = c }
}

/// What the gateway needs from the I/O layer (the loop). Loop thread only.
public protocol GatewayTransport: AnyObject {
    func canSend(_ conn: UInt32) -> Bool
    /// `bytes` stay valid until `Gateway.sent` for this connection.
    func send(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer)
    func close(_ conn: UInt32)
    /// Closes at once, dropping queued output.
    func abort(_ conn: UInt32)
    func pauseRead(_ conn: UInt32)
    func resumeRead(_ conn: UInt32)
}

/// The public HTTP front door of one loop: client connections (HTTP/1.1, h2c, TLS), API-key admission,
/// and the broker streams requests ride on. Sans-IO apart from `GatewayTransport`; loop thread only.
///
/// Each loop runs its own gateway with its own key buckets and one broker link per loop (`links`): a
/// request for a world goes out on the link of the loop that owns the world. The owner wires the links'
/// bytes to the broker (in process for the own loop, a socket pair for the others).
public final class Gateway {
    public let limits: GatewayLimits
    public let loopIndex: Int
    let gatekeeper: Gatekeeper
    let tlsContext: TLSContext?
    var links: [BrokerLink] = []
    var conns: [UInt32: Connection] = [:]
    var dirtyConns: [Connection] = []
    public var counters = GatewayCounters()
    /// Per-key usage on this loop (published by the owner for the control plane's roll-ups).
    var ledger = UsageLedger()
    /// Access log entries since the last publish (see `drainAccessLog`), kept only while someone takes them.
    var accessLog: [AccessEntry] = []
    public var accessLogEnabled = false
    public weak var transport: (any GatewayTransport)?
    var requestSequence: UInt64 = 0
    var shuttingDown = false
    var lastScan: UInt64 = 0
    /// Connections to move to their world's loop once drained, and those ready to go (see `considerMove`).
    var moveWhenDrained: [Connection] = []
    var readyToMove: [(conn: UInt32, loop: Int)] = []
    /// Where a streamed reply's frame is framed (SSE/NDJSON) before it is handed on.
    var frameScratch: [UInt8] = []
    /// The time of the batch being handled (monotonic nanoseconds): the owner sets it before driving the
    /// gateway (the entry points that take `now` set it too); the gateway itself never reads the clock.
    public var now: UInt64 = 0
    /// The wall clock (seconds since the epoch), for key expiry: the owner sets it as it ticks the gateway.
    public var unixSeconds: UInt64 = 0
    /// Streamed replies whose headers are held back for a moment (see `Exchange.headersDue`).
    var pendingHeaders: [Exchange] = []
    /// What this loop's connections hold for their clients plus the credit their streams hold (updated as
    /// connections are flushed), against `outputBudget` (this loop's share of `limits.outputBudgetBytes`).
    var heldTotal = 0
    let outputBudget: Int
    /// Connections with a stream that waited for the gateway-wide budget: looked at again once it frees.
    var creditWaiters: [Connection] = []
    /// Some of the loop's budget was given back since the waiters were last woken.
    var budgetFreed = false
    var addresses = AddressBudgets()

    lazy var requestIDPrefix: [UInt8] = Array("req_\(loopIndex)_".utf8)

    /// `identity(i)` is the HELLO for the link to loop `i`.
    public init(limits: GatewayLimits, keys: KeyTable, loopIndex: Int, loopCount: Int, tls: TLSContext?,
                identity: (Int) -> PeerIdentity) {
        self.limits = limits
        self.loopIndex = loopIndex
        self.gatekeeper = Gatekeeper(table: keys)
        self.tlsContext = tls
        self.outputBudget = max(limits.connectionOutputHighBytes, limits.outputBudgetBytes / max(1, loopCount))
        links = (0..<loopCount).map { BrokerLink(index: $0, gateway: self, identity: identity($0)) }
    }

    // MARK: - Broker links (wired by the owner)

    /// The gateway's side of its link to loop `i`: the owner starts it, moves its `output` to the broker and
    /// feeds it the broker's bytes.
    public func peerLink(_ i: Int) -> PeerLink { links[i].peer }

    /// Replaces a dead link (the owner then connects it again).
    public func renewLink(_ i: Int) -> PeerLink {
        let old = links[i]
        links[i] = BrokerLink(index: i, gateway: self, identity: old.peer.identity)
        links[i].waiting = old.waiting  // requests that waited for the dead link wait for this one
        return links[i].peer
    }

    /// Links that closed and need to be made again.
    public var deadLinks: [Int] { links.indices.filter { links[$0].peer.isClosed } }

    func linkDown(_ link: BrokerLink, reason: String) {
        let open = link.exchanges
        link.exchanges.removeAll()
        for ex in open.values {
            ex.brokerStream = 0
            brokerClosed(ex, code: .peerGone, reason: "broker link lost: \(reason)")
        }
    }

    // MARK: - Connections

    /// A client connected; `tls` for the TLS listener, `address` its address when known. False: refused (its
    /// address opened connections too fast); close it at once.
    public func accepted(conn: UInt32, tls: Bool, address: ClientAddress?, now: UInt64) -> Bool {
        if let address, !addresses.admitConnection(address, limits, now: now) {
            counters.addressRefusals += 1
            return false
        }
        var t: TLSConnection?
        if tls, let ctx = tlsContext {
            t = try? TLSConnection(context: ctx)
            counters.count(.tls)
        }
        let c = Connection(id: conn, gateway: self, tls: t, address: address, now: now)
        if tls && t == nil { c.finish(.tlsError) }
        conns[conn] = c
        counters.openConnections = conns.count
        if shuttingDown { c.goaway() }
        markDirty(c)
        return true
    }

    @inline(__always)
    public func received(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {
        self.now = now
        guard let c = conns[conn] else { return }
        c.receive(bytes, now: now)
        markDirty(c)
    }

    public func sent(conn: UInt32, count: Int, now: UInt64) {
        guard let c = conns[conn] else { return }
        c.output.sent(count)
        if count > 0 { c.sendProgressed(now: now) }
        markDirty(c)
    }

    public func closed(conn: UInt32, now: UInt64) {
        guard let c = conns.removeValue(forKey: conn) else { return }
        // The loop saw it end before the gateway closed it: the client did.
        if let reason = c.markClosed(.clientClosed) { counters.count(reason) }
        for ex in c.untrackAll() { cancel(ex, reason: "client connection closed") }
        forget(c)
        counters.openConnections = conns.count
    }

    /// Takes a connection that is leaving this gateway (closed, or moving to another loop) out of its budget.
    func forget(_ c: Connection) {
        if c.lastHeld > 0 { budgetFreed = true }
        heldTotal -= c.lastHeld
        c.lastHeld = 0
        if c.inCreditWaiters { creditWaiters.removeAll { $0 === c } }
        c.inCreditWaiters = false
        for ex in c.creditWanted { ex.inCreditList = false }
        c.creditWanted.removeAll()
        if c.inDirtyList { dirtyConns.removeAll { $0 === c } }
        c.inDirtyList = false
    }

    // MARK: - Moving connections to their world's loop

    /// A connection whose requests go to another loop's world is moved there once it is idle: its requests
    /// then reach their broker in process instead of over a socket pair. (Keys belong to one world, so a
    /// connection's requests normally all go to one loop.)
    func considerMove(_ c: Connection) {
        guard links.count > 1, !shuttingDown, c.worldLoop >= 0, c.worldLoop != loopIndex, !c.moving else { return }
        guard !moveWhenDrained.contains(where: { $0 === c }) else { return }
        moveWhenDrained.append(c)
        markDirty(c)
    }

    /// Moves the drained connections among `moveWhenDrained` to `readyToMove`.
    func collectMoves() {
        var keep: [Connection] = []
        for c in moveWhenDrained where !c.closed && !c.closeAfterFlush && conns[c.id] === c {
            if c.quiescent {
                c.markMoving()
                readyToMove.append((c.id, c.worldLoop))
            } else if c.exchanges.isEmpty && c.h1Current == nil {
                keep.append(c)  // output still draining
            }
        }
        moveWhenDrained = keep
    }

    /// Connections ready to leave this loop: hand each to the loop (`EventLoop.handOff`), then `release` it.
    public func takeMoves() -> [(conn: UInt32, loop: Int)] {
        defer { readyToMove.removeAll() }
        return readyToMove
    }

    /// The loop let go of `conn`'s socket: the connection leaves this gateway, with the input that arrived
    /// meanwhile, for the target loop to `adopt`.
    public func release(conn: UInt32) -> MovingConnection? {
        guard let c = conns.removeValue(forKey: conn) else { return nil }
        forget(c)
        counters.openConnections = conns.count
        counters.moves += 1
        return MovingConnection(c)
    }

    /// Takes over a connection another loop's gateway released; `conn` is its slot here.
    public func adopt(_ m: MovingConnection, conn: UInt32, now: UInt64) {
        let c = m.connection
        let held = c.adopted(by: self, conn: conn)
        conns[conn] = c
        counters.openConnections = conns.count
        if !held.isEmpty { held.withUnsafeBytes { c.receive($0, now: now) } }
        markDirty(c)
    }

    /// Bytes held for clients now: send queues, TLS plaintext, HTTP/2 stream queues (walks every connection:
    /// for the once-a-second publish, not the data path).
    public func measureClientQueues() {
        counters.clientQueueBytes = conns.values.reduce(0) { $0 + $1.queuedBytes }
        counters.heldBytes = heldTotal
    }

    func markDirty(_ c: Connection) {
        if !c.inDirtyList {
            c.inDirtyList = true
            dirtyConns.append(c)
        }
    }

    /// Swaps the key table (revocation takes effect on the next request; the broker ends open streams of
    /// revoked keys).
    public func install(keys: KeyTable) { gatekeeper.install(keys) }

    /// Each world's analytics (JSON, made by the control plane from its roll-ups), swapped whole.
    public var analytics: [String: [UInt8]] = [:]
    /// Which browser origins may call which worlds (swapped whole by the control plane).
    public var cors = CORSPolicy()

    /// `req_<loop>_<sequence in hex>`: unique per daemon run, cheap to make (no temporary buffers).
    func nextRequestID() -> String {
        requestSequence &+= 1
        let seq = requestSequence
        var digits = 1
        var t = seq >> 4
        while t > 0 { digits += 1; t >>= 4 }
        let prefix = requestIDPrefix
        return String(unsafeUninitializedCapacity: prefix.count + digits) { buf in
            for (i, b) in prefix.enumerated() { buf[i] = b }
            var v = seq
            for k in stride(from: prefix.count + digits - 1, through: prefix.count, by: -1) {
                buf[k] = hexDigits[Int(v & 0xF)]
                v >>= 4
            }
            return prefix.count + digits
        }
    }

    func counted(status: Int, code: GatewayError.Code?) {
        if status >= 100 && status < 600 { counters.responses[status] &+= 1 }
        if let code { counters.count(code) }
    }

    // MARK: - Output

    /// Moves output to the loop and grants the broker credit where clients keep up. Call after every batch.
    public func flush(now: UInt64) {
        self.now = now
        defer { wakeCreditWaiters() }
        if !pendingHeaders.isEmpty {
            var keep: [Exchange] = []
            for ex in pendingHeaders where !ex.responded && !ex.retired {
                if now >= ex.headersDue { startStreamedReply(ex) } else { keep.append(ex) }
            }
            pendingHeaders = keep
        }
        defer { if !moveWhenDrained.isEmpty { collectMoves() } }
        guard !dirtyConns.isEmpty else { return }
        let list = dirtyConns
        dirtyConns.removeAll(keepingCapacity: true)
        let heldBefore = heldTotal
        for c in list {
            c.inDirtyList = false
            guard !c.closed, !c.moving else { continue }
            // Output first: streams that closed while it was produced give their credit back before any is granted
            // (granting writes to the broker only, nothing for this client).
            c.produce()
            grantCredit(c, now: now)
            if c.queuedBytes == 0 { c.sendProgressed(now: now) }
            if let transport, !c.output.inFlight, transport.canSend(c.id), let bytes = c.output.take() {
                transport.send(c.id, bytes)
            }
            // Output waiting for the socket past the connection's budget can only be the gateway's own (pongs,
            // errors, control frames): stop reading what causes it until the client takes some. HTTP/2 stream
            // queues do not count here: they drain only as the client's WINDOW_UPDATEs are read, and credit
            // bounds them already.
            let queued = c.socketBytes
            if queued > limits.connectionOutputHighBytes {
                if !c.readPauses.contains(.outputFull) { counters.outputPauses += 1 }
                c.pauseReading(.outputFull)
            } else if queued <= limits.connectionOutputHighBytes / 2 {
                c.resumeReading(.outputFull)
            }
            reconcile(c)
            applyReading(c)
            if c.closeAfterFlush && !c.output.inFlight && c.output.isEmpty, let reason = c.markClosed(.finished) {
                counters.count(reason)
                transport?.close(c.id)
            }
        }
        if heldTotal < heldBefore { budgetFreed = true }
    }

    /// Tells the transport when the connection's reading should stop or start again (its pause reasons
    /// changed since it was last told).
    @inline(__always) func applyReading(_ c: Connection) {
        // A connection on its way to another loop has no slot here any more: its id may be someone else's.
        guard c.readPauses.isEmpty == c.readingPaused, !c.closed, !c.moving else { return }
        c.readingPaused.toggle()
        if c.readingPaused { transport?.pauseRead(c.id) } else { transport?.resumeRead(c.id) }
    }

    /// Tells the transport about read pauses changed since the last flush (by work done after it, such as the
    /// in-process broker link's second pump), without waiting for the next batch.
    public func applyPendingReading() {
        for c in dirtyConns { applyReading(c) }
    }

    /// Ends a connection now, dropping what is queued (its client stopped taking it).
    func abort(_ c: Connection, _ reason: CloseReason) {
        guard let counted = c.markClosed(reason, overriding: true) else { return }
        counters.count(counted)
        transport?.abort(c.id)
    }

    /// Streams that waited for the loop's budget get another look once some of it is free again (checked after
    /// every flush, whatever freed it: a connection that drained, closed or moved, a stream that ended).
    func wakeCreditWaiters() {
        guard budgetFreed, !creditWaiters.isEmpty, heldTotal + outputBudget / 16 < outputBudget else { return }
        budgetFreed = false
        let waiters = creditWaiters
        creditWaiters.removeAll()
        for c in waiters {
            c.inCreditWaiters = false
            if !c.closed && !c.moving && conns[c.id] === c { markDirty(c) }
        }
    }

}
