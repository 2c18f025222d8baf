import SoulfraLimits
import Testing
import SoulfraPeerLink
import SoulfraWire
@testable import SoulfraGateway

/// The loop side of a gateway, recorded: what was sent to which connection.
final class RecordingTransport: GatewayTransport {
    var sent: [UInt32: [UInt8]] = [:]
    var closed: Set<UInt32> = []
    weak var gateway: Gateway?
    func canSend(_ conn: UInt32) -> Bool { true }
    func send(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer) {
        sent[conn, default: []] += bytes
        gateway?.sent(conn: conn, count: bytes.count, now: 0)
    }
    var aborted: Set<UInt32> = []
    var paused: Set<UInt32> = []
    func close(_ conn: UInt32) { closed.insert(conn) }
    func abort(_ conn: UInt32) { aborted.insert(conn) }
    func pauseRead(_ conn: UInt32) { paused.insert(conn) }
    func resumeRead(_ conn: UInt32) { paused.remove(conn) }
    func text(_ conn: UInt32) -> String { String(decoding: sent[conn] ?? [], as: UTF8.self) }
}

@Suite("Gateway broker links")
struct GatewayLinkTests {
    /// A gateway on loop 0 of 2, with a key for a world that lives on loop 1, whose link is not up yet.
    func setUp() -> (Gateway, RecordingTransport, String, String) {
        let world = ["playground", "arena", "bench", "lobby", "garden"].first { Wire.loop(forWorld: $0, count: 2) == 1 }!
        let f = Fixture()
        let key = f.kids
        let table = KeyTable([KeyRecord(id: 1, digest: key.digest, prefix: key.prefix, world: world,
                                        permissions: [.worldAccess, .agentInteraction])])
        let g = Gateway(limits: GatewayLimits(), keys: table, loopIndex: 0, loopCount: 2, tls: nil) { i in
            PeerIdentity(kind: .gateway, token: "test-gateway-token-0001", loop: UInt16(i))
        }
        let t = RecordingTransport()
        t.gateway = g
        g.transport = t
        g.peerLink(1).start()
        return (g, t, world, key.plaintext)
    }

    /// `setUp`, then client 7 sends a request for the world on loop 1 and the gateway flushes.
    func requestWaiting() -> (Gateway, RecordingTransport) {
        let (g, t, world, key) = setUp()
        _ = g.accepted(conn: 7, tls: false, address: nil, now: 1)
        let request = "POST /v1/worlds/\(world)/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(key)\r\n"
            + "Content-Length: 2\r\n\r\n{}"
        Array(request.utf8).withUnsafeBytes { g.received(conn: 7, bytes: $0, now: 2) }
        g.flush(now: 3)
        return (g, t)
    }

    @Test("a request for a world whose broker link is coming up waits for WELCOME, then goes out")
    func waitsForTheLink() {
        let (g, t) = requestWaiting()
        #expect(t.text(7).isEmpty, "no answer while the link is coming up")
        let session = g.peerLink(1)
        session.output.removeAll()
        let welcome = FrameWriter.encode(.welcome(Welcome(maxFrameBytes: 65_536, heartbeatMilliseconds: 1_000,
                                                          streamCreditBytes: 262_144, streamCreditFrames: 1_024,
                                                          linkID: 1, server: "test", loopIndex: 1, loopCount: 2)))
        welcome.withUnsafeBytes { session.receive($0, nowMilliseconds: 0) }
        // The OPEN and the body went out on the link once it was up.
        var frames: [FrameType] = []
        let decoder = FrameDecoder()
        try? decoder.feed(session.output.readable) { h, _ in
            frames.append(h.type)
            return true
        }
        #expect(frames == [.open, .data], "\(frames)")
        // The instance answers through the broker: the client gets 200.
        session.output.removeAll()
        let reply = FrameWriter.encode(.data(stream: 1, payload: Array(#"{"ok":true}"#.utf8), end: true))
        reply.withUnsafeBytes { session.receive($0, nowMilliseconds: 0) }
        g.flush(now: 4)
        #expect(t.text(7).hasPrefix("HTTP/1.1 200 OK"), "\(t.text(7))")
        #expect(t.text(7).hasSuffix(#"{"ok":true}"#))
    }

    @Test("a request waits at most the bound for a link that does not come up: 503 with Retry-After")
    func linkNeverComesUp() {
        let (g, t) = requestWaiting()
        g.tick(now: 1_000_000_000)
        g.flush(now: 1_000_000_001)
        #expect(t.text(7).isEmpty, "still waiting within the bound")
        g.tick(now: 3 + Gateway.linkWaitNanoseconds + 200_000_000)
        g.flush(now: 3 + Gateway.linkWaitNanoseconds + 200_000_001)
        #expect(t.text(7).hasPrefix("HTTP/1.1 503"), "\(t.text(7))")
        #expect(t.text(7).lowercased().contains("retry-after: 1") && t.text(7).contains("no_healthy_instance"))
    }
}
