import SoulfraConfig
import SoulfraLimits
import Foundation
import Synchronization
import Testing
import SoulfraBroker
import SoulfraClient
import SoulfraGateway
import SoulfraHTTP
import SoulfraHTTP2
import SoulfraKeys
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraServer
import SoulfraWire

/// Keys for the gateway tests: made with a seeded generator, so the same every run.
enum TestKeys {
    static let playground: String = make("kids", 11)
    static let arena: String = make("sports", 12)
    static let limited: String = make("kids", 13)
    static let paced: String = make("kids", 14)

    static func make(_ type: String, _ seed: UInt64) -> String {
        var rng = SplitMix64(seed: seed)
        return APIKey.generate(type: type, using: &rng)!.plaintext
    }

    static func record(_ key: String, id: UInt64, world: String, rps: UInt32 = 0, burst: UInt32 = 0,
                       fps: UInt32 = 0, permissions: Permissions = [.worldAccess, .agentInteraction]) -> KeyRecord {
        let k = APIKey.parse(key)!
        var r = KeyRecord(id: id, digest: k.digest, prefix: k.prefix, world: world, permissions: permissions,
                          requestsPerSecond: rps, burst: burst)
        r.framesPerSecond = fps
        return r
    }
}

/// A test config with the gateway on ephemeral loopback ports and four keys.
func gatewayConfig(_ tweak: (inout ServerConfig) -> Void = { _ in }) -> ServerConfig {
    testConfig { c in
        c.gatewayTCP = "127.0.0.1:0"
        c.gatewayTLS = "127.0.0.1:0"
        c.tlsSelfSignedDirectory = NSTemporaryDirectory() + "soulfra-test-tls-\(getpid())"
        c.keys = [
            KeyQuota(keyID: 1, world: "playground"),
            KeyQuota(keyID: 2, world: "arena"),
            KeyQuota(keyID: 3, world: "playground"),
            KeyQuota(keyID: 4, world: "playground", framesPerSecond: 20),
        ]
        c.gatewayKeys = [
            TestKeys.record(TestKeys.playground, id: 1, world: "playground"),
            TestKeys.record(TestKeys.arena, id: 2, world: "arena"),
            TestKeys.record(TestKeys.limited, id: 3, world: "playground", rps: 1, burst: 2),
            TestKeys.record(TestKeys.paced, id: 4, world: "playground", fps: 20),
        ]
        tweak(&c)
    }
}

/// An instance peer on its own thread. `stop(crash:)` ends it: a crash closes the socket without a word.
final class InstanceRunner: @unchecked Sendable {
    let name: String
    private let stopFlag = Atomic<Bool>(false)
    private let done = DispatchSemaphore(value: 0)
    /// Runs on the instance's thread on every turn (for tests that steer the instance).
    let tick: (@Sendable (PeerLink) -> Void)?
    let echo: EchoInstance
    private let answeredCount = Atomic<Int>(0)

    init(server: BrokerServer, world: String = "playground", name: String, tokens: Int = 8, mode: EchoInstance.Mode = .json,
         delegate: (any PeerLinkDelegate & Sendable)? = nil, tick: (@Sendable (PeerLink) -> Void)? = nil) throws {
        self.name = name
        self.tick = tick
        self.echo = EchoInstance(name: name, tokens: tokens, mode: mode)
        let conn = PeerConnection(address: server.tcp, identity: PeerIdentity(kind: .instance, world: world, instance: name,
                                                                                token: testTokens.instance))
        if let delegate { conn.link.delegate = delegate } else { conn.link.delegate = echo }
        try conn.handshake()
        let box = UncheckedBox(conn)
        Thread { [self] in
            let c = box.value
            while !stopFlag.load(ordering: .acquiring) {
                c.pump(timeoutMilliseconds: 2)
                tick?(c.link)
                answeredCount.store(Int(echo.answered), ordering: .releasing)
            }
            c.close()
            done.signal()
        }.start()
    }

    var answered: Int { answeredCount.load(ordering: .acquiring) }

    /// Stops the instance: its socket closes (no GOAWAY), as when the process dies.
    func stop() {
        guard !stopFlag.exchange(true, ordering: .acquiringAndReleasing) else { return }
        done.wait()
    }

    deinit { stop() }
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}

extension BrokerServer {
    var h2c: String { "http://127.0.0.1:\(gatewayPort)" }
    var https: String { "https://127.0.0.1:\(gatewayTLSPort)" }
}

