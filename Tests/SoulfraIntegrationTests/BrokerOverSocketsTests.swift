import SoulfraConfig
import Foundation
import Testing
import SoulfraBroker
import SoulfraLoop
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraServer
import SoulfraWire

@Suite("Broker over real sockets", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct BrokerOverSocketsTests {
    @Test("gateway → instance → runtime → vault and back, over TCP and the unix socket")
    func threePeerKindsRoundTrip() throws {
        // The vault here is a raw peer of the test's: no vault in the daemon.
        let server = try BrokerServer.start(testConfig { $0.vaultDirectory = "" })
        defer { server.stop() }
        let ri = Recorder(), rr = Recorder(), rv = Recorder(), rg = Recorder()
        let inst = try server.connect(.instance, world: "playground", via: server.unix, recorder: ri)
        let rt = try server.connect(.runtime, via: server.unix, recorder: rr)
        let vault = try server.connect(.vault, recorder: rv)
        let gw = try server.connect(.gateway, recorder: rg)
        let all = [inst, rt, vault, gw]

        let g = gw.link.open(Open(target: .instance, keyID: 1, world: "playground", session: "s1", detail: "cal"))
        #expect(gw.link.send(stream: g, payload: bytes("hello cal")))
        #expect(pumpUntil(all) { !ri.data.isEmpty })
        let (iStream, open) = ri.accepted[0]
        #expect(open.world == "playground" && open.session == "s1" && open.keyID == 1)
        #expect(ri.data[0].1 == Array("hello cal".utf8))

        let r = inst.link.open(Open(target: .runtime, world: "playground", detail: "cal"))
        #expect(inst.link.send(stream: r, payload: bytes("user said hello")))
        #expect(pumpUntil(all) { !rr.data.isEmpty })
        let v = rt.link.open(Open(target: .vault, world: "playground", detail: "events"))
        #expect(rt.link.send(stream: v, payload: bytes("event: hello")))
        #expect(pumpUntil(all) { !rv.data.isEmpty })
        #expect(vault.link.send(stream: rv.accepted[0].0, payload: bytes("appended"), end: true))
        #expect(pumpUntil(all) { rr.data.count == 2 })
        #expect(rt.link.send(stream: rr.accepted[0].0, payload: bytes("Hi! I'm Cal.")))
        #expect(pumpUntil(all) { ri.data.count == 2 })
        #expect(inst.link.send(stream: iStream, payload: bytes("Hi! I'm Cal."), end: true))
        #expect(pumpUntil(all) { rg.data.count == 1 })
        #expect(rg.data[0] == (g, Array("Hi! I'm Cal.".utf8)))
        for c in all { c.close() }
    }

    @Test("a wrong token is refused with auth_failed and the link closed")
    func authFailure() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        #expect(throws: PeerError.self) { try server.connect(.runtime, token: "wrong-token-wrong-token") }
        let c = PeerConnection(address: server.tcp, identity: PeerIdentity(kind: .runtime, token: "wrong-token-wrong-token"))
        do { try c.handshake() } catch { #expect(error.description.contains("auth_failed")) }
    }

    @Test("a consumer that stops reading pauses the producer and the broker's queue stays under its bound")
    func nonReadingConsumerPausesProducer() throws {
        let server = try BrokerServer.start(testConfig {
            $0.broker.streamCreditBytes = 256 << 10
            $0.broker.linkQueueBytesLow = 128 << 10
            $0.broker.linkQueueBytesHigh = 512 << 10
            $0.broker.linkQueueBytesHard = 4 << 20
        })
        defer { server.stop() }
        let ri = Recorder()
        ri.keepData = false
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let gw = try server.connect(.gateway)
        var streams: [UInt32] = []
        for _ in 0..<32 { streams.append(gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))) }
        inst.readingPaused = true
        let chunk = UnsafeRawBufferPointer(UnsafeMutableRawBufferPointer.allocate(byteCount: 16 << 10, alignment: 8))
        // Offer far more than the credit (32 × 256 KiB = 8 MiB) for a bounded number of rounds.
        var offered = 0
        for _ in 0..<2_000 {
            for s in streams where gw.link.send(stream: s, payload: chunk) { offered += chunk.count }
            gw.pump(timeoutMilliseconds: 1)
            inst.pump(timeoutMilliseconds: 0)
        }
        let snap = try #require(server.snapshotNow())
        let instQueue = snap.queueBytesByKind[Int(PeerKind.instance.rawValue)]
        #expect(snap.pauses[0] > 0, "the producer's link was paused")
        #expect(instQueue <= 4 << 20, "queue \(instQueue) stays under the hard bound")
        #expect(offered <= 32 * (256 << 10), "the producer never exceeds its credit")
        #expect(snap.closes(.slowConsumer) == 0, "instances are paused on, not closed")
        // Reading again drains everything and resumes the producer.
        inst.readingPaused = false
        #expect(pumpUntil([inst, gw]) { ri.dataBytes == offered })
    }

    @Test("a key's bytes/s quota is enforced by pacing credit, nothing dropped")
    func quotaPacing() throws {
        let server = try BrokerServer.start(testConfig {
            $0.broker.streamCreditBytes = 64 << 10
        })
        defer { server.stop() }
        let ri = Recorder()
        ri.keepData = false
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let rg = Recorder()
        let gw = try server.connect(.gateway, recorder: rg)
        let s = gw.link.open(Open(target: .instance, keyID: 7, world: "playground"))  // 200 kB/s
        let chunk = UnsafeRawBufferPointer(UnsafeMutableRawBufferPointer.allocate(byteCount: 4 << 10, alignment: 8))
        // 400 kB: more than the 64 KiB window and the one-second burst of 200 kB, so the key must be paced to
        // get it all through. How fast is the broker tests' business (manual clock, exact); here it is that
        // pacing happens over real sockets and nothing is lost. The loop is bounded in time, never asserted on it.
        let target = 400_000
        var sent = 0
        let deadline = monotonicMilliseconds() + 10_000
        while sent < target && monotonicMilliseconds() < deadline {
            while sent < target && gw.link.send(stream: s, payload: chunk) { sent += chunk.count }
            gw.pump(timeoutMilliseconds: 1)
            inst.pump(timeoutMilliseconds: 0)
        }
        #expect(sent >= target, "credit kept flowing until everything was sent")
        #expect(pumpUntil([inst, gw]) { ri.dataBytes == sent }, "everything sent is delivered")
        #expect(try #require(server.snapshotNow()).quotaPacedBytes > 0)
        #expect(rg.pacedEvents.first.map { $0 == (s, true) } == true, "the producer was told it is being paced")
    }

    @Test("a malformed frame closes only that link; other links keep flowing")
    func malformedFrameIsolated() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let ri = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let gw = try server.connect(.gateway)
        let s = gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))
        let bad = try server.connect(.gateway)
        [UInt8](repeating: 0xFF, count: 64).withUnsafeBytes { bad.link.output.append($0) }
        #expect(pumpUntil([bad]) { bad.link.isClosed })
        if case .closed(let code, _) = bad.link.state { #expect(code == .protocolError || code == .peerGone) }
        #expect(gw.link.send(stream: s, payload: bytes("still here")))
        #expect(pumpUntil([inst, gw]) { ri.data.count == 1 })
        #expect(try #require(server.snapshotNow()).closes(.protocolError) == 1)
    }

    @Test("a peer killed mid-stream yields ERROR peer_gone on the other side")
    func peerKilledMidStream() throws {
        let server = try BrokerServer.start(testConfig())
        defer { server.stop() }
        let ri = Recorder(), rg = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let gw = try server.connect(.gateway, recorder: rg)
        let s = gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))
        #expect(gw.link.send(stream: s, payload: bytes("are you there?")))
        #expect(pumpUntil([inst, gw]) { !ri.data.isEmpty })
        // Kill the instance's socket without a word (as a crashed process would). Through the connection, so
        // the descriptor is closed once: a second close would hit whatever reused the number meanwhile.
        inst.close()
        #expect(pumpUntil([gw]) { !rg.closedStreams.isEmpty })
        #expect(rg.closedStreams.first?.1 == .peerGone)
        #expect(!gw.link.isClosed, "the gateway link itself stays up")
    }

    @Test("a peer that stops answering PING is closed with heartbeat_timeout")
    func heartbeatTimeout() throws {
        let server = try BrokerServer.start(testConfig {
            $0.broker.heartbeatIntervalMilliseconds = 200
            $0.broker.heartbeatMissesAllowed = 2
        })
        defer { server.stop() }
        let rg = Recorder(), ri = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let gw = try server.connect(.gateway, recorder: rg)
        _ = gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))
        #expect(pumpUntil([inst, gw], milliseconds: 10_000) { !ri.accepted.isEmpty }, "the stream reached the instance")
        inst.readingPaused = true  // no PONGs from here on
        #expect(pumpUntil([gw], milliseconds: 5_000) { !rg.closedStreams.isEmpty })
        #expect(rg.closedStreams.first?.1 == .heartbeatTimeout)
        #expect(try #require(server.snapshotNow()).closes(.heartbeatTimeout) == 1)
    }

    @Test("graceful shutdown: GOAWAY, open streams finish, then the loop exits")
    func gracefulShutdownDrains() throws {
        let server = try BrokerServer.start(testConfig())
        let ri = Recorder(), rg = Recorder()
        let inst = try server.connect(.instance, world: "playground", recorder: ri)
        let gw = try server.connect(.gateway, recorder: rg)
        let s = gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))
        #expect(gw.link.send(stream: s, payload: bytes("last words")))
        #expect(pumpUntil([inst, gw]) { !ri.data.isEmpty })
        server.shutdown()
        #expect(pumpUntil([inst, gw]) { ri.goaway && rg.goaway })
        // The stream still works during the drain.
        #expect(inst.link.send(stream: ri.accepted[0].0, payload: bytes("goodbye"), end: true))
        #expect(pumpUntil([inst, gw]) { !rg.data.isEmpty })
        #expect(gw.link.send(stream: s, payload: bytes(""), end: true))
        #expect(pumpUntil([inst, gw]) { inst.link.isClosed && gw.link.isClosed })
        if case .closed(let code, _) = gw.link.state { #expect(code == .shutdown) }
        server.wait()
    }

    @Test("the client reconnects with backoff once the broker appears")
    func reconnectWithBackoff() throws {
        var config = testConfig()
        config.brokerTCP = ""
        let path = config.brokerUnixPath
        let c = PeerConnection(address: .unix(path: path), identity: PeerIdentity(kind: .runtime, token: testTokens.runtime))
        var rng = SystemRandomNumberGenerator()
        #expect(throws: PeerError.self) { try c.connect(retrying: Backoff(initialMilliseconds: 5, maxMilliseconds: 20), attempts: 3, rng: &rng) }
        let server = try BrokerServer.start(config)
        defer { server.stop() }
        try c.connect(retrying: Backoff(initialMilliseconds: 5, maxMilliseconds: 50), attempts: 20, rng: &rng)
        #expect(pumpUntil([c]) { c.link.isReady })
    }
}

