import Foundation
import Synchronization
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

// MARK: - chain: app → instance → runtime → vault and back

/// A simulated world instance: each app stream gets a runtime stream; requests go to the runtime, replies back.
final class ChainInstance: PeerLinkDelegate {
    var appToRuntime: [UInt32: UInt32] = [:]
    var runtimeToApp: [UInt32: UInt32] = [:]
    let world: String
    init(world: String) { self.world = world }

    func linkAccepted(_ s: PeerLink, stream: UInt32, open: Open) {
        let r = s.open(Open(target: .runtime, keyID: 0, world: world, session: open.session, detail: "cal"))
        appToRuntime[stream] = r
        runtimeToApp[r] = stream
    }
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        if let r = appToRuntime[stream] { _ = s.send(stream: r, payload: payload) }
        else if let a = runtimeToApp[stream] { _ = s.send(stream: a, payload: payload) }
    }
    func linkStreamClosed(_ s: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        if let r = appToRuntime.removeValue(forKey: stream) { runtimeToApp[r] = nil; s.closeStream(r) }
    }
}

/// A simulated runtime worker: each instance stream gets a vault stream; the event is appended, then answered.
final class ChainRuntime: PeerLinkDelegate {
    var fromInstance: [UInt32: UInt32] = [:]
    var fromVault: [UInt32: UInt32] = [:]
    func linkAccepted(_ s: PeerLink, stream: UInt32, open: Open) {
        let v = s.open(Open(target: .vault, keyID: 0, world: open.world, session: open.session, detail: "events"))
        fromInstance[stream] = v
        fromVault[v] = stream
    }
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        if let v = fromInstance[stream] { _ = s.send(stream: v, payload: payload) }  // append to the vault
        else if let i = fromVault[stream] { _ = s.send(stream: i, payload: payload) }  // acked: reply
    }
    func linkStreamClosed(_ s: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        if let v = fromInstance.removeValue(forKey: stream) { fromVault[v] = nil; s.closeStream(v) }
    }
}

/// A simulated vault: acknowledges each appended event by echoing it.
final class ChainVault: PeerLinkDelegate {
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        _ = s.send(stream: stream, payload: payload)
    }
}

/// The app side: `concurrency` streams, each with one request outstanding (closed loop).
final class ChainApp: PeerLinkDelegate {
    var latency = Latency()
    var completed: UInt64 = 0
    var ready: [UInt32] = []
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        latency.record(monotonicNanoseconds() &- readStamp(payload))
        completed &+= 1
        ready.append(stream)
    }
}

struct ChainOptions: Sendable {
    var concurrency = 16
    var size = 256
    var seconds = 5.0
}

func runChain(_ t: Target, _ o: ChainOptions) throws -> Report {
    let shared = Shared()
    let server = t.serverPID.map { ProcessStats(pid: $0) }
    let results = onThreads([
        { @Sendable () -> ConsumerResult in
            let reactor = PeerReactor()
            let inst = t.connection(.instance, name: "chain-instance"), rt = t.connection(.runtime, name: "chain-runtime")
            let vault = t.connection(.vault, name: "chain-vault")
            let di = ChainInstance(world: t.world), dr = ChainRuntime(), dv = ChainVault()
            inst.link.delegate = di
            rt.link.delegate = dr
            vault.link.delegate = dv
            do {
                for c in [inst, rt, vault] { try c.handshake(); reactor.add(c) }
            } catch {
                shared.stop.store(true, ordering: .relaxed)
                shared.ready.wrappingAdd(1, ordering: .releasing)
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "services: \(error)")
            }
            shared.ready.wrappingAdd(1, ordering: .releasing)
            while shared.ready.load(ordering: .acquiring) < 2 { reactor.poll(timeoutMilliseconds: 1) }
            return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0)
        },
        { @Sendable () -> ConsumerResult in
            while shared.ready.load(ordering: .acquiring) < 1 { usleep(1_000) }
            defer { shared.ready.wrappingAdd(1, ordering: .releasing) }
            if shared.stop.load(ordering: .relaxed) { return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0) }
            let app = t.connection(.gateway, name: "chain-app")
            let d = ChainApp()
            app.link.delegate = d
            do { try app.handshake() } catch {
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "app: \(error)")
            }
            let reactor = PeerReactor()
            reactor.add(app)
            for i in 0..<o.concurrency {
                d.ready.append(app.link.open(Open(target: .instance, keyID: t.keyID, world: t.world, session: "user-\(i)", detail: "cal")))
            }
            let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: max(8, o.size), alignment: 8)
            payload.initializeMemory(as: UInt8.self, repeating: 0x61)
            defer { payload.deallocate() }
            let start = monotonicNanoseconds()
            let end = start + UInt64(o.seconds * 1e9)
            shared.lastReceiveNanos.store(start, ordering: .relaxed)
            while monotonicNanoseconds() < end {
                let streams = d.ready
                d.ready.removeAll(keepingCapacity: true)
                for s in streams {
                    stamp(payload, monotonicNanoseconds())
                    if !app.link.send(stream: s, payload: UnsafeRawBufferPointer(payload)) { d.ready.append(s) }
                }
                reactor.poll(timeoutMilliseconds: 1)
                if app.link.isClosed { return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "app link closed: \(app.link.state)") }
            }
            let elapsed = monotonicNanoseconds() - start
            shared.lastReceiveNanos.store(elapsed, ordering: .relaxed)
            app.close()
            return ConsumerResult(frames: d.completed, bytes: d.completed * UInt64(o.size), latency: d.latency, dropped: 0)
        },
    ])
    if let e = results.compactMap(\.error).first { throw LoadtestError(e) }
    let seconds = Double(shared.lastReceiveNanos.load(ordering: .relaxed)) / 1e9
    var report = Report(
        scenario: "chain", target: "soulfra", seconds: seconds, frames: results[1].frames, bytes: results[1].bytes,
        latency: results[1].latency, latencyKind: "round_trip_c\(o.concurrency)", serverRSSKiB: server?.rssKiB, serverCPUMicros: nil)
    report.extra = [("hops", "6"), ("concurrency", "\(o.concurrency)"), ("requests/s", String(format: "%.0f", report.framesPerSecond))]
    return report
}

