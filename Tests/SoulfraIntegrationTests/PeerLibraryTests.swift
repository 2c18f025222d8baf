import Foundation
import Testing
import SoulfraLoop
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

/// A broker stand-in on a real socket: it accepts one peer, answers WELCOME (heartbeat `heartbeatMilliseconds`)
/// and then says nothing more — the shape of a broker that hung or a half-open TCP connection.
final class SilentBroker: @unchecked Sendable {
    let listener: BoundListener
    private var conn: Int32 = -1

    init() throws {
        listener = try BoundListener.bind(.tcp(host: "127.0.0.1", port: 0))
    }

    deinit {
        if conn >= 0 { close(conn) }
        listener.close()
    }

    /// Accepts the peer and sends WELCOME once its HELLO has arrived (bounded wait).
    func acceptAndWelcome(heartbeatMilliseconds: UInt32) -> Bool {
        var p = pollfd(fd: listener.fd, events: Int16(POLLIN), revents: 0)
        guard poll(&p, 1, 2_000) == 1 else { return false }
        conn = accept(listener.fd, nil, nil)
        guard conn >= 0 else { return false }
        var q = pollfd(fd: conn, events: Int16(POLLIN), revents: 0)
        guard poll(&q, 1, 2_000) == 1 else { return false }
        var scratch = [UInt8](repeating: 0, count: 4096)
        _ = scratch.withUnsafeMutableBytes { recv(conn, $0.baseAddress, $0.count, 0) }
        let welcome = FrameWriter.encode(.welcome(Welcome(
            maxFrameBytes: 65_536, heartbeatMilliseconds: heartbeatMilliseconds, streamCreditBytes: 65_536,
            streamCreditFrames: 64, linkID: 1, server: "silent")))
        return welcome.withUnsafeBytes { send(conn, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } == welcome.count
    }
}

@Suite("Peer library")
struct PeerLibraryTests {
    @Test("a broker that goes silent is detected after three heartbeat intervals, even though TCP is up")
    func silentBrokerDetected() throws {
        let broker = try SilentBroker()
        let c = PeerConnection(address: .tcp(host: "127.0.0.1", port: broker.listener.port),
                               identity: PeerIdentity(kind: .runtime, token: "any-token-at-all-0001"))
        let rec = Recorder()
        c.link.delegate = rec
        try c.connect()
        c.flush()
        #expect(broker.acceptAndWelcome(heartbeatMilliseconds: 30))
        #expect(pumpUntil([c], milliseconds: 2_000) { c.link.isReady })
        let reactor = PeerReactor(seed: 1)
        reactor.add(c)
        let deadline = monotonicMilliseconds() + 5_000
        while rec.linkClosed == nil && monotonicMilliseconds() < deadline { reactor.poll(timeoutMilliseconds: 5) }
        #expect(rec.linkClosed?.0 == .peerGone)
        #expect(rec.linkClosed?.1.contains("three heartbeat intervals") == true, "\(String(describing: rec.linkClosed))")
    }

    @Test("garbage from the broker closes the session with an error, never a crash (seeded)")
    func garbageFromBroker() {
        var rng = SplitMix64(seed: 0x5EED_0002)
        for round in 0..<500 {
            let s = PeerLink(identity: PeerIdentity(kind: .gateway, token: "t"))
            let rec = Recorder()
            s.delegate = rec
            s.start()
            // Half the rounds start with a valid WELCOME so the garbage reaches the ready-state handlers.
            if round % 2 == 0 {
                FrameWriter.encode(.welcome(Welcome(maxFrameBytes: 1 << 16, heartbeatMilliseconds: 1_000, streamCreditBytes: 1 << 16,
                                                    streamCreditFrames: 64, linkID: 1, server: "x"))).withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
                _ = s.open(Open(target: .instance, keyID: 1, world: "w"))
            }
            let n = Int(rng.next() % 300)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            if n >= 12 && round % 3 == 0 {
                bytes[0] = 0; bytes[1] = 0; bytes[2] = UInt8((n - 12) >> 8); bytes[3] = UInt8((n - 12) & 0xFF)
                bytes[4] = UInt8(1 + rng.next() % 14); bytes[6] = 0; bytes[7] = 0
            }
            bytes.withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
            if case .closed(let code, _) = s.state {
                #expect(code != .none, "seed 0x5EED0002 round \(round)")
                #expect(rec.linkClosed != nil)
            }
        }
    }
}