@Suite("Backoff")
struct BackoffTests {
    struct Fixed: RandomNumberGenerator {
        mutating func next() -> UInt64 { UInt64.max }
    }
    @Test("delays double up to the cap")
    func doubling() {
        var b = Backoff(initialMilliseconds: 10, maxMilliseconds: 100)
        var rng = Fixed()
        let delays = (0..<6).map { _ in b.next(using: &rng) }
        #expect(delays.allSatisfy { $0 <= 100 })
        #expect(delays.last == 100)
        b.reset()
        #expect(b.attempt == 0)
    }
}

@Suite("Config")
struct ConfigTests {
    @Test("the shipped config file loads and validates")
    func shippedConfig() throws {
        let path = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../config/soulfra.json").path
        let c = try ServerConfig.load(path: path)
        try c.validate()
        #expect(c.keys.count >= 1)
        #expect(c.broker.maxFrameBytes == 65_536)
    }

    @Test("unknown keys and out-of-range values are named")
    func errorsNameTheKey() throws {
        let dir = NSTemporaryDirectory() + "soulfra-config-\(getpid())"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let bad = dir + "/bad.json"
        try #"{"broker": {"max_frame_byte": 10}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        #expect(throws: ServerConfig.Invalid(key: "broker.max_frame_byte", message: "unknown key")) { try ServerConfig.load(path: bad) }
        try #"{"broker": {"max_frame_bytes": 10}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        do { try ServerConfig.load(path: bad).validate(); Issue.record("accepted") } catch {
            #expect(error.key == "broker.max_frame_bytes")
            #expect(error.message.contains("between 1024 and 16777216"))
        }
        try #"{"loop": {"ring_entries": 1000}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        do { try ServerConfig.load(path: bad).validate(); Issue.record("accepted") } catch { #expect(error.key == "loop.ring_entries") }
        try #"{"listen": {"broker_tcp": "nonsense"}}"#.write(toFile: bad, atomically: true, encoding: .utf8)
        do { try ServerConfig.load(path: bad).validate(); Issue.record("accepted") } catch { #expect(error.key == "listen.broker_tcp") }
    }
}

