import SoulfraLimits
import Testing
import SoulfraHTTP
import SoulfraHTTP2
import SoulfraKeys
import SoulfraPeerLink
import SoulfraTestSupport
import SoulfraWire
@testable import SoulfraGateway

/// The loop side of a gateway for sans-IO tests: clients that read (every send completes at once and its
/// bytes reach the client) or do not (the first send never completes, as when the kernel's buffers are full).
final class ClientsTransport: GatewayTransport {
    unowned let harness: GatewayHarness
    var inFlight: Set<UInt32> = []
    var closed: Set<UInt32> = []
    var aborted: Set<UInt32> = []
    var paused: Set<UInt32> = []
    /// Bytes taken by clients that read.
    var received: [UInt32: [UInt8]] = [:]
    /// The send a client that does not read left in flight.
    var stalled: [UInt32: [UInt8]] = [:]
    /// Sends complete with at most this many bytes written (short sends, as a full socket buffer gives).
    var shortSends: Int?
    init(_ h: GatewayHarness) { harness = h }
    func canSend(_ conn: UInt32) -> Bool { !inFlight.contains(conn) && !closed.contains(conn) && !aborted.contains(conn) }
    func send(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer) {
        inFlight.insert(conn)
        guard harness.reading[conn] ?? true else {
            stalled[conn] = Array(bytes)
            return
        }
        deliver(conn, bytes)
    }
    func deliver(_ conn: UInt32, _ bytes: UnsafeRawBufferPointer) {
        let n = min(bytes.count, shortSends ?? bytes.count)
        let taken = UnsafeRawBufferPointer(rebasing: bytes[..<n])
        received[conn, default: []] += taken
        harness.clients[conn]?.take(taken)
        inFlight.remove(conn)
        harness.gateway.sent(conn: conn, count: n, now: harness.now)
    }
    /// The client starts reading: the send that waited completes.
    func resume(_ conn: UInt32) {
        harness.reading[conn] = true
        if let bytes = stalled.removeValue(forKey: conn) { bytes.withUnsafeBytes { deliver(conn, $0) } }
    }
    func close(_ conn: UInt32) { closed.insert(conn) }
    func abort(_ conn: UInt32) {
        aborted.insert(conn)
        harness.gateway.closed(conn: conn, now: harness.now)  // the loop closes it at once
    }
    func pauseRead(_ conn: UInt32) { paused.insert(conn) }
    func resumeRead(_ conn: UInt32) { paused.remove(conn) }
}

/// An HTTP/2 client of the harness (nghttp2's client role), reading what the gateway sends when allowed.
final class H2TestClient {
    let h2: H2Connection
    var events: [H2Event] = []
    init() throws { h2 = try H2Connection(role: .client) }
    func take(_ bytes: UnsafeRawBufferPointer) {
        try? h2.receive(bytes, now: 0)
        for e in h2.takeEvents() {
            if case .data(let id, let d) = e { h2.consume(stream: id, bytes: d.count) }
            events.append(e)
        }
    }
    func body(_ id: Int32) -> [UInt8] {
        var out: [UInt8] = []
        for e in events { if case .data(id, let d) = e { out += d } }
        return out
    }
    func status(_ id: Int32) -> String? {
        for e in events { if case .headers(id, let hs) = e { return hs.first { $0.name == ":status" }?.value } }
        return nil
    }
    /// The response's header fields (the first HEADERS of the stream), by name.
    func headers(_ id: Int32) -> [String: String] {
        for e in events { if case .headers(id, let hs) = e { return Dictionary(hs.map { ($0.name, $0.value) }) { a, _ in a } } }
        return [:]
    }
}

/// What the scripted world does with a stream the gateway opened.
struct ScriptedStream {
    var open: Open
    /// The window the gateway granted the instance (OPEN's, then CREDITs), less what was sent.
    var windowBytes: Int64
    var windowFrames: Int64
    var request: [UInt8] = []
    var requestFrames: [(Int, FrameFlags)] = []
    var requestEnded = false
    var sentBytes = 0
    var sentFrames = 0
    var closed = false
    var closeCode: ErrorCode?
}

