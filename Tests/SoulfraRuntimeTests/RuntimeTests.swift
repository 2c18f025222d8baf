import Testing
import SoulfraPeerLink
import SoulfraRuntime
import SoulfraWire

let cal = AgentPersona(name: "cal", style: "cheerful", greeting: "Hi, I'm Cal!", topics: ["space", "dinosaurs"],
                       knowledge: ["mars": "Mars is the fourth planet from the Sun.", "moon": "The Moon is about 384,000 km away."])

@Suite("The persona engine")
struct PersonaEngineTests {
    @Test("the same persona, input and history give the same words; the history changes them")
    func deterministic() {
        let a = PersonaEngine.reply(cal, input: "Tell me about Mars", history: [])
        #expect(a == PersonaEngine.reply(cal, input: "Tell me about Mars", history: []))
        let text = a.joined()
        #expect(text.hasPrefix("Hi, I'm Cal!") && text.contains("Mars is the fourth planet from the Sun.") && text.hasSuffix("Yours, cal!"))
        let later = PersonaEngine.reply(cal, input: "Tell me about Mars",
                                        history: [Turn(role: .user, text: "hello"), Turn(role: .agent, text: "Hi")]).joined()
        #expect(!later.contains("Hi, I'm Cal!"), "greets only on a session's first turn")
        #expect(later.contains("That makes 2 messages from you"))
        #expect(PersonaEngine.reply(cal, input: "do you like space?", history: []).joined().contains("space"))
        #expect(PersonaEngine.reply(cal, input: "zebra crossing", history: []).joined().contains("zebra crossing"))
        let formal = AgentPersona(name: "diana", style: "formal")
        #expect(PersonaEngine.reply(formal, input: "x", history: []).joined().hasSuffix("Regards, diana."))
    }

    @Test("tokens are the reply's words, each with its following space, nothing lost")
    func tokens() {
        let t = PersonaEngine.reply(cal, input: "moon", history: [])
        #expect(t.count > 5 && t.dropLast().allSatisfy { $0.hasSuffix(" ") } && !t.last!.hasSuffix(" "))
        #expect(t.joined().split(separator: " ").count == t.count)
    }

    @Test("requests and replies round-trip as JSON; a bad request names its field")
    func messages() {
        let r = AgentRequest(persona: cal, input: "hi", history: [Turn(role: .user, text: "a")], pacingMilliseconds: 5, priority: .enterprise)
        #expect(r.json.withUnsafeBytes { AgentRequest.parse($0) } == .success(r))
        for reply in [AgentReply.token("a \"b\"\n", index: 3), .error(.unknownBackend("x")),
                      .done(.init(tokensIn: 1, tokensOut: 2, timeToFirstTokenMicroseconds: 3, totalMicroseconds: 4))] {
            #expect(Array(reply.json.utf8).withUnsafeBytes { AgentReply.parse($0) } == reply)
        }
        let bad = Array(#"{"agent":{},"input":"x"}"#.utf8).withUnsafeBytes { AgentRequest.parse($0) }
        #expect(bad == .failure(.badRequest("agent.name is required")))
    }
}

/// A runtime link past WELCOME (window 4 KiB / 64 frames per stream); streams are offered with `offer`.
final class RuntimeHarness {
    let worker: RuntimeWorker
    let link = PeerLink(identity: PeerIdentity(kind: .runtime, token: "t"))
    var nextStream: UInt32 = 2

    init(profile: RuntimeProfile) {
        worker = RuntimeWorker(profile: profile)
        worker.add(link)
        link.start()
        FrameWriter.encode(.welcome(Welcome(maxFrameBytes: 16_384, heartbeatMilliseconds: 1_000, streamCreditBytes: 4_096,
                                            streamCreditFrames: 64, linkID: 1, server: "test")))
            .withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
        link.output.removeAll()
    }

    /// Offers a stream and sends `request` on it (with END).
    @discardableResult
    func offer(_ request: AgentRequest) -> UInt32 {
        let s = nextStream
        nextStream += 2
        var bytes = FrameWriter.encode(.open(stream: s, Open(target: .runtime, world: "w", session: "s")))
        bytes += FrameWriter.encode(.data(stream: s, payload: request.json, end: true))
        bytes.withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
        return s
    }

    func feed(_ f: Frame) { FrameWriter.encode(f).withUnsafeBytes { link.receive($0, nowMilliseconds: 0) } }

    /// What the worker sent, by stream: replies, END, credit granted, closes.
    var replies: [UInt32: [AgentReply]] = [:]
    var ended: Set<UInt32> = []
    var credited: [UInt32: UInt32] = [:]
    var closed: [UInt32: ErrorCode] = [:]

