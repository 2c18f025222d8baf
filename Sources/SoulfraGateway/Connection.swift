import SoulfraHTTP
import SoulfraHTTP2
import SoulfraKeys
import SoulfraTLS
import SoulfraWire

/// Why a client connection is not being read. Reading resumes when the set is empty.
struct ReadPauses: OptionSet {
    let rawValue: UInt8
    /// Request input waits for broker credit (an HTTP/1.1 stream body, WebSocket messages).
    static let requestBacklog = ReadPauses(rawValue: 1 << 0)
    /// Pipelined HTTP/1.1 requests wait behind the one being answered.
    static let pipelineBacklog = ReadPauses(rawValue: 1 << 1)
    /// The gateway's own replies to this client (pongs, errors) passed its budget: the client is not reading them.
    static let outputFull = ReadPauses(rawValue: 1 << 2)
}

/// One client connection: TLS (optional), then HTTP/1.1, HTTP/2 or (after an upgrade) WebSocket. Sans-IO:
/// bytes in through `receive`, bytes out in `out`, which the gateway hands to the loop.
final class Connection {
    enum Proto { case sniffing, http1, http2, webSocket }

    /// The loop's slot id and the gateway serving it; both change when the connection moves to another loop.
    private(set) var id: UInt32
    private(set) unowned var gateway: Gateway
    private(set) var proto: Proto = .sniffing
    var sniffer = ProtocolSniffer()
    var tls: TLSConnection?
    var plain: [UInt8] = []
    var h2: H2Connection?
    var h1: HTTP1Parser
    /// HTTP/1.1 bytes received while a request is being answered (pipelining), parsed after it.
    var h1Stash: [UInt8] = []
    var h1Current: Exchange?
    var h1Sequence: Int32 = 0
    /// The current HTTP/1.1 request was refused: its body is read and dropped.
    var h1Discarding = false
    private(set) var h1KeepAlive = true
    var ws = WebSocketDecoder()
    var exchanges: [Int32: Exchange] = [:]
    var admissionCache = AdmissionCache()
    /// Bytes for the socket: what the loop is writing now and, behind it, what comes next.
    let output = SendQueue(tight: true)
    /// Where bytes for the socket are appended.
    @inline(__always) var out: ByteQueue { output.out }
    /// Plaintext waiting to be encrypted: gathered over a flush so TLS writes few, full records.
    let plainOut = ByteQueue(tight: true)
    private(set) var closeAfterFlush = false
    /// Why it is closing (set with `closeAfterFlush`, or by `abort`).
    private(set) var closeReason: CloseReason?
    private(set) var closed = false
    private(set) var readPauses: ReadPauses = []
    /// The client's address (for per-address budgets) and the HTTP/2 resets already charged to it.
    let address: ClientAddress?
    var resetsCharged: UInt64 = 0
    var headerFloodsCounted: UInt64 = 0
    // The gateway's bookkeeping for this connection (only `Gateway` writes these; kept here to avoid lookups).
    /// On the gateway's list of connections to flush.
    var inDirtyList = false
    /// What the transport was last told: reading paused (see `Gateway.applyReading`).
    var readingPaused = false
    /// The credit this connection's streams hold (client bytes), the part of it above their floors, and what
    /// the connection held at its last flush (its share of `Gateway.heldTotal`). See `Credit.swift`.
    var creditCost = 0
    var growthCost = 0
    var lastHeld = 0
    /// Streams whose window moved since the last flush, or that wait for credit (see `Gateway.grantCredit`).
    var creditWanted: [Exchange] = []
    /// On the gateway's `creditWaiters` list.
    var inCreditWaiters = false
    /// When pending output last moved (or there was none): the send timeout runs from here.
    private(set) var lastSendProgress: UInt64
    /// A WebSocket close frame was sent: nothing more goes out after it.
    var webSocketCloseSent = false
    /// The loop that owns the world this connection's requests go to (set per admitted request).
    var worldLoop = -1
    /// Moving to another loop: input is held in `heldInput` until the new loop adopts the connection.
    private(set) var moving = false
    private(set) var heldInput: [UInt8] = []
    var lastActive: UInt64
    /// A request head (or the HTTP/2 preface) must be complete by then; nil while none is awaited.
    var headDeadline: UInt64?

