import Foundation
import Testing
import SoulfraPeer
import SoulfraPeerLink
import SoulfraRuntime
import SoulfraServer
import SoulfraWire

@Suite("Runtime workers through the broker", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct RuntimeIntegrationTests {
    let cal = AgentPersona(name: "cal", style: "cheerful", greeting: "Hi, I'm Cal!", topics: ["space"],
                           knowledge: ["mars": "Mars is the fourth planet from the Sun."])

    /// Asks for one reply on `inst`; returns the stream, and collects what came back into `r`.
    func ask(_ inst: PeerConnection, _ request: AgentRequest) -> UInt32 {
        let s = inst.link.open(Open(target: .runtime, world: "playground", session: "u1"))
        _ = request.json.withUnsafeBytes { inst.link.send(stream: s, payload: $0, end: true) }
        inst.flush()
        return s
    }

    func replies(_ r: Recorder, _ s: UInt32) -> [AgentReply] {
        r.data.filter { $0.0 == s }.compactMap { d in d.1.withUnsafeBytes { AgentReply.parse($0) } }
    }

    @Test("the daemon's own workers answer an instance's agent request token by token, ending with usage")
    func inProcessWorkers() throws {
        let server = try BrokerServer.start(testConfig { $0.runtimeWorkers = 2 })
        defer { server.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 2 { usleep(10_000) }
        let r = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: r)
        let s = ask(inst, AgentRequest(persona: cal, input: "tell me about mars"))
        #expect(pumpUntil([inst], milliseconds: 10_000) { r.closedStreams.contains { $0.0 == s } || replies(r, s).contains { if case .done = $0 { true } else { false } } })
        let got = replies(r, s)
        let text = got.compactMap { if case .token(let t, _) = $0 { t } else { nil } }.joined()
        #expect(text == PersonaEngine.reply(cal, input: "tell me about mars", history: []).joined())
        guard case .done(let usage)? = got.last else { Issue.record("no usage: \(got)"); return }
        #expect(usage.tokensOut == got.count - 1 && usage.tokensIn == 4)
        for _ in 0..<3_000 where server.runtime.counters.replies < 1 { usleep(10_000) }
        #expect(server.runtime.counters.replies == 1)
    }

    @Test("closing the stream mid-reply stops the generation in the worker")
    func cancellation() throws {
        let server = try BrokerServer.start(testConfig { $0.runtimeWorkers = 1 })
        defer { server.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 1 { usleep(10_000) }
        let r = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: r)
        let s = ask(inst, AgentRequest(persona: cal, input: "tell me about mars", pacingMilliseconds: 200))
        #expect(pumpUntil([inst], milliseconds: 10_000) { !replies(r, s).isEmpty })
        inst.link.closeStream(s, code: .cancelled, reason: "the app went away")
        inst.flush()
        var cancelled: UInt64 = 0
        for _ in 0..<300 where cancelled == 0 {
            usleep(10_000)
            cancelled = server.runtime.counters.cancelled
        }
        #expect(cancelled == 1)
        #expect(server.runtime.counters.replies == 0)
    }

    @Test("soulfra runtime, a process of its own, attaches and answers; SIGTERM stops it")
    func separateProcess() throws {
        let server = try BrokerServer.start(testConfig { $0.loopCount = 2 })
        defer { server.stop() }
        let dir = NSTemporaryDirectory() + "soulfra-runtimeproc-\(getpid())"
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try "{}".write(toFile: dir + "/empty.json", atomically: true, encoding: .utf8)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: soulfraBinary)
        p.arguments = ["runtime", "--config", dir + "/empty.json", "--broker", server.unixPath!, "--workers", "2"]
        p.environment = ["SOULFRA_RUNTIME_TOKEN": testTokens.runtime]
        let err = Pipe()
        p.standardError = err
        try p.run()
        defer { if p.isRunning { kill(p.processIdentifier, SIGKILL); p.waitUntilExit() } }
        // Two workers, one link per loop each.
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 4 { usleep(10_000) }
        #expect(server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] == 4)
        let r = Recorder()
        let inst = try server.connect(.instance, world: "arena", recorder: r)
        let s = inst.link.open(Open(target: .runtime, world: "arena", session: "u2"))
        _ = AgentRequest(persona: cal, input: "space").json.withUnsafeBytes { inst.link.send(stream: s, payload: $0, end: true) }
        #expect(pumpUntil([inst], milliseconds: 10_000) { replies(r, s).contains { if case .done = $0 { true } else { false } } })
        kill(p.processIdentifier, SIGTERM)
        for _ in 0..<500 where p.isRunning { usleep(10_000) }
        #expect(!p.isRunning && p.terminationStatus == 0)
        if p.isRunning { kill(p.processIdentifier, SIGKILL) }  // a read to the end waits for the writer to go
        p.waitUntilExit()
        let log = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        #expect(log.contains("runtime stopped: 1 replies"), "\(log)")
    }
}
