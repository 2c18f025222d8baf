import Testing
@testable import SoulfraBroker
import SoulfraKeys
import SoulfraLimits
import SoulfraWire

@Suite("Broker: handshake and auth")
struct HandshakeTests {
    @Test("a valid HELLO gets WELCOME with the negotiated frame size and stream credit")
    func welcome() {
        let h = Harness()
        let p = h.attach()
        p.send(.hello(Hello(kind: .runtime, maxFrameBytes: 8 << 10, token: Harness.tokenText.runtime)))
        guard case .welcome(let w) = p.inbox.first else { Issue.record("no WELCOME: \(p.inbox)"); return }
        #expect(w.maxFrameBytes == 8 << 10)
        #expect(w.streamCreditBytes == 64 << 10)
        #expect(w.streamCreditFrames == 64)
        #expect(h.broker.snapshot().linksByKind[Int(PeerKind.runtime.rawValue)] == 1)
    }

    @Test("a wrong token gets ERROR auth_failed and the link is closed")
    func badToken() {
        let h = Harness()
        let p = h.connect(.runtime, token: "not-the-runtime-token")
        #expect(p.linkError?.0 == .authFailed)
        #expect(h.closed.contains(p.id))
        #expect(h.broker.snapshot().authFailures == 1)
        #expect(h.broker.snapshot().closes(.authFailed) == 1)
    }

    @Test("an instance token of one world does not admit an instance of another")
    func crossWorldToken() {
        let h = Harness()
        let p = h.connect(.instance, world: "arena", token: Harness.tokenText.instances["playground"])
        #expect(p.linkError?.0 == .authFailed)
    }

    @Test("a kind with no configured token cannot attach")
    func disabledKind() {
        let h = Harness(access: AccessTable(runtimeToken: "tok-runtime-0000001"))
        let p = h.connect(.vault, token: "")
        #expect(p.linkError?.0 == .authFailed)
    }

    @Test("anything before HELLO is a protocol error")
    func dataBeforeHello() {
        let h = Harness()
        let p = h.attach()
        p.send(.ping(1))
        #expect(p.linkError?.0 == .protocolError)
        #expect(h.closed.contains(p.id))
    }

    @Test("an unsupported version is refused by name")
    func version() {
        let h = Harness()
        let p = h.attach()
        p.send(.hello(Hello(version: 9, kind: .runtime, token: Harness.tokenText.runtime)))
        #expect(p.linkError?.0 == .unsupportedVersion)
    }

    @Test("a link that never says HELLO is closed with handshake_timeout")
    func handshakeTimeout() {
        let h = Harness()
        let p = h.attach()
        h.advance(milliseconds: 6_000)
        #expect(p.linkError?.0 == .handshakeTimeout)
    }
}