    init(id: UInt32, gateway: Gateway, tls: TLSConnection?, address: ClientAddress?, now: UInt64) {
        self.address = address
        self.id = id
        self.gateway = gateway
        self.tls = tls
        self.lastActive = now
        self.lastSendProgress = now
        var limits = HTTP1Limits()
        limits.maxBodyBytes = gateway.limits.maxBodyBytes
        limits.maxHeadBytes = Int(gateway.limits.maxHeaderListBytes)
        self.h1 = HTTP1Parser(limits: limits)
        self.ws = WebSocketDecoder(maxMessageBytes: gateway.limits.maxBodyBytes)
        self.headDeadline = now &+ UInt64(gateway.limits.headerTimeoutMilliseconds) * 1_000_000
    }

    /// Everything held for the client and not yet taken: send queues, TLS plaintext, HTTP/2 stream queues.
    var queuedBytes: Int { socketBytes + (h2?.queuedBytesTotal ?? 0) }
    /// Bytes on their way to the socket (not counting HTTP/2 stream queues).
    @inline(__always) var socketBytes: Int { output.count + plainOut.count }

    // MARK: - Input

    func receive(_ bytes: UnsafeRawBufferPointer, now: UInt64) {
        guard !closed && !closeAfterFlush else { return }
        if moving {
            heldInput.append(contentsOf: bytes)
            return
        }
        lastActive = now
        trimmed = false
        guard let tls else {
            feedPlain(bytes, now: now)
            return
        }
        do {
            try tls.receive(bytes)
            if !tls.handshakeComplete {
                let done = try tls.handshake()
                drainTLS()
                guard done else { return }
                if tls.alpn == "h2" { startH2() } else { proto = .http1 }
            }
            plain.removeAll(keepingCapacity: true)
            let r = try tls.read(into: &plain)
            if !plain.isEmpty { plain.withUnsafeBytes { feedPlain($0, now: now) } }
            if r == .closed { finish(.clientClosed) }
            drainTLS()
        } catch {
            if !tls.handshakeComplete { gateway.counters.tlsHandshakeFailures += 1 } else { gateway.counters.protocolErrors += 1 }
            drainTLS()
            finish(.tlsError)
        }
    }

    func feedPlain(_ bytes: UnsafeRawBufferPointer, now: UInt64) {
        switch proto {
        case .sniffing:
            guard let p = sniffer.feed(bytes) else { return }
            let seen = sniffer.bytes
            switch p {
            case .tls:
                // TLS on the cleartext port: there is no certificate here to answer with.
                gateway.counters.protocolErrors += 1
                finish(.protocolError)
            case .http2:
                gateway.counters.count(.h2)
                startH2()
                seen.withUnsafeBytes { feedH2($0, now: now) }
            case .http1:
                gateway.counters.count(.http1)
                proto = .http1
                seen.withUnsafeBytes { feedH1($0, now: now) }
            }
        case .http1: feedH1(bytes, now: now)
        case .http2: feedH2(bytes, now: now)
        case .webSocket: feedWebSocket(bytes, now: now)
        }
    }

    // MARK: - HTTP/2

    func startH2() {
        proto = .http2
        // The preface is in (cleartext: the sniffer waited for all of it) or the TLS handshake is done and ALPN
        // chose h2: from here an HTTP/2 connection with nothing in flight is bounded by the idle timeout, so
        // pre-warmed client pools are not cut at the header timeout. A request head stalled inside HTTP/2
        // holds no request state until it completes.
        headDeadline = nil
        var s = H2Settings()
        s.maxConcurrentStreams = gateway.limits.maxConcurrentStreams
        s.maxHeaderListBytes = gateway.limits.maxHeaderListBytes
        // A whole NDJSON line must fit a stream's window (its bytes are taken from the client only once the
        // line is complete and forwarded), and a few such lines the connection's.
        s.initialWindowBytes = UInt32(max(65_535, gateway.limits.maxLineBytes + 16))
        s.connectionWindowBytes = 4 * s.initialWindowBytes
        s.resetsPerSecond = gateway.limits.resetsPerSecond
        s.resetBurst = gateway.limits.resetBurst
        s.keptHeaders = [":method", ":path", "authorization", "accept", "x-soulfra-session", "last-event-id", "origin"]
        h2 = try? H2Connection(role: .server, settings: s)
        if h2 == nil { finish(.sessionFailed) }
    }

