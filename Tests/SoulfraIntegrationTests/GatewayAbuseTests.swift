import Foundation
import Testing
import SoulfraClient
import SoulfraHTTP2
import SoulfraPeer
import SoulfraPeerLink
import SoulfraServer
import SoulfraWire

/// HTTP/2 frame bytes, by hand (RFC 9113 §4.1).
func h2Frame(type: UInt8, flags: UInt8, stream: UInt32, _ payload: [UInt8] = []) -> [UInt8] {
    let n = payload.count
    return [UInt8(n >> 16 & 0xFF), UInt8(n >> 8 & 0xFF), UInt8(n & 0xFF), type, flags,
            UInt8(stream >> 24 & 0x7F), UInt8(stream >> 16 & 0xFF), UInt8(stream >> 8 & 0xFF), UInt8(stream & 0xFF)] + payload
}

let h2Preface = Array("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".utf8)

/// The GOAWAY error code in a server's output, if it sent one.
func goawayCode(_ bytes: [UInt8]) -> UInt32? {
    var i = 0
    while i + 9 <= bytes.count {
        let len = Int(bytes[i]) << 16 | Int(bytes[i + 1]) << 8 | Int(bytes[i + 2])
        if bytes[i + 3] == 0x7, i + 9 + len <= bytes.count, len >= 8 {
            let p = i + 9
            return UInt32(bytes[p + 4]) << 24 | UInt32(bytes[p + 5]) << 16 | UInt32(bytes[p + 6]) << 8 | UInt32(bytes[p + 7])
        }
        i += 9 + len
    }
    return nil
}

@Suite("Gateway under bad input", .enabled(if: uringAvailable && haveCurl), .serialized)
struct GatewayAbuseTests {
    @Test("oversized request heads: 431 on HTTP/1.1 and on HTTP/2; others are served")
    func oversizedHeaders() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "o")
        defer { inst.stop() }
        let huge = "x-filler: " + String(repeating: "a", count: 40_000)
        let url = server.h2c + "/v1/worlds/playground/messages"
        #expect(try call(url, ["--http1.1", "-H", huge, "-d", "{}"]).0 == 431)
        let (h2status, body) = try call(url, ["--http2-prior-knowledge", "-H", huge, "-d", "{}"])
        #expect(h2status == 431 && body.contains("headers_too_large"), "an HTTP/2 header list over the limit is refused")
        #expect(try call(url, ["--http2-prior-knowledge", "-d", "{}"]).0 == 200)
    }

    @Test("invalid HTTP/2 frames get GOAWAY PROTOCOL_ERROR (or FRAME_SIZE_ERROR) and a close")
    func invalidHTTP2() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let cases: [(String, [UInt8])] = [
            ("DATA on stream 0", h2Frame(type: 0x0, flags: 0, stream: 0, [1, 2, 3])),
            ("SETTINGS with a bad length", h2Frame(type: 0x4, flags: 0, stream: 0, [0, 1, 0])),
            ("WINDOW_UPDATE of zero on the connection", h2Frame(type: 0x8, flags: 0, stream: 0, [0, 0, 0, 0])),
            ("a frame over the maximum size", h2Frame(type: 0x0, flags: 0, stream: 1, [UInt8](repeating: 0, count: 20_000))),
            ("garbage after the preface", Array(repeating: 0xFF, count: 64)),
        ]
        for (what, bytes) in cases {
            let s = try RawSocket(port: server.gatewayPort)
            s.write(h2Preface + h2Frame(type: 0x4, flags: 0, stream: 0) + bytes)
            let (out, closed) = s.readAll()
            let code = goawayCode(out)
            #expect(code == 1 || code == 6, "\(what): GOAWAY \(code.map(String.init) ?? "none")")
            #expect(closed, "\(what): connection closed")
        }
        #expect(try call(server.h2c + "/v1/worlds/playground/nothing", ["--http2-prior-knowledge"]).0 == 404)
        // Each of these was found by nghttp2 itself, which answered with GOAWAY: every one is counted.
        #expect(try server.freshGatewayCounters().protocolErrors >= UInt64(cases.count))
    }

    @Test("a flood of HEADERS + RST_STREAM (rapid reset) ends in GOAWAY ENHANCE_YOUR_CALM")
    func rapidReset() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        let c = try server.h2Client()
        var goaway: UInt32?
        for _ in 0..<400 {
            guard let id = c.post("/v1/worlds/playground/streams") else { break }
            c.flush()
            c.h2.reset(stream: id, code: 8)
            c.flush()
            for case .goaway(_, let code) in c.read() { goaway = code }
            if c.failed || goaway != nil { break }
        }
        pumpH2(c, { e in if case .goaway(_, let code) = e { goaway = code } }, until: { goaway != nil || c.failed })
        #expect(goaway == 11, "ENHANCE_YOUR_CALM")
        #expect(try server.freshGatewayCounters().rapidResetGoaways == 1)
        #expect(try call(server.h2c + "/v1/worlds/playground/nothing").0 == 404, "others are still served")
    }

}