@Suite("Broker: routing and balancing")
struct RoutingTests {
    /// gateway → instance stream with one DATA each way.
    @Test("gateway ↔ instance round trip with stream ids translated")
    func roundTrip() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground", instance: "i1")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground", session: "s1", detail: "cal")))
        let opened = inst.opened()
        #expect(opened.count == 1)
        let (s, o) = opened[0]
        #expect(s % 2 == 0, "broker-initiated ids are even")
        #expect(o == Open(target: .instance, keyID: 1, world: "playground", session: "s1", detail: "cal"))
        gw.send(.data(stream: 1, payload: Array("hi".utf8), end: false))
        #expect(inst.data(on: s) == [Array("hi".utf8)])
        inst.send(.data(stream: s, payload: Array("hello!".utf8), end: true))
        #expect(gw.data(on: 1) == [Array("hello!".utf8)])
        gw.send(.data(stream: 1, payload: [], end: true))
        #expect(h.broker.snapshot().streamsOpen == 0, "both ENDs free the pair")
    }

    @Test("instance → runtime → vault chain")
    func chain() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let rt = h.connect(.runtime)
        let vault = h.connect(.vault)
        inst.send(.open(stream: 1, Open(target: .runtime, world: "playground", detail: "cal")))
        let (rs, _) = rt.opened()[0]
        rt.send(.open(stream: 1, Open(target: .vault, world: "playground", detail: "events")))
        let (vs, _) = vault.opened()[0]
        rt.send(.data(stream: 1, payload: [1, 2, 3], end: false))
        #expect(vault.data(on: vs) == [[1, 2, 3]])
        vault.send(.data(stream: vs, payload: [9], end: false))
        #expect(rt.data(on: 1) == [[9]])
        rt.send(.data(stream: rs, payload: [7], end: false))
        #expect(inst.data(on: 1) == [[7]])
    }

    @Test("no instance attached: ERROR no_route, the link stays")
    func noRoute() {
        let h = Harness()
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        #expect(gw.errors().map(\.1) == [.noRoute])
        #expect(!h.closed.contains(gw.id))
    }

    @Test("least-outstanding spreads streams across instances")
    func leastOutstanding() {
        let h = Harness()
        let a = h.connect(.instance, world: "playground", instance: "a")
        let b = h.connect(.instance, world: "playground", instance: "b")
        let c = h.connect(.instance, world: "playground", instance: "c")
        let gw = h.connect(.gateway)
        for i in 0..<9 { gw.send(.open(stream: UInt32(2 * i + 1), Open(target: .instance, keyID: 1, world: "playground"))) }
        #expect([a, b, c].map { $0.opened().count } == [3, 3, 3])
        // Finish a's streams: the next three go to a.
        for (s, _) in a.opened() { a.send(.close(stream: s, code: .none, reason: "")) }
        a.inbox.removeAll()
        for i in 9..<12 { gw.send(.open(stream: UInt32(2 * i + 1), Open(target: .instance, keyID: 1, world: "playground"))) }
        #expect(a.opened().count == 3)
    }

    @Test("round-robin visits instances in turn")
    func roundRobin() {
        let h = Harness(balancer: .roundRobin)
        let a = h.connect(.instance, world: "playground")
        let b = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        for i in 0..<4 { gw.send(.open(stream: UInt32(2 * i + 1), Open(target: .instance, keyID: 1, world: "playground"))) }
        #expect(a.opened().count == 2 && b.opened().count == 2)
    }

    @Test("session affinity keeps a session on one instance and re-pins it when that instance dies")
    func affinity() {
        let h = Harness()
        let a = h.connect(.instance, world: "playground")
        let b = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        for i in 0..<6 { gw.send(.open(stream: UInt32(2 * i + 1), Open(target: .instance, keyID: 1, world: "playground", session: "alice"))) }
        let first = a.opened().count == 6 ? a : b
        let other = first === a ? b : a
        #expect(first.opened().count == 6 && other.opened().isEmpty)
        #expect(h.broker.snapshot().affinityHits == 5)
        // The pinned instance dies: its streams get ERROR peer_gone at the gateway, the session moves.
        gw.inbox.removeAll()
        h.broker.detach(link: first.id, now: h.now)
        first.detached = true
        h.pump()
        #expect(gw.errors().count == 6)
        #expect(gw.errors().allSatisfy { $0.1 == .peerGone })
        gw.send(.open(stream: 101, Open(target: .instance, keyID: 1, world: "playground", session: "alice")))
        #expect(other.opened().count == 1)
        #expect(h.broker.snapshot().affinityRepins == 1)
    }

    @Test("an instance that sent GOAWAY gets no new streams")
    func drainingInstance() {
        let h = Harness()
        let a = h.connect(.instance, world: "playground")
        let b = h.connect(.instance, world: "playground")
        a.send(.goaway(lastStream: 0, code: .shutdown, reason: "scale down"))
        let gw = h.connect(.gateway)
        for i in 0..<3 { gw.send(.open(stream: UInt32(2 * i + 1), Open(target: .instance, keyID: 1, world: "playground"))) }
        #expect(a.opened().isEmpty && b.opened().count == 3)
    }

    @Test("permissions: a key of one world never reaches another; instances stay in their world")
    func permissions() {
        let h = Harness()
        _ = h.connect(.instance, world: "playground")
        let arena = h.connect(.instance, world: "arena")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "arena")))
        gw.send(.open(stream: 3, Open(target: .instance, keyID: 0, world: "arena")))
        gw.send(.open(stream: 5, Open(target: .instance, keyID: 999, world: "arena")))
        #expect(gw.errors().map(\.1) == [.notPermitted, .notPermitted, .notPermitted])
        #expect(arena.opened().isEmpty)
        arena.send(.open(stream: 1, Open(target: .runtime, world: "playground")))
        #expect(arena.errors().map(\.1) == [.notPermitted])
        arena.send(.open(stream: 3, Open(target: .instance, world: "arena")))
        #expect(arena.errors().last?.1 == .notPermitted)
    }

    @Test("a reused or even stream id is a protocol error")
    func streamIDs() {
        let h = Harness()
        _ = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 2, Open(target: .instance, keyID: 1, world: "playground")))
        #expect(gw.linkError?.0 == .protocolError)
        let gw2 = h.connect(.gateway)
        gw2.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        gw2.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        #expect(gw2.linkError?.0 == .protocolError)
    }
}

@Suite("Broker: credit and backpressure")
struct BackpressureTests {
    func openPair(_ h: Harness) -> (gw: TestPeer, inst: TestPeer, instStream: UInt32) {
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        return (gw, inst, inst.opened()[0].0)
    }

