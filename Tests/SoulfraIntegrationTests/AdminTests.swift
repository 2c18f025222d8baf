import Foundation
import Testing
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraServer
import SoulfraWire

/// Runs curl (bounded) and returns status code and body.
func curl(_ args: [String]) throws -> (Int, String) {
    let (status, out) = try run("/usr/bin/curl", ["-s", "-m", "5", "-w", "\n%{http_code}"] + args)
    try #require(status == 0, "curl failed: \(out)")
    let lines = out.split(separator: "\n", omittingEmptySubsequences: false)
    return (Int(lines.last ?? "") ?? 0, lines.dropLast().joined(separator: "\n"))
}

let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first { FileManager.default.isExecutableFile(atPath: $0) }

@Suite("Admin endpoints", .enabled(if: uringAvailable && FileManager.default.isExecutableFile(atPath: "/usr/bin/curl")), .serialized)
struct AdminTests {
    @Test("/healthz and /readyz answer without a token; /metrics needs the admin token")
    func endpoints() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let base = "http://127.0.0.1:\(server.adminPort)"
        #expect(try curl([base + "/healthz"]) == (200, "ok\n"))
        #expect(try curl([base + "/readyz"]) == (200, "ready\n"))
        let (denied, body) = try curl([base + "/metrics"])
        #expect(denied == 401 && body.contains(#""code":"unauthorized""#))
        #expect(try curl(["-H", "Authorization: Bearer wrong-token-wrong", base + "/metrics"]).0 == 401)
        #expect(try curl([base + "/nope"]).0 == 404)
        #expect(try curl(["-X", "POST", base + "/healthz"]).0 == 405)
    }

    @Test("/metrics renders broker and loop counters in Prometheus text that promtool accepts")
    func metrics() throws {
        let server = try BrokerServer.start(testConfig { $0.loopCount = 2 })
        defer { server.stop() }
        // Some traffic so the counters are not all zero.
        let inst = try server.connect(.instance, world: "playground")
        let rt = try server.connect(.runtime)
        let s = inst.link.open(Open(target: .runtime, world: "playground"))
        #expect(inst.link.send(stream: s, payload: bytes("x")))
        #expect(pumpUntil([inst, rt]) { (server.snapshotNow()?.streamsOpened ?? 0) == 1 })
        let (status, text) = try curl(["-H", "Authorization: Bearer test-admin-token-0001", "http://127.0.0.1:\(server.adminPort)/metrics"])
        #expect(status == 200)
        #expect(text.contains("soulfra_broker_links{kind=\"instance\"} 1"))
        #expect(text.contains("soulfra_broker_streams_opened_total 1"))
        #expect(text.contains("soulfra_loop_accepted_total{loop=\"0\"}"))
        #expect(text.contains("soulfra_loop_accepted_total{loop=\"1\"}"))
        if let promtool {
            let file = NSTemporaryDirectory() + "soulfra-metrics-\(getpid()).txt"
            try (text + "\n").write(toFile: file, atomically: true, encoding: .utf8)
            let (rc, out) = try run("/bin/sh", ["-c", "\(promtool) check metrics < \(file)"])
            #expect(rc == 0, "promtool: \(out)")
        }
    }

    @Test("keep-alive serves several requests on one connection; a malformed request gets 400 and a close")
    func keepAliveAndBadRequest() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let base = "http://127.0.0.1:\(server.adminPort)"
        let (_, both) = try run("/usr/bin/curl", ["-s", "-m", "5", "-v", base + "/healthz", base + "/readyz"])
        #expect(both.contains("Re-using existing connection") || both.contains("Reusing existing connection"), "\(both)")
        let c = PeerConnection(address: .tcp(host: "127.0.0.1", port: server.adminPort), identity: PeerIdentity(kind: .gateway, token: "x"))
        try c.connect()
        c.link.output.removeAll()
        Array("GET /healthz HTTP/1.1\r\nHost a\r\n\r\n".utf8).withUnsafeBytes { c.link.output.append($0) }
        var reply: [UInt8] = []
        let deadline = monotonicMilliseconds() + 3_000
        c.flush()
        while c.fd >= 0 && monotonicMilliseconds() < deadline {
            var p = pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            reply += buf[0..<n]
        }
        let text = String(decoding: reply, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 400 "), "\(text)")
        #expect(text.lowercased().contains("connection: close"))
    }

    @Test("a request that will be refused is answered at its head: an anonymous client announcing a body gets 401 without sending it")
    func refusedAtTheHead() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let c = PeerConnection(address: .tcp(host: "127.0.0.1", port: server.adminPort), identity: PeerIdentity(kind: .gateway, token: "x"))
        try c.connect()
        c.link.output.removeAll()
        // 200 KB announced, none sent: the daemon must not wait for (or hold) it.
        Array("GET /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n".utf8).withUnsafeBytes { c.link.output.append($0) }
        var reply: [UInt8] = []
        let deadline = monotonicMilliseconds() + 3_000
        c.flush()
        while c.fd >= 0 && monotonicMilliseconds() < deadline {
            var p = pollfd(fd: c.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 100) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            let n = buf.withUnsafeMutableBytes { recv(c.fd, $0.baseAddress, $0.count, 0) }
            if n <= 0 { break }
            reply += buf[0..<n]
        }
        let text = String(decoding: reply, as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 401 "), "answered before the body: \(text)")
        #expect(text.lowercased().contains("connection: close"))
    }

    @Test("shutdown closes idle keep-alive admin connections instead of waiting on them")
    func keepAliveClosedOnShutdown() throws {
        // A long drain, held open by a broker stream this test controls: the admin connection must be closed
        // during the drain, not by the hard stop at its end.
        let server = try BrokerServer.start(testConfig { $0.broker.shutdownDrainMilliseconds = 30_000 })
        let ri = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let gw = try server.connect(.gateway)
        let s = gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))
        #expect(gw.link.send(stream: s, payload: bytes("hold the drain open")))
        #expect(pumpUntil([inst, gw]) { !ri.data.isEmpty })

        let admin = PeerConnection(address: .tcp(host: "127.0.0.1", port: server.adminPort), identity: PeerIdentity(kind: .gateway, token: "x"))
        try admin.connect()
        admin.link.output.removeAll()
        Array("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n".utf8).withUnsafeBytes { admin.link.output.append($0) }
        admin.flush()
        server.shutdown()
        var eof = false
        let deadline = monotonicMilliseconds() + 10_000
        while !eof && monotonicMilliseconds() < deadline {
            var p = pollfd(fd: admin.fd, events: Int16(POLLIN), revents: 0)
            guard poll(&p, 1, 10) > 0 else { continue }
            var buf = [UInt8](repeating: 0, count: 4096)
            if buf.withUnsafeMutableBytes({ recv(admin.fd, $0.baseAddress, $0.count, 0) }) <= 0 { eof = true }
        }
        #expect(eof, "the admin connection was closed")
        #expect(!gw.link.isClosed, "while the broker was still draining")
        // End the stream: the drain completes and the daemon stops.
        #expect(inst.link.send(stream: ri.accepted[0].0, payload: bytes("bye"), end: true))
        #expect(gw.link.send(stream: s, payload: bytes(""), end: true))
        #expect(pumpUntil([inst, gw]) { gw.link.isClosed })
        server.wait()
        admin.close()
    }
}
