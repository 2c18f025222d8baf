import Testing
@testable import SoulfraHTTP2

/// Moves bytes between two sessions until neither has anything to send (bounded), at manual time `clock`.
func exchange(_ a: H2Connection, _ b: H2Connection, clock: UInt64 = 1_000_000_000) throws {
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
struct H2ConnectionTests {
    @Test("a client POST reaches the server as events; the server's streamed response reaches the client")
    func requestResponse() throws {
        let server = try H2Connection(role: .server)
        let client = try H2Connection(role: .client)
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
        let server = try H2Connection(role: .server)
        let client = try H2Connection(role: .client)
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
        let server = try H2Connection(role: .server)
        let junk = Array("GET / HTTP/1.1\r\nHost: a\r\n\r\n".utf8)
        #expect(throws: H2Error.self) { try junk.withUnsafeBytes { try server.receive($0, now: 0) } }
    }

    @Test("RST_STREAM and GOAWAY reach the other side as events")
    func resetAndGoaway() throws {
        let server = try H2Connection(role: .server)
        let client = try H2Connection(role: .client)
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
        let server = try H2Connection(role: .server, settings: settings)
        let client = try H2Connection(role: .client)
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
        let server = try H2Connection(role: .server, settings: settings)
        let client = try H2Connection(role: .client)
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

/// Raw HTTP/2 bytes for the attacks below (nghttp2's own client would never send them).
enum RawH2 {
    static let preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8) + frame(type: 0x4, flags: 0, stream: 0, [])

    static func frame(type: UInt8, flags: UInt8, stream: Int32, _ payload: [UInt8]) -> [UInt8] {
        let n = payload.count
        return [UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), type, flags,
                UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)] + payload
    }

    /// GET / with :authority t (static-table references and one literal).
    static let getBlock: [UInt8] = [0x82, 0x86, 0x84, 0x01, 0x01, 0x74]

    /// A header block split into HEADERS + CONTINUATION frames of at most 16 KiB (END_HEADERS on the last).
    static func headers(stream: Int32, _ block: [UInt8], endStream: Bool = true) -> [UInt8] {
        var out: [UInt8] = []
        var at = 0
        repeat {
            let n = min(16_384, block.count - at)
            let last = at + n == block.count
            let type: UInt8 = at == 0 ? 0x1 : 0x9
            var flags: UInt8 = last ? 0x4 : 0
            if at == 0 && endStream { flags |= 0x1 }
            out += frame(type: type, flags: flags, stream: stream, Array(block[at..<(at + n)]))
            at += n
        } while at < block.count
        return out
    }

    /// An HPACK bomb: one 4,000-byte value put in the dynamic table, then `refs` one-byte references to it.
    static func bomb(refs: Int) -> [UInt8] {
        var block = getBlock
        block += [0x40, 0x01, UInt8(ascii: "x"), 0x7F, 0xA1, 0x1E] + [UInt8](repeating: 0x61, count: 4_000)  // 4000 = 127 + 3873
        block += [UInt8](repeating: 0xBE, count: refs)  // indexed: dynamic entry 62
        return block
    }
}

@Suite("HTTP/2 session under attack")
struct H2AttackTests {
    func server() throws -> H2Connection {
        var s = H2Settings()
        s.maxHeaderListBytes = 16 << 10
        let h = try H2Connection(role: .server, settings: s)
        try RawH2.preface.withUnsafeBytes { try h.receive($0, now: 1) }
        return h
    }

    func output(_ h: H2Connection) throws -> [UInt8] {
        var out: [UInt8] = []
        try h.drainOutput { out += $0 }
        return out
    }

    /// (type, flags, stream, error code when RST_STREAM or GOAWAY) of each frame in `bytes`.
    func frames(_ bytes: [UInt8]) -> [(type: UInt8, stream: Int32, code: UInt32?)] {
        var out: [(UInt8, Int32, UInt32?)] = []
        var i = 0
        while i + 9 <= bytes.count {
            let n = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
            let type = bytes[i + 3]
            let stream = Int32(bytes[i + 5] & 0x7F) << 24 | Int32(bytes[i + 6]) << 16 | Int32(bytes[i + 7]) << 8 | Int32(bytes[i + 8])
            let p = Array(bytes[(i + 9)..<min(bytes.count, i + 9 + n)])
            var code: UInt32?
            if type == 0x3 && p.count >= 4 { code = UInt32(p[0]) << 24 | UInt32(p[1]) << 16 | UInt32(p[2]) << 8 | UInt32(p[3]) }
            if type == 0x7 && p.count >= 8 { code = UInt32(p[4]) << 24 | UInt32(p[5]) << 16 | UInt32(p[6]) << 8 | UInt32(p[7]) }
            out.append((type, stream, code))
            i += 9 + n
        }
        return out
    }