/// curl against the gateway with a key: status and body (and headers with `-i`).
func call(_ url: String, key: String? = TestKeys.playground, _ extra: [String] = []) throws -> (Int, String) {
    var args = extra
    if let key { args += ["-H", "authorization: Bearer \(key)"] }
    return try curl(args + [url])
}

/// A blocking HTTP/2 exchange driver for tests: polls until `condition` or the bound passes.
@discardableResult
func pumpH2(_ c: H2Client, milliseconds: UInt64 = 5_000, _ onEvent: (H2Event) -> Void, until condition: () -> Bool) -> Bool {
    let deadline = monotonicMilliseconds() + milliseconds
    c.flush()
    while !condition() {
        if monotonicMilliseconds() > deadline || c.failed { return condition() }
        pollConnections([c], timeoutMilliseconds: 5) { conn, evs in
            for e in evs {
                if case .data(let id, let d) = e { conn.h2.consume(stream: id, bytes: d.count) }
                onEvent(e)
            }
        }
    }
    return true
}

/// A raw TCP connection for sending malformed bytes.
final class RawSocket {
    let fd: Int32
    init(port: UInt16) throws {
        let sa = SocketAddress(host: "127.0.0.1", port: port)!
        fd = sa.makeSocket()
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        guard sa.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else { throw ClientError("connect failed") }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
    }
    deinit { close(fd) }

    func write(_ bytes: [UInt8]) { _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) } }
    func write(_ s: String) { write(Array(s.utf8)) }

    /// Reads until the peer closes or `milliseconds` pass; returns what arrived and whether it closed.
    func readAll(milliseconds: UInt64 = 3_000, until stop: ([UInt8]) -> Bool = { _ in false }) -> ([UInt8], Bool) {
        var out: [UInt8] = []
        var buf = [UInt8](repeating: 0, count: 16 << 10)
        let deadline = monotonicMilliseconds() + milliseconds
        while monotonicMilliseconds() < deadline {
            let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 { out += buf[0..<n]; if stop(out) { return (out, false) }; continue }
            if n == 0 { return (out, true) }
        }
        return (out, false)
    }
}

extension Array where Element == UInt8 {
    var text: String { String(decoding: self, as: UTF8.self) }
}

extension BrokerServer {
    /// An h2c client connection to the gateway.
    func h2Client() throws -> H2Client { try H2Client(host: "127.0.0.1", port: gatewayPort) }
}

extension H2Client {
    /// Starts `method path` with a key; the body (if any) follows through `send`.
    func post(_ path: String, key: String = TestKeys.playground, method: String = "POST", headers: [(String, String)] = [],
              end: Bool = false) -> Int32? {
        request(method: method, authority: "t", path: path, headers: [("authorization", "Bearer \(key)")] + headers, endStream: end)
    }

    /// Sends text on a stream (`end`: the request body ends).
    func send(_ id: Int32, _ text: String, end: Bool = false) {
        Array(text.utf8).withUnsafeBytes { h2.send(stream: id, $0, end: end) }
    }
}

extension BrokerServer {
    /// The gateway's counters, freshly published by every loop (`snapshotNow` is retried while a busy loop
    /// misses its deadline, so comparisons never read a stale copy).
    func freshGatewayCounters() throws -> GatewayCounters {
        for _ in 0..<10 where snapshotNow() != nil { return gatewayCounters }
        throw ClientError("the loops did not publish their counters")
    }
}

/// One WebSocket frame as the gateway sent it.
struct ServerFrame: Equatable {
    var fin: Bool
    var opcode: WebSocket.Opcode
    var payload: [UInt8]
}

/// Splits unmasked server frames out of `bytes` (a trailing partial frame is left out).
func serverFrames(_ bytes: [UInt8]) -> [ServerFrame] {
    var out: [ServerFrame] = []
    var i = 0
    while i + 2 <= bytes.count {
        let fin = bytes[i] & 0x80 != 0
        guard let op = WebSocket.Opcode(rawValue: bytes[i] & 0x0F) else { return out }
        var len = Int(bytes[i + 1] & 0x7F)
        var at = i + 2
        if len == 126 {
            guard at + 2 <= bytes.count else { return out }
            len = Int(bytes[at]) << 8 | Int(bytes[at + 1])
            at += 2
        } else if len == 127 {
            guard at + 8 <= bytes.count else { return out }
            len = 0
            for k in 0..<8 { len = len << 8 | Int(bytes[at + k]) }
            at += 8
        }
        guard at + len <= bytes.count else { return out }
        out.append(ServerFrame(fin: fin, opcode: op, payload: Array(bytes[at..<(at + len)])))
        i = at + len
    }
    return out
}