    @Test("DATA beyond the granted window ends the stream with flow_control on both sides")
    func windowEnforced() {
        let h = Harness()
        let (gw, inst, s) = openPair(h)
        let chunk = [UInt8](repeating: 1, count: 16 << 10)
        for _ in 0..<4 { gw.send(.data(stream: 1, payload: chunk, end: false)) }  // exactly 64 KiB: allowed
        #expect(inst.data(on: s).count == 4)
        gw.send(.data(stream: 1, payload: [1], end: false))
        #expect(gw.errors().map(\.1) == [.flowControl])
        #expect(inst.errors().map(\.1) == [.flowControl])
        #expect(h.broker.snapshot().streamErrors[Int(ErrorCode.flowControl.rawValue)] == 1)
    }

    @Test("CREDIT from the consumer is passed to the producer with its stream id")
    func creditPassThrough() {
        let h = Harness()
        let (gw, inst, s) = openPair(h)
        inst.send(.credit(stream: s, bytes: 1_000, frames: 3))
        #expect(gw.inbox.contains(.credit(stream: 1, bytes: 1_000, frames: 3)))
        gw.send(.credit(stream: 1, bytes: 5, frames: 1))
        #expect(inst.inbox.contains(.credit(stream: s, bytes: 5, frames: 1)))
    }

    @Test("a consumer that stops reading pauses the producer; reading again resumes it")
    func watermarksPauseProducer() {
        let h = Harness()
        let rt = h.connect(.runtime)
        let inst1 = h.connect(.instance, world: "playground")
        let inst2 = h.connect(.instance, world: "playground")
        var streams: [UInt32] = []
        for inst in [inst1, inst2] {
            for k in 0..<2 {
                let id = UInt32(2 * k + 1)
                inst.send(.open(stream: id, Open(target: .runtime, world: "playground")))
                streams.append(id)
            }
        }
        rt.reading = false
        let chunk = [UInt8](repeating: 2, count: 16 << 10)
        // 2 instances × 2 streams × 64 KiB of credit = 256 KiB, well past the 64 KiB high watermark.
        for inst in [inst1, inst2] {
            for id: UInt32 in [1, 3] { for _ in 0..<4 { inst.send(.data(stream: id, payload: chunk, end: false)) } }
        }
        #expect(h.paused.contains(inst1.id) && h.paused.contains(inst2.id))
        let snap = h.broker.snapshot()
        #expect(snap.congestionAlerts[Int(PeerKind.runtime.rawValue)] == 1)
        #expect(snap.pauses[0] >= 2)
        #expect(snap.queueBytesByKind[Int(PeerKind.runtime.rawValue)] <= 256 << 10 + 4096, "bounded by the credit granted")
        #expect(!h.closed.contains(rt.id), "runtime links are paused on, never closed")
        rt.resume()
        #expect(!h.paused.contains(inst1.id) && !h.paused.contains(inst2.id))
        #expect(rt.inbox.filter { if case .data = $0 { true } else { false } }.count == 16)
    }

    @Test("a gateway link past the hard watermark is closed with slow_consumer")
    func gatewaySlowConsumerHard() {
        var limits = Harness.smallLimits
        limits.streamCreditBytes = 1 << 20
        limits.streamCreditFrames = 1_000
        let h = Harness(limits: limits)
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        let s = inst.opened()[0].0
        gw.reading = false
        let chunk = [UInt8](repeating: 3, count: 16 << 10)
        for _ in 0..<20 { inst.send(.data(stream: s, payload: chunk, end: false)) }
        #expect(h.closed.contains(gw.id))
        #expect(h.broker.snapshot().closes(.slowConsumer) == 1)
        #expect(inst.errors().first?.1 == .peerGone, "the instance's stream ends")
    }

    @Test("a gateway link above the high watermark past the deadline is closed with slow_consumer")
    func gatewaySlowConsumerDeadline() {
        var limits = Harness.smallLimits
        limits.heartbeatIntervalMilliseconds = 10_000
        let h = Harness(limits: limits)
        let (gw, inst, s) = openPair(h)
        gw.reading = false
        let chunk = [UInt8](repeating: 3, count: 16 << 10)
        for _ in 0..<5 { inst.send(.data(stream: s, payload: chunk, end: false)) }  // 80 KiB > high 64 KiB
        #expect(!h.closed.contains(gw.id))
        h.advance(milliseconds: 4_000)
        #expect(!h.closed.contains(gw.id))
        h.advance(milliseconds: 2_000)
        #expect(h.closed.contains(gw.id))
        #expect(h.broker.snapshot().closes(.slowConsumer) == 1)
    }
}

