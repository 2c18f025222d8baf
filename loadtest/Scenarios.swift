import Foundation
import Synchronization
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

/// Credentials and addressing shared by every scenario (defaults match config/soulfra.json).
struct Target: Sendable {
    var address: PeerAddress
    var world = "bench"
    var keyID: UInt64 = 1
    var instanceToken = "dev-instance-token-bench"
    var gatewayToken = "dev-gateway-token-0001"
    var runtimeToken = "dev-runtime-token-0001"
    var vaultToken = "dev-vault-token-000001"
    var serverPID: Int32?
    /// The broker's loop count, learned from a first WELCOME: app-side, runtime and vault links attach to
    /// the loop serving `world` (instances are placed there by the broker).
    var loopCount = 1

    /// Asks the broker how many loops it runs.
    func discovered() throws -> Target {
        let probe = connection(.gateway, name: "probe")
        try probe.handshake()
        var t = self
        t.loopCount = Int(probe.link.welcome?.loopCount ?? 1)
        probe.close()
        return t
    }

    func connection(_ kind: PeerKind, name: String) -> PeerConnection {
        let token: String
        switch kind {
        case .instance: token = instanceToken
        case .gateway: token = gatewayToken
        case .runtime: token = runtimeToken
        case .vault: token = vaultToken
        }
        let loop = kind == .instance ? Wire.anyLoop : UInt16(Wire.loop(forWorld: world, count: loopCount))
        return PeerConnection(address: address, identity: PeerIdentity(
            kind: kind, world: kind == .instance ? world : "", instance: name, token: token, loop: loop))
    }
}

/// Flags between a scenario's threads.
final class Shared: Sendable {
    let stop = Atomic<Bool>(false)
    let ready = Atomic<Int>(0)
    let received = Atomic<UInt64>(0)
    let receivedBytes = Atomic<UInt64>(0)
    let sent = Atomic<UInt64>(0)
    let lastReceiveNanos = Atomic<UInt64>(0)
}

/// Counts and samples DATA. Latency comes from the send time stamped in the first 8 payload bytes.
final class Sink: PeerLinkDelegate {
    var frames: UInt64 = 0
    var bytes: UInt64 = 0
    var latency = Latency()
    let sampleEvery: UInt64
    let shared: Shared
    var dropped: UInt64 = 0
    var closes: [ErrorCode] = []

    init(sampleEvery: UInt64, shared: Shared) {
        self.sampleEvery = sampleEvery
        self.shared = shared
    }

    @inline(__always)
    func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        frames &+= 1
        bytes &+= UInt64(payload.count)
        if frames % sampleEvery == 0 {
            let now = monotonicNanoseconds()
            latency.record(now &- readStamp(payload))
        }
    }

    func linkDropped(_ link: PeerLink, stream: UInt32, count: UInt32) { dropped += UInt64(count) }
    func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String) { closes.append(code) }

    func publish() {
        shared.received.wrappingAdd(frames, ordering: .relaxed)
        shared.receivedBytes.wrappingAdd(bytes, ordering: .relaxed)
        frames = 0
        bytes = 0
    }
}

struct ConsumerResult: Sendable {
    var frames: UInt64
    var bytes: UInt64
    var latency: Latency
    var dropped: UInt64
    var error: String?
}

extension Latency: @unchecked Sendable {}

/// Paces sends at `rate` frames/s (0: as fast as the window allows).
struct Pacer {
    let rate: Double
    let start: UInt64
    var sent: UInt64 = 0
    init(rate: Int, start: UInt64) {
        self.rate = Double(rate)
        self.start = start
    }
    /// Frames that may be sent now.
    func due(now: UInt64) -> UInt64 {
        guard rate > 0 else { return UInt64.max }
        let should = UInt64(rate * Double(now &- start) / 1e9)
        return should > sent ? should - sent : 0
    }
}

