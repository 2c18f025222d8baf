import SoulfraLimits
import Testing
import SoulfraHTTP
import SoulfraHTTP2
import SoulfraWire
@testable import SoulfraGateway

/// The SSE request the budget tests send.
let ssePath = "/v1/worlds/playground/messages"
let sseBody = #"{"text":"go","stream":true}"#

/// A world that answers every request with `events` messages of `size` bytes, END on the last, as fast as
/// its window allows.
func eventWorld(events: Int, size: Int) -> (GatewayHarness, UInt32) -> Void {
    let event = [UInt8](repeating: 0x61, count: size)
    // Per stream: events finished, and bytes of the one in progress already sent. Like the peer library, the
    // world sends what its window allows and the rest of an event after CREDIT (parts flagged MORE); it never
    // waits for a window as large as a whole event.
    var progress: [UInt32: (done: Int, at: Int)] = [:]
    return { h, id in
        while let st = h.streams[id], st.requestEnded, !st.closed {
            var p = progress[id] ?? (0, 0)
            guard p.done < events, st.windowFrames >= 1, st.windowBytes >= 1 else { return }
            let n = min(size - p.at, Int(st.windowBytes))
            let whole = p.at + n == size
            let flags: FrameFlags = !whole ? .more : p.done == events - 1 ? .endStream : []
            guard h.worldSend(id, Array(event[p.at..<(p.at + n)]), flags: flags) else { return }
            p.at += n
            if whole { p = (p.done + 1, 0) }
            progress[id] = p
        }
    }
}

@Suite("Gateway: what a client connection may hold (sans-IO)")
struct GatewayBudgetTests {
    @Test("256 SSE streams on a connection that never reads hold at most its budget; once it reads, every reply completes")
    func nonReadingConnection() throws {
        let h = GatewayHarness()
        _ = try h.connect(7)
        h.settle()  // SETTINGS both ways (the client learns it may open 256 streams), then it stops reading
        h.reading[7] = false
        var ids: [Int32] = []
        for _ in 0..<256 { ids.append(try h.post(7, ssePath, body: sseBody)) }
        h.world = eventWorld(events: 200, size: 1_000)  // 200 KB per reply, 51 MB in all
        h.settle()
        let budget = GatewayLimits().connectionOutputHighBytes
        let sentByWorld = h.streams.values.reduce(0) { $0 + $1.sentBytes }
        // Response headers for 256 streams are the gateway's own output, over the budget by a little.
        #expect(h.held(7) <= budget + (32 << 10), "held \(h.held(7))")
        #expect(sentByWorld <= budget + (32 << 10), "the world could send \(sentByWorld) bytes to a client that reads nothing")
        #expect(h.streams.count == 256, "every stream was opened (some with no window yet)")
        // The client reads: everything flows, and every one of the 256 replies completes.
        h.transport.resume(7)
        for _ in 0..<20_000 where h.turn() {}
        let client = h.clients[7]!
        let complete = ids.filter { id in
            client.events.contains(.endStream(stream: id)) && client.body(id).count == 200 * 1_008
        }
        #expect(complete.count == 256, "\(complete.count) of 256 replies completed")
        #expect(h.held(7) == 0)
    }

    @Test("the loop's output budget bounds what all its connections hold together; streams wait, then go on")
    func loopBudget() throws {
        var limits = GatewayLimits()
        limits.outputBudgetBytes = 512 << 10
        let h = GatewayHarness(limits: limits)
        for conn: UInt32 in 1...8 {
            _ = try h.connect(conn, reads: false)
            for _ in 0..<16 { try h.post(conn, ssePath, body: sseBody) }
        }
        h.world = eventWorld(events: 100, size: 1_000)
        h.settle()
        let total = (1...8).reduce(0) { $0 + h.held(UInt32($1)) }
        #expect(total <= (512 << 10) + 8 * (16 << 10), "8 connections hold \(total) bytes against a 512 KiB budget")
        #expect(h.gateway.counters.creditHeld > 0, "some streams waited for the budget")
        for conn: UInt32 in 1...8 { h.transport.resume(conn) }
        for _ in 0..<20_000 where h.turn() {}
        let done = h.streams.values.filter { $0.sentBytes == 100 * 1_000 && $0.closeCode == nil && $0.closed }.count
        #expect(done == 128, "\(done) of 128 replies completed once the clients read")
    }