@Suite("Reconnect", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct ReconnectTests {
    @Test("a reactor brings an instance back after the broker restarts, with a fresh HELLO")
    func instanceSurvivesBrokerRestart() throws {
        let config = testConfig { $0.brokerTCP = "" }
        var server = try BrokerServer.start(config)
        let ri = Recorder()
        let inst = try server.connect(.instance, world: "playground", via: server.unix, recorder: ri)
        let reactor = PeerReactor(seed: 7)
        reactor.add(inst, reconnect: Backoff(initialMilliseconds: 10, maxMilliseconds: 100))
        server.stop()
        let deadline = monotonicMilliseconds() + 5_000
        while ri.linkClosed == nil && monotonicMilliseconds() < deadline { reactor.poll(timeoutMilliseconds: 5) }
        #expect(ri.linkClosed?.0 == .shutdown || ri.linkClosed?.0 == .peerGone, "the link went down: \(String(describing: ri.linkClosed))")
        // A while with nothing to connect to: attempts fail and back off.
        for _ in 0..<20 { reactor.poll(timeoutMilliseconds: 5) }
        #expect(!inst.link.isReady)
        server = try BrokerServer.start(config)
        defer { server.stop() }
        let back = monotonicMilliseconds() + 5_000
        while !inst.link.isReady && monotonicMilliseconds() < back { reactor.poll(timeoutMilliseconds: 5) }
        #expect(inst.link.isReady, "reconnected")
        #expect(reactor.reconnects == 1)
        // It is routable again.
        let gw = try server.connect(.gateway, via: server.unix)
        let s = gw.link.open(Open(target: .instance, keyID: 1, world: "playground"))
        #expect(gw.link.send(stream: s, payload: bytes("welcome back")))
        let ok = pumpUntil([gw]) {
            reactor.poll(timeoutMilliseconds: 1)
            return ri.data.contains { $0.1 == Array("welcome back".utf8) }
        }
        #expect(ok)
    }
}
