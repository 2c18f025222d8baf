import SoulfraLimits
import SoulfraVault
import SoulfraWire

/// Requests: admission, bodies and messages from the client, and the broker streams they ride on.
extension Gateway {
    /// A request head arrived (`id`: the HTTP/2 stream, or the HTTP/1.1 request's sequence number).
    func begin(_ c: Connection, id: Int32, head: RequestHead, now: UInt64) {
        let requestID = nextRequestID()
        // A client waiting for 100 Continue may never send the body of a refused request: close after
        // answering rather than wait for it.
        if head.expectContinue { c.keepAlive(false) }
        if shuttingDown {
            return reject(c, id: id, GatewayError(.shuttingDown, "the gateway is shutting down",
                                                  headers: [("retry-after", "\(limits.retryAfterSeconds)")]), requestID: requestID, head: head)
        }
        var path = head.path
        var queryToken: String?
        var query: Substring = ""
        if let q = path.utf8.firstIndex(of: UInt8(ascii: "?")) {
            query = path[path.index(after: q)...]
            for pair in query.split(separator: "&") where pair.hasPrefix("access_token=") {
                queryToken = String(pair.dropFirst("access_token=".count))
            }
            path = String(path[..<q])
        }
        if head.method == "OPTIONS" { return preflight(c, id: id, head: head, path: path, requestID: requestID) }
        let cors = head.origin.isEmpty ? nil : self.cors.allow(origin: head.origin, world: String(Self.worldOfPath(path)))
        let admission = gatekeeper.admit(method: head.method, path: path, authorization: head.authorization,
                                         queryToken: queryToken, now: now, unixSeconds: unixSeconds, cache: &c.admissionCache)
        let route: Route, key: KeyRecord, rate: RateLimitState
        switch admission {
        case .reject(let e):
            return reject(c, id: id, e, requestID: requestID, cors: cors, head: head)
        case .admit(let r, let k, let s):
            (route, key, rate) = (r, k, s)
        }
        guard head.session.isEmpty || Route.validSession(head.session) else {
            return reject(c, id: id, invalidSession, requestID: requestID, cors: cors, head: head)
        }
        let wantsSSE = containsASCII(head.accept, "text/event-stream")
        let wantsNDJSON = containsASCII(head.accept, "application/x-ndjson")
        let kind: ExchangeKind
        switch exchangeKind(route, c, head: head, wantsSSE: wantsSSE, cors: cors) {
        case .failure(let e): return reject(c, id: id, e, requestID: requestID, cors: cors, head: head)
        case .success(let k): kind = k
        }
        if head.expectContinue {
            c.keepAlive(head.keepAlive)
            c.sendContinue()
        }
        let page: (after: UInt64, limit: Int), resumeAfter: UInt64?
        switch Self.positions(kind: kind, head: head, query: query) {
        case .failure(let e): return reject(c, id: id, e, requestID: requestID, cors: cors, head: head)
        case .success(let p): (page, resumeAfter) = p
        }
        var session = head.session
        if case .session(_, let s) = route { session = s }
        let ex = Exchange(id: id, conn: c, route: route, key: key, rate: rate, kind: kind, requestID: requestID,
                          startedAt: now, session: session, ndjson: kind == .stream || wantsNDJSON && !wantsSSE,
                          usage: ledger.cell(for: key), world: ledger.cell(world: route.world))
        // A stream opened with no interaction left to spend is refused at once.
        if kind.isConversation, let e = budgetSpent(key) { return reject(c, id: id, e, requestID: requestID, cors: cors, head: head) }
        ex.corsOrigin = cors
        ex.method = head.method
        ex.target = head.path
        (ex.historyAfter, ex.historyLimit) = page
        ex.resumeAfter = resumeAfter
        if case .users(_, let rest) = route { ex.resourceDetail = "users \(head.method) \(rest)" }
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
        case .history:
            openHistory(ex, now: now)
        case .webSocket:
            c.upgradeToWebSocket()
            c.writeH1Head(status: 101, headers: [("upgrade", "websocket"), ("connection", "Upgrade"),
                                                 ("sec-websocket-accept", head.webSocketAccept!), ("x-request-id", requestID)],
                          contentLength: nil, keepAlive: true)
            ex.advance(reply: .started)
            ex.status = 101
            counted(status: 101, code: nil)
            openBroker(ex, now: now)
        }
    }

    /// What kind of exchange a route is, or why it is refused here.
    func exchangeKind(_ route: Route, _ c: Connection, head: RequestHead, wantsSSE: Bool, cors: String?) -> Result<ExchangeKind, GatewayError> {
        switch route {
        case .messages: return .success(wantsSSE ? .messageStream : .message)
        case .streams: return .success(.stream)
        case .webSocket(let world):
            guard c.proto == .http1, head.webSocketAccept != nil else {
                // HTTP/2 forbids connection-specific fields such as Upgrade (RFC 9113 §8.2.2): there the 426
                // says what to do in its body only.
                return .failure(GatewayError(.upgradeRequired, "this route is a WebSocket: send an HTTP/1.1 GET with Upgrade: websocket",
                                             headers: c.proto == .http2 ? [] : [("upgrade", "websocket")]))
            }
            // Browsers send their page's origin on a WebSocket and apply no CORS to it: a world that names its
            // origins refuses the others here.
            if !head.origin.isEmpty && cors == nil && self.cors.restricts(world) {
                return .failure(GatewayError(.originNotAllowed, "origin \(head.origin) may not open a WebSocket to world \"\(world)\""))
            }
            return .success(.webSocket)
        case .room(_, _, let publish): return .success(publish ? .roomPublish : .roomSubscribe)
        case .session: return .success(.history)
        case .users: return .success(.message)  // answered by an instance, in one JSON reply
        case .analytics(let world):
            guard analytics[world] != nil else {
                return .failure(GatewayError(.analyticsUnavailable, "no analytics for \(world) yet: a world's figures are rolled up every few seconds",
                                             headers: [("retry-after", "\(limits.retryAfterSeconds)")]))
            }
            return .success(.message)  // answered here, from the control plane's roll-up, once the request is in
        }
    }

    /// Where in a session the request starts: a history page's cursor (`after`, `limit`), or the event a
    /// resuming stream saw last (`Last-Event-ID` or `?after=`).
    static func positions(kind: ExchangeKind, head: RequestHead, query: Substring)
        -> Result<(page: (after: UInt64, limit: Int), resumeAfter: UInt64?), GatewayError> {
        if kind == .history {
            guard let p = historyQuery(query) else {
                return .failure(GatewayError(.invalidRequest, "after must be a whole number and limit 1 to \(VaultRequest.maxLimit)"))
            }
            return .success((p, nil))
        }
        guard kind.streamsReply && kind != .roomSubscribe && (!head.lastEventID.isEmpty || query.contains("after=")) else {
            return .success(((0, 100), nil))
        }
        var after: UInt64?
        if !head.lastEventID.isEmpty { after = UInt64(head.lastEventID) }
        for pair in query.split(separator: "&") where pair.hasPrefix("after=") { after = UInt64(pair.dropFirst(6)) }
        guard let after else { return .failure(GatewayError(.invalidRequest, "Last-Event-ID and after= take an event's sequence number")) }
        return .success(((0, 100), after))
    }

    func reject(_ c: Connection, id: Int32, _ e: GatewayError, requestID: String, cors: String? = nil, head: RequestHead? = nil) {
        if let head { logRefusal(c, head: head, e, requestID: requestID, now: now) }
        // HTTP/1.1: the refused request's body is read and dropped; a connection that is not kept does not wait
        // for a body the client may never send.
        if c.proto != .http2 { c.discardRequestBody() }
        c.respondError(id, e, requestID: requestID, cors: cors)
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
            c.consumeInput(stream: ex.id, bytes: bytes.count)
            ex.discarded += bytes.count
            if ex.discarded > limits.maxBodyBytes { c.resetStream(ex.id, code: 8) }  // CANCEL
            return
        }
        ex.lastBodyAt = now
        ex.usage.usage.bytesIn &+= UInt64(bytes.count)
        switch ex.kind {
        case .message, .messageStream, .roomPublish:
            c.consumeInput(stream: ex.id, bytes: bytes.count)
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
            guard chargeMessages(ex) else { return }
            pumpOutbound(ex, now: now)
            // HTTP/2 input is held back by its flow-control window; HTTP/1.1 input by not reading the socket.
            if c.proto == .http1 && ex.outboundBytes > limits.streamQueueHighBytes { c.pauseReading(.requestBacklog) }
        case .webSocket, .roomSubscribe, .history:
            c.consumeInput(stream: ex.id, bytes: bytes.count)
        }
    }

    func requestEnd(_ ex: Exchange, now: UInt64) {
        ex.advance(request: .received)
        switch ex.kind {
        case .message, .messageStream:
            if ex.resourceDetail != nil { return openBroker(ex, now: now) }  // the instance reads the body
            if case .analytics(let world) = ex.route {
                let body = analytics[world] ?? Array("{}".utf8)
                ex.usage.usage.bytesOut &+= UInt64(body.count)
                return finishUnary(ex, status: 200, body: body, now: now)
            }
            guard let fields = MessageFields.scan(ex.body) else {
                return fail(ex, GatewayError(.invalidRequest, "the body must be a JSON object"))
            }
            if let e = chargeInteraction(ex) { return fail(ex, e) }
            if fields.stream { ex.kind = .messageStream }
            if ex.session.isEmpty {
                guard fields.session.isEmpty || Route.validSession(fields.session) else { return fail(ex, invalidSession) }
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
                ex.messagesIn &+= 1
                ex.partialLine = []
                ex.lineCost = 0
                guard chargeMessages(ex) else { return }
            }
            ex.outboundEnds = true
            pumpOutbound(ex, now: now)
        case .webSocket, .roomSubscribe, .history:
            break
        }
    }

    /// Part of a WebSocket message from the client, as it arrives: it goes to the world as DATA flagged MORE
    /// until the message's last part (so a message of any size up to the limit travels under credit).
    func webSocketData(_ ex: Exchange, _ bytes: UnsafeRawBufferPointer, binary: Bool, last: Bool, now: UInt64) {
        if bytes.count == 0 && !last { return }
        ex.usage.usage.bytesIn &+= UInt64(bytes.count)
        if last {
            ex.messagesIn &+= 1
            guard chargeMessages(ex) else { return }
        }
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
                     "a session id is 1-64 characters of a-z, 0-9, - and _, not starting with _")
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
        let detail = ex.resourceDetail ?? ex.resumeAfter.map { "\(ex.kind.detail) after=\($0)" } ?? ex.kind.detail
        ex.brokerStream = link.peer.open(Open(target: .instance, keyID: ex.key.id, world: ex.route.world,
                                                 session: ex.session, detail: detail, window: window))
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
        if consumed > 0, ex.conn.proto == .http2 {
            ex.conn.consumeInput(stream: ex.id, bytes: consumed)
            ex.inputHeld -= consumed
            precondition(ex.inputHeld >= 0, "more request bytes handed back than were held")
            markDirty(ex.conn)
        }
    }
}