    func feedH2(_ bytes: UnsafeRawBufferPointer, now: UInt64) {
        guard let h2 else { return }
        do {
            try h2.receive(bytes, now: now)
        } catch {
            switch error {
            case .rapidReset: gateway.counters.rapidResetGoaways += 1
            case .streamIDRegression: gateway.counters.streamIDGoaways += 1; gateway.counters.protocolErrors += 1
            default: gateway.counters.protocolErrors += 1
            }
            _ = h2.takeViolation()
            handleH2Events(h2, now: now)
            finish(error == .rapidReset ? .resetFlood : .protocolError)
            return
        }
        countViolation(h2)
        if h2.headerFloods > headerFloodsCounted {
            gateway.counters.headerFloodResets += h2.headerFloods - headerFloodsCounted
            headerFloodsCounted = h2.headerFloods
        }
        // Resets count against the client's address too: reconnecting does not buy a fresh budget.
        if let address, h2.resetsReceived > resetsCharged {
            let n = h2.resetsReceived - resetsCharged
            resetsCharged = h2.resetsReceived
            if !gateway.addresses.chargeResets(address, n, gateway.limits, now: now) {
                gateway.counters.addressResetGoaways += 1
                h2.calmDown()
                finish(.resetFlood)
            }
        }
        handleH2Events(h2, now: now)
    }

    /// A protocol error nghttp2 found and answered with GOAWAY on its own: counted like the ones found here.
    func countViolation(_ h2: H2Connection) {
        if case .detected? = h2.takeViolation() {
            gateway.counters.protocolErrors += 1
            finish(.protocolError)
        }
    }

    func handleH2Events(_ h2: H2Connection, now: UInt64) {
        h2.drainEvents { e in
            switch e {
            case .headers(let stream, let headers):
                headDeadline = nil
                var head = RequestHead()
                for h in headers {
                    switch h.name {
                    case ":method": head.method = h.value
                    case ":path": head.path = h.value
                    case "authorization": head.authorization = h.value
                    case "accept": head.accept = h.value
                    case "x-soulfra-session": head.session = h.value
                    case "last-event-id": head.lastEventID = h.value
                    case "origin": head.origin = h.value
                    default: break
                    }
                }
                gateway.begin(self, id: stream, head: head, now: now)
            case .data(let stream, let bytes):
                if let ex = exchanges[stream] {
                    gateway.requestBody(ex, bytes, now: now)
                } else {
                    h2.consume(stream: stream, bytes: bytes.count)
                }
            case .endStream(let stream):
                if let ex = exchanges[stream] { gateway.requestEnd(ex, now: now) }
            case .closed(let stream, _):
                if let ex = exchanges.removeValue(forKey: stream) { gateway.cancel(ex, reason: "client closed the stream") }
                if exchanges.isEmpty { gateway.considerMove(self) }
            case .headersTooLarge(let stream):
                headDeadline = nil
                gateway.counters.protocolErrors += 1
                respondError(stream, GatewayError(.headersTooLarge,
                                                  "request headers are limited to \(gateway.limits.maxHeaderListBytes) bytes"),
                             requestID: gateway.nextRequestID())
            case .goaway:
                break
            }
        }
        if exchanges.isEmpty && headDeadline == nil { lastActive = now }
    }

    // MARK: - HTTP/1.1

    func feedH1(_ bytes: UnsafeRawBufferPointer, now: UInt64) {
        if h1Current != nil && !h1ReadingBody || !h1Stash.isEmpty {
            // Answering a request: later pipelined requests wait (bounded: reading pauses past the limit).
            h1Stash.append(contentsOf: bytes)
            if h1Stash.count > gateway.limits.maxBodyBytes + Int(gateway.limits.maxHeaderListBytes) { pauseReading(.pipelineBacklog) }
            return
        }
        let consumed = parseH1(bytes, now: now)
        guard consumed < bytes.count else { return }
        let rest = UnsafeRawBufferPointer(rebasing: bytes[consumed...])
        if proto == .webSocket { feedWebSocket(rest, now: now) } else { h1Stash.append(contentsOf: rest) }
    }

    /// Whether the parser is inside the current request's body (which keeps flowing while it is answered).
    var h1ReadingBody = false