// MARK: - rooms: one publisher, N subscribers

struct RoomsOptions: Sendable {
    var subscribers = 100
    var size = 256
    var seconds = 5.0
    var rate = 2_000
    var dropOldest = false
}

func runRooms(_ t: Target, _ o: RoomsOptions) throws -> Report {
    let shared = Shared()
    let server = t.serverPID.map { ProcessStats(pid: $0) }
    let cpuStart = Mutex<UInt64?>(nil)
    let results = onThreads([
        { @Sendable () -> ConsumerResult in
            let reactor = PeerReactor()
            let sink = Sink(sampleEvery: 16, shared: shared)
            var conns: [PeerConnection] = []
            do {
                for i in 0..<o.subscribers {
                    let c = t.connection(.gateway, name: "viewer-\(i)")
                    c.link.delegate = sink
                    try c.handshake()
                    c.link.subscribe(world: t.world, room: "bench-room", mode: o.dropOldest ? .dropOldest : .reliable)
                    c.flush()
                    reactor.add(c)
                    conns.append(c)
                }
            } catch {
                shared.stop.store(true, ordering: .relaxed)
                shared.ready.wrappingAdd(1, ordering: .releasing)
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "viewers: \(error)")
            }
            for _ in 0..<20 { reactor.poll(timeoutMilliseconds: 1) }  // subscriptions reach the broker
            shared.ready.wrappingAdd(1, ordering: .releasing)
            var lastProgress = monotonicNanoseconds()
            let expected = { shared.sent.load(ordering: .relaxed) * UInt64(o.subscribers) }
            while true {
                let before = sink.frames
                reactor.poll(timeoutMilliseconds: 1)
                let now = monotonicNanoseconds()
                if sink.frames != before { lastProgress = now; shared.lastReceiveNanos.store(now, ordering: .relaxed) }
                sink.publish()
                if shared.stop.load(ordering: .relaxed) {
                    if shared.received.load(ordering: .relaxed) + sink.dropped >= expected() || now &- lastProgress > 1_000_000_000 { break }
                }
            }
            let closed = conns.filter { $0.link.isClosed }.count
            for c in conns { c.close() }
            return ConsumerResult(frames: UInt64(closed), bytes: 0, latency: sink.latency, dropped: sink.dropped)
        },
        { @Sendable () -> ConsumerResult in
            while shared.ready.load(ordering: .acquiring) < 1 { usleep(1_000) }
            if shared.stop.load(ordering: .relaxed) { return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0) }
            let pub = t.connection(.instance, name: "publisher")
            do { try pub.handshake() } catch {
                shared.stop.store(true, ordering: .relaxed)
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "publisher: \(error)")
            }
            let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: max(8, o.size), alignment: 8)
            payload.initializeMemory(as: UInt8.self, repeating: 0x62)
            defer { payload.deallocate() }
            cpuStart.withLock { $0 = server?.cpuMicroseconds }
            let sent = publishPaced(rate: o.rate, seconds: o.seconds, shared: shared, publish: {
                stamp(payload, monotonicNanoseconds())
                pub.link.publish(world: t.world, room: "bench-room", payload: UnsafeRawBufferPointer(payload))
            }, service: { _ = pub.pump(timeoutMilliseconds: o.rate > 0 ? 1 : 0) })
            pub.close()
            return ConsumerResult(frames: sent, bytes: 0, latency: Latency(), dropped: 0)
        },
    ])
    if let e = results.compactMap(\.error).first { throw LoadtestError(e) }
    let cpuEnd = server?.cpuMicroseconds
    let delivered = shared.received.load(ordering: .relaxed)
    var report = Report(
        scenario: "rooms", target: "soulfra", seconds: o.seconds, frames: delivered, bytes: delivered * UInt64(o.size),
        latency: results[0].latency, latencyKind: o.rate > 0 ? "rate_\(o.rate)x\(o.subscribers)" : "saturation",
        serverRSSKiB: server?.rssKiB, serverCPUMicros: cpuStart.withLock { s in cpuEnd.flatMap { e in s.map { e - $0 } } })
    report.extra = [("subscribers", "\(o.subscribers)"), ("published", "\(results[1].frames)"),
                    ("dropped", "\(results[0].dropped)"), ("viewers_closed", "\(results[0].frames)")]
    return report
}