/// A gateway on one loop, its broker link answered by a scripted broker-and-instance (the test sees the
/// gateway's own stream ids, as the broker translates them), its clients in memory, and a manual clock.
final class GatewayHarness {
    let gateway: Gateway
    var transport: ClientsTransport!
    var now: UInt64 = 1_000_000_000
    var clients: [UInt32: H2TestClient] = [:]
    var reading: [UInt32: Bool] = [:]
    var streams: [UInt32: ScriptedStream] = [:]
    /// Room subscriptions the gateway made (their stream ids), in order.
    var subscriptions: [UInt32] = []
    let key: String
    let decoder = FrameDecoder(maxPayload: 1 << 24)
    /// How the world answers: called for every stream whenever it may send (window or news).
    var world: (GatewayHarness, UInt32) -> Void = { _, _ in }

    /// `streamCreditBytes`: the window the broker's WELCOME gives each stream the gateway opens (for requests).
    /// `loopCount`: how many broker loops the gateway links to (link 0 is the one the harness answers).
    init(limits: GatewayLimits = GatewayLimits(), streamCreditBytes: UInt32 = 262_144, loopCount: Int = 1) {
        var r = SeededRandom(seed: 7)
        let k = APIKey.generate(type: "kids", using: &r)!
        key = k.plaintext
        let table = KeyTable([KeyRecord(id: 1, digest: k.digest, prefix: k.prefix, world: "playground",
                                        permissions: [.worldAccess, .agentInteraction])])
        gateway = Gateway(limits: limits, keys: table, loopIndex: 0, loopCount: loopCount, tls: nil) { _ in
            PeerIdentity(kind: .gateway, token: "test-gateway-token-0001", loop: 0)
        }
        transport = ClientsTransport(self)
        gateway.transport = transport
        gateway.now = now
        let session = gateway.peerLink(0)
        session.start()
        session.output.removeAll()
        let welcome = FrameWriter.encode(.welcome(Welcome(maxFrameBytes: 65_536, heartbeatMilliseconds: 1_000,
                                                          streamCreditBytes: streamCreditBytes, streamCreditFrames: 1_024, linkID: 1,
                                                          server: "test")))
        welcome.withUnsafeBytes { session.receive($0, nowMilliseconds: 0) }
    }

    var session: PeerLink { gateway.peerLink(0) }

    /// A new connection `conn` whose bytes the test writes itself (HTTP/1.1, WebSocket).
    func connectRaw(_ conn: UInt32, reads: Bool = true) {
        reading[conn] = reads
        _ = gateway.accepted(conn: conn, tls: false, address: nil, now: now)
    }

    /// Raw bytes from client `conn`.
    func rawSend(_ conn: UInt32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { gateway.received(conn: conn, bytes: $0, now: now) }
    }

    /// Upgrades raw connection `conn` to a WebSocket on /ws.
    func upgrade(_ conn: UInt32) {
        rawSend(conn, Array(("GET /v1/worlds/playground/ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(key)\r\n"
            + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            + "Sec-WebSocket-Version: 13\r\n\r\n").utf8))
    }

    /// A masked client frame.
    static func clientFrame(_ op: WebSocket.Opcode, _ payload: [UInt8], fin: Bool = true) -> [UInt8] {
        var out: [UInt8] = []
        WebSocket.encodeFrame(op, payload: payload, fin: fin, mask: (0x11, 0x22, 0x33, 0x44), into: &out)
        return out
    }

    /// The world grants back what it receives (as a consumer with auto credit does).
    var worldGrantsBack = false

    /// A new HTTP/2 client connection `conn`.
    func connect(_ conn: UInt32, reads: Bool = true) throws -> H2TestClient {
        let c = try H2TestClient()
        clients[conn] = c
        reading[conn] = reads
        _ = gateway.accepted(conn: conn, tls: false, address: nil, now: now)
        return c
    }

    /// What clients wrote that the gateway has not read (it paused reading their connection).
    var unread: [UInt32: [UInt8]] = [:]

    /// Sends what client `conn` has queued to the gateway, as the loop would: not while the gateway has
    /// paused reading the connection (the bytes wait in the socket).
    func clientSends(_ conn: UInt32) {
        guard let c = clients[conn] else { return }
        var bytes = unread.removeValue(forKey: conn) ?? []
        try? c.h2.drainOutput { bytes += $0 }
        guard !bytes.isEmpty else { return }
        if transport.paused.contains(conn) {
            unread[conn] = bytes
            return
        }
        bytes.withUnsafeBytes { gateway.received(conn: conn, bytes: $0, now: now) }
    }

