import SoulfraHTTP2
import SoulfraKeys
import SoulfraLimits
import SoulfraWire
import Testing
@testable import SoulfraGateway

/// The harness's key again, with a monthly budget, and what it used as of the last roll-up.
func budgeted(_ h: GatewayHarness, monthly: UInt64, used: UInt64, seen: UInt64 = 0, counter: BudgetCounter = BudgetCounter(),
              resetsAt: UInt64 = 1_764_547_200) -> KeyTable {
    let key = APIKey.parse(Substring(h.key))!
    var r = KeyRecord(id: 1, digest: key.digest, prefix: key.prefix, world: "playground", permissions: [.worldAccess, .agentInteraction])
    r.monthlyInteractions = monthly
    r.budgetResetsAt = resetsAt
    counter.set(used: used, seen: seen)
    return KeyTable([r], budgets: [1: counter])
}

@Suite("Gateway: usage per key and monthly budgets (sans-IO)")
struct UsageTests {
    let done = Array(#"{"seq":3,"event":"done","agent":"cal","text":"hi there","usage":{"tokens_in":12,"tokens_out":34,"total_ms":5}}"#.utf8)

    @Test("requests, interactions, bytes both ways and the runtime's tokens are counted for the key, a reply split anywhere")
    func countsPerKey() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        let body = #"{"text":"hello"}"#
        let done = self.done
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            // The reply in two parts, split inside "tokens_in"'s number.
            let cut = done.firstIndex(of: UInt8(ascii: "2"))!
            h.worldSend(sid, Array(done[..<cut]), flags: .more)
            h.worldSend(sid, Array(done[cut...]), flags: .endStream)
        }
        for _ in 0..<3 { try h.post(1, ssePath, body: body) }
        h.settle()
        _ = c
        let u = try #require(h.gateway.usageSnapshot()[1])
        #expect(u.world == "playground" && u.requests == 3 && u.interactions == 3)
        #expect(u.bytesIn == UInt64(3 * body.utf8.count))
        #expect(u.bytesOut == UInt64(3 * done.count))
        #expect(u.tokensIn == 36 && u.tokensOut == 102, "\(u)")
    }

    @Test("a resumed stream (Last-Event-ID) replays stored replies: their tokens are not counted again")
    func resumedStreamsCountNoTokens() throws {
        let h = GatewayHarness()
        _ = try h.connect(1)
        let done = self.done
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            h.worldSend(sid, done, flags: .endStream)
        }
        try h.post(1, ssePath, body: #"{"text":"again"}"#, headers: [("accept", "text/event-stream"), ("last-event-id", "2")])
        h.settle()
        let u = try #require(h.gateway.usageSnapshot()[1])
        #expect(u.bytesOut > 0 && u.tokensIn == 0 && u.tokensOut == 0, "\(u)")
    }

    @Test("without a consumer (no control plane), the access log keeps nothing")
    func accessLogOffWithoutConsumer() throws {
        let h = GatewayHarness()
        _ = try h.connect(1)
        h.answerEachRequest(#"{"ok":true}"#)
        try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.settle()
        #expect(h.gateway.takeAccessLog().isEmpty)
    }

    @Test("a request refused before admission (bad key) counts for no key; one refused for its body counts as a request, not an interaction")
    func refusalsAreNotInteractions() throws {
        let h = GatewayHarness()
        _ = try h.connect(1)
        try h.post(1, ssePath, body: "not json")
        h.settle()
        let u = try #require(h.gateway.usageSnapshot()[1])
        #expect(u.requests == 1 && u.interactions == 0)
    }

    @Test("a monthly budget: messages up to it pass, the next is 429 usage_exceeded with the reset time, and counts no interaction")
    func budgetExhaustion() throws {
        let h = GatewayHarness()
        let counter = BudgetCounter()
        h.gateway.gatekeeper.install(budgeted(h, monthly: 5, used: 3, counter: counter))  // 3 used this month before the daemon started
        let c = try h.connect(1)
        h.answerEachRequest(#"{"ok":true}"#)
        h.gateway.unixSeconds = 1_764_547_200 - 90
        var statuses: [String] = []
        for _ in 0..<4 {
            let id = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
            h.settle()
            statuses.append(c.status(id) ?? "?")
            if c.status(id) == "429" {
                let text = String(decoding: c.body(id), as: UTF8.self)
                #expect(text.contains("usage_exceeded") && text.contains("2025-12-01T00:00:00"), "\(text)")
                #expect(c.headers(id)["retry-after"] == "90")
            }
        }
        #expect(statuses == ["200", "200", "429", "429"])
        #expect(h.gateway.usageSnapshot()[1]?.interactions == 2)
        #expect(h.gateway.counters.errors(.usageExceeded) == 2)
        // The roll-up wrote this loop's 2 into the month's 5: still refused. A new month's table lets it through.
        #expect(counter.value == 2)
        h.gateway.gatekeeper.install(budgeted(h, monthly: 5, used: 5, seen: 2, counter: counter))
        let refused = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.settle()
        #expect(c.status(refused) == "429")
        h.gateway.gatekeeper.install(budgeted(h, monthly: 5, used: 0, seen: 2, counter: counter))
        let passed = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.settle()
        #expect(c.status(passed) == "200")
    }

    @Test("on a stream each NDJSON line is an interaction; the line past the budget ends the stream with usage_exceeded and never reaches the world")
    func budgetOnStreams() throws {
        let h = GatewayHarness()
        h.gateway.gatekeeper.install(budgeted(h, monthly: 3, used: 0))
        let c = try h.connect(1)
        h.settle()
        let id = try c.h2.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                            H2Header(":path", "/v1/worlds/playground/streams"), H2Header("authorization", "Bearer \(h.key)")])
        for i in 0..<3 {
            Array("{\"text\":\"m\(i)\"}\n".utf8).withUnsafeBytes { c.h2.send(stream: id, $0) }
            h.settle()
        }
        let sid = try #require(h.streams.keys.first)
        #expect(h.streams[sid]?.requestFrames.count == 3)
        Array("{\"text\":\"one too many\"}\n".utf8).withUnsafeBytes { c.h2.send(stream: id, $0) }
        h.settle()
        #expect(h.streams[sid]?.requestFrames.count == 3, "the fourth line was not forwarded")
        #expect(String(decoding: c.body(id), as: UTF8.self).contains("usage_exceeded"))
        #expect(c.events.contains(.endStream(stream: id)))
        #expect(h.gateway.usageSnapshot()[1]?.interactions == 3)
        // A new stream is refused at once.
        let again = try c.h2.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                               H2Header(":path", "/v1/worlds/playground/streams"), H2Header("authorization", "Bearer \(h.key)")])
        h.settle()
        #expect(c.status(again) == "429")
    }

    @Test("two loops charging one key at once never pass its budget together")
    func budgetAcrossThreads() async {
        let budget = BudgetCounter(used: 100, seen: 0)
        let passed = await withTaskGroup(of: Int.self) { g in
            for _ in 0..<4 { g.addTask { (0..<10_000).reduce(0) { n, _ in n + (budget.charge(1, limit: 5_100) ? 1 : 0) } } }
            return await g.reduce(0, +)
        }
        #expect(passed == 5_000 && budget.value == 5_000)
        #expect(!budget.allows(1, limit: 5_100) && budget.allows(0, limit: 5_100))
        // A roll-up that wrote 4,000 of those charges into a month of 5,000: the same 100 are left over.
        budget.set(used: 5_000, seen: 4_000)
        #expect(budget.used == 6_000)
        // A new month: nothing used yet, whatever was charged before.
        budget.set(used: 0, seen: 5_000)
        #expect(budget.used == 0 && budget.charge(5_100, limit: 5_100) && !budget.charge(1, limit: 5_100))
    }

    @Test("the token scanner finds both counts whatever the split, and nothing inside a JSON string")
    func tokenScannerSplits() {
        let bytes = Array(#"{"text":"say \"tokens_in\":99","usage":{"tokens_in":1234,"tokens_out":56}}"#.utf8)
        for cut in 0...bytes.count {
            var s = TokenScanner()
            var found: [(Bool, UInt64)] = []
            bytes[..<cut].withUnsafeBytes { s.feed($0) { found.append(($0, $1)) } }
            bytes[cut...].withUnsafeBytes { s.feed($0) { found.append(($0, $1)) } }
            #expect(found.map(\.0) == [false, true] && found.map(\.1) == [1234, 56], "cut at \(cut): \(found)")
        }
    }

    @Test("a reply claiming absurd token counts is capped (the roll-up's sums cannot overflow)")
    func tokenCountsCapped() {
        var s = TokenScanner()
        var total: UInt64 = 0
        for _ in 0..<3 {
            Array(#"{"usage":{"tokens_in":18446744073709551615999}}"#.utf8).withUnsafeBytes { s.feed($0) { _, n in total &+= n } }
        }
        #expect(total < 3_000_000_000_000, "\(total)")
    }

    @Test("the access log keeps a long target's start only, and no refusal under a world no key names")
    func accessLogBounds() throws {
        let h = GatewayHarness()
        h.gateway.accessLogEnabled = true
        let c = try h.connect(1)
        h.answerEachRequest(#"{"ok":true}"#)
        let long = "/v1/worlds/playground/messages?" + String(repeating: "x", count: 5_000)
        _ = try h.post(1, long, body: #"{"text":"hi"}"#)
        let id = try c.h2.request(headers: [H2Header(":method", "GET"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                            H2Header(":path", "/v1/worlds/made-up-\(UInt32.random(in: 0...UInt32.max))/analytics")], endStream: true)
        h.settle()
        #expect(c.status(id) == "401")
        let log = h.gateway.takeAccessLog()
        #expect(log.count == 1 && log.first?.world == "playground", "\(log.map(\.world))")
        guard let log = log.first else { return }
        #expect(log.status == 200 && log.target.utf8.count <= Gateway.maxLoggedTarget + 3 && log.target.hasSuffix("…"))
    }

    @Test("latency buckets: the switch agrees with the published bounds, and every kind's index is its place in allCases")
    func bucketsAgree() {
        #expect(WorldLatency.width == GatewayCounters.bucketsMicros.count + 1)
        for (i, b) in GatewayCounters.bucketsMicros.enumerated() {
            #expect(GatewayCounters.bucket(b) == i && GatewayCounters.bucket(b + 1) == i + 1)
        }
        #expect(GatewayCounters.bucket(0) == 0 && GatewayCounters.bucket(.max) == GatewayCounters.bucketsMicros.count)
        for (i, k) in ExchangeKind.allCases.enumerated() { #expect(k.index == i) }
    }

    @Test("utcDate renders unix seconds as a UTC date")
    func utcDates() {
        #expect(Gateway.utcDate(0) == "1970-01-01T00:00:00")
        #expect(Gateway.utcDate(1_764_547_200) == "2025-12-01T00:00:00")
        #expect(Gateway.utcDate(1_709_251_199) == "2024-02-29T23:59:59")
    }
}
