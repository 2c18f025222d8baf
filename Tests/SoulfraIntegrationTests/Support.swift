import SoulfraConfig
import SoulfraLimits
import Foundation
import Synchronization
import Testing
import SoulfraBroker
import SoulfraLoop
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraServer
import SoulfraWire

/// io_uring is usable on this machine (tests that need the real loop are skipped, not failed, without it).
let uringAvailable: Bool = (try? UringProbe.check()) != nil

let testTokens = (instance: "test-instance-token-01", runtime: "test-runtime-token-001",
                  vault: "test-vault-token-00001", gateway: "test-gateway-token-0001")

private let counter = Atomic<Int>(0)

/// What the test process left in /tmp under its pid (`soulfra-test-<pid>-<n>`, `soulfra-test-tls-<pid>`,
/// `soulfra-keys-<pid>-…`, …: sockets, vaults, keys, certificates) goes when it exits.
private let removeTestDirectoriesAtExit: Void = {
    atexit {
        let pid = "-\(getpid())"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: "/tmp")) ?? [] where name.hasPrefix("soulfra-")
            && (name.contains(pid + "-") || name.contains(pid + ".") || name.hasSuffix(pid)) {
            try? FileManager.default.removeItem(atPath: "/tmp/" + name)
        }
    }
}()

/// A config on loopback with a private unix socket and short timers.
func testConfig(_ tweak: (inout ServerConfig) -> Void = { _ in }) -> ServerConfig {
    _ = removeTestDirectoriesAtExit
    var c = ServerConfig()
    let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
    c.brokerUnixPath = "/tmp/soulfra-test-\(getpid())-\(n)/broker.sock"
    c.vaultDirectory = "/tmp/soulfra-test-\(getpid())-\(n)/vault"
    c.vaultKeyDirectory = "/tmp/soulfra-test-\(getpid())-\(n)/vault-keys"
    c.runtimeWorkers = 0  // tests that want the daemon's runtime turn it on
    c.brokerTCP = "127.0.0.1:0"
    c.adminTCP = "127.0.0.1:0"
    c.adminToken = "test-admin-token-0001"
    c.gatewayTCP = ""
    c.gatewayTLS = ""
    c.runtimeToken = testTokens.runtime
    c.vaultToken = testTokens.vault
    c.gatewayToken = testTokens.gateway
    c.instanceTokens = ["playground": testTokens.instance, "arena": testTokens.instance]
    c.keys = [
        KeyQuota(keyID: 1, world: "playground"),
        KeyQuota(keyID: 2, world: "arena"),
        KeyQuota(keyID: 7, world: "playground", bytesPerSecond: 200_000),
    ]
    c.broker.shutdownDrainMilliseconds = 2_000
    c.loopCount = 1
    tweak(&c)
    return c
}

extension BrokerServer {
    var tcp: PeerAddress { .tcp(host: "127.0.0.1", port: tcpPort) }
    var unix: PeerAddress { .unix(path: unixPath!) }

    func connect(_ kind: PeerKind, world: String = "", via: PeerAddress? = nil, token: String? = nil,
                 recorder: Recorder? = nil) throws -> PeerConnection {
        let t = token ?? {
            switch kind {
            case .instance: testTokens.instance
            case .runtime: testTokens.runtime
            case .vault: testTokens.vault
            case .gateway: testTokens.gateway
            }
        }()
        let c = PeerConnection(address: via ?? tcp, identity: PeerIdentity(kind: kind, world: world, instance: "\(kind)", token: t))
        if let recorder { c.link.delegate = recorder }
        try c.handshake()
        return c
    }

    /// Shuts down and waits (bounded by the server's own hard deadline).
    func stop() {
        shutdown()
        wait()
    }
}

/// Records what a session reports.
final class Recorder: PeerLinkDelegate {
    var accepted: [(UInt32, Open)] = []
    var data: [(UInt32, [UInt8])] = []
    var dataBytes = 0
    var closedStreams: [(UInt32, ErrorCode)] = []
    var linkClosed: (ErrorCode, String)?
    var goaway = false
    var keepData = true
    var pacedEvents: [(UInt32, Bool)] = []

    func linkAccepted(_ s: PeerLink, stream: UInt32, open: Open) { accepted.append((stream, open)) }
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        dataBytes += payload.count
        if keepData { data.append((stream, Array(payload))) }
    }
    func linkStreamClosed(_ s: PeerLink, stream: UInt32, code: ErrorCode, reason: String) { closedStreams.append((stream, code)) }
    func linkClosed(_ s: PeerLink, code: ErrorCode, reason: String) { linkClosed = (code, reason) }
    func linkGoaway(_ s: PeerLink, code: ErrorCode, reason: String) { goaway = true }
    func linkPaced(_ s: PeerLink, stream: UInt32, paced: Bool) { pacedEvents.append((stream, paced)) }
}

/// Pumps the connections until `condition` holds or `milliseconds` pass (a bound, never an assertion on time).
@discardableResult
func pumpUntil(_ conns: [PeerConnection], milliseconds: UInt64 = 5_000, _ condition: () -> Bool) -> Bool {
    let deadline = monotonicMilliseconds() + milliseconds
    while !condition() {
        if monotonicMilliseconds() > deadline { return false }
        for c in conns where c.fd >= 0 { c.pump(timeoutMilliseconds: 1) }
    }
    return true
}

func bytes(_ s: String) -> UnsafeRawBufferPointer {
    let a = Array(s.utf8)
    let p = UnsafeMutableRawBufferPointer.allocate(byteCount: a.count, alignment: 1)
    p.copyBytes(from: a)
    return UnsafeRawBufferPointer(p)  // leaked deliberately: test-only, tiny
}