    @Test("a unary reply in several frames streams to the client as it comes")
    func unaryInParts() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            h.worldSend(sid, Array(#"{"reply":"#.utf8))
            h.worldSend(sid, Array(#""a long "#.utf8))
            h.worldSend(sid, Array(#"one"}"#.utf8), flags: .endStream)
        }
        h.settle()
        #expect(c.status(id) == "200")
        #expect(String(decoding: c.body(id), as: UTF8.self) == #"{"reply":"a long one"}"#)
        #expect(c.events.contains(.endStream(stream: id)))
    }

    @Test("an instance that never answers: 504 instance_timeout at the deadline, and the broker hears timeout")
    func requestDeadline() throws {
        var limits = GatewayLimits()
        limits.requestTimeoutMilliseconds = 500
        let h = GatewayHarness(limits: limits)
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.settle()
        #expect(c.status(id) == nil)
        h.now += 300_000_000
        h.gateway.tick(now: h.now)
        h.settle()
        #expect(c.status(id) == nil, "still within the deadline")
        h.now += 300_000_000
        h.gateway.tick(now: h.now)
        h.settle()
        #expect(c.status(id) == "504")
        #expect(String(decoding: c.body(id), as: UTF8.self).contains("instance_timeout"))
        #expect(h.streams.values.first?.closeCode == .timeout)
        #expect(h.gateway.counters.requestTimeouts == 1)
    }

    @Test("a client that stops reading is closed after the send timeout")
    func sendTimeout() throws {
        var limits = GatewayLimits()
        limits.sendTimeoutMilliseconds = 2_000
        let h = GatewayHarness(limits: limits)
        _ = try h.connect(1, reads: false)
        try h.post(1, ssePath, body: sseBody)
        h.world = eventWorld(events: 10, size: 100)
        h.settle()
        h.now += 1_000_000_000
        h.gateway.tick(now: h.now)
        #expect(!h.transport.aborted.contains(1))
        h.now += 1_500_000_000
        h.gateway.tick(now: h.now)
        #expect(h.transport.aborted.contains(1))
        #expect(h.gateway.counters.sendTimeouts == 1)
    }
}

@Suite("Gateway: what a review found (sans-IO)")
struct GatewayReviewTests {
    @Test("short sends: the rest of a partly written send goes out before anything newer")
    func shortSends() throws {
        let h = GatewayHarness()
        h.transport.shortSends = 100
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: sseBody)
        h.world = eventWorld(events: 50, size: 500)
        for _ in 0..<2_000 where h.turn() {}
        let ended = c.events.contains(.endStream(stream: id))
        #expect(ended)
        #expect(c.body(id).count == 50 * 508)
    }

    @Test("a request refused in the same read that reset it leaves nothing queued (no phantom bytes)")
    func refusedAndReset() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        h.settle()
        let id = try c.h2.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                            H2Header(":path", ssePath), H2Header("authorization", "Bearer sk-slfr_kids_wrong")])
        c.h2.reset(stream: id, code: 8)
        h.clientSends(1)  // HEADERS and RST_STREAM in one read
        h.settle()
        #expect(h.connection(1)?.queuedBytes == 0)
        #expect(h.connection(1)?.h2?.queuedBytesTotal == 0)
    }

    @Test("when a connection holding the loop's budget is closed (send timeout), streams that waited for it go on")
    func waitersWakeWhenBudgetFrees() throws {
        var limits = GatewayLimits()
        limits.outputBudgetBytes = 256 << 10  // the loop's budget is one connection's
        limits.sendTimeoutMilliseconds = 2_000
        let h = GatewayHarness(limits: limits)
        _ = try h.connect(1, reads: false)
        for _ in 0..<16 { try h.post(1, ssePath, body: sseBody) }
        h.world = eventWorld(events: 400, size: 1_000)
        h.settle()
        // A reading client arrives while the budget is held by the one that does not read.
        let b = try h.connect(2)
        let id = try h.post(2, ssePath, body: sseBody)
        h.settle()
        let endedEarly = b.events.contains(.endStream(stream: id))
        #expect(!endedEarly, "the loop's budget was free after all")
        h.now += 3_000_000_000
        h.gateway.tick(now: h.now)
        #expect(h.transport.aborted.contains(1))
        for _ in 0..<5_000 where h.turn() {}
        let ended = b.events.contains(.endStream(stream: id))
        #expect(ended, "the waiting stream never got the freed budget")
    }