@Suite("Broker: quotas")
struct QuotaTests {
    @Test("a key's concurrent-stream quota refuses the extra stream with stream_limit")
    func concurrentStreams() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        for i in 0..<3 { gw.send(.open(stream: UInt32(2 * i + 1), Open(target: .instance, keyID: 3, world: "playground"))) }
        #expect(inst.opened().count == 2)
        #expect(gw.errors().map(\.0) == [5])
        #expect(gw.errors().map(\.1) == [.streamLimit])
        #expect(h.broker.snapshot().quotaRejections == 1)
        // Closing one frees a slot.
        inst.send(.close(stream: inst.opened()[0].0, code: .none, reason: ""))
        gw.send(.open(stream: 7, Open(target: .instance, keyID: 3, world: "playground")))
        #expect(inst.opened().count == 3)
    }

    @Test("bytes/s is enforced by pacing credit, not by dropping")
    func pacing() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        // 100 kB/s; the gateway lets the instance send 4 KiB before its first CREDIT.
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 4, world: "playground", window: Window(bytes: 4_096, frames: 4))))
        let s = inst.opened()[0].0
        // Both initial windows (64 KiB to the gateway, 4 KiB to the instance) are charged up front; 100 kB of
        // burst covers them, leaving 30,368 bytes.
        inst.send(.credit(stream: s, bytes: 60_000, frames: 60))
        var granted = gw.inbox.reduce(0) { if case .credit(1, let b, _, _) = $1 { $0 + Int(b) } else { $0 } }
        #expect(granted == 30_368, "granted \(granted)")
        #expect(h.broker.snapshot().quotaPacedBytes > 0)
        // Over the next second the rest is released, paced by the tick.
        for _ in 0..<10 { h.advance(milliseconds: 100) }
        granted = gw.inbox.reduce(0) { if case .credit(1, let b, _, _) = $1 { $0 + Int(b) } else { $0 } }
        #expect(granted == 60_000)
        #expect(inst.errors().isEmpty && gw.errors().isEmpty, "nothing dropped, nothing refused")
        // The opener was told: PACED while credit was held back, a plain CREDIT once it was all released.
        let flags = gw.inbox.compactMap { if case .credit(1, _, _, let p) = $0 { p } else { nil } }
        #expect(flags.first == true && flags.last == false, "credit flags \(flags)")
    }

    @Test("frames/s is paced the same way")
    func framePacing() {
        let tokens = AccessTable(keys: [KeyQuota(keyID: 5, world: "playground", framesPerSecond: 100)],
                                 instanceTokens: Harness.tokenText.instances, gatewayToken: Harness.tokenText.gateway)
        let h = Harness(access: tokens)
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 5, world: "playground", window: Window(bytes: 4_096, frames: 4))))
        let s = inst.opened()[0].0
        // 64 + 4 initial frames charged against a 100-frame burst: 32 of the 60 granted pass now.
        inst.send(.credit(stream: s, bytes: 1 << 20, frames: 60))
        func frames() -> Int { gw.inbox.reduce(0) { if case .credit(1, _, let f, _) = $1 { $0 + Int(f) } else { $0 } } }
        #expect(frames() == 32)
        #expect(h.broker.snapshot().quotaPacedFrames == 28)
        h.advance(milliseconds: 100)  // +10 frames of tokens
        #expect(frames() == 42)
        for _ in 0..<3 { h.advance(milliseconds: 100) }
        #expect(frames() == 60, "all of it, paced over a quarter second")
    }

    @Test("revoking a key ends its streams with not_permitted")
    func revoke() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        let without = AccessTable(keys: [], instanceTokens: Harness.tokenText.instances,
                                  runtimeToken: Harness.tokenText.runtime, vaultToken: Harness.tokenText.vault,
                                  gatewayToken: Harness.tokenText.gateway)
        h.broker.install(access: without, now: h.now)
        h.pump()
        #expect(gw.errors().map(\.1) == [.notPermitted])
        #expect(inst.errors().map(\.1) == [.notPermitted])
        gw.send(.open(stream: 3, Open(target: .instance, keyID: 1, world: "playground")))
        #expect(gw.errors().last?.1 == .notPermitted)
    }
}