    /// GETs `path` on client `conn`; returns the HTTP/2 stream id.
    @discardableResult
    func get(_ conn: UInt32, _ path: String) throws -> Int32 {
        let c = clients[conn]!
        let id = try c.h2.request(headers: [H2Header(":method", "GET"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                            H2Header(":path", path), H2Header("authorization", "Bearer \(key)")],
                                  endStream: true)
        return id
    }

    /// POSTs `body` to `path` on client `conn`; returns the HTTP/2 stream id.
    @discardableResult
    func post(_ conn: UInt32, _ path: String, body: String, headers: [(String, String)] = []) throws -> Int32 {
        let c = clients[conn]!
        var hs = [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"), H2Header(":path", path),
                  H2Header("authorization", "Bearer \(key)")]
        for (n, v) in headers { hs.append(H2Header(n, v)) }
        let id = try c.h2.request(headers: hs)
        Array(body.utf8).withUnsafeBytes { c.h2.send(stream: id, $0, end: true) }
        return id
    }

    /// One turn: clients send, the gateway flushes, the world reads its frames and answers. Returns whether
    /// anything moved.
    @discardableResult
    func turn() -> Bool {
        for conn in clients.keys.sorted() { clientSends(conn) }
        gateway.now = now
        gateway.flush(now: now)
        var moved = false
        let out = Array(session.output.readable)
        session.output.removeAll()
        if !out.isEmpty { moved = true }
        out.withUnsafeBytes { bytes in
            try? decoder.feed(bytes) { h, p throws(WireError) in
                switch try Frame.parse(h, p) {
                case .open(let id, let o):
                    streams[id] = ScriptedStream(open: o, windowBytes: Int64(o.window?.bytes ?? 262_144),
                                                 windowFrames: Int64(o.window?.frames ?? 1_024))
                case .data(let id, let payload, let end, let flags):
                    streams[id]?.request += payload
                    streams[id]?.requestFrames.append((payload.count, flags))
                    if end { streams[id]?.requestEnded = true }
                    if worldGrantsBack { FrameWriter.credit(worldOut, stream: id, bytes: UInt32(payload.count), frames: 1) }
                case .subscribe(let id, _):
                    subscriptions.append(id)
                case .credit(let id, let b, let f, _):
                    streams[id]?.windowBytes += Int64(b)
                    streams[id]?.windowFrames += Int64(f)
                case .close(let id, let code, _), .error(let id, let code, _):
                    streams[id]?.closed = true
                    streams[id]?.closeCode = code
                default:
                    break
                }
                return true
            }
        }
        for id in streams.keys.sorted() where !(streams[id]?.closed ?? true) { world(self, id) }
        let reply = Array(worldOut.readable)
        worldOut.removeAll()
        if !reply.isEmpty {
            moved = true
            reply.withUnsafeBytes { session.receive($0, nowMilliseconds: 0) }
            gateway.flush(now: now)
        }
        return moved
    }

    /// Turns until nothing moves (bounded).
    func settle(max: Int = 2_000) {
        for _ in 0..<max where turn() {}
    }

    /// Frames the world sends, as the broker would deliver them to the gateway.
    let worldOut = ByteQueue()

    /// The world sends one DATA on `id` if its window allows; false if not.
    @discardableResult
    func worldSend(_ id: UInt32, _ payload: [UInt8], flags: FrameFlags = []) -> Bool {
        guard var st = streams[id], !st.closed, st.windowBytes >= Int64(payload.count), st.windowFrames >= 1 else { return false }
        st.windowBytes -= Int64(payload.count)
        st.windowFrames -= 1
        st.sentBytes += payload.count
        st.sentFrames += 1
        if flags.contains(.endStream) { st.closed = true }
        streams[id] = st
        payload.withUnsafeBytes { FrameWriter.data(worldOut, stream: id, payload: $0, flags: flags) }
        return true
    }

    /// The world answers every request, once it is in, with `reply` in one frame that ends the stream.
    func answerEachRequest(_ reply: String) {
        world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            h.worldSend(sid, Array(reply.utf8), flags: .endStream)
        }
    }

    func connection(_ conn: UInt32) -> Connection? { gateway.conns[conn] }

    /// What a connection holds: bytes queued for its client plus the credit its streams hold.
    func held(_ conn: UInt32) -> Int {
        guard let c = connection(conn) else { return 0 }
        return c.creditCost + c.queuedBytes
    }
}
