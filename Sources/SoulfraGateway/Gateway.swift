import SoulfraHTTP
import SoulfraHTTP2
import SoulfraKeys
import SoulfraPeerLink
import SoulfraTLS
import SoulfraWire

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

/// The gateway's link to one broker loop and the requests riding on it, by broker stream id.
final class BrokerLink: PeerLinkDelegate {
    let index: Int
    unowned let gateway: Gateway
    /// The gateway's side of the link (the gateway is a `gateway` peer).
    var peer: PeerLink
    var exchanges: [UInt32: Exchange] = [:]

    init(index: Int, gateway: Gateway, identity: PeerIdentity) {
        self.index = index
        self.gateway = gateway
        self.peer = PeerLink(identity: identity)
        peer.autoCredit = false
        peer.delegate = self
    }

    var usable: Bool { peer.isReady && !peer.goawayReceived }
    /// Coming up (HELLO sent), or down and about to be remade on the next tick: requests wait for it rather
    /// than fail. A link whose broker said GOAWAY is not coming back.
    var connecting: Bool { !peer.isReady && !gateway.shuttingDown }
    /// Requests waiting for the link, with their deadline; re-run when WELCOME arrives.
    var waiting: [(ex: Exchange, deadline: UInt64, run: (Exchange) -> Void)] = []

    func linkReady(_ link: PeerLink, welcome: Welcome) {
        let ready = waiting
        waiting.removeAll()
        for w in ready where !w.ex.retired && !w.ex.responseEnded { w.run(w.ex) }
    }