    @Test("a request the gateway holds at no window (its client does not read) starts no deadline: the instance is not blamed")
    func noDeadlineWithoutWindow() throws {
        var limits = GatewayLimits()
        limits.requestTimeoutMilliseconds = 200
        limits.outputBudgetBytes = 256 << 10
        let h = GatewayHarness(limits: limits)
        _ = try h.connect(1, reads: false)
        for _ in 0..<16 { try h.post(1, ssePath, body: sseBody) }
        h.world = eventWorld(events: 1_000, size: 1_000)
        h.settle()
        _ = try h.connect(2, reads: false)
        try h.post(2, ssePath, body: #"{"text":"unary"}"#)
        h.settle()
        for _ in 0..<10 {
            h.now += 100_000_000
            h.gateway.tick(now: h.now)
            h.settle()
        }
        #expect(h.gateway.counters.requestTimeouts == 0)
        #expect(!h.streams.values.contains { $0.closeCode == .timeout })
    }

    @Test("an NDJSON line of 65,536 bytes over HTTP/2 is forwarded (it fits the stream's window)")
    func longLine() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        h.worldGrantsBack = true
        h.settle()
        let id = try c.h2.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                            H2Header(":path", "/v1/worlds/playground/streams"), H2Header("authorization", "Bearer \(h.key)")])
        let line = #"{"t":""# + String(repeating: "l", count: 65_536 - 8) + #""}"#
        Array((line + "\n").utf8).withUnsafeBytes { c.h2.send(stream: id, $0, end: true) }
        h.settle()
        #expect(h.streams.values.first?.request.count == 65_536)
    }
}

@Suite("Gateway: WebSocket (sans-IO)")
struct GatewayWebSocketTests {
    /// The frames the gateway sent on a raw connection, after the 101 head.
    func frames(_ h: GatewayHarness, _ conn: UInt32) -> [(fin: Bool, opcode: UInt8, payload: [UInt8])] {
        let all = h.transport.received[conn] ?? []
        guard let end = all.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound else { return [] }
        var out: [(Bool, UInt8, [UInt8])] = []
        var i = end
        while i + 2 <= all.count {
            let fin = all[i] & 0x80 != 0, op = all[i] & 0x0F
            var len = Int(all[i + 1] & 0x7F), at = i + 2
            if len == 126 { len = Int(all[at]) << 8 | Int(all[at + 1]); at += 2 } else if len == 127 {
                len = 0
                for k in 0..<8 { len = len << 8 | Int(all[at + k]) }
                at += 8
            }
            guard at + len <= all.count else { break }
            out.append((fin, op, Array(all[at..<(at + len)])))
            i = at + len
        }
        return out
    }

    func webSocket(_ h: GatewayHarness, reads: Bool = true) -> UInt32 {
        h.connectRaw(9, reads: reads)
        h.upgrade(9)
        h.settle()
        return 9
    }

    @Test("a ping flood from a client that never reads: reading stops once the pongs pass its budget, then the send timeout closes it")
    func pingFlood() {
        var limits = GatewayLimits()
        limits.sendTimeoutMilliseconds = 5_000
        let h = GatewayHarness(limits: limits)
        let ws = webSocket(h, reads: false)
        let ping = GatewayHarness.clientFrame(.ping, [UInt8](repeating: 1, count: 125))
        var sent = 0
        // 40 MB of pings, 32 KiB at a time (one receive buffer), for as long as the gateway reads them.
        let chunk = Array([[UInt8]](repeating: ping, count: 32_768 / ping.count).joined())
        while sent < 40 << 20 && !h.transport.paused.contains(ws) {
            h.rawSend(ws, chunk)
            h.turn()
            sent += chunk.count
        }
        #expect(h.transport.paused.contains(ws), "reading never paused after \(sent) bytes of pings")
        let queued = h.connection(ws)?.queuedBytes ?? 0
        #expect(queued <= GatewayLimits().connectionOutputHighBytes + 40 << 10, "\(queued) bytes of pongs held")
        #expect(h.gateway.counters.outputPauses >= 1)
        h.now += 6_000_000_000
        h.gateway.tick(now: h.now)
        #expect(h.transport.aborted.contains(ws), "closed after the send timeout")
    }