@Suite("Broker: rooms")
struct RoomTests {
    @Test("one publisher fans out to every subscriber")
    func fanOut() {
        let h = Harness()
        let pub = h.connect(.instance, world: "arena")
        let viewers = (0..<5).map { _ in h.connect(.gateway) }
        for v in viewers { v.send(.subscribe(stream: 1, Subscribe(world: "arena", room: "final"))) }
        pub.send(.publish(world: "arena", room: "final", payload: [1, 2, 3]))
        for v in viewers { #expect(v.data(on: 1) == [[1, 2, 3]]) }
        #expect(h.broker.snapshot().roomFramesDelivered == 5)
        pub.send(.publish(world: "arena", room: "other", payload: [4]))
        for v in viewers { #expect(v.data(on: 1).count == 1) }
    }

    @Test("a reliable subscriber that falls past the hard bound is closed; the others and the publisher are not slowed")
    func reliableSlowViewer() {
        let h = Harness()
        let pub = h.connect(.instance, world: "arena")
        let fast = h.connect(.gateway)
        let slow = h.connect(.gateway)
        for v in [fast, slow] { v.send(.subscribe(stream: 1, Subscribe(world: "arena", room: "r"))) }
        slow.reading = false
        let chunk = [UInt8](repeating: 5, count: 8 << 10)
        for _ in 0..<40 { pub.send(.publish(world: "arena", room: "r", payload: chunk)) }  // 320 KiB > hard 256 KiB
        #expect(h.closed.contains(slow.id))
        #expect(h.broker.snapshot().closes(.slowConsumer) == 1)
        #expect(fast.data(on: 1).count == 40)
        #expect(!h.paused.contains(pub.id), "the publisher is never paused by a viewer")
    }

    @Test("a drop-oldest subscriber loses the oldest frames and is told how many")
    func dropOldest() {
        var limits = Harness.smallLimits
        limits.roomSubscriberQueueFrames = 4
        let h = Harness(limits: limits)
        let pub = h.connect(.instance, world: "arena")
        let v = h.connect(.gateway)
        v.send(.subscribe(stream: 1, Subscribe(mode: .dropOldest, world: "arena", room: "r")))
        v.reading = false
        let chunk = [UInt8](repeating: 0, count: 8 << 10)
        // 8 frames fill past the 64 KiB high watermark; 6 more are held (4 kept, 2 dropped).
        for i in 0..<14 {
            var c = chunk
            c[0] = UInt8(i)
            pub.send(.publish(world: "arena", room: "r", payload: c))
        }
        #expect(h.broker.snapshot().roomFramesDropped == 2)
        #expect(!h.closed.contains(v.id))
        v.resume()
        let got = v.data(on: 1).map { $0[0] }
        #expect(v.inbox.contains(.dropped(stream: 1, count: 2)))
        #expect(got == [0, 1, 2, 3, 4, 5, 6, 7, 10, 11, 12, 13] || got.count == 12, "got \(got)")
        #expect(got.suffix(4) == [10, 11, 12, 13], "the newest held frames survive")
    }

    @Test("an instance may only publish to its own world")
    func publishPermission() {
        let h = Harness()
        let pub = h.connect(.instance, world: "arena")
        pub.send(.publish(world: "playground", room: "r", payload: [1]))
        #expect(pub.linkError?.0 == .notPermitted)
    }
}

@Suite("Broker: heartbeats, failures, shutdown")
struct LifecycleTests {
    @Test("PING at the interval; a silent peer is closed with heartbeat_timeout and its streams end on the other side")
    func heartbeats() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        h.advance(milliseconds: 1_100)
        #expect(inst.inbox.contains { if case .ping = $0 { true } else { false } })
        // The gateway keeps answering; the instance goes silent.
        for _ in 0..<4 {
            gw.send(.pong(0))
            h.advance(milliseconds: 1_000)
        }
        #expect(inst.linkError?.0 == .heartbeatTimeout)
        #expect(gw.errors().map(\.1) == [.heartbeatTimeout])
        #expect(!h.closed.contains(gw.id))
        #expect(h.broker.snapshot().closes(.heartbeatTimeout) == 1)
    }

    @Test("a malformed frame closes only that link; other links keep flowing")
    func malformedIsolated() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        let bad = h.connect(.gateway)
        bad.sendRaw([0, 0, 0, 4, 0xEE, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4])
        #expect(bad.linkError?.0 == .protocolError)
        #expect(h.closed.contains(bad.id))
        gw.send(.data(stream: 1, payload: [42], end: false))
        #expect(inst.data(on: inst.opened()[0].0) == [[42]])
    }

    @Test("an oversize control frame is refused with frame_too_large and ends the link; oversize DATA only its stream")
    func oversize() {
        let h = Harness()
        let gw = h.connect(.gateway)
        var header = [UInt8](repeating: 0, count: 12)
        header[1] = 0x10  // 1 MiB > 16 KiB negotiated
        header[4] = FrameType.data.rawValue
        header[11] = 1
        gw.sendRaw(header)
        #expect(gw.linkError == nil)
        #expect(gw.errors().contains { $0 == (1, .frameTooLarge) })
        header[4] = FrameType.open.rawValue
        header[11] = 3
        gw.sendRaw([UInt8](repeating: 0, count: 1 << 20) + header)
        #expect(gw.linkError?.0 == .frameTooLarge)
    }

    @Test("shutdown: GOAWAY, new streams refused, open streams drain, then every link closes")
    func shutdown() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        h.broker.beginShutdown(now: h.now)
        h.pump()
        #expect(gw.inbox.contains { if case .goaway = $0 { true } else { false } })
        gw.send(.open(stream: 3, Open(target: .instance, keyID: 1, world: "playground")))
        #expect(gw.errors().map(\.1) == [.shutdown])
        #expect(!h.actions.contains(.shutdownComplete))
        let s = inst.opened()[0].0
        inst.send(.data(stream: s, payload: [1], end: true))
        gw.send(.data(stream: 1, payload: [], end: true))
        #expect(h.actions.contains(.shutdownComplete))
        #expect(h.closed.isSuperset(of: [inst.id, gw.id]))
    }

    @Test("shutdown closes stuck streams at the drain deadline")
    func shutdownDeadline() {
        var limits = Harness.smallLimits
        limits.heartbeatIntervalMilliseconds = 10_000
        let h = Harness(limits: limits)
        _ = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        h.broker.beginShutdown(now: h.now)
        h.advance(milliseconds: 6_000)
        #expect(h.actions.contains(.shutdownComplete))
        #expect(gw.linkError?.0 == .shutdown)
    }
}

