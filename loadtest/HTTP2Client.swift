import ArgumentParser
import Foundation
import SoulfraClient
import SoulfraHTTP2
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet

// MARK: - gateway: an HTTP/2 client for what h2load cannot drive (SSE, full-duplex streams, idle streams)

struct GatewayClient: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gateway",
        abstract: "HTTP/2 (h2c) client for the gateway: SSE replies, full-duplex NDJSON streams, idle streams.",
        discussion: """
            sse     POST /v1/worlds/<w>/messages with Accept: text/event-stream, --streams per connection at once;
                    counts events (frames) and replies per second.
            stream  POST /v1/worlds/<w>/streams, NDJSON lines both ways; --window lines in flight per stream,
                    each stamped with its send time: frames/s and round-trip p50/p99.
            idle    --connections connections, then --streams streams spread over them, left open; server RSS
                    (summed over --server-pid, repeatable) after each step: bytes per idle connection and stream.
            Works against any HTTP/2 server (nghttpx too) for a side-by-side measurement.
            """)

    @Option(help: "Mode: sse, stream or idle.") var mode = "sse"
    @Option(help: "Gateway host:port (h2c).") var address = "127.0.0.1:8080"
    @Option(help: "World.") var world = "bench"
    @Option(help: "API key.") var key = "sk-slfr_custom_8aspm4G7VmSUfOoD6V1vrORcmn0iSH0iJXys"
    @Option(help: "Connections.") var connections = 4
    @Option(help: "Streams per connection (sse, stream) or in total (idle).") var streams = 8
    @Option(help: "Lines in flight per stream (stream mode).") var window = 16
    @Option(help: "Seconds to run (sse, stream).") var seconds = 5.0
    @Option(name: .customLong("server-pid"), help: "Server process to read RSS and CPU from (repeatable; children included).")
    var serverPIDs: [Int32] = []
    @Option(name: .customLong("settle-seconds"), help: "Idle mode: wait this long before each RSS reading.")
    var settleSeconds = 1.5

    func run() throws {
        guard case .tcp(let host, let port) = try parseAddress(address) else { throw LoadtestError("--address takes host:port") }
        let authority = "\(host):\(port)"
        let auth = [("authorization", "Bearer \(key)")]
        switch mode {
        case "sse": try runSSE(host, port, authority, auth)
        case "stream": try runStreams(host, port, authority, auth)
        case "idle": try runIdle(host, port, authority, auth)
        default: throw LoadtestError("--mode must be sse, stream or idle")
        }
    }

    /// Polls the connections for `seconds`, handing every event to `body`; counts non-200 statuses.
    func timedRun(_ conns: [H2Client], _ body: (H2Client, H2Event) -> Void)
        -> (seconds: Double, cpuMicros: UInt64, errors: UInt64) {
        var errors: UInt64 = 0
        let cpu0 = serverCPU()
        let t0 = monotonicNanoseconds(), end = t0 + UInt64(seconds * 1e9)
        while monotonicNanoseconds() < end {
            pollConnections(conns, timeoutMilliseconds: 50) { c, evs in
                for e in evs {
                    if case .headers(_, let hs) = e, let s = hs.first(where: { $0.name == ":status" }), s.value != "200" { errors += 1 }
                    body(c, e)
                }
            }
        }
        return (Double(monotonicNanoseconds() - t0) / 1e9, serverCPU() - cpu0, errors)
    }

    func serverCPU() -> UInt64 { serverPIDs.reduce(0) { $0 + processTreeCPUMicros($1) } }
    func serverRSS() -> Int { serverPIDs.reduce(0) { $0 + processTreeRSSKiB($1) } }

    func runSSE(_ host: String, _ port: UInt16, _ authority: String, _ auth: [(String, String)]) throws {
        let conns = try (0..<connections).map { _ in try H2Client(host: host, port: port) }
        let path = "/v1/worlds/\(world)/messages"
        let body = Array(#"{"text":"tell me a story","stream":true}"#.utf8)
        var lastNewline: [ObjectIdentifier: [Int32: Bool]] = [:]
        var events: UInt64 = 0, replies: UInt64 = 0, errors: UInt64 = 0, bytes: UInt64 = 0
        func start(_ c: H2Client) {
            guard let id = c.request(method: "POST", authority: authority, path: path,
                                     headers: auth + [("accept", "text/event-stream"), ("content-type", "application/json")],
                                     endStream: false) else { return }
            body.withUnsafeBytes { c.h2.send(stream: id, $0, end: true) }
            lastNewline[ObjectIdentifier(c), default: [:]][id] = false
        }
        for c in conns {
            for _ in 0..<streams { start(c) }
            c.flush()
        }
        let run = timedRun(conns) { c, e in
            switch e {
            case .data(let id, let d):
                bytes += UInt64(d.count)
                var prev = lastNewline[ObjectIdentifier(c)]?[id] ?? false
                for b in d {
                    if b == 0x0A { if prev { events += 1 }; prev = true } else { prev = false }
                }
                lastNewline[ObjectIdentifier(c)]?[id] = prev
                c.h2.consume(stream: id, bytes: d.count)
            case .closed(let id, _):
                lastNewline[ObjectIdentifier(c)]?[id] = nil
                replies += 1
                start(c)
            default: break
            }
        }
        errors = run.errors
        let (secs, cpu) = (run.seconds, run.cpuMicros)
        print(String(format: "sse: %.0f events/s, %.0f replies/s, %.1f MB/s, %llu errors", Double(events) / secs, Double(replies) / secs,
                     Double(bytes) / secs / 1e6, errors))
        var line = String(format: "RESULT gateway-sse frames_per_sec=%.0f replies_per_sec=%.0f errors=%llu", Double(events) / secs,
                          Double(replies) / secs, errors)
        if !serverPIDs.isEmpty && events > 0 { line += String(format: " cpu_us_per_frame=%.3f", Double(cpu) / Double(events)) }
        print(line)
    }

    func runStreams(_ host: String, _ port: UInt16, _ authority: String, _ auth: [(String, String)]) throws {
        let conns = try (0..<connections).map { _ in try H2Client(host: host, port: port) }
        let path = "/v1/worlds/\(world)/streams"
        var partial: [ObjectIdentifier: [Int32: [UInt8]]] = [:]
        var latency = Latency()
        var frames: UInt64 = 0, errors: UInt64 = 0
        func line() -> [UInt8] { Array("{\"t\":\(monotonicNanoseconds())}\n".utf8) }
        for c in conns {
            for _ in 0..<streams {
                guard let id = c.request(method: "POST", authority: authority, path: path,
                                         headers: auth + [("content-type", "application/x-ndjson")], endStream: false) else { continue }
                partial[ObjectIdentifier(c), default: [:]][id] = []
                for _ in 0..<window { line().withUnsafeBytes { c.h2.send(stream: id, $0) } }
            }
            c.flush()
        }
        var closed: UInt64 = 0
        let run = timedRun(conns) { c, e in
            switch e {
            case .data(let id, let d):
                c.h2.consume(stream: id, bytes: d.count)
                var buf = partial[ObjectIdentifier(c)]?[id] ?? []
                for b in d {
                    guard b == 0x0A else { buf.append(b); continue }
                    frames += 1
                    if let sent = stampIn(buf) { latency.record(monotonicNanoseconds() &- sent) }
                    buf.removeAll(keepingCapacity: true)
                    line().withUnsafeBytes { c.h2.send(stream: id, $0) }
                }
                partial[ObjectIdentifier(c)]?[id] = buf
            case .closed:
                closed += 1
            default: break
            }
        }
        errors = run.errors + closed
        let (secs, cpu) = (run.seconds, run.cpuMicros)
        print(String(format: "stream: %.0f frames/s echoed, p50 %.0f µs, p99 %.0f µs, %llu errors", Double(frames) / secs,
                     latency.micros(50), latency.micros(99), errors))
        var out = String(format: "RESULT gateway-stream frames_per_sec=%.0f p50_us=%.0f p99_us=%.0f errors=%llu", Double(frames) / secs,
                         latency.micros(50), latency.micros(99), errors)
        if !serverPIDs.isEmpty && frames > 0 { out += String(format: " cpu_us_per_frame=%.3f", Double(cpu) / Double(frames)) }
        print(out)
    }

    func runIdle(_ host: String, _ port: UInt16, _ authority: String, _ auth: [(String, String)]) throws {
        func settle(_ conns: [H2Client]) {
            let until = monotonicNanoseconds() + UInt64(settleSeconds * 1e9)
            while monotonicNanoseconds() < until { pollConnections(conns, timeoutMilliseconds: 20) { _, _ in } }
        }
        let rss0 = serverRSS()
        let conns = try (0..<connections).map { _ in try H2Client(host: host, port: port) }
        for c in conns { c.flush() }
        settle(conns)
        let rss1 = serverRSS()
        var opened = 0
        var closedEarly = 0
        let path = "/v1/worlds/\(world)/streams"
        for i in 0..<streams {
            let c = conns[i % conns.count]
            if c.request(method: "POST", authority: authority, path: path, headers: auth + [("content-type", "application/x-ndjson")],
                         endStream: false) != nil { opened += 1 }
            if i % 1_000 == 999 { for c in conns { c.flush() }; pollConnections(conns, timeoutMilliseconds: 0) { _, _ in } }
        }
        for c in conns { c.flush() }
        let until = monotonicNanoseconds() + UInt64(settleSeconds * 1e9)
        while monotonicNanoseconds() < until {
            pollConnections(conns, timeoutMilliseconds: 20) { _, evs in
                closedEarly += evs.filter { if case .closed = $0 { true } else { false } }.count
            }
        }
        let rss2 = serverRSS()
        let perConn = connections > 0 ? Double(rss1 - rss0) * 1024 / Double(connections) : 0
        let perStream = opened > 0 ? Double(rss2 - rss1) * 1024 / Double(opened) : 0
        print("idle: \(connections) connections, \(opened) streams open (\(closedEarly) ended early); server RSS \(rss0) → \(rss1) → \(rss2) KiB")
        print(String(format: "RESULT gateway-idle bytes_per_idle_connection=%.0f bytes_per_idle_stream=%.0f streams=%d closed_early=%d",
                     perConn, perStream, opened, closedEarly))
        withExtendedLifetime(conns) {}
    }
}

