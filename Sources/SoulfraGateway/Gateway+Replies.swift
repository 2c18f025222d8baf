import SoulfraHTTP
import SoulfraHTTP2
import SoulfraWire

/// Replies: what the broker stream brings back, framed for the client; and how exchanges end.
extension Gateway {
    func startStreamedReply(_ ex: Exchange) {
        guard !ex.responded else { return }
        ex.advance(reply: .started)
        ex.status = 200
        let type = ex.ndjson ? "application/x-ndjson" : "text/event-stream"
        var headers = ex.replyHeaders(contentType: type, contentLength: nil)
        if !ex.ndjson { headers.append(H2Header("cache-control", "no-cache")) }
        ex.conn.respond(ex.id, status: 200, headers: headers, body: UnsafeRawBufferPointer(start: nil, count: 0), end: false)
        counted(status: 200, code: nil)
        observeWorld(ex, now: now)
        markDirty(ex.conn)
    }

    /// The HTTP status a resource reply names in its first 48 bytes (`"status":201`); nil when it names none
    /// (an instance's error event: the gateway answers 502).
    static func replyStatus(_ payload: UnsafeRawBufferPointer) -> Int? {
        let key: [UInt8] = Array(#""status":"#.utf8)
        let end = min(payload.count, 48)
        guard end >= key.count + 3 else { return nil }
        for i in 0...(end - key.count - 3) where payload[i] == key[0] {
            guard (0..<key.count).allSatisfy({ payload[i + $0] == key[$0] }) else { continue }
            var v = 0
            for k in 0..<3 {
                let d = payload[i + key.count + k]
                guard d >= 0x30 && d <= 0x39 else { return nil }
                v = v * 10 + Int(d - 0x30)
            }
            return (200...599).contains(v) ? v : nil
        }
        return nil
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
            countReply(ex, payload)
            if end && !ex.responded {
                // The usual reply: one frame, answered from the broker's buffer with its length.
                finishUnary(ex, status: ex.resourceDetail == nil ? 200 : Self.replyStatus(payload) ?? 502, body: payload, now: now)
                return
            }
            // A reply in several frames streams to the client as it comes (nothing is held whole here).
            if !ex.responded {
                ex.advance(reply: .started)
                ex.status = 200
                c.respond(ex.id, status: 200, headers: ex.replyHeaders(contentType: "application/json", contentLength: nil),
                          body: UnsafeRawBufferPointer(start: nil, count: 0), end: false)
                counted(status: 200, code: nil)
            }
            if payload.count > 0 || end { c.sendBody(ex.id, payload, end: end) }
            if end {
                counters.observe(micros: (now &- ex.startedAt) / 1_000)
                observeWorld(ex, now: now)
                replyEnded(ex)
            }
        case .roomSubscribe:
            if c.queuedBytes > limits.roomSubscriberOutputBytes {
                counters.slowSubscribers += 1
                return fail(ex, GatewayError(.slowConsumer,
                                             "this subscriber fell too far behind the room"), retryable: true)
            }
            ex.usage.usage.bytesOut &+= UInt64(payload.count)
            deliver(ex, payload, more: false, binary: false, end: false)
        case .messageStream, .stream, .webSocket:
            ex.replyBytes += payload.count
            var body = payload
            var sequence: UInt64?
            if flags.contains(.sequenced) && !ex.replyMidMessage {
                // The event's sequence number leads its first frame: the SSE id, then stripped.
                guard payload.count >= 8 else {
                    return fail(ex, GatewayError(.badGateway, "a sequenced message's first frame is shorter than its sequence number"))
                }
                sequence = payload.loadUnaligned(as: UInt64.self).bigEndian
                body = UnsafeRawBufferPointer(rebasing: payload[8...])
            }
            countReply(ex, body)
            deliver(ex, body, more: more, binary: flags.contains(.binary), end: end, sequence: sequence)
        case .roomPublish:
            break
        case .history:
            ex.usage.usage.bytesOut &+= UInt64(payload.count)
            historyData(ex, payload, flags: flags)
        }
        reconcile(c)
        markDirty(c)
    }

    /// Writes one message, or a part of one, to the client in the exchange's framing. `more`: the message goes
    /// on in the next DATA; `end`: the reply is over.
    func deliver(_ ex: Exchange, _ payload: UnsafeRawBufferPointer, more: Bool, binary: Bool, end: Bool, sequence: UInt64? = nil) {
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
                if first, let sequence { frameScratch.append(contentsOf: "id: \(sequence)\n".utf8) }
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
        ex.status = UInt16(status)
        ex.deadline = 0
        ex.conn.respond(ex.id, status: status, headers: ex.replyHeaders(contentType: "application/json", contentLength: body.count),
                        body: body, end: true)
        counted(status: status, code: nil)
        counters.observe(micros: (now &- ex.startedAt) / 1_000)
        observeWorld(ex, now: now)
        replyEnded(ex)
        markDirty(ex.conn)
    }

    /// The reply is complete: the exchange is done once the broker stream is too.
    func replyEnded(_ ex: Exchange) {
        ex.advance(reply: .ended)
        ex.deadline = 0
        if ex.brokerStream != 0 && (ex.kind == .message || ex.kind == .roomPublish || ex.kind == .history) {
            // Unary: the instance ended its side. With both ENDs the stream is over and nothing needs saying;
            // otherwise the rest of the request is not wanted.
            detachBroker(ex, code: .none, reason: "", tellBroker: !ex.sentEnd)
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
            if ex.kind == .history {
                finishHistory(ex)
                retire(ex)
                markDirty(ex.conn)
                return
            }
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
        case .noRoute where ex.kind == .history, .wrongLoop where ex.kind == .history:
            e = GatewayError(.vaultUnavailable, "no vault is attached for \"\(ex.route.world)\"",
                             headers: [("retry-after", "\(limits.retryAfterSeconds)")])
            retryable = true
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
            ex.status = UInt16(e.status)
            if c.proto != .http2 && !ex.requestEnded { c.keepAlive(false) }
            c.respondError(ex.id, e, requestID: ex.requestID, cors: ex.corsOrigin)
        } else if !ex.responseEnded {
            counters.count(e.code)
            if ex.kind == .message {
                // A unary reply already streaming: cut it off rather than append an error to its body.
                c.resetExchange(ex.id, code: 2, closing: .replyCutOff)  // INTERNAL_ERROR
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
        if ex.status == 0 { ex.status = 499 }  // the client went away before an answer
        detachBroker(ex, reason: reason)
        ex.advance(reply: .ended)
        retire(ex)
    }

    /// Ends the exchange's broker stream (CLOSE with `code`; a room subscription is unsubscribed) and forgets it.
    /// `tellBroker: false` when the stream is already over at the broker (both sides sent END).
    func detachBroker(_ ex: Exchange, code: ErrorCode = .cancelled, reason: String, tellBroker: Bool = true) {
        guard ex.brokerStream != 0 else { return }
        let link = links[ex.link]
        link.exchanges.removeValue(forKey: ex.brokerStream)
        if !tellBroker {
            // Nothing to say.
        } else if ex.kind == .roomSubscribe {
            link.peer.unsubscribe(ex.brokerStream)
        } else {
            link.peer.closeStream(ex.brokerStream, code: code, reason: reason)
        }
        ex.brokerStream = 0
    }

    /// Forgets a finished exchange.
    func retire(_ ex: Exchange) {
        guard !ex.retired else { return }
        logAccess(ex)
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
            c.consumeInput(stream: ex.id, bytes: ex.inputHeld)
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
}