    func parseH1(_ bytes: UnsafeRawBufferPointer, now: UInt64) -> Int {
        let n = h1.feed(bytes, onEvent: { event in
            switch event {
            case .head(let head):
                headDeadline = nil
                h1Sequence &+= 1
                h1KeepAlive = head.keepAlive
                h1ReadingBody = true
                var r = RequestHead(method: head.method, path: head.target, authorization: head.header("authorization"),
                                    accept: head.header("accept") ?? "", session: head.header("x-soulfra-session") ?? "")
                r.keepAlive = head.keepAlive
                r.lastEventID = head.header("last-event-id") ?? ""
                r.origin = head.header("origin") ?? ""
                r.expectContinue = head.body != .none && head.header("expect")?.lowercased() == "100-continue"
                if head.header("upgrade")?.lowercased() == "websocket" {
                    switch WebSocket.accept(head, sha1: SoulfraKeys.sha1) {
                    case .success(let accept): r.webSocketAccept = accept
                    case .failure(let e):
                        respondError(0, GatewayError(.badRequest, e.reason, status: e.status), requestID: gateway.nextRequestID())
                        h1Discarding = true
                        return true
                    }
                }
                h1Discarding = false
                gateway.begin(self, id: h1Sequence, head: r, now: now)
                if proto == .webSocket { return false }
            case .body(let b):
                if !h1Discarding, let ex = h1Current { gateway.requestBody(ex, b, now: now) }
            case .end:
                h1ReadingBody = false
                if !h1Discarding, let ex = h1Current { gateway.requestEnd(ex, now: now) }
                h1Discarding = false
                // The next request waits until this one is answered.
                if h1Current != nil || !h1KeepAlive { return false }
                headDeadline = now &+ UInt64(gateway.limits.headerTimeoutMilliseconds) * 1_000_000
            }
            return true
        }, onError: { e in
            gateway.counters.protocolErrors += 1
            let code: GatewayError.Code = e.status == 413 ? .payloadTooLarge : e.status == 431 ? .headersTooLarge : .badRequest
            if let ex = h1Current, ex.responded {
                finish(.protocolError)
            } else {
                if let ex = h1Current { gateway.cancel(ex, reason: "malformed request") ; h1Current = nil }
                h1KeepAlive = false
                respondError(0, GatewayError(code, e.reason, status: e.status), requestID: gateway.nextRequestID())
            }
            finish(.protocolError)
        })
        if !h1KeepAlive && h1Current == nil && !h1ReadingBody && h1.isClosed { finish(.finished) }
        return n
    }

    /// The current HTTP/1.1 exchange is answered: parse what was pipelined behind it.
    func h1Done(now: UInt64) {
        h1Current = nil
        guard !closed else { return }
        if !h1KeepAlive {
            finish(.finished)
            return
        }
        if h1ReadingBody { return }  // the rest of its body is still arriving
        headDeadline = now &+ UInt64(gateway.limits.headerTimeoutMilliseconds) * 1_000_000
        lastActive = now
        guard !h1Stash.isEmpty else {
            gateway.considerMove(self)
            return
        }
        let stash = h1Stash
        h1Stash.removeAll(keepingCapacity: true)
        let consumed = stash.withUnsafeBytes { parseH1($0, now: now) }
        if consumed < stash.count { h1Stash.insert(contentsOf: stash[consumed...], at: 0) }
        if h1Stash.count < gateway.limits.maxBodyBytes { resumeReading(.pipelineBacklog) }
    }

    /// An error answer in the JSON shape (design §5), on either protocol, counted by code. `id` is the
    /// HTTP/2 stream (ignored on HTTP/1.1).
    func respondError(_ id: Int32, _ e: GatewayError, requestID: String, cors: String? = nil) {
        var headers = [("content-type", "application/json"), ("x-request-id", requestID)] + e.headers
        if let cors { headers += CORSPolicy.headers(cors) }
        respond(id, status: e.status, headers: headers, body: Array(e.json(requestID: requestID).utf8), end: true)
        gateway.counted(status: e.status, code: e.code)
    }

    func writeH1Head(status: Int, headers: [(String, String)], contentLength: Int?, keepAlive: Bool) {
        if !keepAlive { h1KeepAlive = false }
        emit(HTTP1Response.head(status: status, fields: headers.map { ($0.0, $0.1) }, contentLength: contentLength, close: !keepAlive))
    }

    func writeH1Head(status: Int, headers: [H2Header], contentLength: Int?, keepAlive: Bool) {
        writeH1Head(status: status, headers: headers.map { ($0.name, $0.value) }, contentLength: contentLength, keepAlive: keepAlive)
    }

    // MARK: - WebSocket (after an HTTP/1.1 upgrade)