@Suite("Gateway connection lifecycle", .enabled(if: uringAvailable && haveCurl), .serialized)
struct GatewayLifecycleTests {
    @Test("TLS 1.2 and TLS 1.3 both negotiate")
    func tlsVersions() throws {
        let server = try BrokerServer.start(gatewayConfig())
        defer { server.stop() }
        for v in [["--tlsv1.2", "--tls-max", "1.2"], ["--tlsv1.3"]] {
            let (status, _) = try call(server.https + "/v1/worlds/playground/nothing", v + ["-k", "--http2"])
            #expect(status == 404, "\(v)")
        }
    }

    @Test("shutdown: HTTP/2 clients get GOAWAY; an idle connection is closed after the idle timeout")
    func goawayAndIdle() throws {
        let server = try BrokerServer.start(gatewayConfig { $0.gateway.idleTimeoutMilliseconds = 1_000 })
        let idle = try server.h2Client()
        _ = idle.request(method: "GET", authority: "t", path: "/v1/worlds/playground/nothing", headers: [], endStream: true)
        var idleGoaway = false
        #expect(pumpH2(idle, { if case .goaway = $0 { idleGoaway = true } }, until: { idleGoaway }), "idle connection ended with GOAWAY")
        let c = try server.h2Client()
        _ = c.request(method: "GET", authority: "t", path: "/v1/worlds/playground/nothing", headers: [], endStream: true)
        var closed = false
        pumpH2(c, { if case .closed = $0 { closed = true } }, until: { closed })
        server.shutdown()
        var goaway = false
        #expect(pumpH2(c, { if case .goaway = $0 { goaway = true } }, until: { goaway }), "GOAWAY on shutdown")
        server.wait()
    }
}

@Suite("Gateway on several loops", .enabled(if: uringAvailable && haveCurl), .serialized)
struct GatewayMultiLoopTests {
    @Test("with 3 loops every world is reached from every loop's gateway (in process or over the loop links)")
    func everyLoop() throws {
        let server = try BrokerServer.start(gatewayConfig { $0.loopCount = 3 })
        defer { server.stop() }
        let p = try InstanceRunner(server: server, world: "playground", name: "p")
        let a = try InstanceRunner(server: server, world: "arena", name: "a")
        defer { p.stop(); a.stop() }
        // Many connections: SO_REUSEPORT spreads them over the loops, so both paths are taken.
        for i in 0..<24 {
            let (sp, bp) = try call(server.h2c + "/v1/worlds/playground/messages", ["--http2-prior-knowledge", "-d", "{}"])
            #expect(sp == 200 && bp.contains(#""instance":"p""#), "request \(i): \(bp)")
            let (sa, ba) = try call(server.h2c + "/v1/worlds/arena/messages", key: TestKeys.arena, ["-d", "{}"])
            #expect(sa == 200 && ba.contains(#""instance":"a""#), "request \(i): \(ba)")
        }
        _ = try server.freshGatewayCounters()
        let served = server.gatewayCountersByLoop.filter { $0.requests.reduce(0, +) > 0 }.count
        #expect(served >= 2, "connections were spread over the loops")
        #expect(server.gatewayCounters.responses[200] == 48)
    }
}