    func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard let ex = exchanges[stream] else { return }
        gateway.brokerData(ex, payload, flags: flags)
    }

    func linkWritable(_ link: PeerLink, stream: UInt32) {
        if let ex = exchanges[stream] { gateway.pumpOutbound(ex, now: gateway.now) }
    }

    func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        guard let ex = exchanges.removeValue(forKey: stream) else { return }
        ex.brokerStream = 0
        gateway.brokerClosed(ex, code: code, reason: reason)
    }

    func linkDropped(_ link: PeerLink, stream: UInt32, count: UInt32) {
        guard let ex = exchanges[stream] else { return }
        gateway.controlEvent(ex, event: "dropped", json: #"{"event":"dropped","count":\#(count)}"#)
        gateway.markDirty(ex.conn)
    }

    func linkPaced(_ link: PeerLink, stream: UInt32, paced: Bool) {
        guard let ex = exchanges[stream], ex.kind.streamsReply else { return }
        gateway.counters.pacedEvents += 1
        gateway.controlEvent(ex, event: "rate_limits", json: Framing.rateLimits(
            paced: paced, framesPerSecond: ex.key.framesPerSecond, bytesPerSecond: ex.key.bytesPerSecond))
        gateway.markDirty(ex.conn)
    }

    func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String) {
        gateway.linkDown(self, reason: reason)
    }

    /// Runs `action` now if the link is up, later (within `waitNanoseconds`) if it is coming up; false if the
    /// link is down or going away.
    func whenUsable(_ ex: Exchange, now: UInt64, _ action: @escaping (Exchange) -> Void) -> Bool {
        if usable {
            action(ex)
            return true
        }
        guard connecting else { return false }
        waiting.append((ex, now &+ Gateway.linkWaitNanoseconds, action))
        return true
    }
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

    // MARK: - Requests

    /// A request head arrived (`id`: the HTTP/2 stream, or the HTTP/1.1 request's sequence number).
    func begin(_ c: Connection, id: Int32, head: RequestHead, now: UInt64) {
        let requestID = nextRequestID()
        // A client waiting for 100 Continue may never send the body of a refused request: close after
        // answering rather than wait for it.
        if head.expectContinue { c.keepAlive(false) }
        if shuttingDown {
            return reject(c, id: id, GatewayError(.shuttingDown, "the gateway is shutting down",
                                                  headers: [("retry-after", "\(limits.retryAfterSeconds)")]), requestID: requestID)
        }
        var path = head.path
        var queryToken: String?
        if let q = path.utf8.firstIndex(of: UInt8(ascii: "?")) {
            for pair in path[path.index(after: q)...].split(separator: "&") where pair.hasPrefix("access_token=") {
                queryToken = String(pair.dropFirst("access_token=".count))
            }
            path = String(path[..<q])
        }
        let admission = gatekeeper.admit(method: head.method, path: path, authorization: head.authorization,
                                         queryToken: queryToken, now: now, unixSeconds: unixSeconds, cache: &c.admissionCache)
        let route: Route, key: KeyRecord, rate: RateLimitState
        switch admission {
        case .reject(let e):
            return reject(c, id: id, e, requestID: requestID)
        case .admit(let r, let k, let s):
            (route, key, rate) = (r, k, s)
        }
        guard head.session.isEmpty || Route.validName(head.session) else {
            return reject(c, id: id, invalidSession, requestID: requestID)
        }
        let wantsSSE = containsASCII(head.accept, "text/event-stream")
        let wantsNDJSON = containsASCII(head.accept, "application/x-ndjson")
        let kind: ExchangeKind
        switch route {
        case .messages: kind = wantsSSE ? .messageStream : .message
        case .streams: kind = .stream
        case .webSocket:
            guard c.proto == .http1, head.webSocketAccept != nil else {
                // HTTP/2 forbids connection-specific fields such as Upgrade (RFC 9113 §8.2.2): there the 426
                // says what to do in its body only.
                return reject(c, id: id, GatewayError(
                    .upgradeRequired,
                    "this route is a WebSocket: send an HTTP/1.1 GET with Upgrade: websocket",
                    headers: c.proto == .http2 ? [] : [("upgrade", "websocket")]), requestID: requestID)
            }
            kind = .webSocket
        case .room(_, _, let publish): kind = publish ? .roomPublish : .roomSubscribe
        case .session, .analytics, .users:
            return reject(c, id: id, GatewayError(
                .notImplemented,
                "\(head.method) \(path) is not served by this version of the gateway yet"), requestID: requestID)
        }
        if head.expectContinue {
            c.keepAlive(head.keepAlive)
            c.emit(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8))
        }
        let ex = Exchange(id: id, conn: c, route: route, key: key, rate: rate, kind: kind, requestID: requestID,
                          startedAt: now, session: head.session, ndjson: kind == .stream || wantsNDJSON && !wantsSSE)
        counters.requests[kind.index] += 1
        c.track(ex, worldLoop: Wire.loop(forWorld: route.world, count: links.count))
        ex.lastBodyAt = now
        counters.openExchanges += 1
        switch kind {
        case .message, .messageStream, .roomPublish:
            break  // the body comes first
        case .stream:
            openBroker(ex, now: now)
        case .roomSubscribe:
            subscribe(ex, now: now)
        case .webSocket:
            c.upgradeToWebSocket()
            c.writeH1Head(status: 101, headers: [("upgrade", "websocket"), ("connection", "Upgrade"),
                                                 ("sec-websocket-accept", head.webSocketAccept!), ("x-request-id", requestID)],
                          contentLength: nil, keepAlive: true)
            ex.advance(reply: .started)
            counted(status: 101, code: nil)
            openBroker(ex, now: now)
        }
    }

    func reject(_ c: Connection, id: Int32, _ e: GatewayError, requestID: String) {
        // HTTP/1.1: the refused request's body is read and dropped; a connection that is not kept does not wait
        // for a body the client may never send.
        if c.proto != .http2 { c.discardRequestBody() }
        c.respondError(id, e, requestID: requestID)
        if c.proto != .http2 && !c.h1KeepAlive { c.finish(.finished) }
        markDirty(c)
    }

    /// Request body bytes (HTTP/2 DATA or HTTP/1.1 body).
    func requestBody(_ ex: Exchange, _ bytes: UnsafeRawBufferPointer, now: UInt64) {
        let c = ex.conn
        if ex.responseEnded {
            // Answered already (413, an error): the rest of the upload is read and dropped, up to a bound; past
            // it the stream is reset. Resetting at once would race the answer and many clients report it as a
            // failure instead of reading the status.
            c.h2?.consume(stream: ex.id, bytes: bytes.count)
            ex.discarded += bytes.count
            if ex.discarded > limits.maxBodyBytes, let h2 = c.h2 { h2.reset(stream: ex.id, code: 8) }  // CANCEL
            return
        }
        ex.lastBodyAt = now
        switch ex.kind {
        case .message, .messageStream, .roomPublish:
            c.h2?.consume(stream: ex.id, bytes: bytes.count)
            guard ex.body.count + bytes.count <= limits.maxBodyBytes else {
                return fail(ex, GatewayError(.payloadTooLarge,
                                             "request bodies are limited to \(limits.maxBodyBytes) bytes"))
            }
            ex.body.append(contentsOf: bytes)
        case .stream:
            // Handed back to the client's HTTP/2 window as the lines go to the world (or when the stream ends).
            if c.proto == .http2 { ex.inputHeld += bytes.count }
            guard ex.splitLines(bytes, maxLine: limits.maxLineBytes) else {
                return fail(ex, GatewayError(.payloadTooLarge,
                                             "an NDJSON line is over \(limits.maxLineBytes) bytes"))
            }
            pumpOutbound(ex, now: now)
            // HTTP/2 input is held back by its flow-control window; HTTP/1.1 input by not reading the socket.
            if c.proto == .http1 && ex.outboundBytes > limits.streamQueueHighBytes { c.pauseReading(.requestBacklog) }
        case .webSocket, .roomSubscribe:
            c.h2?.consume(stream: ex.id, bytes: bytes.count)
        }
    }

    func requestEnd(_ ex: Exchange, now: UInt64) {
        ex.advance(request: .received)
        switch ex.kind {
        case .message, .messageStream:
            guard let fields = MessageFields.scan(ex.body) else {
                return fail(ex, GatewayError(.invalidRequest, "the body must be a JSON object"))
            }
            if fields.stream { ex.kind = .messageStream }
            if ex.session.isEmpty {
                guard fields.session.isEmpty || Route.validName(fields.session) else { return fail(ex, invalidSession) }
                ex.session = fields.session
            }
            if ex.kind == .messageStream { ex.ndjson = false }
            openBroker(ex, now: now)
        case .roomPublish:
            guard !ex.body.isEmpty else {
                return fail(ex, GatewayError(.invalidRequest, "a publish needs a body"))
            }
            guard case .room(let world, _, _) = ex.route else { return }
            let link = links[Wire.loop(forWorld: world, count: links.count)]
            let queued = link.whenUsable(ex, now: now) { [unowned self] ex in
                guard case .room(let world, let room, _) = ex.route else { return }
                let peer = links[Wire.loop(forWorld: world, count: links.count)].peer
                ex.body.withUnsafeBytes { peer.publish(world: world, room: room, payload: $0) }
                finishUnary(ex, status: 202, body: Array(#"{"published":true}"#.utf8), now: self.now)
            }
            if !queued { fail(ex, unavailable(ex, "the broker loop for this world is not available")) }
        case .stream:
            if !ex.partialLine.isEmpty {
                ex.queue(ex.partialLine, cost: ex.lineCost)
                ex.partialLine = []
                ex.lineCost = 0
            }
            ex.outboundEnds = true
            pumpOutbound(ex, now: now)
        case .webSocket, .roomSubscribe:
            break
        }
    }

    /// Part of a WebSocket message from the client, as it arrives: it goes to the world as DATA flagged MORE
    /// until the message's last part (so a message of any size up to the limit travels under credit).
    func webSocketData(_ ex: Exchange, _ bytes: UnsafeRawBufferPointer, binary: Bool, last: Bool, now: UInt64) {
        if bytes.count == 0 && !last { return }
        // Parts of one message that wait join the last waiting part (many tiny frames cost one entry, not one
        // each); a new message starts a new entry.
        let tail = ex.outbound.count - 1
        if tail >= ex.outboundHead, ex.outbound[tail].continues, ex.outbound[tail].sent == 0, ex.outbound[tail].binary == binary {
            ex.outbound[tail].bytes.append(contentsOf: bytes)
            ex.outbound[tail].continues = !last
            ex.outboundBytes += bytes.count
        } else {
            ex.queue(Array(bytes), cost: 0, continues: !last, binary: binary)
        }
        pumpOutbound(ex, now: now)
        if ex.outboundBytes > limits.streamQueueHighBytes { ex.conn.pauseReading(.requestBacklog) }
    }

    var invalidSession: GatewayError {
        GatewayError(.invalidRequest,
                     "a session id is 1-64 characters of a-z, 0-9, - and _")
    }

    func unavailable(_ ex: Exchange, _ message: String) -> GatewayError {
        GatewayError(.noHealthyInstance, message,
                     headers: [("retry-after", "\(limits.retryAfterSeconds)")])
    }

    /// Opens the broker stream to one of the world's instances (the broker balances and pins sessions).
    func openBroker(_ ex: Exchange, now: UInt64) {
        let link = links[Wire.loop(forWorld: ex.route.world, count: links.count)]
        guard link.usable else {
            if !link.whenUsable(ex, now: now, { [unowned self] ex in openBroker(ex, now: self.now) }) {
                fail(ex, unavailable(ex, "the broker loop for this world is not available"))
            }
            return
        }
        ex.link = link.index
        // The instance may send what this connection can take now (see `topUp`); the rest follows as CREDIT.
        let window = initialWindow(ex)
        ex.brokerStream = link.peer.open(Open(target: .instance, keyID: ex.key.id, world: ex.route.world,
                                                 session: ex.session, detail: ex.kind.detail, window: window))
        link.exchanges[ex.brokerStream] = ex
        setWindow(ex, bytes: Int64(window.bytes), frames: Int64(window.frames))
        if ex.kind == .message || ex.kind == .messageStream { ex.awaitingAnswer = true }
        armDeadline(ex, now: now)
        if ex.kind == .message || ex.kind == .messageStream {
            // The body goes out from `body` itself (frames of at most 16 KiB, END on the last); it stays whole
            // for a retry.
            ex.bodySent = 0
            ex.sendsBody = true
            ex.resend()
        }
        if ex.kind.streamsReply && !ex.responded {
            ex.headersDue = now &+ 2_000_000
            pendingHeaders.append(ex)
        }
        pumpOutbound(ex, now: now)
    }

    func subscribe(_ ex: Exchange, now: UInt64) {
        guard case .room(let world, let room, _) = ex.route else { return }
        let link = links[Wire.loop(forWorld: world, count: links.count)]
        guard link.usable else {
            if !link.whenUsable(ex, now: now, { [unowned self] ex in subscribe(ex, now: self.now) }) {
                fail(ex, unavailable(ex, "the broker loop for this world is not available"))
            }
            return
        }
        ex.link = link.index
        ex.brokerStream = link.peer.subscribe(world: world, room: room, mode: .reliable)
        link.exchanges[ex.brokerStream] = ex
        startStreamedReply(ex)
    }

    /// Sends queued messages while the broker's credit allows (in parts, flagged MORE, when a message is
    /// larger than what is left); hands the client's HTTP/2 window back for what the broker took.
    func pumpOutbound(_ ex: Exchange, now: UInt64) {
        guard ex.brokerStream != 0, ex.link >= 0 else { return }
        let peer = links[ex.link].peer
        if ex.sendsBody {
            guard !ex.sentEnd else { return }
            let took = ex.body.withUnsafeBytes { body in
                peer.sendPartial(stream: ex.brokerStream, payload: UnsafeRawBufferPointer(rebasing: body[ex.bodySent...]), end: true)
            }
            if let took {
                ex.bodySent += took
                if ex.bodySent == ex.body.count { ex.advance(request: .forwarded) }
            }
            return
        }
        var consumed = 0
        var sentAny = false
        while ex.outboundHead < ex.outbound.count {
            let m = ex.outbound[ex.outboundHead]
            let last = ex.outboundEnds && ex.outboundHead == ex.outbound.count - 1
            let took = m.bytes.withUnsafeBytes { b in
                peer.sendPartial(stream: ex.brokerStream, payload: UnsafeRawBufferPointer(rebasing: b[m.sent...]), end: last,
                                    binary: m.binary, continues: m.continues)
            }
            guard let took else { break }
            sentAny = true
            ex.outbound[ex.outboundHead].sent += took
            ex.outboundBytes -= took
            guard m.sent + took == m.bytes.count else { break }  // the rest waits for credit
            consumed += m.cost
            ex.outboundBytes -= Exchange.entryOverhead
            ex.outbound[ex.outboundHead] = OutboundMessage(bytes: [], cost: 0, continues: false, binary: false)
            ex.outboundHead += 1
            if last { ex.advance(request: .forwarded) }
        }
        if ex.outboundHead == ex.outbound.count {
            ex.outbound.removeAll(keepingCapacity: true)
            ex.outboundHead = 0
            if ex.outboundEnds && !ex.sentEnd {
                if peer.send(stream: ex.brokerStream, payload: UnsafeRawBufferPointer(start: nil, count: 0), end: true) {
                    ex.advance(request: .forwarded)
                }
            }
        }
        // A stream's deadline runs from its first message to the world until the world's first answer.
        if sentAny && ex.replyBytes == 0 && !ex.responseEnded {
            ex.awaitingAnswer = true
            armDeadline(ex, now: now)
        }
        if ex.outboundBytes <= limits.streamQueueHighBytes / 2 { ex.conn.resumeReading(.requestBacklog) }
        if consumed > 0, let h2 = ex.conn.h2 {
            h2.consume(stream: ex.id, bytes: consumed)
            ex.inputHeld -= consumed
            precondition(ex.inputHeld >= 0, "more request bytes handed back than were held")
            markDirty(ex.conn)
        }
    }

    // MARK: - Replies

    func startStreamedReply(_ ex: Exchange) {
        guard !ex.responded else { return }
        ex.advance(reply: .started)
        let type = ex.ndjson ? "application/x-ndjson" : "text/event-stream"
        var headers = ex.replyHeaders(contentType: type, contentLength: nil)
        if !ex.ndjson { headers.append(H2Header("cache-control", "no-cache")) }
        ex.conn.respond(ex.id, status: 200, headers: headers, body: UnsafeRawBufferPointer(start: nil, count: 0), end: false)
        counted(status: 200, code: nil)
        markDirty(ex.conn)
    }

    /// DATA from the instance: part or all of a message (MORE says more of it follows).
    func brokerData(_ ex: Exchange, _ payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        let c = ex.conn
        let end = flags.contains(.endStream), more = flags.contains(.more)
        if ex.kind.usesCredit {
            // The instance used window: credit the connection held becomes bytes queued for its client.
            setWindow(ex, bytes: ex.windowBytes - Int64(payload.count), frames: ex.windowFrames - 1)
            ex.replyFrames += 1
            wantCredit(ex)
        }
        if ex.kind != .message || end {
            ex.deadline = 0
            ex.awaitingAnswer = false
        }
        switch ex.kind {
        case .message:
            guard ex.replyBytes + payload.count <= limits.maxReplyBytes else {
                // 502 if nothing went out yet, else the response is cut off (see `fail`): a truncated body must
                // not pass for a whole one.
                return fail(ex, GatewayError(.replyTooLarge,
                                             "the instance's reply is over \(limits.maxReplyBytes) bytes"))
            }
            ex.replyBytes += payload.count
            if end && !ex.responded {
                // The usual reply: one frame, answered from the broker's buffer with its length.
                finishUnary(ex, status: 200, body: payload, now: now)
                return
            }
            // A reply in several frames streams to the client as it comes (nothing is held whole here).
            if !ex.responded {
                ex.advance(reply: .started)
                c.respond(ex.id, status: 200, headers: ex.replyHeaders(contentType: "application/json", contentLength: nil),
                          body: UnsafeRawBufferPointer(start: nil, count: 0), end: false)
                counted(status: 200, code: nil)
            }
            if payload.count > 0 || end { c.sendBody(ex.id, payload, end: end) }
            if end {
                counters.observe(micros: (now &- ex.startedAt) / 1_000)
                replyEnded(ex)
            }
        case .roomSubscribe:
            if c.queuedBytes > limits.roomSubscriberOutputBytes {
                counters.slowSubscribers += 1
                return fail(ex, GatewayError(.slowConsumer,
                                             "this subscriber fell too far behind the room"), retryable: true)
            }
            deliver(ex, payload, more: false, binary: false, end: false)
        case .messageStream, .stream, .webSocket:
            ex.replyBytes += payload.count
            deliver(ex, payload, more: more, binary: flags.contains(.binary), end: end)
        case .roomPublish:
            break
        }
        reconcile(c)
        markDirty(c)
    }

    /// Writes one message, or a part of one, to the client in the exchange's framing. `more`: the message goes
    /// on in the next DATA; `end`: the reply is over.
    func deliver(_ ex: Exchange, _ payload: UnsafeRawBufferPointer, more: Bool, binary: Bool, end: Bool) {
        startStreamedReply(ex)
        let c = ex.conn
        let first = !ex.replyMidMessage
        if ex.kind == .webSocket {
            if first { ex.replyBinary = binary; ex.replyUTF8 = UTF8Validator() }
            // A text frame the gateway sends is always valid UTF-8 (checked as parts arrive, across them).
            if !ex.replyBinary && (!ex.replyUTF8.feed(payload) || (!more && !ex.replyUTF8.isComplete)) {
                counters.count(.invalidUTF8)
                c.closeWebSocket(.internalError, "the world sent text that is not UTF-8", because: .streamFailed)
                cancel(ex, reason: "instance sent invalid UTF-8")
                return
            }
            // An empty part of a message carries nothing; an empty message is still a message.
            if !(payload.count == 0 && more) && !(payload.count == 0 && end && first) {
                c.sendWebSocket(payload, binary: ex.replyBinary, first: first, fin: !more)
                ex.replyMidMessage = more
            }
        } else if payload.count > 0 || (!first && !more) {
            // SSE and NDJSON carry no empty messages (an empty DATA is only an END marker).
            frameScratch.removeAll(keepingCapacity: true)
            if ex.ndjson {
                Framing.ndjsonPart(payload, lastByte: &ex.replyLastByte, last: !more, into: &frameScratch)
            } else {
                Framing.ssePart(payload, first: first, last: !more, lastByte: &ex.replyLastByte, into: &frameScratch)
            }
            frameScratch.withUnsafeBytes { c.sendBody(ex.id, $0, end: false) }
            ex.replyMidMessage = more
        }
        if !ex.replyMidMessage && !ex.heldEvents.isEmpty {
            let held = ex.heldEvents
            ex.heldEvents.removeAll()
            for e in held { controlEvent(ex, event: e.event, json: e.json) }
        }
        if end {
            c.sendBody(ex.id, UnsafeRawBufferPointer(start: nil, count: 0), end: true)
            replyEnded(ex)
        }
        markDirty(c)
    }

    /// Closes a message cut short (the stream failed in its middle) so the framing stays whole: an empty last
    /// part.
    func endPartialMessage(_ ex: Exchange) {
        guard ex.replyMidMessage else { return }
        deliver(ex, UnsafeRawBufferPointer(start: nil, count: 0), more: false, binary: ex.replyBinary, end: false)
    }

    /// A control event inside a streamed reply (`rate_limits`, `dropped`, `error`). One that arrives in the
    /// middle of a message waits for its end.
    func controlEvent(_ ex: Exchange, event: String, json: String) {
        guard !ex.responseEnded else { return }
        if ex.replyMidMessage {
            if ex.heldEvents.count < 16 { ex.heldEvents.append((event, json)) }
            return
        }
        startStreamedReply(ex)
        var framed: [UInt8] = []
        let bytes = Array(json.utf8)
        bytes.withUnsafeBytes { b in
            if ex.kind == .webSocket || ex.ndjson { Framing.ndjson(b, into: &framed) } else { Framing.sse(b, event: event, into: &framed) }
        }
        if ex.kind == .webSocket {
            framed.removeLast()
            framed.withUnsafeBytes { ex.conn.sendWebSocket($0, binary: false, first: true, fin: true) }
        } else {
            framed.withUnsafeBytes { ex.conn.sendBody(ex.id, $0, end: false) }
        }
    }

    func finishUnary(_ ex: Exchange, status: Int, body: [UInt8], now: UInt64) {
        body.withUnsafeBytes { finishUnary(ex, status: status, body: $0, now: now) }
    }

    func finishUnary(_ ex: Exchange, status: Int, body: UnsafeRawBufferPointer, now: UInt64) {
        guard !ex.responded else { return }
        ex.advance(reply: .started)
        ex.deadline = 0
        ex.conn.respond(ex.id, status: status, headers: ex.replyHeaders(contentType: "application/json", contentLength: body.count),
                        body: body, end: true)
        counted(status: status, code: nil)
        counters.observe(micros: (now &- ex.startedAt) / 1_000)
        replyEnded(ex)
        markDirty(ex.conn)
    }

    /// The reply is complete: the exchange is done once the broker stream is too.
    func replyEnded(_ ex: Exchange) {
        ex.advance(reply: .ended)
        ex.deadline = 0
        if ex.brokerStream != 0 && (ex.kind == .message || ex.kind == .roomPublish) {
            // Unary: the instance ended its side. With both ENDs the stream is over and nothing needs saying;
            // otherwise the rest of the request is not wanted.
            links[ex.link].exchanges.removeValue(forKey: ex.brokerStream)
            if !ex.sentEnd { links[ex.link].peer.closeStream(ex.brokerStream) }
            ex.brokerStream = 0
        }
        if ex.brokerStream == 0 { retire(ex) }
    }

    /// The broker stream ended: cleanly, or with an error to map to a status or an error event.
    func brokerClosed(_ ex: Exchange, code: ErrorCode, reason: String) {
        if ex.responseEnded {
            retire(ex)
            return
        }
        if code == .none {
            // The instance finished without END on its last DATA.
            if ex.kind == .message && !ex.responded {
                finishUnary(ex, status: 200, body: UnsafeRawBufferPointer(start: nil, count: 0), now: now)
            } else if ex.kind == .message {
                ex.conn.sendBody(ex.id, UnsafeRawBufferPointer(start: nil, count: 0), end: true)
                replyEnded(ex)
            } else {
                deliver(ex, UnsafeRawBufferPointer(start: nil, count: 0), more: false, binary: false, end: true)
            }
            retire(ex)
            markDirty(ex.conn)
            return
        }
        if (code == .peerGone || code == .heartbeatTimeout) && ex.kind == .message && !ex.retried && ex.replyBytes == 0
            && !ex.responded && !ex.conn.closed {
            // Not answered: try once more on another instance (the broker re-pins the session).
            ex.retried = true
            counters.retries += 1
            ex.deadline = 0  // the next instance gets the whole deadline, not what the first one left
            openBroker(ex, now: now)
            if ex.brokerStream != 0 { return }
        }
        let e: GatewayError
        let retryable: Bool
        switch code {
        case .noRoute, .peerGone, .heartbeatTimeout:
            e = code == .noRoute || !ex.responded
                ? unavailable(ex, code == .noRoute ? "no healthy instance of \"\(ex.route.world)\" is attached"
                                                  : "the instance serving this request went away")
                : GatewayError(.instanceGone, "the instance serving this stream went away")
            retryable = true
        case .streamLimit:
            e = GatewayError(.tooManyStreams, reason,
                             headers: [("retry-after", "\(limits.retryAfterSeconds)")])
            retryable = true
        case .notPermitted:
            e = GatewayError(.keyDisabled, "the key was revoked: \(reason)")
            retryable = false
        case .shutdown:
            e = GatewayError(.shuttingDown, "the broker is shutting down",
                             headers: [("retry-after", "\(limits.retryAfterSeconds)")])
            retryable = true
        case .slowConsumer:
            e = GatewayError(.slowConsumer, reason)
            retryable = true
        case .frameTooLarge:
            e = GatewayError(.messageTooLarge, "a message on this stream was too large: \(reason)")
            retryable = false
        default:
            e = GatewayError(.badGateway, "the stream failed inside: \(code): \(reason)")
            retryable = false
        }
        fail(ex, e, retryable: retryable)
    }

    /// Ends an exchange with an error: a status if nothing was sent yet, else an error event and the end.
    func fail(_ ex: Exchange, _ e: GatewayError, retryable: Bool = false) {
        let c = ex.conn
        detachBroker(ex, reason: e.code.name)
        if !ex.responded {
            ex.advance(reply: .started)
            if c.proto != .http2 && !ex.requestEnded { c.keepAlive(false) }
            c.respondError(ex.id, e, requestID: ex.requestID)
        } else if !ex.responseEnded {
            counters.count(e.code)
            if ex.kind == .message {
                // A unary reply already streaming: cut it off rather than append an error to its body.
                if let h2 = c.h2 { h2.reset(stream: ex.id, code: 2) } else { c.finish(.replyCutOff) }
            } else {
                // The message in progress is closed first (a WebSocket one only if its bytes so far are
                // whole UTF-8), then the error event; a WebSocket then closes with 1011, not a normal close.
                endPartialMessage(ex)
                ex.heldEvents.removeAll()
                if !ex.responseEnded {
                    controlEvent(ex, event: "error", json: Framing.errorEvent(e, retryable: retryable, requestID: ex.requestID))
                }
                if ex.kind == .webSocket {
                    c.closeWebSocket(.internalError, e.code.name, because: .streamFailed)
                } else {
                    c.sendBody(ex.id, UnsafeRawBufferPointer(start: nil, count: 0), end: true)
                }
            }
        }
        ex.advance(reply: .ended)
        retire(ex)
        markDirty(c)
    }

    /// The client went away from this exchange (stream reset, connection closed).
    func cancel(_ ex: Exchange, reason: String) {
        detachBroker(ex, reason: reason)
        ex.advance(reply: .ended)
        retire(ex)
    }

    /// Ends the exchange's broker stream (CLOSE with `code`; a room subscription is unsubscribed) and forgets it.
    func detachBroker(_ ex: Exchange, code: ErrorCode = .cancelled, reason: String) {
        guard ex.brokerStream != 0 else { return }
        let link = links[ex.link]
        link.exchanges.removeValue(forKey: ex.brokerStream)
        if ex.kind == .roomSubscribe { link.peer.unsubscribe(ex.brokerStream) } else {
            link.peer.closeStream(ex.brokerStream, code: code, reason: reason)
        }
        ex.brokerStream = 0
    }

    /// Forgets a finished exchange.
    func retire(_ ex: Exchange) {
        guard !ex.retired else { return }
        ex.advance(reply: .retired)
        ex.deadline = 0
        let c = ex.conn
        if ex.windowCost > 0 {
            setWindow(ex, bytes: 0, frames: 0)  // the credit it held goes back to its connection
            markDirty(c)
        }
        // Request input that will never reach the world: its HTTP/2 window goes back to the connection (else
        // every failed upload would shrink the connection's window for good), reading resumes if it waited for
        // it, and its buffers go now rather than when the client has read the reply.
        if ex.inputHeld > 0 {
            c.h2?.consume(stream: ex.id, bytes: ex.inputHeld)
            ex.inputHeld = 0
            markDirty(c)
        }
        ex.outbound = []
        ex.outboundHead = 0
        ex.outboundBytes = 0
        ex.partialLine = []
        ex.body = []
        c.resumeReading(.requestBacklog)
        counters.openExchanges -= 1
        precondition(counters.openExchanges >= 0, "an exchange retired twice")
        if c.proto == .http2 {
            // The stream itself is forgotten when nghttp2 reports it closed.
        } else if c.h1Current === ex {
            c.h1Done(now: now)
            markDirty(c)
        }
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
        guard c.readPauses.isEmpty == c.readingPaused, !c.closed else { return }
        c.readingPaused.toggle()
        if c.readingPaused { transport?.pauseRead(c.id) } else { transport?.resumeRead(c.id) }
    }

    /// Ends a connection now, dropping what is queued (its client stopped taking it).
    func abort(_ c: Connection, _ reason: CloseReason) {
        guard let counted = c.markClosed(reason) else { return }
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

    // MARK: - Time and shutdown

    /// How long a request waits for a broker link that is coming up (start-up, reconnect) before 503.
    static let linkWaitNanoseconds: UInt64 = 2_000_000_000

    /// Header, body and idle timeouts (scanned every 100 ms); requests that waited too long for a link.
    public func tick(now: UInt64) {
        self.now = now
        guard now &- lastScan >= 100_000_000 else { return }
        lastScan = now
        for link in links where !link.waiting.isEmpty {
            let expired = link.waiting.filter { now > $0.deadline || !link.connecting }
            link.waiting.removeAll { now > $0.deadline || !link.connecting }
            for w in expired where !w.ex.retired {
                fail(w.ex, unavailable(w.ex, "the broker loop for this world did not come up in time"))
            }
        }
        let idle = UInt64(limits.idleTimeoutMilliseconds) * 1_000_000
        let bodyLimit = UInt64(limits.bodyTimeoutMilliseconds) * 1_000_000
        let sendLimit = UInt64(limits.sendTimeoutMilliseconds) * 1_000_000
        for c in conns.values where !c.closed && !c.moving {
            // A client that takes none of its pending output for this long gives its budget back.
            if c.queuedBytes > 0 && now &- c.lastSendProgress > sendLimit {
                counters.sendTimeouts += 1
                abort(c, .sendTimeout)
                markDirty(c)
                continue
            }
            guard !c.closeAfterFlush else { continue }
            for ex in c.exchanges.values { checkTimers(ex, now: now, bodyLimit: bodyLimit) }
            if let ex = c.h1Current { checkTimers(ex, now: now, bodyLimit: bodyLimit) }
            if let d = c.headDeadline, now > d, c.h1Current == nil, c.exchanges.isEmpty {
                counters.headerTimeouts += 1
                if c.proto == .http1 && !c.h1.isIdle {
                    c.keepAlive(false)
                    c.respondError(0, GatewayError(.requestTimeout,
                                                  "the request head did not arrive in time"), requestID: nextRequestID())
                } else if let h2 = c.h2 {
                    h2.goaway()
                }
                c.finish(.headerTimeout)
                markDirty(c)
            } else if c.h1Current == nil && c.exchanges.isEmpty && now &- c.lastActive > idle {
                counters.idleTimeouts += 1
                c.h2?.goaway()
                c.finish(.idleTimeout)
                markDirty(c)
            } else if !c.trimmed && c.h1Current == nil && c.exchanges.isEmpty && now &- c.lastActive > 1_000_000_000 {
                c.trim()
            }
        }
    }

    /// Starts the request deadline (see `GatewayLimits.requestTimeoutMilliseconds`) when the instance has been
    /// asked and may answer, or when the stream waits for the loop's budget (it must not wait for ever). A
    /// stream held at no window because its own client is not reading is that client's stall, bounded by the
    /// send timeout: no deadline runs for it.
    func armDeadline(_ ex: Exchange, now: UInt64) {
        guard ex.awaitingAnswer, ex.deadline == 0, !ex.responseEnded,
              ex.windowFrames > 0 && ex.windowBytes > 0 || ex.starvedByLoop else { return }
        let t = limits.requestTimeoutNanos(world: ex.route.world)
        ex.deadline = t == 0 ? 0 : now &+ t
    }

    func checkTimers(_ ex: Exchange, now: UInt64, bodyLimit: UInt64) {
        if ex.deadline != 0 && now > ex.deadline {
            timedOut(ex)
        } else if stalledBody(ex, now: now, limit: bodyLimit) {
            bodyTimedOut(ex)
        }
    }

    /// The deadline passed. If the instance had a window to answer in, it did not: the broker hears `timeout`
    /// (the instance's outlier score) and the client 504 `instance_timeout`. If the gateway held the stream at
    /// no window (the loop's output budget spent), the gateway is the one that could not serve: 503
    /// `overloaded`, and the instance is not blamed. (An error event or a reset when the reply was streaming.)
    func timedOut(_ ex: Exchange) {
        ex.deadline = 0
        let ms = limits.requestTimeoutNanos(world: ex.route.world) / 1_000_000
        let retry = [("retry-after", "\(limits.retryAfterSeconds)")]
        if ex.windowFrames > 0 && ex.windowBytes > 0 {
            counters.requestTimeouts += 1
            detachBroker(ex, code: .timeout, reason: "no answer within the request deadline")
            fail(ex, GatewayError(.instanceTimeout,
                                  "the instance did not answer within \(ms) ms", headers: retry), retryable: true)
        } else {
            counters.overloadTimeouts += 1
            fail(ex, GatewayError(.overloaded,
                                  "the gateway had no room for the reply within \(ms) ms", headers: retry), retryable: true)
        }
    }

    func stalledBody(_ ex: Exchange, now: UInt64, limit: UInt64) -> Bool {
        !ex.requestEnded && !ex.responseEnded && (ex.kind == .message || ex.kind == .messageStream || ex.kind == .roomPublish)
            && now &- ex.lastBodyAt > limit
    }

    func bodyTimedOut(_ ex: Exchange) {
        counters.bodyTimeouts += 1
        // HTTP/1.1 cannot skip the rest of a body that may never come: the connection closes after the 408
        // (said first, so the close is counted as the timeout, not as the end of a non-keep-alive exchange).
        if ex.conn.proto != .http2 { ex.conn.finish(.bodyTimeout) }
        fail(ex, GatewayError(.requestTimeout,
                              "the request body stopped arriving for \(limits.bodyTimeoutMilliseconds) ms"))
    }

    /// Stops taking requests: HTTP/2 clients get GOAWAY, HTTP/1.1 connections close after their exchange.
    public func beginShutdown(now: UInt64) {
        shuttingDown = true
        for c in conns.values where !c.moving {
            c.goaway()
            markDirty(c)
        }
    }

    /// Closes every client connection once its queued output is written (the end of a shutdown).
    public func closeAll() {
        for c in conns.values where !c.closeAfterFlush && !c.moving {
            c.finish(.shutdown)
            markDirty(c)
        }
    }

    /// Whether nothing is in flight (for the drain at shutdown).
    public var idle: Bool { counters.openExchanges == 0 }
}