@Suite("Broker limits")
struct LimitsTests {
    @Test("validation names the key and the allowed range")
    func validation() {
        var l = BrokerLimits()
        l.linkQueueBytesHigh = l.linkQueueBytesHard + 1
        #expect(throws: SettingError.self) { try l.validate() }
        do { try l.validate() } catch { #expect(error.key == "link_queue_bytes_high") }
        var m = BrokerLimits()
        m.maxFrameBytes = 10
        do { try m.validate(); Issue.record("accepted") } catch { #expect(error.key == "max_frame_bytes" && error.message.contains("1024")) }
        #expect(throws: Never.self) { try BrokerLimits().validate() }
    }

    @Test("the snapshot renders as Prometheus text with HELP and TYPE for every family")
    func prometheus() {
        let h = Harness()
        _ = h.connect(.runtime)
        let text = h.broker.snapshot().prometheusText()
        #expect(text.contains("# TYPE soulfra_broker_links gauge"))
        #expect(text.contains("soulfra_broker_links{kind=\"runtime\"} 1"))
        #expect(text.contains("soulfra_broker_link_closes_total{reason=\"slow_consumer\"} 0"))
        for line in text.split(separator: "\n") where !line.hasPrefix("#") {
            #expect(line.split(separator: " ").count == 2, "malformed sample: \(line)")
        }
    }
}

@Suite("Secrets")
struct SecretTests {
    @Test("tokens are kept as SHA-256 digests and compared in constant time")
    func digests() {
        #expect(SecretDigest(of: "abc") == SecretDigest(of: "abc"))
        #expect(SecretDigest(of: "abc") != SecretDigest(of: "abd"))
        #expect(SecretDigest(of: "abc") != SecretDigest(of: "abcd"))
        // The SHA-256 test vector for "abc" (FIPS 180-2), first 8 bytes: ba7816bf 8f01cfea.
        let d = SecretDigest(of: "abc")
        let first = withUnsafeBytes(of: d) { Array($0.prefix(8)) }
        #expect(first == [0xBA, 0x78, 0x16, 0xBF, 0x8F, 0x01, 0xCF, 0xEA])
        let t = AccessTable(runtimeToken: "runtime-secret-0001")
        #expect(t.admits(kind: .runtime, world: "", token: "runtime-secret-0001"))
        #expect(!t.admits(kind: .runtime, world: "", token: "runtime-secret-0002"))
        #expect(!t.admits(kind: .vault, world: "", token: ""), "a kind without a token is disabled")
    }
}

@Suite("Broker: loops")
struct LoopPartitionTests {
    @Test("WELCOME names the loop; worlds of other loops are refused with wrong_loop")
    func partition() {
        // With 2 loops "playground" is served by loop 0 and "bench" by loop 1.
        let tokens = AccessTable(keys: [KeyQuota(keyID: 9, world: "bench")],
                                 instanceTokens: ["bench": "tok-bench-000000001"], gatewayToken: Harness.tokenText.gateway)
        let h2 = Harness(limits: Harness.smallLimits, access: tokens, loopIndex: 0, loopCount: 2)
        let gw = h2.connect(.gateway)
        guard case .welcome(let w) = gw.inbox.first else { Issue.record("no WELCOME"); return }
        #expect(w.loopIndex == 0 && w.loopCount == 2)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 9, world: "bench")))
        #expect(gw.errors().map(\.1) == [.wrongLoop])
        gw.send(.subscribe(stream: 3, Subscribe(world: "bench", room: "r")))
        #expect(gw.errors().last?.1 == .wrongLoop)
        let inst = h2.connect(.instance, world: "bench", token: "tok-bench-000000001")
        #expect(inst.linkError?.0 == .wrongLoop)
    }
}

@Suite("Broker: what an attack broke (hardening)")
struct HardeningTests {
    @Test("a link the broker stopped reading is never closed for heartbeat_timeout; its interval restarts on resume")
    func pausedLinkIsNotSilent() {
        var limits = Harness.smallLimits
        limits.slowConsumerDeadlineMilliseconds = 60_000  // the gateway that does not read is not dropped here
        let h = Harness(limits: limits)
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        let s = inst.opened()[0].0
        // The gateway stops reading; the instance fills its queue past the high watermark and is paused.
        gw.reading = false
        var sent = 0
        while !h.paused.contains(inst.id) && sent < 200 {
            inst.send(.data(stream: s, payload: [UInt8](repeating: 7, count: 8 << 10), end: false))
            inst.send(.credit(stream: s, bytes: 0, frames: 0))
            gw.send(.credit(stream: 1, bytes: 8 << 10, frames: 1))
            sent += 1
        }
        #expect(h.paused.contains(inst.id), "the instance was never paused")
        // Ten heartbeat intervals pass with the instance paused (its PONGs unread, by the broker's choice); the
        // gateway, which writes but does not read, keeps answering.
        for _ in 0..<10 {
            gw.send(.pong(0))
            h.advance(milliseconds: 1_000)
        }
        #expect(!h.closed.contains(inst.id), "a paused instance was closed: \(String(describing: inst.linkError))")
        #expect(h.broker.snapshot().closes(.heartbeatTimeout) == 0)
        // Reading resumes: the instance answers within the interval and stays.
        gw.resume()
        #expect(!h.paused.contains(inst.id))
        inst.send(.pong(0))
        h.advance(milliseconds: 2_000)
        #expect(!h.closed.contains(inst.id))
        // And a silent instance is still found out.
        h.advance(milliseconds: 3_500)
        #expect(inst.linkError?.0 == .heartbeatTimeout)
    }

    @Test("a loop stalled for seconds does not blame its peers: heartbeats count the loop's own progress")
    func stalledLoopDoesNotBlamePeers() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        h.advance(milliseconds: 500)
        h.stall(milliseconds: 6_000)  // the loop was busy; the instance's PONGs wait in the socket
        #expect(!h.closed.contains(inst.id))
        inst.send(.pong(0))  // read once the loop runs again
        h.advance(milliseconds: 2_000)
        #expect(!h.closed.contains(inst.id))
        h.advance(milliseconds: 2_000)  // now really silent for over three intervals of loop time
        #expect(inst.linkError?.0 == .heartbeatTimeout)
    }

    @Test("an oversize DATA frame ends its stream, not the link: the other streams on the link keep flowing")
    func oversizeDataEndsOneStream() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        gw.send(.open(stream: 3, Open(target: .instance, keyID: 1, world: "playground")))
        let ids = inst.opened().map(\.0)
        // 20 KiB on a link that negotiated 16 KiB frames, delivered in three pieces.
        let big = FrameWriter.encode(.data(stream: ids[0], payload: [UInt8](repeating: 1, count: 20 << 10), end: false))
        inst.sendRaw(Array(big[0..<5]))
        inst.sendRaw(Array(big[5..<9_000]))
        inst.sendRaw(Array(big[9_000...]) + FrameWriter.encode(.data(stream: ids[1], payload: Array("fine".utf8), end: false)))
        #expect(!h.closed.contains(inst.id))
        #expect(gw.errors().contains { $0 == (1, .frameTooLarge) })
        #expect(gw.data(on: 3) == [Array("fine".utf8)])
        #expect(h.broker.snapshot().oversizeFrames == 1)
        // A control frame over the limit still ends the link.
        inst.sendRaw(FrameWriter.encode(.publish(world: "playground", room: "r", payload: [UInt8](repeating: 0, count: 20 << 10))))
        #expect(inst.linkError?.0 == .frameTooLarge)
    }