extension GatewayMultiLoopTests {
    @Test("a connection moves to its world's loop after its first request; later requests are served there")
    func connectionsMoveToTheirWorld() throws {
        let server = try BrokerServer.start(gatewayConfig { $0.loopCount = 3 })
        defer { server.stop() }
        let p = try InstanceRunner(server: server, world: "playground", name: "p")
        defer { p.stop() }
        let home = Wire.loop(forWorld: "playground", count: 3)
        var ok = 0
        var odd: [String] = []
        var clients: [H2Client] = []
        for _ in 0..<12 {
            let c = try server.h2Client()
            clients.append(c)
            for _ in 0..<5 {
                let id = try #require(c.post("/v1/worlds/playground/messages"))
                c.send(id, "{}", end: true)
                var status = "", closed = false, body = "", code: UInt32 = 0
                #expect(pumpH2(c, { e in
                    if case .headers(let s, let h) = e, s == id { status = h.first { $0.name == ":status" }?.value ?? "" }
                    if case .data(let s, let d) = e, s == id { body += d.text }
                    if case .closed(let s, let k) = e, s == id { closed = true; code = k }
                }, until: { closed }))
                if status == "200" { ok += 1 } else { odd.append("status \(status) rst \(code) body \(body) failed \(c.failed)") }
            }
        }
        #expect(ok == 60, "\(odd)")
        _ = try server.freshGatewayCounters()
        let byLoop = server.gatewayCountersByLoop
        let moves = byLoop.reduce(0) { $0 + $1.moves }
        let away = byLoop.enumerated().filter { $0.offset != home }.reduce(0) { $0 + $1.element.requests.reduce(0, +) }
        #expect(moves >= 1, "some of the 12 connections landed on another loop")
        #expect(away == moves, "each moved connection served only its first request away from the world's loop")
        #expect(byLoop[home].requests.reduce(0, +) == 60 - moves)
        withExtendedLifetime(clients) {}
    }
}

@Suite("Gateway keys from a watched file", .enabled(if: uringAvailable && haveCurl), .serialized)
struct GatewayKeysFileTests {
    @Test("editing the keys file revokes a key without a signal; a broken file keeps the old keys")
    func keysFileWatched() throws {
        let dir = NSTemporaryDirectory() + "soulfra-keys-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let keys = dir + "/keys.json"
        func writeKeys(disabled: Bool) throws {
            let json = #"{"keys":[{"id":1,"world":"playground","key":"\#(TestKeys.playground)","disabled":\#(disabled)}]}"#
            try json.write(toFile: keys + ".tmp", atomically: false, encoding: .utf8)
            rename(keys + ".tmp", keys)
        }
        try writeKeys(disabled: false)
        let ready = dir + "/ready"
        try? FileManager.default.removeItem(atPath: ready)
        let p = Process()
        p.executableURL = URL(fileURLWithPath: soulfraBinary)
        p.arguments = ["serve", "--control-dir", "", "--config", repoRoot.appendingPathComponent("config/soulfra.json").path, "--loops", "1",
                       "--broker-unix", dir + "/b.sock", "--broker-tcp", "127.0.0.1:0", "--admin-tcp", "127.0.0.1:0",
                       "--gateway-tcp", "127.0.0.1:0", "--gateway-tls", "", "--keys-file", keys, "--ready-file", ready]
        let err = Pipe()
        p.standardError = err
        try p.run()
        defer {
            kill(p.processIdentifier, SIGTERM)
            for _ in 0..<1000 where p.isRunning { usleep(10_000) }
            if p.isRunning { kill(p.processIdentifier, SIGKILL) }
            p.waitUntilExit()
        }
        for _ in 0..<3_000 where (try? String(contentsOfFile: ready, encoding: .utf8)) == nil { usleep(10_000) }
        let lines = try String(contentsOfFile: ready, encoding: .utf8).split(separator: "\n")
        let port = try #require(lines.count >= 2 ? UInt16(lines[1]) : nil)
        let url = "http://127.0.0.1:\(port)/v1/worlds/playground/messages"
        // No instance is attached: an admitted request is a 503, a refused one a 401.
        #expect(try call(url, ["-d", "{}"]).0 == 503)
        // A broken file is reported and ignored: wait until the daemon says it read it (so this fails if the
        // watcher never ran), then the old keys must still work.
        let logFD = err.fileHandleForReading.fileDescriptor
        _ = fcntl(logFD, F_SETFL, fcntl(logFD, F_GETFL) | O_NONBLOCK)
        var log = ""
        func readLog() {
            var buf = [UInt8](repeating: 0, count: 4_096)
            while true {
                let n = buf.withUnsafeMutableBytes { read(logFD, $0.baseAddress, $0.count) }
                guard n > 0 else { return }
                log += String(decoding: buf[..<n], as: UTF8.self)
            }
        }
        try "{ not json".write(toFile: keys, atomically: true, encoding: .utf8)
        for _ in 0..<100 where !log.contains("kept the current keys") {
            usleep(50_000)
            readLog()
        }
        #expect(log.contains("kept the current keys"), "the watcher never reported the broken file: \(log)")
        #expect(try call(url, ["-d", "{}"]).0 == 503, "the old keys stay")
        try writeKeys(disabled: true)
        var status = 0
        for _ in 0..<50 {
            status = try call(url, ["-d", "{}"]).0
            if status == 401 { break }
            usleep(100_000)
        }
        #expect(status == 401, "the key is revoked once the file changes")
        let (_, body) = try call(url, ["-d", "{}"])
        #expect(body.contains("key_disabled"))
    }
}