/// The rooms publisher's loop, shared by the Soulfra and NATS drivers: publishes at `rate` frames/s (0: as
/// fast as possible) for `seconds`, in bursts of at most 256, calling `service` between bursts (flush, read
/// PINGs). Publishes `shared.sent` as it goes, sets `shared.stop` at the end, and returns the count.
func publishPaced(rate: Int, seconds: Double, shared: Shared, publish: () -> Void, service: () -> Void) -> UInt64 {
    let start = monotonicNanoseconds()
    let end = start + UInt64(seconds * 1e9)
    var pacer = Pacer(rate: rate, start: start)
    var sent: UInt64 = 0
    while monotonicNanoseconds() < end {
        var due = min(pacer.due(now: monotonicNanoseconds()), 256)
        while due > 0 {
            publish()
            sent += 1
            due -= 1
        }
        pacer.sent = sent
        shared.sent.store(sent, ordering: .relaxed)
        service()
    }
    shared.sent.store(sent, ordering: .relaxed)
    shared.stop.store(true, ordering: .relaxed)
    return sent
}

// MARK: - pipe

struct PipeOptions: Sendable {
    var pairs = 1
    var size = 256
    var seconds = 5.0
    var rate = 0
    var streamsPerPair = 1
}

/// N producers (gateway links) → N consumers (instance links), one stream each, through the broker.
func runPipe(_ t: Target, _ o: PipeOptions) throws -> Report {
    let shared = Shared()
    let sampleEvery: UInt64 = o.rate > 0 ? 1 : 64
    let server = t.serverPID.map { ProcessStats(pid: $0) }
    let cpuStart = Mutex<UInt64?>(nil)
    let startNanos = Atomic<UInt64>(0)
    let results = onThreads([
        { @Sendable () -> ConsumerResult in pipeConsumer(t, o, shared: shared, sampleEvery: sampleEvery) },
        { @Sendable () -> ConsumerResult in
            pipeProducer(t, o, shared: shared) { start in
                cpuStart.withLock { $0 = server?.cpuMicroseconds }
                startNanos.store(start, ordering: .relaxed)
            }
        },
    ])
    return try pipeReport("soulfra", o, shared: shared, start: startNanos.load(ordering: .relaxed), results: results,
                          server: server, cpuStart: cpuStart.withLock { $0 })
}

/// The pipe's consumers: instance links that take every frame, until the producers stopped and everything
/// sent arrived (or nothing arrived for 2 s).
func pipeConsumer(_ t: Target, _ o: PipeOptions, shared: Shared, sampleEvery: UInt64) -> ConsumerResult {
    let reactor = PeerReactor()
    let sink = Sink(sampleEvery: sampleEvery, shared: shared)
    var conns: [PeerConnection] = []
    do {
        for i in 0..<o.pairs {
            let c = t.connection(.instance, name: "consumer-\(i)")
            c.link.delegate = sink
            try c.handshake()
            reactor.add(c)
            conns.append(c)
        }
    } catch {
        shared.stop.store(true, ordering: .relaxed)
        shared.ready.wrappingAdd(1, ordering: .releasing)
        return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "consumer: \(error)")
    }
    shared.ready.wrappingAdd(1, ordering: .releasing)
    var lastProgress = monotonicNanoseconds()
    while true {
        let before = sink.frames
        reactor.poll(timeoutMilliseconds: 1)
        let now = monotonicNanoseconds()
        if sink.frames != before {
            lastProgress = now
            shared.lastReceiveNanos.store(now, ordering: .relaxed)
        }
        sink.publish()
        if shared.stop.load(ordering: .relaxed) {
            let done = shared.received.load(ordering: .relaxed) >= shared.sent.load(ordering: .relaxed)
            if done || now &- lastProgress > 2_000_000_000 { break }
        }
    }
    shared.ready.wrappingAdd(1, ordering: .releasing)  // consumer finished
    for c in conns { c.close() }
    let closes = sink.closes.filter { $0 != .peerGone }
    return ConsumerResult(frames: 0, bytes: 0, latency: sink.latency, dropped: 0,
                          error: closes.isEmpty ? nil : "consumer links closed: \(closes)")
}

