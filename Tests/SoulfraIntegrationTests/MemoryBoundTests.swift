import Foundation
import Synchronization
import Testing
import SoulfraClient
import SoulfraHTTP2
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

/// A `soulfra serve` child process on ephemeral loopback ports, with a config derived from the shipped one.
final class Daemon {
    let process = Process()
    let dir: String
    let gatewayPort: UInt16
    let adminPort: UInt16
    let brokerPort: UInt16

    init(_ tweak: (inout [String: Any]) -> Void) throws {
        dir = NSTemporaryDirectory() + "soulfra-daemon-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let shipped = try Data(contentsOf: repoRoot.appendingPathComponent("config/soulfra.json"))
        var config = try JSONSerialization.jsonObject(with: shipped) as! [String: Any]
        tweak(&config)
        try JSONSerialization.data(withJSONObject: config).write(to: URL(fileURLWithPath: dir + "/soulfra.json"))
        let ready = dir + "/ready"
        process.executableURL = URL(fileURLWithPath: soulfraBinary)
        process.arguments = ["serve", "--control-dir", "", "--config", dir + "/soulfra.json", "--broker-unix", dir + "/b.sock", "--broker-tcp", "127.0.0.1:0",
                             "--admin-tcp", "127.0.0.1:0", "--gateway-tcp", "127.0.0.1:0", "--gateway-tls", "", "--ready-file", ready]
        process.standardError = FileHandle.nullDevice
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        var lines: [Substring] = []
        for _ in 0..<1_000 {
            if let s = try? String(contentsOfFile: ready, encoding: .utf8) { lines = s.split(separator: "\n"); if lines.count >= 4 { break } }
            usleep(10_000)
        }
        guard lines.count >= 4, let b = UInt16(lines[0]), let g = UInt16(lines[1]), let a = UInt16(lines[3]) else {
            process.terminate()
            throw ClientError("the daemon did not start")
        }
        brokerPort = b
        gatewayPort = g
        adminPort = a
    }

    /// Resident memory of the daemon, in bytes (from /proc).
    var rss: Int {
        guard let status = try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]) else { return 0 }
        return kb * 1024
    }

    /// One metric's value from /metrics (summed over its label sets).
    func metric(_ name: String) throws -> Double {
        let (_, body) = try curl(["-H", "authorization: Bearer dev-admin-token-000001", "http://127.0.0.1:\(adminPort)/metrics"])
        return body.split(separator: "\n").filter { $0.hasPrefix(name + " ") || $0.hasPrefix(name + "{") }
            .compactMap { Double($0.split(separator: " ").last ?? "") }.reduce(0, +)
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: dir)
    }
}

/// Echo instances of a world on their own thread, attached to a daemon over TCP.
final class EchoThread: @unchecked Sendable {
    private let stop = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)

    init(port: UInt16, world: String = "playground", token: String = "dev-instance-token-playground", tokens: Int = 8,
         mode: EchoInstance.Mode = .json, count: Int = 1) throws {
        var conns: [PeerConnection] = []
        var echoes: [EchoInstance] = []
        for i in 0..<count {
            let c = PeerConnection(address: .tcp(host: "127.0.0.1", port: port),
                                   identity: PeerIdentity(kind: .instance, world: world, instance: "echo-\(i)", token: token))
            let e = EchoInstance(name: "echo-\(i)", tokens: tokens, mode: mode)
            c.link.delegate = e
            try c.handshake()
            conns.append(c)
            echoes.append(e)
        }
        let box = UncheckedBox((conns, echoes))
        Thread { [self] in
            let (cs, _) = box.value
            while !stop.load(ordering: .acquiring) { for c in cs { c.pump(timeoutMilliseconds: 1) } }
            for c in cs { c.close() }
            done.signal()
        }.start()
    }

    func finish() {
        guard !stop.exchange(true, ordering: .acquiringAndReleasing) else { return }
        done.wait()
    }
}