    @Test("an HPACK bomb stops decoding at four times the limit: its stream is reset, the connection goes on")
    func hpackBomb() throws {
        let h = try server()
        let attack = RawH2.headers(stream: 1, RawH2.bomb(refs: 130_000))  // ~134 KB on the wire, ~520 MB decoded
        try attack.withUnsafeBytes { try h.receive($0, now: 2) }
        // 4 × 16 KiB / (4,000 + 33) ≈ 17 fields of the bomb, plus the request's own five.
        #expect(h.headerFieldsDecoded < 40, "\(h.headerFieldsDecoded) header fields handed out")
        #expect(h.headerFloods == 1)
        #expect(frames(try output(h)).contains { $0.type == 0x3 && $0.stream == 1 }, "the bomb's stream is reset")
        // HPACK state stayed in step: the next request on the connection decodes fine.
        _ = h.takeEvents()
        try RawH2.headers(stream: 3, RawH2.getBlock).withUnsafeBytes { try h.receive($0, now: 3) }
        #expect(h.takeEvents().contains { if case .headers(3, let hs) = $0 { hs.contains(H2Header(":path", "/")) } else { false } })
    }

    @Test("a header list somewhat over the limit is reported for a 431; it is not a bomb")
    func bigButPlain() throws {
        let h = try server()
        var block = RawH2.getBlock
        let value = [UInt8](repeating: 0x62, count: 20_000)  // one 20 KB literal, not indexed
        block += [0x00, 0x01, UInt8(ascii: "y"), 0x7F, 0xA1, 0x9B, 0x01] + value  // 20000 = 127 + 19873
        try RawH2.headers(stream: 1, block).withUnsafeBytes { try h.receive($0, now: 2) }
        #expect(h.takeEvents().contains(.headersTooLarge(stream: 1)))
        #expect(h.headerFloods == 0)
    }

    @Test("HEADERS on a stream id the client skipped is a connection error PROTOCOL_ERROR (RFC 9113 §5.1.1)")
    func lowerStreamID() throws {
        let h = try server()
        try RawH2.headers(stream: 1, RawH2.getBlock).withUnsafeBytes { try h.receive($0, now: 2) }
        try RawH2.headers(stream: 5, RawH2.getBlock).withUnsafeBytes { try h.receive($0, now: 2) }
        #expect(throws: H2Error.streamIDRegression) {
            try RawH2.headers(stream: 3, RawH2.getBlock).withUnsafeBytes { try h.receive($0, now: 2) }
        }
        #expect(frames(try output(h)).contains { $0.type == 0x7 && $0.code == 1 }, "GOAWAY PROTOCOL_ERROR")
        #expect(h.takeViolation() == .streamIDRegression)
    }

    @Test("ids in order, with no gap, are fine; so are trailers on an open stream")
    func inOrderIDs() throws {
        let h = try server()
        for id: Int32 in [1, 3, 5] {
            try RawH2.headers(stream: id, RawH2.getBlock, endStream: false).withUnsafeBytes { try h.receive($0, now: 2) }
        }
        // Trailers on stream 3 (open): a HEADERS with END_STREAM on a lower id that is not a new stream.
        try RawH2.headers(stream: 3, [0x40, 0x01, 0x74, 0x01, 0x31]).withUnsafeBytes { try h.receive($0, now: 2) }
        #expect(h.takeViolation() == nil)
    }

    @Test("a protocol error nghttp2 finds itself is reported, so the gateway can count it")
    func detectedViolation() throws {
        let h = try server()
        try RawH2.frame(type: 0x0, flags: 0, stream: 0, [1, 2, 3]).withUnsafeBytes { try? h.receive($0, now: 2) }
        _ = try output(h)
        #expect(h.takeViolation() == .detected(code: 1))
    }
}
