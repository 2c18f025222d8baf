import SoulfraLimits
import Foundation
import Synchronization
import Testing
import SoulfraBroker
import SoulfraClient
import SoulfraGateway
import SoulfraHTTP
import SoulfraHTTP2
import SoulfraKeys
import SoulfraPeer
import SoulfraPeerLink
import SoulfraServer
import SoulfraWire

let haveCurl = FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")
let haveNghttp = FileManager.default.isExecutableFile(atPath: "/usr/bin/nghttp")

@Suite("Gateway over real sockets", .enabled(if: uringAvailable && haveCurl), .serialized)
struct GatewayTests {
    @Test("unary messages over HTTP/1.1, h2c and TLS (ALPN h2 and http/1.1), with the JSON reply of one instance")
    func unaryEveryProtocol() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "alpha")
        defer { inst.stop() }
        let url = "/v1/worlds/playground/messages"
        for extra in [["--http1.1"], ["--http2-prior-knowledge"]] {
            let (status, body) = try call(server.h2c + url, extra + ["-d", #"{"text":"hi"}"#])
            #expect(status == 200, "\(extra): \(body)")
            #expect(body.contains(#""instance":"alpha""#) && body.contains(#""bytes":13"#), "\(body)")
        }
        for extra in [["--http2"], ["--http1.1"]] {
            let (status, out) = try call(server.https + url, extra + ["-k", "-i", "-d", "{}"])
            #expect(status == 200, "\(extra): \(out)")
            #expect(out.hasPrefix(extra == ["--http2"] ? "HTTP/2 200" : "HTTP/1.1 200"), "\(out)")
        }
        // An untrusted certificate fails the handshake on the client's side, and the daemon carries on.
        let (rc, _) = try run("/usr/bin/curl", ["-s", "-m", "5", "--http2", server.https + url])
        #expect(rc != 0)
        #expect(try call(server.h2c + url, ["-d", "{}"]).0 == 200)
    }

    @Test("nghttp (HTTP/2) on messages, streams, rooms and error routes")
    func nghttpRoutes() throws {
        guard haveNghttp else { return }
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "beta")
        defer { inst.stop() }
        let dir = NSTemporaryDirectory() + "soulfra-nghttp-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try #"{"text":"hi"}"#.write(toFile: dir + "/msg.json", atomically: true, encoding: .utf8)
        try "{\"a\":1}\n{\"b\":2}\n".write(toFile: dir + "/lines.ndjson", atomically: true, encoding: .utf8)
        func nghttp(_ path: String, data: String?, extra: [String] = []) throws -> String {
            var args = ["-n", "-s", "-v", "-t", "5", "-H", "authorization: Bearer \(TestKeys.playground)"] + extra
            if let data { args += ["-d", data] }
            let (_, out) = try run("/usr/bin/nghttp", args + [server.h2c + path], timeoutSeconds: 10)
            return out
        }
        let msg = try nghttp("/v1/worlds/playground/messages", data: dir + "/msg.json")
        #expect(msg.contains(":status: 200"), "\(msg)")
        let sse = try nghttp("/v1/worlds/playground/messages", data: dir + "/msg.json", extra: ["-H", "accept: text/event-stream"])
        #expect(sse.contains(":status: 200") && sse.contains("content-type: text/event-stream"), "\(sse)")
        let stream = try nghttp("/v1/worlds/playground/streams", data: dir + "/lines.ndjson")
        #expect(stream.contains(":status: 200") && stream.contains("application/x-ndjson"), "\(stream)")
        let publish = try nghttp("/v1/worlds/playground/rooms/lobby", data: dir + "/msg.json")
        #expect(publish.contains(":status: 202"), "\(publish)")
        #expect(try nghttp("/v1/worlds/playground/nothing", data: nil).contains(":status: 404"))
        #expect(try nghttp("/v1/worlds/playground/ws", data: nil).contains(":status: 426"))
        #expect(try nghttp("/v1/worlds/playground/analytics", data: nil).contains(":status: 403"), "the key lacks analytics_read")
    }

    @Test("SSE: events reach the client as the instance produces them, before the reply ends")
    func sseIncremental() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let release = Atomic<Bool>(false)
        let stepper = Stepper()
        let inst = try InstanceRunner(server: server, name: "stepper", delegate: stepper) { session in
            stepper.turn(session, release: release.load(ordering: .acquiring))
        }
        defer { inst.stop() }
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/messages", headers: [("accept", "text/event-stream")]))
        c.send(id, #"{"stream":true}"#, end: true)
        var received = ""
        var ended = false
        #expect(pumpH2(c, { e in
            if case .data(_, let d) = e { received += d.text }
            if case .endStream = e { ended = true }
        }, until: { received.contains("first") }))
        #expect(!ended && !received.contains("second"), "the first event arrived on its own: \(received)")
        release.store(true, ordering: .releasing)
        #expect(pumpH2(c, { e in
            if case .data(_, let d) = e { received += d.text }
            if case .endStream = e { ended = true }
        }, until: { ended }))
        #expect(received == "data: first\n\ndata: second\n\n", "\(received)")
    }

    @Test("full-duplex NDJSON stream: each line echoed before the next is sent, on one stream")
    func fullDuplex() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "duplex")
        defer { inst.stop() }
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/streams"))
        var received = ""
        var status = ""
        for i in 0..<5 {
            c.send(id, "{\"n\":\(i)}\n")
            #expect(pumpH2(c, { e in
                if case .data(_, let d) = e { received += d.text }
                if case .headers(_, let h) = e { status = h.first { $0.name == ":status" }?.value ?? "" }
            }, until: { received.components(separatedBy: "\n").count == i + 2 }), "echo \(i) came back while the stream stayed open")
        }
        #expect(status == "200")
        #expect(received.hasPrefix(#"{"instance":"duplex","echo":{"n":0}}"#), "\(received)")
        c.send(id, "", end: true)
        var ended = false
        #expect(pumpH2(c, { e in if case .endStream = e { ended = true } }, until: { ended }))
    }

    @Test("WebSocket: upgrade, text round trip, close")
    func webSocketRoundTrip() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "ws")
        defer { inst.stop() }
        let s = try RawSocket(port: server.gatewayPort)
        s.write("GET /v1/worlds/playground/ws?access_token=\(TestKeys.playground) HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\n"
                + "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        let (head, _) = s.readAll(until: { $0.text.contains("\r\n\r\n") })
        #expect(head.text.hasPrefix("HTTP/1.1 101"), "\(head.text)")
        #expect(head.text.lowercased().contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="))
        var frame: [UInt8] = []
        WebSocket.encodeFrame(.text, payload: Array(#"{"say":"hello"}"#.utf8), mask: (1, 2, 3, 4), into: &frame)
        s.write(frame)
        var messages: [String] = []
        _ = s.readAll(until: { got in
            messages = serverFrames(got).filter { $0.opcode == .text }.map { $0.payload.text }
            return !messages.isEmpty
        })
        #expect(messages == [#"{"instance":"ws","echo":{"say":"hello"}}"#])
        var close: [UInt8] = []
        WebSocket.encodeFrame(.close, payload: [0x03, 0xE8], mask: (9, 9, 9, 9), into: &close)
        s.write(close)
        let (_, closed) = s.readAll()
        #expect(closed, "the gateway closed the connection after the close handshake")
    }

    @Test("rooms: a subscriber (SSE) gets what is published")
    func rooms() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let c = try server.h2Client()
        _ = try #require(c.request(method: "GET", authority: "t", path: "/v1/worlds/playground/rooms/lobby",
                                   headers: [("authorization", "Bearer \(TestKeys.playground)")], endStream: true))
        var got = ""
        var status = ""
        #expect(pumpH2(c, { e in if case .headers(_, let h) = e { status = h.first { $0.name == ":status" }?.value ?? "" } },
                       until: { !status.isEmpty }))
        #expect(status == "200")
        #expect(try call(server.h2c + "/v1/worlds/playground/rooms/lobby", ["-d", "goal!"]).0 == 202)
        #expect(pumpH2(c, { e in if case .data(_, let d) = e { got += d.text } }, until: { got.contains("goal!") }))
        #expect(got == "data: goal!\n\n")
    }

    @Test("auth and errors: 401, 403, 404, 405, 413, 400, 429 with both rate-limit header generations, all JSON")
    func errors() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "e")
        defer { inst.stop() }
        let url = server.h2c + "/v1/worlds/playground/messages"
        func code(_ r: (Int, String)) -> String {
            r.1.components(separatedBy: #""code":""#).dropFirst().first?.components(separatedBy: "\"").first ?? ""
        }
        let none = try call(url, key: nil, ["-d", "{}"])
        #expect(none.0 == 401 && code(none) == "unauthorized")
        var typo = Array(TestKeys.playground)
        typo[20] = typo[20] == "a" ? "b" : "a"
        #expect(try call(url, key: String(typo), ["-d", "{}"]).0 == 401, "a mistyped key fails its checksum")
        let other = try call(server.h2c + "/v1/worlds/arena/messages", ["-d", "{}"])
        #expect(other.0 == 403 && code(other) == "wrong_world", "a key never reaches another world")
        let perm = try call(server.h2c + "/v1/worlds/playground/analytics")
        #expect(perm.0 == 403 && code(perm) == "insufficient_permissions")
        #expect(try call(server.h2c + "/v1/nope").0 == 404)
        #expect(try call(url).0 == 405)
        let big = String(repeating: "x", count: 2 << 20)
        let path = NSTemporaryDirectory() + "soulfra-big-\(getpid()).json"
        try big.write(toFile: path, atomically: true, encoding: .utf8)
        for p in [["--http1.1"], ["--http2-prior-knowledge"]] {
            let r = try call(url, p + ["--data-binary", "@" + path])
            #expect(r.0 == 413 && code(r) == "payload_too_large", "\(p)")
        }
        #expect(code(try call(url, ["-d", "not json"])) == "invalid_request")
        // Key 3: 1 request/s, burst 2. The three go from one curl on one connection, well inside the second a
        // token takes to come back (three processes could take longer than that on a loaded machine).
        let (_, out) = try run("/usr/bin/curl", ["-s", "-m", "10", "-i", "-H", "authorization: Bearer \(TestKeys.limited)", "-d", "{}",
                                                 "-w", "\n@@%{http_code}@@\n", url, url, url])
        let parts = out.components(separatedBy: "@@")
        let answers = stride(from: 0, to: parts.count - 1, by: 2).map { (status: Int(parts[$0 + 1]) ?? 0, text: parts[$0].lowercased()) }
        let statuses = answers.map(\.status)
        let limited = answers.first { $0.status == 429 }?.text ?? ""
        #expect(statuses == [200, 200, 429])
        #expect(limited.contains("retry-after: 1"))
        #expect(limited.contains(#"ratelimit-policy: "burst";q=2;w=1"#) && limited.contains(#"ratelimit: "burst";r=0;t=1"#))
        #expect(limited.contains("ratelimit-limit: 2") && limited.contains("ratelimit-remaining: 0") && limited.contains(#""code":"rate_limited""#))
        // Every refusal is counted once, by its code.
        let counters = try server.freshGatewayCounters()
        func errors(_ c: GatewayError.Code) -> UInt64 { counters.errors(c) }
        #expect(errors(.unauthorized) == 2 && errors(.wrongWorld) == 1 && errors(.insufficientPermissions) == 1
                && errors(.notFound) == 1 && errors(.methodNotAllowed) == 1 && errors(.payloadTooLarge) == 2
                && errors(.invalidRequest) == 1 && errors(.rateLimited) == 1, "\(counters.errors)")
    }

    @Test("no instance: 503 with Retry-After; a request whose instance dies is retried once on another")
    func failover() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let url = server.h2c + "/v1/worlds/playground/messages"
        let r = try call(url, ["-i", "-d", "{}"])
        #expect(r.0 == 503 && r.1.lowercased().contains("retry-after: 1") && r.1.contains("no_healthy_instance"))
        let a = try InstanceRunner(server: server, name: "a")
        let b = try InstanceRunner(server: server, name: "b")
        defer { a.stop(); b.stop() }
        // Affinity: one session stays on one instance.
        var served: Set<String> = []
        for _ in 0..<6 {
            let (s, body) = try call(url, ["-H", "x-soulfra-session: user-7", "-d", "{}"])
            #expect(s == 200)
            served.insert(body.contains(#""instance":"a""#) ? "a" : "b")
        }
        #expect(served.count == 1, "session user-7 stayed on one instance")
        // Its instance dies: the session is re-pinned to the other.
        let pinned = served.first!
        (pinned == "a" ? a : b).stop()
        let (s2, body2) = try call(url, ["-H", "x-soulfra-session: user-7", "-d", #"{"session":"user-7"}"#])
        #expect(s2 == 200 && body2.contains(#""instance":"\#(pinned == "a" ? "b" : "a")""#), "\(body2)")
        (pinned == "a" ? b : a).stop()
        #expect(try call(url, ["-d", "{}"]).0 == 503)
    }

    @Test("round-robin selected for one world alternates its instances; other worlds keep least-outstanding")
    func roundRobin() throws {
        let server = try BrokerServer.start(gatewayConfig { $0.balancerByWorld = ["playground": .roundRobin] })
        defer { server.stop() }
        let a = try InstanceRunner(server: server, name: "a")
        let b = try InstanceRunner(server: server, name: "b")
        defer { a.stop(); b.stop() }
        var order: [String] = []
        for _ in 0..<6 {
            let (s, body) = try call(server.h2c + "/v1/worlds/playground/messages", ["-d", "{}"])
            #expect(s == 200)
            order.append(body.contains(#""instance":"a""#) ? "a" : "b")
        }
        #expect(order == ["a", "b", "a", "b", "a", "b"] || order == ["b", "a", "b", "a", "b", "a"], "\(order)")
    }

    @Test("an instance killed under load: every request ends (200, or 503 once none is left), none hangs")
    func killUnderLoad() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let hold = Atomic<Bool>(true)
        let slow = HoldingInstance(name: "slow")
        let doomed = try InstanceRunner(server: server, name: "slow", delegate: slow) { s in
            slow.turn(s, hold: hold.load(ordering: .acquiring))
        }
        let healthy = try InstanceRunner(server: server, name: "healthy")
        defer { healthy.stop() }
        let c = try server.h2Client()
        var open: Set<Int32> = []
        for _ in 0..<40 {
            let id = try #require(c.post("/v1/worlds/playground/messages"))
            c.send(id, "{}", end: true)
            open.insert(id)
        }
        var statuses: [String] = []
        var bodies = ""
        func record(_ e: H2Event) {
            switch e {
            case .headers(_, let h): statuses.append(h.first { $0.name == ":status" }?.value ?? "")
            case .data(_, let d): bodies += d.text
            case .closed(let id, _): open.remove(id)
            default: break
            }
        }
        // Wait until the slow instance holds some requests unanswered, then kill it.
        #expect(pumpH2(c, record, until: { slow.heldCount.load(ordering: .acquiring) > 0 }))
        doomed.stop()
        #expect(pumpH2(c, milliseconds: 10_000, record, until: { open.isEmpty }), "all 40 requests finished; open \(open.sorted())")
        #expect(try server.freshGatewayCounters().retries == UInt64(slow.heldCount.load(ordering: .acquiring)), "each held request was retried once")
        #expect(statuses.count == 40 && statuses.allSatisfy { $0 == "200" }, "\(statuses)")
        #expect(!bodies.contains(#""instance":"slow""#), "held requests were retried on the healthy instance")
    }

    @Test("a stream whose instance dies ends with a retryable error event; the next stream goes to another instance")
    func streamInstanceDies() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let first = try InstanceRunner(server: server, name: "first")
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/streams"))
        var got = ""
        c.send(id, "{\"x\":1}\n")
        #expect(pumpH2(c, { e in if case .data(_, let d) = e { got += d.text } }, until: { got.contains(#""instance":"first""#) }))
        let second = try InstanceRunner(server: server, name: "second")
        defer { second.stop() }
        first.stop()
        var ended = false
        #expect(pumpH2(c, { e in
            if case .data(_, let d) = e { got += d.text }
            if case .endStream = e { ended = true }
        }, until: { ended }))
        #expect(got.contains(#"{"event":"error","error":{"code":"instance_gone""#) && got.contains(#""retryable":true"#), "\(got)")
        let again = try #require(c.post("/v1/worlds/playground/streams"))
        var next = ""
        c.send(again, "{\"x\":2}\n")
        #expect(pumpH2(c, { e in if case .data(let s, let d) = e, s == again { next += d.text } },
                       until: { next.contains("echo") }))
        #expect(next.contains(#""instance":"second""#))
    }

    @Test("a revoked key ends its open stream with an error event and is refused afterwards")
    func revokeMidStream() throws {
        let config = gatewayConfig()
        let server = try BrokerServer.start(config)
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "r")
        defer { inst.stop() }
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/streams"))
        var got = ""
        c.send(id, "{\"x\":1}\n")
        #expect(pumpH2(c, { e in if case .data(_, let d) = e { got += d.text } }, until: { got.contains("echo") }))
        var revoked = config
        revoked.keys.removeAll { $0.keyID == 1 }
        revoked.gatewayKeys.removeAll { $0.id == 1 }
        server.install(access: revoked.accessTable, keys: revoked.keyTable)
        var ended = false
        #expect(pumpH2(c, { e in
            if case .data(_, let d) = e { got += d.text }
            if case .endStream = e { ended = true }
            if case .closed = e { ended = true }
        }, until: { ended }))
        #expect(got.contains(#""event":"error""#) && got.contains("key_disabled"), "got: \(got)")
        #expect(try call(server.h2c + "/v1/worlds/playground/messages", ["-d", "{}"]).0 == 401)
    }

    @Test("a key at its concurrent-stream quota gets 429 too_many_streams; a slot frees when a stream ends")
    func streamQuota() throws {
        let server = try BrokerServer.start(gatewayConfig { c in
            c.keys = c.keys.map { $0.keyID == 1 ? KeyQuota(keyID: 1, world: "playground", maxStreams: 1) : $0 }
        })
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "q")
        defer { inst.stop() }
        let c = try server.h2Client()
        func open() -> Int32? {
            c.post("/v1/worlds/playground/streams")
        }
        var status: [Int32: String] = [:]
        var body = ""
        let first = try #require(open())
        #expect(pumpH2(c, { if case .headers(let id, let h) = $0 { status[id] = h.first { $0.name == ":status" }?.value } },
                       until: { status[first] != nil }))
        let second = try #require(open())
        #expect(pumpH2(c, { e in
            if case .headers(let id, let h) = e { status[id] = h.first { $0.name == ":status" }?.value }
            if case .data(let id, let d) = e, id == second { body += d.text }
        }, until: { status[second] != nil && body.contains("}}") }))
        #expect(status[first] == "200" && status[second] == "429", "\(status)")
        #expect(body.contains(#""code":"too_many_streams""#), "\(body)")
        c.send(first, "", end: true)
        var firstClosed = false
        pumpH2(c, { if case .closed(let id, _) = $0, id == first { firstClosed = true } }, until: { firstClosed })
        let third = try #require(open())
        #expect(pumpH2(c, { if case .headers(let id, let h) = $0 { status[id] = h.first { $0.name == ":status" }?.value } },
                       until: { status[third] != nil }))
        #expect(status[third] == "200")
    }

    @Test("a key paced by its frames/s quota sees a rate_limits event in its stream")
    func pacedStream() throws {
        let server = try BrokerServer.start(gatewayConfig { $0.broker.streamCreditFrames = 8 })
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "p")
        defer { inst.stop() }
        let c = try server.h2Client()
        let id = try #require(c.post("/v1/worlds/playground/streams", key: TestKeys.paced))
        var lines = ""
        for i in 0..<60 { lines += "{\"n\":\(i)}\n" }
        c.send(id, lines)
        var got = ""
        #expect(pumpH2(c, { e in if case .data(_, let d) = e { got += d.text } }, until: { got.contains("rate_limits") }))
        #expect(got.contains(#"{"event":"rate_limits","paced":true,"frames_per_second":20"#), "\(got.prefix(400))")
    }

    @Test("a client that stops reading: credit is held, the instance waits, the gateway stays bounded")
    func stalledClient() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "flood", tokens: 200_000)
        defer { inst.stop() }
        let s = try RawSocket(port: server.gatewayPort)
        var small = 4096
        setsockopt(s.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int>.size))
        s.write("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(TestKeys.playground)\r\n"
                + "Accept: text/event-stream\r\nContent-Length: 2\r\n\r\n{}")
        // Never read. The instance's 200,000 events cannot all be delivered; the gateway stops granting credit.
        var held = false
        for _ in 0..<3_000 where !held {
            usleep(10_000)
            held = (server.gatewayCounters.creditHeld) > 0
        }
        #expect(held, "the gateway held back broker credit for the stalled client")
        let snap = try #require(server.snapshotNow())
        #expect(snap.streamsOpen >= 1)
        // What the gateway holds for the client is bounded by the stream's broker credit (256 KiB) plus the
        // connection's high mark (256 KiB), with SSE framing on top — far below the 200,000 events on offer.
        let queued = server.gatewayCounters.clientQueueBytes
        #expect(queued > 0 && queued < 1 << 20, "queued for the stalled client: \(queued) bytes")
        // Others are still served.
        let other = try InstanceRunner(server: server, name: "other")
        defer { other.stop() }
        #expect(try call(server.h2c + "/v1/worlds/playground/messages", ["-d", "{}"]).0 == 200)
    }
}

/// Sends "first" at once and "second" only when released.
final class Stepper: PeerLinkDelegate, @unchecked Sendable {
    var waiting: [UInt32] = []
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard flags.contains(.endStream) else { return }
        _ = s.send(stream: stream, payload: bytes("first"))
        waiting.append(stream)
    }
    func turn(_ s: PeerLink, release: Bool) {
        guard release else { return }
        for st in waiting { _ = s.send(stream: st, payload: bytes("second"), end: true) }
        waiting.removeAll()
    }
}

/// Holds every request unanswered while `hold` is on.
final class HoldingInstance: PeerLinkDelegate, @unchecked Sendable {
    let name: String
    var held: [UInt32] = []
    let heldCount = Atomic<Int>(0)
    init(name: String) { self.name = name }
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        if flags.contains(.endStream) { held.append(stream); heldCount.store(held.count, ordering: .releasing) }
    }
    func turn(_ s: PeerLink, hold: Bool) {
        guard !hold else { return }
        for st in held { _ = s.send(stream: st, payload: bytes(#"{"instance":"\#(name)"}"#), end: true) }
        held.removeAll()
    }
}