@Suite("Gateway under mutated input", .enabled(if: uringAvailable && haveCurl), .serialized)
struct GatewayMutationTests {
    /// Valid openings of every protocol the gateway speaks.
    static func seeds(key: String) -> [[UInt8]] {
        let h1 = Array(("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(key)\r\n"
                        + "Content-Length: 15\r\n\r\n{\"stream\":true}").utf8)
        let chunked = Array(("POST /v1/worlds/playground/streams HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(key)\r\n"
                             + "Transfer-Encoding: chunked\r\n\r\n7\r\n{\"a\":1}\r\n0\r\n\r\n").utf8)
        let ws = Array(("GET /v1/worlds/playground/ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(key)\r\nUpgrade: websocket\r\n"
                        + "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8)
            + [0x81, 0x85, 1, 2, 3, 4, 0x69, 0x67, 0x6F, 0x68, 0x6E]
        // An HTTP/2 request made by a real client session.
        let client = try! H2Connection(role: .client)
        let id = try! client.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                               H2Header(":path", "/v1/worlds/playground/messages"),
                                               H2Header("authorization", "Bearer \(key)")])
        Array("{}".utf8).withUnsafeBytes { client.send(stream: id, $0, end: true) }
        var h2: [UInt8] = []
        try! client.drainOutput { h2 += $0 }
        return [h1, chunked, ws, h2]
    }

    @Test("2,000 seeded mutations of valid requests: every connection ends cleanly and the daemon keeps serving")
    func mutations() throws {
        let server = try BrokerServer.start(gatewayConfig {
            $0.gateway.headerTimeoutMilliseconds = 100
        })
        defer { server.stop() }
        let inst = try InstanceRunner(server: server, name: "m")
        defer { inst.stop() }
        var rng = SplitMix64(seed: 0x5EED_6A7E)
        let seeds = Self.seeds(key: TestKeys.playground)
        for round in 0..<2_000 {
            var input = seeds[Int(rng.next() % UInt64(seeds.count))]
            let edits = 1 + Int(rng.next() % 4)
            for _ in 0..<edits {
                let at = Int(rng.next() % UInt64(max(1, input.count)))
                switch rng.next() % 4 {
                case 0: input[at] = UInt8(truncatingIfNeeded: rng.next())
                case 1: input.insert(UInt8(truncatingIfNeeded: rng.next()), at: at)
                case 2: if input.count > 1 { input.remove(at: at) }
                default: input = Array(input[..<at]) + Array(input[at...]) + Array(input[at...].prefix(64))
                }
            }
            let s = try RawSocket(port: server.gatewayPort)
            s.write(input)
            // Mostly half-closed at once; 3 in 100 stay open, so partial heads and frames meet the header timeout
            // or an answer, and the gateway must end the connection on its own.
            let keepOpen = rng.next() % 100 < 3
            if !keepOpen { shutdown(s.fd, Int32(SHUT_WR)) }
            _ = s.readAll(milliseconds: keepOpen ? 300 : 2_000)
            if round % 250 == 0 {
                #expect(try call(server.h2c + "/v1/worlds/playground/messages", ["-d", "{}"]).0 == 200, "round \(round)")
            }
        }
        #expect(try call(server.h2c + "/v1/worlds/playground/messages", ["--http2-prior-knowledge", "-d", "{}"]).0 == 200)
        #expect(try server.freshGatewayCounters().openConnections <= 2, "no connection was left behind")
    }
}