/// The pipe's producers: gateway links sending as fast as credit (or `o.rate`) allows for `o.seconds`.
/// `started` is called with the clock at the first send.
func pipeProducer(_ t: Target, _ o: PipeOptions, shared: Shared, started: (UInt64) -> Void) -> ConsumerResult {
    while shared.ready.load(ordering: .acquiring) < 1 { usleep(1_000) }
    if shared.stop.load(ordering: .relaxed) { return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0) }
    let reactor = PeerReactor()
    var conns: [PeerConnection] = []
    var streams: [[UInt32]] = []
    do {
        for i in 0..<o.pairs {
            let c = t.connection(.gateway, name: "producer-\(i)")
            try c.handshake()
            var ids: [UInt32] = []
            for _ in 0..<o.streamsPerPair {
                ids.append(c.link.open(Open(target: .instance, keyID: t.keyID, world: t.world, session: "", detail: "pipe")))
            }
            streams.append(ids)
            reactor.add(c)
            conns.append(c)
        }
    } catch {
        shared.stop.store(true, ordering: .relaxed)
        return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "producer: \(error)")
    }
    let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: max(8, o.size), alignment: 8)
    payload.initializeMemory(as: UInt8.self, repeating: 0x5A)
    defer { payload.deallocate() }
    let start = monotonicNanoseconds()
    started(start)
    let end = start + UInt64(o.seconds * 1e9)
    var pacer = Pacer(rate: o.rate, start: start)
    var sent: UInt64 = 0
    var now = start
    while now < end {
        var due = pacer.due(now: now)
        var progressed = false
        for (i, c) in conns.enumerated() where due > 0 {
            for s in streams[i] where due > 0 {
                var burst = 0
                while due > 0 && burst < 128 {
                    stamp(payload, monotonicNanoseconds())
                    guard c.link.send(stream: s, payload: UnsafeRawBufferPointer(payload)) else { break }
                    due -= 1
                    burst += 1
                    sent += 1
                }
                if burst > 0 { progressed = true }
            }
            if c.link.output.count >= 64 << 10 { c.flush() }
        }
        pacer.sent = sent
        shared.sent.store(sent, ordering: .relaxed)
        // Blocked on credit (or ahead of the rate): wait briefly for CREDIT; else just collect it.
        reactor.poll(timeoutMilliseconds: progressed ? 0 : 1)
        now = monotonicNanoseconds()
    }
    for c in conns { c.flush() }
    shared.sent.store(sent, ordering: .relaxed)
    shared.stop.store(true, ordering: .relaxed)
    // Keep answering PINGs and taking CREDIT until the consumer is done.
    while shared.ready.load(ordering: .acquiring) < 2 && monotonicNanoseconds() < end + 5_000_000_000 {
        reactor.poll(timeoutMilliseconds: 5)
    }
    for c in conns { c.close() }
    return ConsumerResult(frames: sent, bytes: 0, latency: Latency(), dropped: 0)
}

/// The report of a pipe run (Soulfra or NATS): throughput over first send to last receipt.
func pipeReport(
    _ target: String, _ o: PipeOptions, shared: Shared, start: UInt64, results: [ConsumerResult],
    server: ProcessStats?, cpuStart: UInt64?
) throws -> Report {
    if let e = results.compactMap(\.error).first { throw LoadtestError(e) }
    let cpuEnd = server?.cpuMicroseconds
    let received = shared.received.load(ordering: .relaxed)
    let last = shared.lastReceiveNanos.load(ordering: .relaxed)
    var report = Report(
        scenario: "pipe", target: target, seconds: Double(last &- start) / 1e9, frames: received,
        bytes: received * UInt64(o.size), latency: results[0].latency,
        latencyKind: o.rate > 0 ? "rate_\(o.rate)" : "saturation", serverRSSKiB: server?.rssKiB,
        serverCPUMicros: cpuStart.flatMap { s in cpuEnd.map { $0 - s } })
    report.extra = [("pairs", "\(o.pairs)"), ("size", "\(o.size)"), ("sent", "\(results[1].frames)")]
    return report
}