    @Test("a message larger than the stream's credit goes to the world in parts, never over the frame size, and is not lost")
    func largeMessageInParts() {
        let h = GatewayHarness()
        h.worldGrantsBack = true
        let ws = webSocket(h)
        let message = (0..<900_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
        h.rawSend(ws, GatewayHarness.clientFrame(.binary, message))
        h.settle()
        let st = h.streams.values.first
        #expect(st?.request == message)
        let flags = st?.requestFrames.map(\.1) ?? []
        #expect(flags.dropLast().allSatisfy { $0 == [.more, .binary] } && flags.last == [.binary])
        #expect((st?.requestFrames ?? []).allSatisfy { $0.0 <= 65_536 })
    }

    @Test("a message in thousands of one-byte frames waits as one entry, not thousands")
    func tinyFrames() {
        let h = GatewayHarness()
        let ws = webSocket(h)
        // The world grants nothing back: the message waits for credit once the window is used.
        var bytes: [UInt8] = GatewayHarness.clientFrame(.binary, [UInt8](repeating: 1, count: 300_000), fin: false)
        for _ in 0..<5_000 { bytes += GatewayHarness.clientFrame(.continuation, [2], fin: false) }
        h.rawSend(ws, bytes)
        h.settle()
        let ex = h.connection(ws)?.h1Current
        #expect((ex?.pendingFrames ?? 0) <= 2, "\(ex?.pendingFrames ?? -1) entries wait")
    }

    @Test("binary stays binary, text stays text, empty messages are messages, both ways")
    func messageTypes() {
        let h = GatewayHarness()
        let ws = webSocket(h)
        h.world = { h, id in
            guard let st = h.streams[id], st.requestFrames.count > st.sentFrames else { return }
            // Echo each message byte for byte, in kind.
            let (n, flags) = st.requestFrames[st.sentFrames]
            let start = st.requestFrames[..<st.sentFrames].reduce(0) { $0 + $1.0 }
            h.worldSend(id, Array(st.request[start..<(start + n)]), flags: flags.intersection(.binary))
        }
        h.rawSend(ws, GatewayHarness.clientFrame(.binary, [0, 255, 7]) + GatewayHarness.clientFrame(.text, Array("hé".utf8))
                  + GatewayHarness.clientFrame(.text, []) + GatewayHarness.clientFrame(.binary, []))
        h.settle()
        let got = frames(h, ws).map { ($0.opcode, $0.payload) }
        #expect(got.map(\.0) == [2, 1, 1, 2])
        #expect(got.map(\.1) == [[0, 255, 7], Array("hé".utf8), [], []])
    }

    @Test("close codes: a valid one is echoed, a close without one is answered without one, an invalid one gets 1002",
          arguments: [([UInt8(0x03), 0xE8], [UInt8(0x03), 0xE8]), ([], []), ([0x03, 0xED], [0x03, 0xEA]), ([0x00, 0x00], [0x03, 0xEA]),
                      ([0x03, 0xE8, 0xFF], [0x03, 0xEA])])
    func closeCodes(_ sent: [UInt8], _ expected: [UInt8]) {
        let h = GatewayHarness()
        let ws = webSocket(h)
        h.rawSend(ws, GatewayHarness.clientFrame(.close, sent) + GatewayHarness.clientFrame(.ping, [1]))
        h.settle()
        let closes = frames(h, ws).filter { $0.opcode == 8 }
        #expect(closes.count == 1)
        #expect(Array((closes.first?.payload ?? []).prefix(2)) == expected)
        #expect(!frames(h, ws).contains { $0.opcode == 10 }, "no pong after a close")
    }

    @Test("text from the world that is not UTF-8 never reaches the client as text: the WebSocket closes with 1011")
    func worldSendsInvalidUTF8() {
        let h = GatewayHarness()
        let ws = webSocket(h)
        h.world = { h, id in
            guard h.streams[id]?.sentFrames == 0, !(h.streams[id]?.request.isEmpty ?? true) else { return }
            h.worldSend(id, [0x68, 0xC3], flags: .more)  // "h" and half of a character...
            h.worldSend(id, [0x28])                      // ...whose second byte is not a continuation
        }
        h.rawSend(ws, GatewayHarness.clientFrame(.text, Array("go".utf8)))
        h.settle()
        let f = frames(h, ws)
        #expect(f.last?.opcode == 8 && Array(f.last!.payload.prefix(2)) == [0x03, 0xF3], "\(f.map(\.opcode))")
        #expect(!f.contains { $0.opcode == 1 && $0.fin }, "no complete text message went out")
    }
}
