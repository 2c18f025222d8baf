import Foundation
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

struct IdleOptions: Sendable {
    var links = 1_000
    var streams = 10_000
    var settleSeconds = 1.0
}

/// Memory per idle link and per idle stream: RSS of the server before, after opening `links` idle links, and
/// after opening `streams` idle streams (gateway → instance) spread over them.
func runIdle(_ t: Target, _ o: IdleOptions) throws -> Report {
    guard let pid = t.serverPID else { throw LoadtestError("idle needs --server-pid to read the server's RSS") }
    let server = ProcessStats(pid: pid)
    let reactor = PeerReactor()
    func settle() {
        let end = monotonicNanoseconds() + UInt64(o.settleSeconds * 1e9)
        while monotonicNanoseconds() < end { reactor.poll(timeoutMilliseconds: 5) }
    }
    // One instance accepts every stream (instances are few; apps are many).
    let inst = t.connection(.instance, name: "idle-instance")
    let sink = Sink(sampleEvery: 1 << 30, shared: Shared())
    inst.link.delegate = sink
    try inst.handshake()
    reactor.add(inst)
    settle()
    let base = server.rssKiB ?? 0
    var links: [PeerConnection] = []
    for i in 0..<o.links {
        let c = t.connection(.gateway, name: "idle-\(i)")
        try c.handshake()
        reactor.add(c)
        links.append(c)
    }
    settle()
    let withLinks = server.rssKiB ?? 0
    for i in 0..<o.streams {
        let c = links[i % links.count]
        c.link.open(Open(target: .instance, keyID: t.keyID, world: t.world, session: "", detail: "idle"))
        if i % 256 == 255 { reactor.poll(timeoutMilliseconds: 0) }
    }
    settle()
    let withStreams = server.rssKiB ?? 0
    let perLink = Double(withLinks - base) * 1024 / Double(max(1, o.links))
    let perStream = Double(withStreams - withLinks) * 1024 / Double(max(1, o.streams))
    for c in links { c.close() }
    inst.close()
    var r = Report(scenario: "idle", target: "soulfra", seconds: 0, frames: 0, bytes: 0, latency: Latency(),
                   latencyKind: "n/a", serverRSSKiB: withStreams, serverCPUMicros: nil)
    r.extra = [("links", "\(o.links)"), ("streams", "\(o.streams)"), ("rss_base_kib", "\(base)"),
               ("bytes_per_idle_link", String(format: "%.0f", perLink)),
               ("bytes_per_idle_stream", String(format: "%.0f", perStream))]
    return r
}

/// The NATS equivalent: idle client connections, then idle subscriptions spread over them.
func runNATSIdle(host: String, port: UInt16, pid: Int32, _ o: IdleOptions) throws -> Report {
    let server = ProcessStats(pid: pid)
    usleep(UInt32(o.settleSeconds * 1e6))
    let base = server.rssKiB ?? 0
    var conns: [NATSConnection] = []
    for _ in 0..<o.links {
        var c = try NATSConnection(host: host, port: port)
        c.append("PING\r\n")
        c.flush()
        conns.append(c)
    }
    func settle() {
        let end = monotonicNanoseconds() + UInt64(o.settleSeconds * 1e9)
        while monotonicNanoseconds() < end {
            for i in conns.indices {
                _ = conns[i].fill(timeout: 0)
                conns[i].parse { _ in }
                conns[i].inbuf.removeAll(keepingCapacity: true)
                conns[i].inStart = 0
                if !conns[i].out.isEmpty { conns[i].flush() }
            }
            usleep(5_000)
        }
    }
    settle()
    let withLinks = server.rssKiB ?? 0
    for i in 0..<o.streams {
        conns[i % conns.count].append("SUB idle.\(i) \(i + 1)\r\n")
    }
    for i in conns.indices { conns[i].append("PING\r\n"); conns[i].flush() }
    settle()
    let withStreams = server.rssKiB ?? 0
    for c in conns { close(c.fd) }
    var r = Report(scenario: "idle", target: "nats", seconds: 0, frames: 0, bytes: 0, latency: Latency(),
                   latencyKind: "n/a", serverRSSKiB: withStreams, serverCPUMicros: nil)
    r.extra = [("links", "\(o.links)"), ("streams", "\(o.streams)"), ("rss_base_kib", "\(base)"),
               ("bytes_per_idle_link", String(format: "%.0f", Double(withLinks - base) * 1024 / Double(max(1, o.links)))),
               ("bytes_per_idle_stream", String(format: "%.0f", Double(withStreams - withLinks) * 1024 / Double(max(1, o.streams))))]
    return r
}