/// The bytes of an h2c client that sends its preface and `streams` SSE requests for `world`, then nothing.
func sseRequestBytes(key: String, streams: Int, world: String = "playground") throws -> [UInt8] {
    let c = try H2Connection(role: .client)
    for _ in 0..<streams {
        let id = try c.request(headers: [
            H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
            H2Header(":path", "/v1/worlds/\(world)/messages"), H2Header("authorization", "Bearer \(key)"),
            H2Header("accept", "text/event-stream"),
        ])
        Array(#"{"text":"a long story please"}"#.utf8).withUnsafeBytes { c.send(stream: id, $0, end: true) }
    }
    var out: [UInt8] = []
    try c.drainOutput { out += $0 }
    return out
}

/// Waits until `value` stops changing (three equal readings in a row), bounded.
func settled(_ value: () throws -> Double, milliseconds: UInt64 = 30_000) rethrows -> Double {
    let deadline = monotonicMilliseconds() + milliseconds
    var last = -1.0, same = 0
    while monotonicMilliseconds() < deadline {
        let v = try value()
        if v == last { same += 1; if same >= 3 { return v } } else { same = 0 }
        last = v
        usleep(200_000)
    }
    return last
}

@Suite("Memory bounds of the real daemon under clients that never read", .serialized, .enabled(if: uringAvailable))
struct MemoryBoundTests {
    static let key = "sk-slfr_kids_ztys355NrAlpgsJGcDc2bhARePpktW1LdIsn"  // config/soulfra.json, world playground

    /// Daemon settings for these tests: no key quotas in the way, no address limits, no send timeout.
    static func tweak(budget: Int) -> (inout [String: Any]) -> Void {
        { c in
            var g = c["gateway"] as! [String: Any]
            g["connection_output_high_bytes"] = budget
            g["stream_queue_high_bytes"] = budget / 4
            g["connections_per_second_per_address"] = 1_000_000
            g["connection_burst_per_address"] = 1_000_000
            g["send_timeout_milliseconds"] = 600_000
            c["gateway"] = g
            var l = c["loop"] as! [String: Any]
            l["count"] = 1
            c["loop"] = l
            var keys = c["keys"] as! [[String: Any]]
            for i in keys.indices where keys[i]["world"] as? String == "playground" {
                keys[i]["requests_per_second"] = 0
                keys[i]["max_streams"] = 0
                keys[i]["frames_per_second"] = 0
                keys[i]["bytes_per_second"] = 0
            }
            c["keys"] = keys
        }
    }

    @Test("1,000 HTTP/2 connections with SSE replies that never read: each holds at most its budget plus a small constant")
    func thousandNonReadingConnections() throws {
        let budget = 64 << 10
        let d = try Daemon(Self.tweak(budget: budget))
        defer { d.stop() }
        let world = try EchoThread(port: d.brokerPort, tokens: 20_000)  // 20,000 events (~1.2 MB) per reply
        defer { world.finish() }
        // Warm up (first-use allocations are not per connection), then measure from a quiet daemon.
        _ = try curl(["-s", "-H", "authorization: Bearer \(Self.key)", "-d", "{}", "http://127.0.0.1:\(d.gatewayPort)/v1/worlds/playground/messages"])
        usleep(300_000)
        let before = d.rss
        let bytes = try sseRequestBytes(key: Self.key, streams: 4)
        var sockets: [RawSocket] = []
        for _ in 0..<1_000 {
            let s = try RawSocket(port: d.gatewayPort)
            var small: Int32 = 4_096
            setsockopt(s.fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
            s.write(bytes)
            sockets.append(s)
        }
        defer { sockets.removeAll() }
        let held = try settled { try d.metric("soulfra_gateway_held_bytes") }
        let sent = try d.metric("soulfra_broker_bytes_received_total{kind=\"instance\"}")
        let grown = d.rss - before
        let perConnection = grown / 1_000
        print("MEMORY 1000 non-reading connections: held \(Int(held)) bytes, daemon RSS +\(grown) (\(perConnection) per connection), instance sent \(Int(sent)) bytes")
        #expect(Int(held) <= 1_000 * (budget + (4 << 10)), "the gateway holds \(Int(held)) bytes for 1,000 connections")
        // The constant is the connection itself: its HTTP/2 session (about 20 KiB idle, with nghttp2's frame
        // buffer), its send buffers (up to `Connection.outputAhead` plus one frame) and its streams' state.
        #expect(perConnection <= budget + (96 << 10), "RSS grew \(perConnection) bytes per connection against a \(budget)-byte budget")
    }

    @Test("one HTTP/2 connection with 256 SSE replies that never reads holds its budget, not 256 windows")
    func oneConnectionManyStreams() throws {
        let budget = 256 << 10
        let d = try Daemon(Self.tweak(budget: budget))
        defer { d.stop() }
        let world = try EchoThread(port: d.brokerPort, tokens: 20_000)
        defer { world.finish() }
        _ = try curl(["-s", "-H", "authorization: Bearer \(Self.key)", "-d", "{}", "http://127.0.0.1:\(d.gatewayPort)/v1/worlds/playground/messages"])
        usleep(300_000)
        let before = d.rss
        let s = try RawSocket(port: d.gatewayPort)
        // The server's SETTINGS allow 256 streams; a client that has not read them may still open 100 (RFC
        // 9113 §6.5.2's initial value is unlimited; nghttp2 assumes 100): send 100.
        s.write(try sseRequestBytes(key: Self.key, streams: 100))
        // Wait for the replies to fill what the connection may hold before judging it: a quiet gateway that
        // sent nothing would hold nothing too.
        let start = monotonicMilliseconds()
        while try d.metric("soulfra_gateway_held_bytes") < Double(budget / 2), monotonicMilliseconds() - start < 10_000 {
            usleep(50_000)
        }
        let held = try settled { try d.metric("soulfra_gateway_held_bytes") }
        let sent = try d.metric("soulfra_broker_bytes_received_total{kind=\"instance\"}")
        let grown = d.rss - before
        print("MEMORY one connection, 100 non-reading SSE streams: held \(Int(held)) bytes, daemon RSS +\(grown), instance sent \(Int(sent)) bytes")
        #expect(Int(held) >= budget / 2, "the replies never filled the connection's budget")
        #expect(Int(held) <= budget + (16 << 10))
        #expect(grown <= budget + (2 << 20), "RSS grew \(grown) bytes for one connection with a \(budget)-byte budget")
    }
}
