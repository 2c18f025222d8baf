import SoulfraConfig
import SoulfraLimits
import Foundation
import Testing
import SoulfraBroker
import SoulfraLoop
import SoulfraPeer
import SoulfraPeerLink
import SoulfraServer
import SoulfraWire

@Suite("Several loops", .enabled(if: uringAvailable, "io_uring is not available here"), .serialized)
struct MultiLoopTests {
    /// With 3 loops: "playground" is served by loop 0, "arena" by loop 1, "w0" by loop 2.
    static let worlds = ["playground", "arena", "w0"]

    func config(_ tweak: (inout ServerConfig) -> Void = { _ in }) -> ServerConfig {
        testConfig {
            tweak(&$0)
            $0.loopCount = 3
            $0.instanceTokens = Dictionary(uniqueKeysWithValues: Self.worlds.map { ($0, testTokens.instance) })
            $0.keys = Self.worlds.enumerated().map { KeyQuota(keyID: UInt64($0.offset + 1), world: $0.element) }
            $0.broker.handshakeTimeoutMilliseconds = 200
        }
    }

    @Test("the world → loop map is FNV-1a modulo the loop count")
    func worldMap() {
        #expect(Self.worlds.map { Wire.loop(forWorld: $0, count: 3) } == [0, 1, 2])
        #expect(Wire.loop(forWorld: "a", count: 7) == Int(0xE40C_292C % 7))
        #expect(Wire.loop(forWorld: "anything", count: 1) == 0)
    }

    @Test("instances land on their world's loop; the 3-way path works on every loop")
    func chainOnEveryLoop() throws {
        // The vault here is a raw peer of the test's: no vault in the daemon.
        let server = try BrokerServer.start(config { $0.vaultDirectory = "" })
        defer { server.stop() }
        #expect(server.loopCount == 3)
        let runtimes = Recorder(), vaults = Recorder(), apps = Recorder()
        let rt = try PeerGroup.connect(address: server.unix, identity: PeerIdentity(kind: .runtime, token: testTokens.runtime)) {
            $0.link.delegate = runtimes
        }
        let vault = try PeerGroup.connect(address: server.tcp, identity: PeerIdentity(kind: .vault, token: testTokens.vault)) {
            $0.link.delegate = vaults
        }
        let gw = try PeerGroup.connect(address: server.tcp, identity: PeerIdentity(kind: .gateway, token: testTokens.gateway)) {
            $0.link.delegate = apps
        }
        #expect(rt.links.map { Int($0.link.welcome!.loopIndex) } == [0, 1, 2])
        for (i, world) in Self.worlds.enumerated() {
            let ri = Recorder()
            let inst = try server.connect(.instance, world: world, recorder: ri)
            #expect(Int(inst.link.welcome!.loopIndex) == i, "\(world) is served by loop \(i)")
            let all = [inst] + rt.links + vault.links + gw.links
            let app = gw.link(forWorld: world)
            let s = app.link.open(Open(target: .instance, keyID: UInt64(i + 1), world: world, session: "u", detail: "cal"))
            #expect(app.link.send(stream: s, payload: bytes("hi from \(world)")))
            #expect(pumpUntil(all) { !ri.data.isEmpty })
            let r = inst.link.open(Open(target: .runtime, world: world, detail: "cal"))
            #expect(inst.link.send(stream: r, payload: bytes("ask")))
            #expect(pumpUntil(all) { runtimes.data.count == i + 1 })
            let runtimeLink = rt.link(forWorld: world)
            let v = runtimeLink.link.open(Open(target: .vault, world: world, detail: "events"))
            #expect(runtimeLink.link.send(stream: v, payload: bytes("event")))
            #expect(pumpUntil(all) { vaults.data.count == i + 1 })
            #expect(inst.link.send(stream: ri.accepted[0].0, payload: bytes("reply from \(world)")))
            #expect(pumpUntil(all) { apps.data.count == i + 1 })
            #expect(apps.data.last?.1 == Array("reply from \(world)".utf8))
            inst.close()
        }
        let snap = try #require(server.snapshotNow())  // also publishes every loop's own counters
        let counters = server.loopCounters
        #expect(counters[0].accepted > counters[1].accepted, "loop 0 accepts every socket")
        #expect(counters[1].accepted >= 4 && counters[2].accepted >= 4, "the others adopt theirs: \(counters.map(\.accepted))")
        #expect(snap.linksByKind[Int(PeerKind.runtime.rawValue)] == 3)
        #expect(snap.streamsOpened == 9)
        for g in [rt, vault, gw] { g.close() }
    }

    @Test("a stream opened on the wrong loop is refused with wrong_loop")
    func wrongLoop() throws {
        let server = try BrokerServer.start(config())
        defer { server.stop() }
        let ri = Recorder()
        _ = try server.connect(.instance, world: "arena", recorder: ri)
        let rg = Recorder()
        let gw = try server.connect(.gateway, recorder: rg)  // any loop: loop 0
        let s = gw.link.open(Open(target: .instance, keyID: 2, world: "arena"))
        #expect(pumpUntil([gw]) { !rg.closedStreams.isEmpty })
        #expect(rg.closedStreams.first?.0 == s)
        #expect(rg.closedStreams.first?.1 == .wrongLoop)
    }

    @Test("bytes pipelined behind HELLO travel with the socket to its loop")
    func pipelinedHandoff() throws {
        let server = try BrokerServer.start(config())
        defer { server.stop() }
        let c = PeerConnection(address: server.tcp, identity: PeerIdentity(kind: .instance, world: "w0", token: testTokens.instance))
        try c.connect()
        // HELLO and a PING leave in one write, before WELCOME: the loop that adopts the socket must see both.
        c.link.ping(42)
        #expect(pumpUntil([c]) { c.link.isReady })
        #expect(c.link.welcome?.loopIndex == 2)
        #expect(!c.link.isClosed)
        #expect(try #require(server.snapshotNow()).closes(.protocolError) == 0)
    }

    @Test("garbage and silence are handled by the accepting loop")
    func garbageAndSilence() throws {
        let server = try BrokerServer.start(config())
        defer { server.stop() }
        let bad = PeerConnection(address: server.tcp, identity: PeerIdentity(kind: .gateway, token: testTokens.gateway))
        try bad.connect()
        bad.link.output.removeAll()
        [UInt8](repeating: 0x41, count: 32).withUnsafeBytes { bad.link.output.append($0) }
        #expect(pumpUntil([bad]) { bad.link.isClosed })
        // A socket that never says anything is closed at the handshake timeout (200 ms here).
        let silent = PeerConnection(address: server.tcp, identity: PeerIdentity(kind: .gateway, token: testTokens.gateway))
        try silent.connect()
        silent.link.output.removeAll()
        #expect(pumpUntil([silent], milliseconds: 5_000) { silent.link.isClosed })
        #expect(try #require(server.snapshotNow()).closes(.protocolError) == 1)
    }
}