    func collect() {
        let d = FrameDecoder(maxPayload: 1 << 20)
        try? d.feed(link.output.readable) { h, p throws(WireError) in
            switch try Frame.parse(h, p) {
            case .data(let s, let payload, let end, _):
                if let r = payload.withUnsafeBytes({ AgentReply.parse($0) }) { replies[s, default: []].append(r) }
                if end { ended.insert(s) }
            case .credit(let s, let b, _, _): credited[s, default: 0] += b
            case .close(let s, let code, _), .error(let s, let code, _): closed[s] = code
            default: break
            }
            return true
        }
        link.output.removeAll()
    }

    func text(_ s: UInt32) -> String {
        (replies[s] ?? []).compactMap { if case .token(let t, _) = $0 { t } else { nil } }.joined()
    }
}

@Suite("The runtime worker (sans-IO)")
struct RuntimeWorkerTests {
    @Test("a request streams its reply token by token, then usage, then END")
    func streamsAReply() {
        let h = RuntimeHarness(profile: .balanced)
        let s = h.offer(AgentRequest(persona: cal, input: "tell me about mars"))
        h.worker.drive(now: 1_000)
        h.collect()
        #expect(h.text(s) == PersonaEngine.reply(cal, input: "tell me about mars", history: []).joined())
        guard case .done(let u)? = h.replies[s]?.last else { Issue.record("no usage"); return }
        #expect(u.tokensIn == 4 && u.tokensOut == PersonaEngine.reply(cal, input: "tell me about mars", history: []).count)
        #expect(h.ended.contains(s) && h.worker.counters.replies == 1)
    }

    @Test("pacing: one token per interval of the manual clock")
    func pacing() {
        let h = RuntimeHarness(profile: .balanced)
        let s = h.offer(AgentRequest(persona: cal, input: "moon", pacingMilliseconds: 10))
        h.worker.drive(now: 0)
        h.collect()
        #expect(h.replies[s]?.count == 1, "the first token at once")
        h.worker.drive(now: 5_000_000)
        h.collect()
        #expect(h.replies[s]?.count == 1, "not before its time")
        h.worker.drive(now: 10_000_000)
        h.collect()
        #expect(h.replies[s]?.count == 2)
    }

    @Test("closing the stream stops the generation; a full worker holds credit, then refuses; enterprise goes first")
    func boundsAndCancellation() {
        let h = RuntimeHarness(profile: RuntimeProfile(name: "tiny", concurrency: 1, queueLimit: 2))
        let slow = AgentRequest(persona: cal, input: "moon", pacingMilliseconds: 1_000)
        let a = h.offer(slow)
        let b = h.offer(slow)
        var vip = slow
        vip.priority = .enterprise
        let c = h.offer(vip)
        let d = h.offer(slow)
        h.worker.drive(now: 0)
        h.collect()
        #expect(h.worker.activeCount == 1 && h.worker.waitingCount == 2)
        #expect(h.credited[a] != nil && h.credited[b] == nil && h.credited[c] == nil, "waiting requests' credit is held")
        #expect(h.closed[d] == .streamLimit && h.worker.counters.refused == 1)
        // The app goes away: generation stops, the enterprise request starts next.
        h.feed(.close(stream: a, code: .cancelled, reason: "client closed"))
        h.worker.drive(now: 1)
        h.collect()
        #expect(h.worker.counters.cancelled == 1)
        #expect(h.credited[c] != nil && h.credited[b] == nil, "enterprise first")
        let before = h.replies[a]?.count ?? 0
        h.worker.drive(now: 5_000_000_000)
        h.collect()
        #expect((h.replies[a]?.count ?? 0) == before, "nothing more on a cancelled stream")
    }

    @Test("an unknown backend or a malformed request is an error message and END; the link goes on")
    func errors() {
        let h = RuntimeHarness(profile: .balanced)
        var r = AgentRequest(persona: cal, input: "x")
        r.backend = "nonesuch"
        let s = h.offer(r)
        h.collect()
        #expect(h.replies[s] == [.error(.unknownBackend("nonesuch"))] && h.ended.contains(s))
        let t = h.nextStream
        h.nextStream += 2
        h.feed(.open(stream: t, Open(target: .runtime, world: "w")))
        h.feed(.data(stream: t, payload: Array("not json".utf8), end: true))
        h.collect()
        #expect(h.replies[t] == [.error(.badRequest("the request must be one JSON object"))])
        let ok = h.offer(AgentRequest(persona: cal, input: "x"))
        h.worker.drive(now: 1)
        h.collect()
        #expect(h.ended.contains(ok))
    }
}