/// The `"t":<n>` stamp in an echoed line.
func stampIn(_ line: [UInt8]) -> UInt64? {
    let key = Array(#""t":"#.utf8)
    guard line.count > key.count else { return nil }
    for i in 0...(line.count - key.count) where line[i] == key[0] && Array(line[i..<(i + key.count)]) == key {
        var v: UInt64 = 0
        var j = i + key.count
        while j < line.count, line[j] >= 0x30, line[j] <= 0x39 { v = v * 10 + UInt64(line[j] - 0x30); j += 1 }
        return v
    }
    return nil
}

/// utime+stime of a process and its descendants (live threads' children lists), in microseconds.
func processTreeCPUMicros(_ pid: Int32) -> UInt64 {
    processTree(pid).reduce(0) { $0 + (ProcessStats(pid: $1).cpuMicroseconds ?? 0) }
}

/// RSS of a process and its descendants, KiB.
func processTreeRSSKiB(_ pid: Int32) -> Int {
    processTree(pid).reduce(0) { $0 + (ProcessStats(pid: $1).rssKiB ?? 0) }
}

func processTree(_ pid: Int32) -> [Int32] {
    var out = [pid]
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    for t in tasks {
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(t)/children", encoding: .utf8)) ?? ""
        for c in children.split(separator: " ") { if let p = Int32(c) { out += processTree(p) } }
    }
    return out
}
