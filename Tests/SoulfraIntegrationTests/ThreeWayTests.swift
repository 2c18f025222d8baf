import Foundation
import Synchronization
import Testing
import SoulfraClient
import SoulfraConfig
import SoulfraHTTP
import SoulfraNet
import SoulfraPeer
import SoulfraPeerLink
import SoulfraRuntime
import SoulfraServer
import SoulfraWire
import SoulfraWorld

/// An agent world instance on its own thread (the 3-way logic against the daemon's broker).
final class AgentRunner: @unchecked Sendable {
    private let stopFlag = Atomic<Bool>(false)
    /// The instance's peak held inputs and events per conversation (published on every turn of its thread).
    let peakInputs = Atomic<Int>(0)
    let peakHeldEvents = Atomic<Int>(0)
    private let done = DispatchSemaphore(value: 0)

    init(server: BrokerServer, mode: StreamMode, pacingMilliseconds: Int = 0) throws {
        var settings = AgentInstance.Settings(personas: [AgentPersona(name: "cal", style: "cheerful", greeting: "Hi, I'm Cal!",
                                                                      topics: ["space"], knowledge: ["mars": "Mars is the fourth planet from the Sun."])],
                                              mode: mode)
        settings.pacingMilliseconds = pacingMilliseconds
        let agent = AgentInstance(settings)
        let conn = PeerConnection(address: server.tcp, identity: PeerIdentity(kind: .instance, world: "playground", instance: "agent",
                                                                              token: testTokens.instance))
        agent.add(conn.link)
        try conn.handshake()
        let box = UncheckedBox((conn, agent))
        Thread { [self] in
            let (c, agent) = box.value
            while !stopFlag.load(ordering: .acquiring) {
                c.pump(timeoutMilliseconds: 2)
                peakInputs.store(agent.counters.peakInputs, ordering: .relaxed)
                peakHeldEvents.store(agent.counters.peakHeldEvents, ordering: .relaxed)
            }
            c.close()
            done.signal()
        }.start()
    }

    func stop() {
        guard !stopFlag.exchange(true, ordering: .acquiringAndReleasing) else { return }
        done.wait()
    }

    deinit { stop() }
}

/// SSE events as (id, data) pairs.
func sseEvents(_ text: String) -> [(id: UInt64?, data: String)] {
    text.components(separatedBy: "\n\n").compactMap { block in
        var id: UInt64?
        var data: [String] = []
        for line in block.split(separator: "\n") {
            if line.hasPrefix("id: ") { id = UInt64(line.dropFirst(4)) }
            if line.hasPrefix("data: ") { data.append(String(line.dropFirst(6))) }
        }
        return data.isEmpty ? nil : (id, data.joined(separator: "\n"))
    }
}

