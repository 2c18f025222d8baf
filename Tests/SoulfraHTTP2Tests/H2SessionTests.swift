import Testing
@testable import SoulfraHTTP2

/// Moves bytes between two sessions until neither has anything to send (bounded), at manual time `clock`.
func exchange(_ a: H2Session, _ b: H2Session, clock: UInt64 = 1_000_000_000) throws {
    for _ in 0..<100 {
        var moved = false
        try a.drainOutput { bytes in moved = true; try? b.receive(bytes, now: clock) }
        try b.drainOutput { bytes in moved = true; try? a.receive(bytes, now: clock) }
        if !moved { return }
    }
}

func body(_ events: [H2Event], stream: Int32) -> [UInt8] {
    events.flatMap { e -> [UInt8] in
        if case .data(stream, let d) = e { return d }
        return []
    }
}

let postHeaders = [
    H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "localhost"),
    H2Header(":path", "/v1/worlds/playground/messages"), H2Header("authorization", "Bearer sk-slfr_kids_x"),
    H2Header("content-type", "application/json"),
]

@Suite("HTTP/2 session over nghttp2, in memory")
struct H2SessionTests {
    @Test("a client POST reaches the server as events; the server's streamed response reaches the client")
    func requestResponse() throws {
        let server = try H2Session(role: .server)
        let client = try H2Session(role: .client)
        let id = try client.request(headers: postHeaders)
        let payload = Array(#"{"text":"hello"}"#.utf8)
        payload.withUnsafeBytes { client.send(stream: id, $0, end: true) }
        try exchange(client, server)
        let ev = server.takeEvents()
        guard case .headers(let sid, let h)? = ev.first else { Issue.record("no request headers: \(ev)"); return }
        #expect(sid == id)
        #expect(h.contains(H2Header(":path", "/v1/worlds/playground/messages")))
        #expect(h.contains(H2Header("authorization", "Bearer sk-slfr_kids_x")))
        #expect(body(ev, stream: sid) == payload)
        #expect(ev.contains(.endStream(stream: sid)))
        server.consume(stream: sid, bytes: payload.count)

        try server.respond(stream: sid, status: 200, headers: [H2Header("content-type", "text/event-stream")])
        for token in ["Hi", "! I'm", " Cal."] {
            Array("data: \(token)\n\n".utf8).withUnsafeBytes { server.send(stream: sid, $0) }
            try exchange(server, client)
        }
        server.send(stream: sid, UnsafeRawBufferPointer(start: nil, count: 0), end: true)
        try exchange(server, client)
        let got = client.takeEvents()
        guard case .headers(id, let rh)? = got.first else { Issue.record("no response headers: \(got)"); return }
        #expect(rh.first == H2Header(":status", "200"))
        #expect(String(decoding: body(got, stream: id), as: UTF8.self) == "data: Hi\n\ndata: ! I'm\n\ndata:  Cal.\n\n")
        #expect(got.contains(.endStream(stream: id)))
        #expect(got.contains(.closed(stream: id, code: 0)))
    }

    @Test("without consume the client is held at the window; consuming reopens it")
    func flowControlBackpressure() throws {
        let server = try H2Session(role: .server)
        let client = try H2Session(role: .client)
        let id = try client.request(headers: postHeaders)
        let big = [UInt8](repeating: 0x61, count: 200_000)
        big.withUnsafeBytes { client.send(stream: id, $0, end: true) }
        try exchange(client, server)
        var received = body(server.takeEvents(), stream: id).count
        #expect(received == 65_535, "the initial window, and not a byte more, until the server consumes")
        #expect(client.queuedBytes(stream: id) == 200_000 - 65_535)
        // The gateway consumes as the broker accepts; the client is released in step.
        var rounds = 0
        while received < big.count && rounds < 100 {
            server.consume(stream: id, bytes: 65_535)
            try exchange(client, server)
            received += body(server.takeEvents(), stream: id).count
            rounds += 1
        }
        #expect(received == big.count)
    }

    @Test("garbage instead of the client preface is a connection error, never a crash")
    func garbagePreface() throws {
        let server = try H2Session(role: .server)
        let junk = Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        #expect(throws: H2Error.self) { try junk.withUnsafeBytes { try server.receive($0, now: 0) } }
    }

    @Test("RST_STREAM and GOAWAY reach the other side as events")
    func resetAndGoaway() throws {
        let server = try H2Session(role: .server)
        let client = try H2Session(role: .client)
        let id = try client.request(headers: postHeaders)
        try exchange(client, server)
        _ = server.takeEvents()
        server.reset(stream: id, code: 0x8)  // CANCEL
        server.goaway()
        try exchange(server, client)
        let ev = client.takeEvents()
        #expect(ev.contains(.closed(stream: id, code: 0x8)))
        #expect(ev.contains { if case .goaway = $0 { true } else { false } })
    }

    @Test("rapid reset (CVE-2023-44487): a client that opens and cancels streams past the budget gets GOAWAY ENHANCE_YOUR_CALM")
    func rapidReset() throws {
        var settings = H2Settings()
        settings.resetBurst = 50
        settings.resetsPerSecond = 10
        let server = try H2Session(role: .server, settings: settings)
        let client = try H2Session(role: .client)
        try exchange(client, server)
        var refused = false
        // The attack: HEADERS, then RST_STREAM at once, again and again (nghttp2 drops a request reset before
        // it was sent, so each HEADERS is flushed first).
        func toServer() throws {
            var bytes: [UInt8] = []
            try client.drainOutput { bytes.append(contentsOf: $0) }
            try bytes.withUnsafeBytes { try server.receive($0, now: 1_000_000_000) }
        }
        for _ in 0..<200 where !refused {
            let id = try client.request(headers: postHeaders, endStream: true)
            try toServer()
            client.reset(stream: id, code: 0x8)
            do {
                try toServer()
            } catch {
                #expect((error as? H2Error) == .rapidReset)
                refused = true
            }
        }
        #expect(refused, "the budget ran out")
        #expect(server.resetsReceived == 51, "50 allowed, the 51st refused")
        var goaway: [UInt8] = []
        try server.drainOutput { goaway.append(contentsOf: $0) }
        try? goaway.withUnsafeBytes { try client.receive($0, now: 0) }
        let calm = client.takeEvents().contains { if case .goaway(_, 0xB) = $0 { true } else { false } }
        #expect(calm, "the client saw GOAWAY with ENHANCE_YOUR_CALM (0xb)")
    }

    @Test("resets within the budget are fine, and the budget refills with time")
    func resetsWithinBudget() throws {
        var settings = H2Settings()
        settings.resetBurst = 5
        settings.resetsPerSecond = 5
        let server = try H2Session(role: .server, settings: settings)
        let client = try H2Session(role: .client)
        var clock: UInt64 = 1_000_000_000
        try exchange(client, server, clock: clock)
        for round in 0..<4 {
            var ids: [Int32] = []
            for _ in 0..<5 { ids.append(try client.request(headers: postHeaders, endStream: true)) }
            try exchange(client, server, clock: clock)
            for id in ids { client.reset(stream: id, code: 0x8) }
            try exchange(client, server, clock: clock)
            clock += 1_000_000_000  // one second: five more allowed
            #expect(server.resetsReceived == UInt64(5 * (round + 1)))
        }
    }
}
