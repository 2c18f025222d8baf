import Foundation
import Synchronization
import Testing
import SoulfraClient
import SoulfraPeer
import SoulfraPeerLink
import SoulfraRuntime
import SoulfraServer
import SoulfraWire

/// The loopback OpenAI-compatible server (`Tests/tools/fake-openai.py`): its port, and what it logged.
final class FakeOpenAI: @unchecked Sendable {
    let process = Process()
    let port: UInt16
    private let logged = Mutex<String>("")

    init() throws {
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = [repoRoot.appendingPathComponent("Tests/tools/fake-openai.py").path]
        let out = Pipe(), err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try process.run()
        var line = Data()
        while !line.contains(UInt8(ascii: "\n")) {
            let d = out.fileHandleForReading.availableData
            if d.isEmpty { throw ClientError("the fake OpenAI server did not start") }
            line += d
        }
        port = UInt16(String(decoding: line, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        let handle = err.fileHandleForReading
        Thread { [self] in
            while true {
                let d = handle.availableData
                if d.isEmpty { return }
                logged.withLock { $0 += String(decoding: d, as: UTF8.self) }
            }
        }.start()
    }

    var log: String { logged.withLock { $0 } }

    /// The log once `condition` holds for it, or after 30 s (its lines arrive on a pipe, a little after the fact).
    func log(until condition: (String) -> Bool) -> String {
        for _ in 0..<3_000 where !condition(log) { usleep(10_000) }
        return log
    }

    /// How many requests for `text` the server saw (waiting, bounded, for `expected`).
    func requests(_ text: String, expected: Int) -> Int {
        let count = { (l: String) in l.components(separatedBy: "\n").filter { $0.hasPrefix("request ") && $0.hasSuffix(text) }.count }
        return count(log { count($0) >= expected })
    }

    /// Kills it by PID (SIGKILL: the test process may hold SIGTERM blocked, and a child inherits that mask).
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

@Suite("The runtime's openai backend against a loopback server", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct OpenAIBackendTests {
    let persona = AgentPersona(name: "cal", style: "cheerful")

    func withRuntime(_ body: (BrokerServer, FakeOpenAI) throws -> Void) throws {
        let fake = try FakeOpenAI()
        defer { fake.stop() }
        let server = try BrokerServer.start(testConfig {
            $0.runtimeWorkers = 1
            $0.openAIBaseURL = "http://127.0.0.1:\(fake.port)"
            $0.openAIModel = "test-model"
        })
        defer { server.stop() }
        for _ in 0..<3_000 where (server.snapshotNow()?.linksByKind[Int(PeerKind.runtime.rawValue)] ?? 0) < 1 { usleep(10_000) }
        try body(server, fake)
    }

    /// Asks for a reply with the openai backend; returns the replies once the stream ended (bounded).
    func ask(_ server: BrokerServer, _ text: String, until: ((PeerConnection, UInt32, Recorder) -> Bool)? = nil) throws -> [AgentReply] {
        let r = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: r)
        defer { inst.close() }
        var req = AgentRequest(persona: persona, input: text)
        req.backend = "openai"
        let s = inst.link.open(Open(target: .runtime, world: "playground", session: "o"))
        _ = req.json.withUnsafeBytes { inst.link.send(stream: s, payload: $0, end: true) }
        pumpUntil([inst], milliseconds: 15_000) {
            if let until { return until(inst, s, r) }
            return r.closedStreams.contains { $0.0 == s }
                || r.data.contains { $0.0 == s && $0.1.withUnsafeBytes { b in AgentReply.parse(b).map { if case .token = $0 { false } else { true } } ?? false } }
        }
        return r.data.filter { $0.0 == s }.compactMap { d in d.1.withUnsafeBytes { AgentReply.parse($0) } }
    }

    func text(_ replies: [AgentReply]) -> String {
        replies.compactMap { if case .token(let t, _) = $0 { t } else { nil } }.joined()
    }

    @Test("a streamed completion becomes tokens and usage; lines split mid-JSON are put back together")
    func streams() throws {
        try withRuntime { server, fake in
            let plain = try ask(server, "hello there")
            #expect(text(plain) == "echo: hello there")
            guard case .done(let u)? = plain.last else { Issue.record("no done: \(plain)"); return }
            #expect(u.tokensIn == 7 && u.tokensOut == 3)
            #expect(text(try ask(server, "split me please")) == "echo: split me please")
            #expect(fake.requests("hello there", expected: 1) == 1)
        }
    }

    @Test("429 and 5xx are retried with backoff before the first token; a failure is an error event with a stable code")
    func retriesAndErrors() throws {
        try withRuntime { server, fake in
            let retried = try ask(server, "429 then fine")
            #expect(text(retried) == "echo: 429 then fine", "\(retried)")
            #expect(fake.requests("429 then fine", expected: 2) == 2)
            let failed = try ask(server, "always 500")
            #expect(failed.last == .error(RuntimeError(code: "upstream_status", message: "the model endpoint answered 500", retryable: true)))
            #expect(fake.requests("always 500", expected: 4) == 4, "one try and three retries")
            let midway = try ask(server, "fail midway now")
            #expect(text(midway) == "echo: fail ")
            guard case .error(let e)? = midway.last else { Issue.record("no error: \(midway)"); return }
            #expect(e.code == "upstream_error" && e.retryable && e.message.contains("the model crashed"))
        }
    }

    @Test("closing the stream aborts the upstream request (the server sees the client go)")
    func cancellation() throws {
        try withRuntime { server, fake in
            _ = try ask(server, "slow please") { inst, s, r in
                guard r.data.contains(where: { $0.0 == s }) else { return false }
                inst.link.closeStream(s, code: .cancelled, reason: "the app went away")
                inst.flush()
                return true
            }
            let log = fake.log { $0.contains("client gone") }
            #expect(log.contains("client gone"), "\(log)")
            for _ in 0..<300 where server.runtime.counters.cancelled < 1 { usleep(10_000) }
            #expect(server.runtime.counters.cancelled == 1)
        }
    }
}