    func feedWebSocket(_ bytes: UnsafeRawBufferPointer, now: UInt64) {
        guard let ex = h1Current else { return }
        let failure = ws.feed(bytes) { event in
            switch event {
            case .data(let binary, let part, _, let last):
                gateway.webSocketData(ex, part, binary: binary, last: last, now: now)
            case .ping(let p):
                // Pongs count against this client's output budget like everything else (see `Gateway.flush`).
                emitWebSocketFrame(.pong, p)
            case .pong:
                break
            case .close(let code, _):
                // Echo the peer's code (RFC 6455 §5.5.1); a close without one is answered without one — 1005 is
                // never sent on the wire.
                if let code {
                    withUnsafeBytes(of: code.bigEndian) { emitWebSocketFrame(.close, $0) }
                } else {
                    emitWebSocketFrame(.close, UnsafeRawBufferPointer(start: nil, count: 0))
                }
                gateway.cancel(ex, reason: "client closed the WebSocket")
                h1Current = nil
                finish(.finished)
            }
        }
        if let failure {
            gateway.counters.protocolErrors += 1
            let why: String
            switch failure {
            case .invalidPayload: why = "text that is not UTF-8"
            case .messageTooBig: why = "message over \(ws.maxMessageBytes) bytes"
            default: why = "protocol error"
            }
            closeWebSocket(failure, why, because: .protocolError)
            if h1Current != nil { gateway.cancel(ex, reason: "WebSocket protocol error") }
            h1Current = nil
        }
    }