@Suite("The 3-way stream: gateway, instance, runtime, vault", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ThreeWayTests {
    func config() -> ServerConfig {
        gatewayConfig {
            $0.runtimeWorkers = 2
            $0.gatewayKeys[0] = TestKeys.record(TestKeys.playground, id: 1, world: "playground",
                                                permissions: [.worldAccess, .agentInteraction, .vaultStorage])
        }
    }

    @Test("a message streams back token by token with ids; every event is in the vault, in order", arguments: StreamMode.allCases)
    func streamsDurably(mode: StreamMode) throws {
        let server = try BrokerServer.start(config())
        defer { server.stop() }
        let agent = try AgentRunner(server: server, mode: mode)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        let (status, body) = try call(server.h2c + "/v1/worlds/playground/messages",
                                      ["-N", "-H", "accept: text/event-stream", "-H", "x-soulfra-session: s1", "-d", #"{"text":"tell me about mars"}"#])
        #expect(status == 200)
        let events = sseEvents(body)
        let expected = PersonaEngine.reply(AgentPersona(name: "cal", style: "cheerful", greeting: "Hi, I'm Cal!", topics: ["space"],
                                                        knowledge: ["mars": "Mars is the fourth planet from the Sun."]),
                                           input: "tell me about mars", history: [])
        #expect(events.count == expected.count + 1, "\(events.map(\.data))")
        // Ids are the session's sequence numbers: the user's message is 1, the tokens 2…, the done last.
        #expect(events.map(\.id) == (0..<events.count).map { UInt64($0 + 2) })
        #expect(events.last?.data.contains(#""event":"done""#) == true)
        // Everything is durable: the session's history holds the user's message and every event the app saw.
        var stored = 0
        _ = try retry(for: 30, pause: 10_000) {
            let (_, h) = try call(server.h2c + "/v1/worlds/playground/sessions/s1?limit=1000")
            stored = (try? JSONSerialization.jsonObject(with: Data(h.utf8)) as? [String: Any])?["events"].flatMap { ($0 as? [Any])?.count } ?? 0
            return stored >= events.count + 1
        }
        #expect(stored == events.count + 1)
    }

    @Test("an app cut off mid-reply resumes with Last-Event-ID: what it missed comes from the vault, no gap, no duplicate")
    func resumesAfterACut() throws {
        let server = try BrokerServer.start(config())
        defer { server.stop() }
        let agent = try AgentRunner(server: server, mode: .full, pacingMilliseconds: 20)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        // First connection: read a few events, then drop the connection (the client goes out of scope: its socket closes).
        let first = try { () throws -> [(id: UInt64?, data: String)] in
            let c = try server.h2Client()
            let id = try #require(c.post("/v1/worlds/playground/messages", headers: [("accept", "text/event-stream"), ("x-soulfra-session", "s2")]))
            c.send(id, #"{"text":"tell me about mars"}"#, end: true)
            var text = ""
            #expect(pumpH2(c, milliseconds: 10_000, { e in if case .data(_, let d) = e { text += d.text } }, until: { sseEvents(text).count >= 3 }))
            // The app stalls (reads nothing) while the reply goes on into the vault, then its connection drops:
            // once the vault holds the reply's end (the app leaving earlier would stop the generation).
            var held = false
            for _ in 0..<300 where !held {
                let (_, h) = try call(server.h2c + "/v1/worlds/playground/sessions/s2?limit=1000")
                held = h.contains(#""event":"done""#) || h.contains(#"\"event\":\"done\""#)
                if !held { usleep(50_000) }
            }
            #expect(held, "the first reply was stored to its end while the app read nothing")
            return sseEvents(text)
        }()
        let lastSeen = try #require(first.last?.id)
        // Reconnect with the last id seen and a new message: the rest of the first reply from the vault, then the
        // new reply live.
        let (status, rest) = try call(server.h2c + "/v1/worlds/playground/messages",
                                      ["-N", "-H", "accept: text/event-stream", "-H", "x-soulfra-session: s2", "-H", "last-event-id: \(lastSeen)",
                                       "-d", #"{"text":"and space?"}"#])
        #expect(status == 200)
        let resumed = sseEvents(rest)
        let ids = first.compactMap(\.id) + resumed.compactMap(\.id)
        #expect(Set(ids).count == ids.count, "a duplicate: \(ids)")
        // What the app saw, over both connections, is exactly what the vault holds (users' messages aside), in order.
        let (_, h) = try call(server.h2c + "/v1/worlds/playground/sessions/s2?limit=1000")
        let stored = ((try? JSONSerialization.jsonObject(with: Data(h.utf8)) as? [String: Any])?["events"] as? [[String: Any]] ?? [])
            .filter { $0["kind"] as? Int != 1 }.map { UInt64($0["seq"] as? Int ?? 0) }
        #expect(ids == stored, "seen \(ids), stored \(stored)")
        #expect(resumed.first?.id == lastSeen + 1, "the first resumed event follows the last one seen")
        #expect(resumed.filter { $0.data.contains(#""event":"done""#) }.count == 2, "the first reply's end, then the new one's")
    }
}

@Suite("The 3-way stream when a side stalls or fails", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ThreeWayFailureTests {
    @Test("a full disk under the vault: the app gets a retryable vault_unavailable error event, and nothing it saw is lost",
          .enabled(if: canMountTmpfs))
    func fullDiskReachesTheApp() throws {
        let disk = try Tmpfs("3way-full", size: "48k")
        defer { withExtendedLifetime(disk) {} }  // unmounted only after the server below has stopped
        let dir = disk.path
        let server = try BrokerServer.start(ThreeWayTests().config().with { $0.vaultDirectory = dir + "/vault" })
        defer { server.stop() }
        let agent = try AgentRunner(server: server, mode: .full)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        var failure: String?
        var seen: [UInt64] = []
        let until = monotonicMilliseconds() + 60_000
        for i in 0..<100 where failure == nil && monotonicMilliseconds() < until {
            let (_, body) = try call(server.h2c + "/v1/worlds/playground/messages",
                                     ["-N", "-H", "accept: text/event-stream", "-H", "x-soulfra-session: full",
                                      "-d", #"{"text":"message \#(i) \#(String(repeating: "x", count: 400))"}"#])
            for e in sseEvents(body) {
                if let id = e.id { seen.append(id) }
                if e.data.contains("vault_unavailable") { failure = e.data }
            }
        }
        let text = try #require(failure, "the disk never filled")
        #expect(text.contains(#""retryable":true"#) && text.contains("errno 28"), "\(text)")
        // Everything the app was shown is in the vault (reads work on a full disk).
        let (_, h) = try call(server.h2c + "/v1/worlds/playground/sessions/full?limit=1000")
        let stored = Set(((try? JSONSerialization.jsonObject(with: Data(h.utf8)) as? [String: Any])?["events"] as? [[String: Any]] ?? [])
            .map { UInt64($0["seq"] as? Int ?? 0) })
        #expect(seen.allSatisfy { stored.contains($0) } && !seen.isEmpty, "shown but not stored: \(seen.filter { !stored.contains($0) })")
    }

    @Test("a stalled runtime (SIGSTOP) holds the app's streams without growing memory; they finish on SIGCONT")
    func stalledRuntime() throws {
        let server = try BrokerServer.start(ThreeWayTests().config().with { $0.runtimeWorkers = 0 })
        defer { server.stop() }
        let dir = NSTemporaryDirectory() + "soulfra-3way-stall-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{}".write(toFile: dir + "/empty.json", atomically: true, encoding: .utf8)
        let runtime = Process()
        runtime.executableURL = URL(fileURLWithPath: soulfraBinary)
        runtime.arguments = ["runtime", "--config", dir + "/empty.json", "--broker", server.unixPath!, "--workers", "1"]
        runtime.environment = ["SOULFRA_RUNTIME_TOKEN": testTokens.runtime]
        runtime.standardError = FileHandle.nullDevice
        try runtime.run()
        defer {
            kill(runtime.processIdentifier, SIGCONT)
            kill(runtime.processIdentifier, SIGKILL)
            runtime.waitUntilExit()
        }
        let agent = try AgentRunner(server: server, mode: .full, pacingMilliseconds: 5)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 1 { usleep(10_000) }
        kill(runtime.processIdentifier, SIGSTOP)
        // Ten apps ask while the runtime is stopped: their streams wait, the broker holds a bounded amount.
        let c = try server.h2Client()
        var ids: [Int32] = []
        for i in 0..<10 {
            let id = try #require(c.post("/v1/worlds/playground/messages", headers: [("accept", "text/event-stream"), ("x-soulfra-session", "w\(i)")]))
            c.send(id, #"{"text":"tell me about mars"}"#, end: true)
            ids.append(id)
        }
        var text: [Int32: String] = [:]
        pumpH2(c, milliseconds: 1_000, { e in if case .data(let s, let d) = e { text[s, default: ""] += d.text } }, until: { false })
        #expect(text.values.allSatisfy { !$0.contains(#""event":"token""#) }, "no reply while the runtime is stopped")
        let held = try #require(server.snapshotNow()).queueBytesByKind[Int(PeerKind.runtime.rawValue)]
        #expect(held < 64 << 10, "the broker holds \(held) bytes for the stalled runtime")
        kill(runtime.processIdentifier, SIGCONT)
        #expect(pumpH2(c, milliseconds: 15_000, { e in if case .data(let s, let d) = e { text[s, default: ""] += d.text } },
                       until: { ids.allSatisfy { text[$0]?.contains(#""event":"done""#) == true } }), "\(text.mapValues { $0.count })")
    }
}

extension ServerConfig {
    /// This config with `change` applied.
    func with(_ change: (inout ServerConfig) -> Void) -> ServerConfig {
        var c = self
        change(&c)
        return c
    }
}

@Suite("The 3-way stream over NDJSON", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ThreeWayNDJSONTests {
    @Test("a full-duplex NDJSON stream carries seq in every event and ends after its last turn; ?after= replays what followed")
    func ndjsonResume() throws {
        let server = try BrokerServer.start(ThreeWayTests().config())
        defer { server.stop() }
        let agent = try AgentRunner(server: server, mode: .full)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        let url = server.h2c + "/v1/worlds/playground/streams"
        let body = #"{"text":"hello"}"# + "\n" + #"{"text":"tell me about mars"}"# + "\n"
        let (status, out) = try call(url, ["--http2-prior-knowledge", "-H", "x-soulfra-session: nd", "--data-binary", body])
        #expect(status == 200)
        let events = out.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        let seqs = events.compactMap { $0["seq"] as? Int }
        #expect(seqs.count == events.count && events.filter { $0["event"] as? String == "done" }.count == 2, "\(events.count) events: \(out.replacingOccurrences(of: "\n", with: " | ").suffix(300))")
        #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
        // Resuming after the first reply's done: exactly the second reply, from the vault.
        let firstDone = try #require(events.first { $0["event"] as? String == "done" }?["seq"] as? Int)
        let (_, rest) = try call(url + "?after=\(firstDone)", ["--http2-prior-knowledge", "-H", "x-soulfra-session: nd", "--data-binary", ""])
        let replayed = rest.split(separator: "\n").compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
            .compactMap { $0["seq"] as? Int }
        #expect(replayed == seqs.filter { $0 > firstDone }, "\(rest)")
    }
}

extension ThreeWayNDJSONTests {
    @Test("WebSocket: every event carries seq; a new connection with ?after= gets what followed from the vault, no gap, no duplicate")
    func webSocketResume() throws {
        let server = try BrokerServer.start(ThreeWayTests().config())
        defer { server.stop() }
        let agent = try AgentRunner(server: server, mode: .full)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        func open(_ query: String) throws -> RawSocket {
            let s = try RawSocket(port: server.gatewayPort)
            s.write("GET /v1/worlds/playground/ws?access_token=\(TestKeys.playground)\(query) HTTP/1.1\r\nHost: t\r\n"
                    + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    + "Sec-WebSocket-Version: 13\r\nx-soulfra-session: wsr\r\n\r\n")
            return s
        }
        func events(_ bytes: [UInt8]) -> [[String: Any]] {
            serverFrames(bytes).filter { $0.opcode == .text }
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.payload)) as? [String: Any] }
        }
        // Two turns on one connection; read until both replies are done, then drop the connection (no close).
        let first = try open("")
        for text in ["hello", "tell me about mars"] {
            var frame: [UInt8] = []
            WebSocket.encodeFrame(.text, payload: Array(#"{"text":"\#(text)"}"#.utf8), mask: (1, 2, 3, 4), into: &frame)
            first.write(frame)
        }
        var seen: [[String: Any]] = []
        _ = first.readAll(milliseconds: 10_000, until: { got in
            guard let end = got.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound else { return false }
            seen = events(Array(got[end...]))
            return seen.filter { $0["event"] as? String == "done" }.count == 2
        })
        shutdown(first.fd, Int32(SHUT_RDWR))  // the connection drops mid-stream, no close handshake
        let seqs = seen.compactMap { $0["seq"] as? Int }
        #expect(seqs.count == seen.count && seen.filter { $0["event"] as? String == "done" }.count == 2,
                "\(seen.count) events, \(seqs.count) with seq")
        #expect(seqs == seqs.sorted() && Set(seqs).count == seqs.count)
        // Reconnecting after the first reply's done: the second reply's events, exactly, from the vault.
        let firstDone = try #require(seen.first { $0["event"] as? String == "done" }?["seq"] as? Int)
        let again = try open("&after=\(firstDone)")
        var replayed: [Int] = []
        let want = seqs.filter { $0 > firstDone }
        _ = again.readAll(milliseconds: 10_000, until: { got in
            guard let end = got.firstRange(of: Array("\r\n\r\n".utf8))?.upperBound else { return false }
            replayed = events(Array(got[end...])).compactMap { $0["seq"] as? Int }
            return replayed.count >= want.count
        })
        #expect(!want.isEmpty && replayed == want, "replayed \(replayed), wanted \(want)")
    }
}

@Suite("The 3-way stream with an app that never reads", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ThreeWaySlowAppTests {
    @Test("an app that floods messages and never reads: the instance holds a bounded number of inputs and events")
    func boundedInstance() throws {
        // A small stream window, so that the messages the app floods do not all fit in it.
        let window = 16
        let server = try BrokerServer.start(ThreeWayTests().config().with { $0.broker.streamCreditFrames = UInt32(window) })
        defer { server.stop() }
        let agent = try AgentRunner(server: server, mode: .full)
        defer { agent.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/streams", headers: [("x-soulfra-session", "flood")]))
        // 60 messages, each a ~30-event turn (≈ 1,800 events), and not one byte read.
        for i in 0..<60 { c.send(id, #"{"text":"tell me about mars \#(i)"}"# + "\n") }
        c.flush()
        // Until the instance holds events (30 s at most on a loaded machine), then a while longer for the peaks.
        for _ in 0..<3_000 where agent.peakHeldEvents.load(ordering: .relaxed) == 0 { usleep(10_000) }
        usleep(2_000_000)
        let inputs = agent.peakInputs.load(ordering: .relaxed)
        let held = agent.peakHeldEvents.load(ordering: .relaxed)
        #expect(held > 0, "the instance never held anything: the test did not load it")
        // What credit already allowed in (one window) comes on top of each bound.
        #expect(inputs <= AgentInstance.maxQueuedInputs + window, "\(inputs) messages held waiting")
        // (+2: a turn's user message and end are stored outside the runtime's credit; no turn starts past the bound.)
        #expect(held <= AgentInstance.maxHeldEvents + window + 2, "\(held) events held for an app that does not read")
    }
}