    @Test("MORE is passed through with the frame; MORE with END_STREAM ends the stream as a protocol error")
    func moreFlag() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        let s = inst.opened()[0].0
        inst.send(.data(stream: s, payload: [1, 2], end: false, flags: [.more, .binary]))
        inst.send(.data(stream: s, payload: [3], end: false, flags: [.binary]))
        let got = gw.inbox.compactMap { if case .data(1, let p, _, let f) = $0 { (p, f) } else { nil } }
        #expect(got.map(\.0) == [[1, 2], [3]])
        #expect(got.map(\.1) == [[.more, .binary], [.binary]])
        var bad = FrameWriter.encode(.data(stream: s, payload: [4], end: true))
        bad[5] = FrameFlags([.endStream, .more]).rawValue
        inst.sendRaw(bad)
        #expect(gw.errors().contains { $0 == (1, .protocolError) })
        #expect(!h.closed.contains(inst.id))
    }

    @Test("OPEN's window is what the acceptor may send first; beyond it is flow_control")
    func openWindow() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground", window: Window(bytes: 100, frames: 2))))
        let (s, open) = inst.opened()[0]
        #expect(open.window == Window(bytes: 100, frames: 2))
        inst.send(.data(stream: s, payload: [UInt8](repeating: 0, count: 60), end: false))
        inst.send(.data(stream: s, payload: [UInt8](repeating: 0, count: 50), end: false))
        #expect(gw.errors().contains { $0 == (1, .flowControl) })
    }

    @Test("a key's frames/s covers the reply direction too: the opener's CREDIT is paced and the opener is told")
    func replyPacing() {
        let tokens = AccessTable(keys: [KeyQuota(keyID: 5, world: "playground", framesPerSecond: 100)],
                                 instanceTokens: Harness.tokenText.instances, gatewayToken: Harness.tokenText.gateway)
        let h = Harness(access: tokens)
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        // 64 (gateway's window) + 4 (instance's) initial frames charged: 32 tokens left of the 100-frame burst.
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 5, world: "playground", window: Window(bytes: 1 << 20, frames: 4))))
        let s = inst.opened()[0].0
        gw.send(.credit(stream: 1, bytes: 1 << 20, frames: 60))
        func frames() -> Int { inst.inbox.reduce(0) { if case .credit(s, _, let f, _) = $1 { $0 + Int(f) } else { $0 } } }
        #expect(frames() == 32)
        #expect(h.broker.snapshot().quotaPacedFrames == 28)
        // The gateway hears that its key is being paced (a zero CREDIT with PACED), and when it ends.
        let paced = { gw.inbox.compactMap { if case .credit(1, 0, 0, let p) = $0 { p } else { nil } } }
        #expect(paced() == [true])
        for _ in 0..<4 { h.advance(milliseconds: 100) }
        #expect(frames() == 60)
        #expect(paced() == [true, false])
    }

    @Test("outlier detection: an instance whose streams time out leaves rotation for a while, then comes back")
    func outlierEjection() {
        var limits = Harness.smallLimits
        limits.outlierConsecutiveFailures = 3
        limits.outlierEjectionMilliseconds = 1_000
        let h = Harness(limits: limits)
        let slow = h.connect(.instance, world: "playground", instance: "slow")
        let good = h.connect(.instance, world: "playground", instance: "good")
        var next: UInt32 = 1
        func open() -> UInt32 {
            let id = next
            next += 2
            return id
        }
        let gw = h.connect(.gateway)
        // Three requests to the slow one time out at the gateway.
        var timedOut = 0
        while timedOut < 3 {
            let id = open()
            gw.send(.open(stream: id, Open(target: .instance, keyID: 1, world: "playground")))
            if slow.opened().count > timedOut {
                gw.send(.close(stream: id, code: .timeout, reason: "no answer in time"))
                timedOut += 1
            } else {
                gw.send(.close(stream: id, code: .cancelled, reason: ""))
            }
        }
        #expect(h.broker.snapshot().outlierEjections == 1)
        #expect(h.broker.snapshot().ejectedInstances == 1)
        let before = slow.opened().count
        for _ in 0..<6 { gw.send(.open(stream: open(), Open(target: .instance, keyID: 1, world: "playground"))) }
        #expect(slow.opened().count == before, "an ejected instance got new streams")
        #expect(good.opened().count >= 6)
        h.advance(milliseconds: 1_100)
        for _ in 0..<4 { gw.send(.open(stream: open(), Open(target: .instance, keyID: 1, world: "playground"))) }
        #expect(slow.opened().count > before, "the instance did not come back after its ejection")
    }

    @Test("outlier detection never takes a world's only instance out of rotation")
    func soleInstanceStays() {
        var limits = Harness.smallLimits
        limits.outlierConsecutiveFailures = 2
        let h = Harness(limits: limits)
        let only = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        for k in 0..<5 {
            let id = UInt32(2 * k + 1)
            gw.send(.open(stream: id, Open(target: .instance, keyID: 1, world: "playground")))
            gw.send(.close(stream: id, code: .timeout, reason: ""))
        }
        #expect(h.broker.snapshot().outlierEjections == 0)
        #expect(only.opened().count == 5)
    }

    @Test("CREDIT that would take a paced window past 2^31-1 ends the stream with flow_control; the broker does not trap")
    func creditOverflow() {
        let tokens = AccessTable(keys: [KeyQuota(keyID: 5, world: "playground", framesPerSecond: 10, bytesPerSecond: 1_000)],
                                 instanceTokens: Harness.tokenText.instances, gatewayToken: Harness.tokenText.gateway)
        let h = Harness(access: tokens)
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 5, world: "playground")))
        let s = inst.opened()[0].0
        // Both directions: the instance's CREDIT to the gateway, the gateway's to the instance.
        inst.send(.credit(stream: s, bytes: .max, frames: .max))
        inst.send(.credit(stream: s, bytes: .max, frames: .max))
        #expect(gw.errors().contains { $0 == (1, .flowControl) })
        gw.send(.open(stream: 3, Open(target: .instance, keyID: 5, world: "playground")))
        let s2 = inst.opened()[1].0
        gw.send(.credit(stream: 3, bytes: .max, frames: .max))
        gw.send(.credit(stream: 3, bytes: .max, frames: .max))
        #expect(inst.errors().contains { $0 == (s2, .flowControl) })
        #expect(!h.closed.contains(inst.id) && !h.closed.contains(gw.id))
    }
}