    /// One unmasked server frame: the header (2–10 bytes) built on the stack, then the payload. Nothing goes out
    /// after a close.
    func emitWebSocketFrame(_ opcode: WebSocket.Opcode, _ payload: UnsafeRawBufferPointer, fin: Bool = true) {
        guard !webSocketCloseSent else { return }
        if opcode == .close { webSocketCloseSent = true }
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 10) { h in
            h[0] = (fin ? 0x80 : 0) | opcode.rawValue
            var n = 2
            switch payload.count {
            case ..<126: h[1] = UInt8(payload.count)
            case ..<65_536:
                h[1] = 126
                h[2] = UInt8(payload.count >> 8)
                h[3] = UInt8(payload.count & 0xFF)
                n = 4
            default:
                h[1] = 127
                for i in 0..<8 { h[2 + i] = UInt8((UInt64(payload.count) >> UInt64(56 - 8 * i)) & 0xFF) }
                n = 10
            }
            emit(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: h[0..<n])))
        }
        emit(payload)
    }

    /// Sends a close frame with `code` and `reason` and closes once it is written.
    func closeWebSocket(_ code: WebSocket.CloseCode, _ reason: String, because why: CloseReason) {
        WebSocket.closePayload(code, reason).withUnsafeBytes { emitWebSocketFrame(.close, $0) }
        finish(why)
    }

    /// A message, or part of one, to the client: the first part carries the text/binary opcode, later parts
    /// are continuations; `fin` ends the message.
    func sendWebSocket(_ payload: UnsafeRawBufferPointer, binary: Bool, first: Bool, fin: Bool) {
        guard proto == .webSocket else { return }
        emitWebSocketFrame(first ? (binary ? .binary : .text) : .continuation, payload, fin: fin)
    }

    // MARK: - Responses

    /// Starts a response. `body` with `end` is a complete reply; otherwise the body streams through `sendBody`.
    func respond(_ id: Int32, status: Int, headers: [(String, String)], body: [UInt8], end: Bool) {
        var hs: [H2Header] = []
        hs.reserveCapacity(headers.count + 1)
        for (n, v) in headers { hs.append(H2Header(n, v)) }
        if end && proto == .http2 && status != 204 { hs.append(H2Header("content-length", String(body.count))) }
        body.withUnsafeBytes { respond(id, status: status, headers: hs, body: $0, end: end) }
    }

    /// The same with the header list ready (names lowercase; over HTTP/2 a complete reply's list already
    /// carries `content-length`, see `Exchange.replyHeaders`).
    func respond(_ id: Int32, status: Int, headers: [H2Header], body: UnsafeRawBufferPointer, end: Bool) {
        switch proto {
        case .http2:
            guard let h2 else { return }
            try? h2.respond(stream: id, status: status, headers: headers, endStream: end && body.isEmpty)
            if !body.isEmpty || !end { h2.send(stream: id, body, end: end) }
        case .http1, .sniffing:
            writeH1Head(status: status, headers: headers, contentLength: end ? body.count : nil, keepAlive: h1KeepAlive)
            if !body.isEmpty { end ? emit(body) : emitChunk(body) }
        case .webSocket:
            break
        }
    }

    /// More of a streamed reply; `end` finishes it.
    func sendBody(_ id: Int32, _ bytes: UnsafeRawBufferPointer, end: Bool) {
        switch proto {
        case .http2:
            h2?.send(stream: id, bytes, end: end)
        case .http1, .sniffing:
            if bytes.count > 0 { emitChunk(bytes) }
            if end { emit(Array("0\r\n\r\n".utf8)) }
        case .webSocket:
            // Messages go out through `sendWebSocket`; the end of the reply is the end of the WebSocket.
            if end { closeWebSocket(.normal, "", because: .finished) }
        }
    }

    /// One HTTP/1.1 chunk: hex size line, bytes, CRLF (the size line is built on the stack).
    func emitChunk(_ bytes: UnsafeRawBufferPointer) {
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 18) { line in
            var digits = 1, t = bytes.count >> 4
            while t > 0 { digits += 1; t >>= 4 }
            var v = bytes.count
            for k in stride(from: digits - 1, through: 0, by: -1) {
                line[k] = hexDigits[v & 0xF]
                v >>= 4
            }
            line[digits] = 0x0D
            line[digits + 1] = 0x0A
            emit(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: line[0..<(digits + 2)])))
        }
        emit(bytes)
        emit(Self.crlf)
    }

    static let crlf: [UInt8] = [0x0D, 0x0A]

    /// Bytes for the client (through TLS when there is TLS).
    func emit(_ bytes: [UInt8]) { bytes.withUnsafeBytes { emit($0) } }

    func emit(_ bytes: UnsafeRawBufferPointer) {
        guard bytes.count > 0 else { return }
        if tls != nil { plainOut.append(bytes) } else { out.append(bytes) }
    }

    /// Encrypts gathered plaintext and moves the records (and any handshake output) to `out`.
    func drainTLS() {
        guard let tls else { return }
        if !plainOut.isEmpty && tls.handshakeComplete {
            do { try tls.write(plainOut.readable) } catch { finish(.tlsError) }
            plainOut.removeAll()
        }
        tls.drainOutput { out.append($0) }
    }

    /// Output the gateway serializes ahead of what the client has taken: frames beyond it stay unserialized
    /// in nghttp2 (their bytes in the streams' queues) until the client reads.
    static let outputAhead = 8 << 10

    /// Moves HTTP/2 frames (and TLS records) into `out`, up to `outputAhead` bytes waiting.
    func produce() {
        if let h2 {
            do {
                try h2.drainOutput(limit: Self.outputAhead - out.count - plainOut.count) { emit($0) }
            } catch {
                gateway.counters.protocolErrors += 1
                finish(.protocolError)
            }
            countViolation(h2)
            // Streams close as their last frame is sent: see to them now, not on the next read.
            if h2.hasEvents { handleH2Events(h2, now: gateway.now) }
            if !h2.isActive { finish(.finished) }
        }
        drainTLS()
    }

    /// Stops reading the client for `reason` (reading resumes once no reason is left). The gateway tells the
    /// transport when it flushes the connection (`Gateway.applyReading`).
    func pauseReading(_ reason: ReadPauses) {
        guard !readPauses.contains(reason) else { return }
        readPauses.insert(reason)
        gateway.markDirty(self)
    }

    func resumeReading(_ reason: ReadPauses) {
        guard readPauses.contains(reason) else { return }
        readPauses.remove(reason)
        gateway.markDirty(self)
    }

    /// Ends the connection after what is queued has been written.
    /// Closes the connection once its queued output is written; the first reason given is the one counted.
    func finish(_ reason: CloseReason) {
        if closeReason == nil { closeReason = reason }
        closeAfterFlush = true
    }

    /// Buffers were given back after a quiet second (an idle connection keeps none); cleared by new input.
    var trimmed = false

    /// Gives back what a connection keeps for reuse once it has been quiet: its send buffers (when empty) and
    /// the HTTP/2 session's spare chunks.
    func trim() {
        trimmed = true
        h2?.trim()
        output.shrinkIfIdle()
        plainOut.shrinkIfEmpty()
        plain = []
    }

    /// The connection is over: the gateway closed it (or the loop saw it end). Returns why, the first time:
    /// the first reason it was given, unless `overriding` (an abort drops what was queued, whatever the
    /// connection was closing for).
    func markClosed(_ reason: CloseReason, overriding: Bool = false) -> CloseReason? {
        guard !closed else { return nil }
        closed = true
        if closeReason == nil || overriding { closeReason = reason }
        return closeReason
    }

    /// The connection leaves its gateway for another loop (`Gateway.collectMoves`).
    func markMoving() {
        precondition(quiescent, "a connection moved with work in flight")
        moving = true
    }

    /// Taken over by the gateway of another loop, in slot `conn` there.
    func adopted(by g: Gateway, conn: UInt32) -> [UInt8] {
        id = conn
        gateway = g
        admissionCache = AdmissionCache()  // key generations are per loop
        readPauses = []
        readingPaused = false
        moving = false
        defer { heldInput = [] }
        return heldInput
    }

    /// The last send wrote something (for the send timeout).
    func sendProgressed(now: UInt64) { lastSendProgress = now }

    /// A request admitted on this connection: an HTTP/2 stream, or the HTTP/1.1 request being answered.
    /// Its world's loop is where the connection belongs.
    func track(_ ex: Exchange, worldLoop: Int) {
        if proto == .http2 { exchanges[ex.id] = ex } else { h1Current = ex }
        self.worldLoop = worldLoop
    }

    /// Ends tracking every exchange (the connection closed); returns them for cancelling.
    func untrackAll() -> [Exchange] {
        var all = Array(exchanges.values)
        if let ex = h1Current { all.append(ex) }
        exchanges.removeAll()
        h1Current = nil
        return all
    }

    /// The HTTP/1.1 connection is a WebSocket from here on (after the 101).
    func upgradeToWebSocket() {
        precondition(proto == .http1, "a WebSocket upgrade on \(proto)")
        proto = .webSocket
    }

    /// HTTP/1.1: whether the connection stays open after the current request.
    func keepAlive(_ keep: Bool) { h1KeepAlive = keep }

    /// HTTP/1.1: the current request was refused; its body is read and dropped.
    func discardRequestBody() { h1Discarding = true }

    /// HTTP/2: `bytes` of stream `id`'s request were handed on (or dropped); the client may send as much more.
    /// (HTTP/1.1 has no window: reading is paused instead.)
    func consumeInput(stream id: Int32, bytes: Int) { h2?.consume(stream: id, bytes: bytes) }

    /// Ends one exchange's response early: HTTP/2 resets its stream with `code`; HTTP/1.1, which cannot say
    /// that mid-body, closes the connection for `closing`.
    func resetExchange(_ id: Int32, code: UInt32, closing: CloseReason) {
        if let h2 { h2.reset(stream: id, code: code) } else { finish(closing) }
    }

    /// HTTP/2: resets stream `id` (a request whose refused body kept coming). Nothing for HTTP/1.1.
    func resetStream(_ id: Int32, code: UInt32) { h2?.reset(stream: id, code: code) }

    /// HTTP/2: GOAWAY (no new streams; those open finish). Nothing for HTTP/1.1.
    func sendGoaway() { h2?.goaway() }

    /// HTTP/1.1 `Expect: 100-continue` granted: the client may send the body.
    func sendContinue() { emit(Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)) }

    /// Bytes queued in the HTTP/2 stream `id` (or, over HTTP/1.1, on the connection) not yet taken by the client.
    func unreadBytes(stream id: Int32) -> Int { h2?.queuedBytes(stream: id) ?? queuedBytes }

    /// Nothing in flight, nothing half-parsed, nothing unsent: the connection can change loops.
    var quiescent: Bool {
        guard !closed, !closeAfterFlush, exchanges.isEmpty, h1Current == nil, output.isEmpty, !output.inFlight,
              plainOut.isEmpty else { return false }
        switch proto {
        case .http1: return h1.isIdle && h1Stash.isEmpty && !h1ReadingBody
        case .http2: return h2.map { $0.isActive && !$0.wantsWrite } ?? false
        case .sniffing, .webSocket: return false
        }
    }

    /// Graceful shutdown: HTTP/2 GOAWAY; HTTP/1.1 closes after the current exchange.
    func goaway() {
        if let h2 { h2.goaway() } else if h1Current == nil { finish(.shutdown) } else { h1KeepAlive = false }
    }
}
