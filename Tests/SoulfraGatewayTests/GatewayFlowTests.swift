import SoulfraLimits
import Testing
import SoulfraHTTP2
import SoulfraWire
@testable import SoulfraGateway

/// Flow between clients, the gateway and the world that the budgets must not break: no deadlock, no lost
/// window, no stream that waits for ever.
@Suite("Gateway: flow under budgets (sans-IO)")
struct GatewayFlowTests {
    @Test("a request starved by the loop's budget (others hold it) gets 503 overloaded at its deadline; the instance is not blamed")
    func starvedByLoop() throws {
        var limits = GatewayLimits()
        limits.requestTimeoutMilliseconds = 200
        limits.outputBudgetBytes = 256 << 10  // the loop's budget is one connection's
        let h = GatewayHarness(limits: limits)
        _ = try h.connect(1, reads: false)
        for _ in 0..<16 { try h.post(1, ssePath, body: sseBody) }
        h.world = eventWorld(events: 1_000, size: 1_000)
        h.settle()
        // A client that reads asks while the one that does not holds the loop's whole budget.
        let b = try h.connect(2)
        let id = try h.post(2, ssePath, body: #"{"text":"unary"}"#)
        h.settle()
        let waiting = h.streams.keys.max()!
        #expect(h.streams[waiting]?.windowBytes == 0, "the stream had a window after all")
        for _ in 0..<3 {
            h.now += 100_000_000
            h.gateway.tick(now: h.now)
            h.settle()
        }
        #expect(b.status(id) == "503")
        #expect(String(decoding: b.body(id), as: UTF8.self).contains("\"overloaded\""))
        #expect(h.gateway.counters.overloadTimeouts == 1)
        #expect(h.gateway.counters.requestTimeouts == 0)
        #expect(h.streams[waiting]?.closeCode != .timeout, "the instance was blamed for the gateway's stall")
    }

    @Test("an HTTP/2 room subscriber whose stream queue passes the connection's budget still reads the client's WINDOW_UPDATEs")
    func roomSubscriberKeepsReading() throws {
        var limits = GatewayLimits()
        limits.connectionOutputHighBytes = 16 << 10
        let h = GatewayHarness(limits: limits)
        let c = try h.connect(1)
        let id = try h.get(1, "/v1/worlds/playground/rooms/lobby")
        h.settle()
        let sid = try #require(h.subscriptions.first)
        // The broker fans 100 KiB of room events out at once (rooms are not under credit: slow subscribers are
        // cut at `roomSubscriberOutputBytes`): more than the client's 64 KiB stream window and the budget.
        let event = [UInt8](repeating: 0x61, count: 1_024)
        for _ in 0..<100 { event.withUnsafeBytes { FrameWriter.data(h.worldOut, stream: sid, payload: $0) } }
        for _ in 0..<200 where h.turn() {}
        #expect(c.status(id) == "200")
        let body = c.body(id)
        let events = zip(body, body.dropFirst()).filter { $0 == (0x0A, 0x0A) }.count
        #expect(events == 100, "\(events) of 100 room events reached the client")
        #expect(h.unread[1] == nil, "the gateway stopped reading its client")
    }

    @Test("request bytes of a stream that fails go back to the HTTP/2 connection's window")
    func failedUploadReturnsWindow() throws {
        let h = GatewayHarness(streamCreditBytes: 4_096)  // the world takes 4 KiB of each upload, then stops
        let c = try h.connect(1)
        h.settle()
        let path = "/v1/worlds/playground/streams"
        func open() throws -> Int32 {
            try c.h2.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                       H2Header(":path", path), H2Header("authorization", "Bearer \(h.key)")])
        }
        // Six uploads of 60 KiB each (360 KiB: more than the connection's window, four lines' worth) wait in
        // the gateway for the rest of their line; the world fails each stream meanwhile.
        let partial = [UInt8](repeating: 0x61, count: 60 << 10)
        for round in 0..<6 {
            let id = try open()
            partial.withUnsafeBytes { c.h2.send(stream: id, $0) }
            h.settle()
            let sid = try #require(h.streams.keys.max())
            FrameWriter.encode(.error(stream: sid, code: .internalError, reason: "instance failed")).withUnsafeBytes { h.worldOut.append($0) }
            h.settle()
            #expect(c.events.contains(.endStream(stream: id)) || c.status(id) != nil, "round \(round): the stream never ended")
        }
        // A seventh upload still gets through whole.
        h.worldGrantsBack = true
        let id = try open()
        let line = Array((#"{"t":""# + String(repeating: "l", count: 40 << 10) + "\"}\n").utf8)
        line.withUnsafeBytes { c.h2.send(stream: id, $0, end: true) }
        h.settle()
        let sid = try #require(h.streams.keys.max())
        #expect(h.streams[sid]?.request.count == line.count - 1, "the connection's window was not given back")
    }
}

@Suite("Gateway: why connections end (sans-IO)")
struct GatewayCloseTests {
    @Test("every connection that ends is counted once, by the first reason it was given")
    func closeReasons() throws {
        var limits = GatewayLimits()
        limits.idleTimeoutMilliseconds = 1_000
        limits.headerTimeoutMilliseconds = 500
        let h = GatewayHarness(limits: limits)
        h.connectRaw(1)
        h.rawSend(1, Array("GARBAGE\r\n\r\n".utf8))
        h.connectRaw(2)
        h.rawSend(2, Array("GET /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8))
        _ = try h.connect(3)
        h.connectRaw(4)
        h.rawSend(4, Array("GET / HTT".utf8))
        h.connectRaw(5)
        h.settle()
        h.gateway.closed(conn: 5, now: h.now)  // the loop saw the client go
        for _ in 0..<20 {
            h.now += 100_000_000
            h.gateway.tick(now: h.now)
            h.settle()
        }
        let closes = h.gateway.counters.closes
        func count(_ r: CloseReason) -> UInt64 { closes[r.rawValue] }
        #expect(count(.protocolError) == 1)
        #expect(count(.finished) == 1)
        #expect(count(.headerTimeout) == 1)
        #expect(count(.idleTimeout) == 1)
        #expect(count(.clientClosed) == 1)
        #expect(closes.reduce(0, +) == 5, "\(closes)")
        #expect(h.transport.closed == [1, 2, 3, 4])
        let text = h.gateway.counters.prometheusText()
        #expect(text.contains(#"soulfra_gateway_closes_total{reason="idle_timeout"} 1"#))
    }

    @Test("a connection on its way to another loop is never paused or resumed through its old slot")
    func movingConnectionKeepsHandsOff() {
        let h = GatewayHarness(loopCount: 2)
        h.connectRaw(1)
        h.rawSend(1, Array("GET /v1/worlds/playground/nothing HTTP/1.1\r\nHost: t\r\n\r\n".utf8))
        h.settle()
        let c = h.connection(1)!
        #expect(c.quiescent, "the connection did not come to rest")
        c.markMoving()
        // Its slot may already serve another connection: nothing may be said about slot 1 any more.
        c.pauseReading(.outputFull)
        h.gateway.applyPendingReading()
        h.gateway.flush(now: h.now)
        #expect(!h.transport.paused.contains(1), "a moving connection paused its old slot")
    }

    @Test("a connection closing after its reply whose client never takes it is counted as a send timeout")
    func abortOverridesReason() {
        var limits = GatewayLimits()
        limits.sendTimeoutMilliseconds = 1_000
        let h = GatewayHarness(limits: limits)
        h.connectRaw(1, reads: false)
        h.rawSend(1, Array("GET /v1/worlds/playground/nothing HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".utf8))
        h.settle()  // the 404 is queued and the connection is to close after it (finished), but nothing is read
        for _ in 0..<15 {
            h.now += 100_000_000
            h.gateway.tick(now: h.now)
            h.settle()
        }
        #expect(h.transport.aborted.contains(1))
        #expect(h.gateway.counters.closes[CloseReason.sendTimeout.rawValue] == 1)
        #expect(h.gateway.counters.closes[CloseReason.finished.rawValue] == 0)
    }
}

@Suite("Gateway: an exchange's lifecycle")
struct ExchangeLifecycleTests {
    static func exchange() -> (GatewayHarness, Exchange) {
        let h = GatewayHarness()
        h.connectRaw(1)
        let key = h.gateway.gatekeeper.table.byDigest.values.first!
        let ex = Exchange(id: 1, conn: h.connection(1)!, route: .messages(world: "playground"), key: key,
                          rate: RateLimitState(limit: 0, remaining: 0, resetSeconds: 0), kind: .message, requestID: "r-1",
                          startedAt: 0, session: "", ndjson: false, usage: h.gateway.ledger.cell(for: key), world: h.gateway.ledger.cell(world: "playground"))
        return (h, ex)
    }

    @Test("the reply and the request only move forward; a retry sends the request again")
    func forwardOnly() {
        let (_, ex) = Self.exchange()
        #expect(!ex.responded && !ex.requestEnded)
        ex.advance(request: .forwarded)
        ex.advance(request: .received)
        #expect(ex.sentEnd, "the request moved back")
        ex.resend()
        #expect(ex.requestEnded && !ex.sentEnd)
        ex.advance(reply: .ended)
        ex.advance(reply: .started)
        #expect(ex.responded && ex.responseEnded && !ex.retired)
        ex.advance(reply: .retired)
        #expect(ex.retired)
    }

    @Test("retiring an exchange whose reply has not ended stops the process")
    func retireBeforeEnd() async {
        await #expect(processExitsWith: .failure) {
            let (_, ex) = ExchangeLifecycleTests.exchange()
            ex.advance(reply: .started)
            ex.advance(reply: .retired)
        }
    }

    @Test("a retry after the reply started stops the process")
    func retryAfterReply() async {
        await #expect(processExitsWith: .failure) {
            let (_, ex) = ExchangeLifecycleTests.exchange()
            ex.advance(request: .forwarded)
            ex.advance(reply: .started)
            ex.resend()
        }
    }
}
