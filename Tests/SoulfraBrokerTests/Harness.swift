import SoulfraLimits
import Testing
@testable import SoulfraBroker
import SoulfraWire

/// Drives a `Broker` without sockets: each `TestPeer` is a link whose "socket" is the harness moving bytes.
/// Time is a manual clock in nanoseconds.
final class Harness {
    let broker: Broker
    var now: UInt64 = 1_000_000_000
    var nextLink: UInt32 = 0
    var peers: [UInt32: TestPeer] = [:]
    /// Actions seen, in order.
    var actions: [BrokerAction] = []
    /// Links the I/O layer was asked to close (and has closed).
    var closed: Set<UInt32> = []
    var paused: Set<UInt32> = []

    static let tokenText = (
        instances: ["playground": "tok-playground-0001", "arena": "tok-arena-000000001"],
        runtime: "tok-runtime-0000001", vault: "tok-vault-000000001", gateway: "tok-gateway-0000001")

    static let tokens = AccessTable(
        keys: [
            KeyQuota(keyID: 1, world: "playground"),
            KeyQuota(keyID: 2, world: "arena"),
            KeyQuota(keyID: 3, world: "playground", maxStreams: 2),
            KeyQuota(keyID: 4, world: "playground", bytesPerSecond: 100_000),
        ],
        instanceTokens: tokenText.instances, runtimeToken: tokenText.runtime, vaultToken: tokenText.vault,
        gatewayToken: tokenText.gateway)

    init(limits: BrokerLimits = Harness.smallLimits, access: AccessTable = Harness.tokens, balancer: BalancerPolicy = .leastOutstanding,
         loopIndex: Int = 0, loopCount: Int = 1) {
        broker = Broker(limits: limits, access: access, balancer: balancer, loopIndex: loopIndex, loopCount: loopCount)
    }

    static var smallLimits: BrokerLimits {
        var l = BrokerLimits()
        l.maxFrameBytes = 16 << 10
        l.streamCreditBytes = 64 << 10
        l.streamCreditFrames = 64
        l.linkQueueBytesLow = 16 << 10
        l.linkQueueBytesHigh = 64 << 10
        l.linkQueueBytesHard = 256 << 10
        return l
    }

    /// Time passes on a healthy loop: it ticks every 10 ms.
    func advance(milliseconds: UInt64) {
        var left = milliseconds
        while left > 0 {
            let step = min(left, 10)
            left -= step
            now += step * 1_000_000
            broker.tick(now: now)
            pump()
        }
    }

    /// The loop was busy for `milliseconds` (no tick, no input), then ticks once.
    func stall(milliseconds: UInt64) {
        now += milliseconds * 1_000_000
        broker.tick(now: now)
        pump()
    }

    /// Connects a raw link (no HELLO yet).
    func attach() -> TestPeer {
        let id = nextLink
        nextLink += 1
        broker.attach(link: id, now: now)
        let p = TestPeer(id: id, harness: self)
        peers[id] = p
        return p
    }

    /// Connects and completes HELLO/WELCOME.
    func connect(_ kind: PeerKind, world: String = "", instance: String = "", token: String? = nil) -> TestPeer {
        let p = attach()
        let t = token ?? {
            switch kind {
            case .instance: Harness.tokenText.instances[world] ?? ""
            case .runtime: Harness.tokenText.runtime
            case .vault: Harness.tokenText.vault
            case .gateway: Harness.tokenText.gateway
            }
        }()
        p.send(.hello(Hello(kind: kind, maxFrameBytes: 16 << 10, world: world, instance: instance, token: t)))
        return p
    }

    /// Moves bytes: every reading peer gets what is queued for it; actions are applied.
    func pump() {
        for _ in 0..<100 {
            var moved = false
            broker.drainActions { a in
                actions.append(a)
                switch a {
                case .pauseRead(let l): paused.insert(l)
                case .resumeRead(let l): paused.remove(l)
                case .close(let l): closed.insert(l)
                case .shutdownComplete: break
                }
            }
            broker.drainReady { id in
                guard let p = peers[id] else { return }
                guard p.reading else {
                    // A peer that does not read: the kernel takes one send and it never completes.
                    if p.stalled == nil {
                        let out = broker.takeOutput(link: id)
                        if out.count > 0 { p.stalled = Array(out) }
                    }
                    return
                }
                let out = broker.takeOutput(link: id)
                guard out.count > 0 else { return }
                p.absorb(out)
                broker.sent(link: id, count: out.count, now: now)
                moved = true
            }
            // Closed links: finish the I/O layer's side.
            for id in closed where peers[id]?.detached == false {
                // Deliver any final frames (ERROR) before the socket goes.
                let out = broker.takeOutput(link: id)
                if out.count > 0 { peers[id]!.absorb(out); broker.sent(link: id, count: out.count, now: now) }
                peers[id]!.detached = true
                broker.detach(link: id, now: now)
                moved = true
            }
            if !moved { return }
        }
    }
}

final class TestPeer {
    let id: UInt32
    unowned let harness: Harness
    /// Frames received, in order.
    var inbox: [Frame] = []
    /// When false the peer does not read: its queue at the broker grows.
    var reading = true
    var detached = false
    let decoder = FrameDecoder(maxPayload: 1 << 24)

    init(id: UInt32, harness: Harness) {
        self.id = id
        self.harness = harness
    }

    func send(_ frame: Frame) {
        sendRaw(FrameWriter.encode(frame))
    }

    func sendRaw(_ bytes: [UInt8]) {
        bytes.withUnsafeBytes { harness.broker.receive(link: id, bytes: $0, now: harness.now) }
        harness.pump()
    }

    func absorb(_ bytes: UnsafeRawBufferPointer) {
        try! decoder.feed(bytes) { h, p throws(WireError) in
            inbox.append(try Frame.parse(h, p))
            return true
        }
    }

    /// Removes and returns what arrived.
    func take() -> [Frame] {
        defer { inbox.removeAll() }
        return inbox
    }

    /// Bytes handed to the socket while the peer was not reading: a send that has not completed.
    var stalled: [UInt8]?

    /// Starts reading again and collects what was waiting.
    func resume() {
        reading = true
        if let bytes = stalled {
            stalled = nil
            bytes.withUnsafeBytes { absorb($0) }
            harness.broker.sent(link: id, count: bytes.count, now: harness.now)
        }
        harness.pump()
    }

    /// The last ERROR received on stream 0, if any.
    var linkError: (ErrorCode, String)? {
        for f in inbox.reversed() { if case .error(0, let c, let r) = f { return (c, r) } }
        return nil
    }

    func opened() -> [(UInt32, Open)] {
        inbox.compactMap { if case .open(let s, let o) = $0 { (s, o) } else { nil } }
    }

    func data(on stream: UInt32) -> [[UInt8]] {
        inbox.compactMap { if case .data(stream, let p, _, _) = $0 { p } else { nil } }
    }

    func errors() -> [(UInt32, ErrorCode)] {
        inbox.compactMap { if case .error(let s, let c, _) = $0 { (s, c) } else { nil } }
    }
}
