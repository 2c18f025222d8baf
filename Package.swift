// swift-tools-version: 6.0
// Soulfra: the io_uring broker core, the peer client library, the daemon and the load-test driver.
//
// Module dependencies run one way (drawn in docs/architecture.md). * = sans-IO: no sockets, no clock reads,
// no Glibc (the Tidy tests hold them to it).
//   SoulfraWire*          ← —                         broker frame codec, ByteQueue
//   SoulfraKeys*          ← COpenSSL                  API keys, secret digests
//   SoulfraTLS*           ← COpenSSL                  TLS over memory BIOs
//   SoulfraHTTP*          ← —                         HTTP/1.1 parser, WebSocket codec
//   SoulfraRate*          ← —                         token buckets
//   SoulfraMetrics*       ← —                         the Prometheus text writer
//   SoulfraVault*         ← PeerLink, Wire, COpenSSL  the vault's log (records, recovery scan, group commit, index)
//                                                     and the vault as a broker peer (stream messages, service)
//   SoulfraVaultStore     ← Vault, Loop, Net          worlds' segments on disk through the ring, reads, retention
//   SoulfraRuntime        ← PeerLink, Peer, Wire, Net, HTTP, CCurl   runtime workers: agent requests, the persona
//                                                     engine, the OpenAI-compatible backend (libcurl multi),
//                                                     worker threads (Foundation for JSON)
//   SoulfraWorld          ← Runtime, Vault, PeerLink, Wire, HTTP   a world instance's 3-way conversation logic
//   SoulfraDocker         ← CCurl                     the Docker Engine API over its unix socket; the world images
//   SoulfraControl        ← CSQLite, Config, Keys, Limits, Docker   the control plane: state in SQLite, reconciler, drivers, admin API
//   SoulfraLimits*        ← Keys, Wire                every limit (loop, broker, gateway) with its settings
//                                                     table; keys and permissions as configured
//   SoulfraConfig         ← Limits, Keys, Net         the config file, environment and validation (Foundation)
//   SoulfraHTTP2*         ← CNGHTTP2, Rate            HTTP/2 connections over nghttp2
//   SoulfraBroker*        ← Wire, Keys, Rate, Metrics, Limits     routing, credit, quotas, rooms
//   SoulfraPeerLink*      ← Wire                      a peer's side of a broker link
//   SoulfraGateway*       ← PeerLink, Vault, HTTP, HTTP2, TLS, Keys, Rate, Metrics, Limits, Wire
//   SoulfraNet            ← —                         socket addresses, the monotonic clock
//   SoulfraLoop           ← CURing, Net, Limits       the io_uring event loop
//   SoulfraPeer           ← PeerLink, Wire, Net       the peer library: plain sockets + poll(2)
//   SoulfraClient         ← HTTP, HTTP2, Net          an h2c client (load driver, tests)
//   SoulfraServer         ← Config, Broker, Gateway, Loop, Peer, PeerLink, TLS, Keys, HTTP, Wire, Net
//   soulfra               ← Server, Config, Loop, Net, Peer, VaultStore   the daemon, `soulfra vault`, the CLI
//   soulfra-loadtest      ← Peer, PeerLink, Client, HTTP2, Wire, Net, Loop, Vault, VaultStore
import PackageDescription

/// Data-plane modules skip dynamic exclusivity checks in release builds: they are loop-confined (one thread
/// per loop, no shared mutable state) and the checks cost several percent of the request path. Debug builds,
/// which the tests run, keep them. Unsafe flags make a product unusable by other packages, so the modules of
/// the `SoulfraPeer` product (SoulfraWire, SoulfraPeerLink, SoulfraPeer, SoulfraNet) carry none: their
/// hot stored properties are marked `@exclusivity(unchecked)` instead.
let dataPlane: [SwiftSetting] = [.unsafeFlags(["-enforce-exclusivity=unchecked"], .when(configuration: .release))]

let package = Package(
    name: "soulfra",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "soulfra", targets: ["soulfra"]),
        .executable(name: "soulfra-loadtest", targets: ["soulfra-loadtest"]),
        .library(name: "SoulfraPeer", targets: ["SoulfraPeer", "SoulfraPeerLink"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.1.0"),
    ],
    targets: [
        // liburing enters through this shim only (Debian 12 ships liburing 2.3).
        .target(name: "CURing", linkerSettings: [.linkedLibrary("uring")]),
        // OpenSSL enters through this shim only: SHA-256 and constant-time comparison for secrets (libcrypto),
        // TLS over memory BIOs and development certificates (libssl).
        .target(name: "COpenSSL", linkerSettings: [.linkedLibrary("ssl"), .linkedLibrary("crypto")]),
        // Secrets and API keys: SHA-256 digests, the sk-slfr_ key format with its CRC32 checksum.
        .target(name: "SoulfraKeys", dependencies: ["COpenSSL"]),
        // Every limit the data plane enforces, each struct with its settings table (key, place, range) and its
        // own validation; API keys and permissions as configured. Sans-IO.
        .target(name: "SoulfraLimits", dependencies: ["SoulfraKeys", "SoulfraWire"]),
        // The daemon's configuration: file, environment, validation. What the CLI links to read or check a
        // config without the data plane.
        .target(name: "SoulfraConfig", dependencies: ["SoulfraLimits", "SoulfraKeys", "SoulfraNet"]),
        // The vault's log, sans-IO: the record format with CRC-32C, the recovery scan, the group-commit policy.
        .target(name: "CCurl", linkerSettings: [.linkedLibrary("curl")]),
        // libsqlite3 for the control plane's state (Debian 12: 3.40).
        .target(name: "CSQLite", linkerSettings: [.linkedLibrary("sqlite3")]),
        .target(name: "SoulfraDocker", dependencies: ["CCurl"]),
        .target(name: "SoulfraControl", dependencies: ["CSQLite", "CCurl", "SoulfraConfig", "SoulfraKeys", "SoulfraLimits", "SoulfraDocker", "SoulfraMetrics"]),
        .target(name: "SoulfraRuntime", dependencies: ["SoulfraPeerLink", "SoulfraPeer", "SoulfraWire", "SoulfraNet", "SoulfraHTTP", "CCurl"]),
        .target(name: "SoulfraWorld", dependencies: ["SoulfraRuntime", "SoulfraVault", "SoulfraPeerLink", "SoulfraWire", "SoulfraHTTP"]),
        .target(name: "SoulfraVault", dependencies: ["SoulfraPeerLink", "SoulfraWire", "COpenSSL"]),
        // The vault's log on disk: segments written and synced through the io_uring loop, recovered on open.
        .target(name: "SoulfraVaultStore", dependencies: ["SoulfraVault", "SoulfraLoop", "SoulfraNet"]),
        // The Prometheus text format writer every /metrics section uses. Sans-IO.
        .target(name: "SoulfraMetrics"),
        // Token buckets: the one rate limiter (key rates, address budgets, HTTP/2 resets, broker quotas). Sans-IO.
        .target(name: "SoulfraRate"),
        // Socket addresses for bind and connect (shared by the loop and the peer library).
        .target(name: "SoulfraNet"),
        // libnghttp2 enters through this shim only (Debian 12 ships nghttp2 1.52: the ssize_t API).
        .target(name: "CNGHTTP2", linkerSettings: [.linkedLibrary("nghttp2")]),
        // HTTP for the gateway, sans-IO: the HTTP/1.1 request parser.
        .target(name: "SoulfraHTTP", swiftSettings: dataPlane),
        // The gateway's request admission: routes, API-key auth, permissions, request rate, error shape. Sans-IO.
        .target(name: "SoulfraGateway", dependencies: ["SoulfraKeys", "SoulfraHTTP", "SoulfraHTTP2", "SoulfraTLS", "SoulfraPeerLink", "SoulfraRate", "SoulfraMetrics", "SoulfraLimits", "SoulfraWire", "SoulfraVault"], swiftSettings: dataPlane),
        // TLS over memory BIOs for the gateway, sans-IO (OpenSSL never touches a socket).
        .target(name: "SoulfraTLS", dependencies: ["COpenSSL"]),
        // HTTP/2 sessions for the gateway over libnghttp2, sans-IO (mem_recv / mem_send).
        .target(name: "SoulfraHTTP2", dependencies: ["CNGHTTP2", "SoulfraRate"], swiftSettings: dataPlane),
        // The broker wire protocol v1: frame codec, sans-IO.
        .target(name: "SoulfraWire"),
        // Broker logic: links, streams, routing, credits, watermarks, quotas, rooms. Sans-IO.
        .target(name: "SoulfraBroker", dependencies: ["SoulfraWire", "SoulfraKeys", "SoulfraRate", "SoulfraMetrics", "SoulfraLimits", "SoulfraVault", "SoulfraVaultStore", "SoulfraRuntime"], swiftSettings: dataPlane),
        // The io_uring event loop: rings, slots, multishot accept/recv, provided buffers, timers, mailbox.
        .target(name: "SoulfraLoop", dependencies: ["CURing", "SoulfraNet", "SoulfraLimits"], swiftSettings: dataPlane),
        // A peer's side of a broker link, sans-IO: handshake, streams, credit, message parts (the gateway's link
        // and the peer library share it); a scripted echo instance on top.
        .target(name: "SoulfraPeerLink", dependencies: ["SoulfraWire"]),
        // The peer library: PeerLink over a plain non-blocking socket and poll(2) (works where io_uring is
        // blocked).
        .target(name: "SoulfraPeer", dependencies: ["SoulfraPeerLink", "SoulfraWire", "SoulfraNet"]),
        // Wiring: config, broker on the loop, signals, graceful shutdown.
        .target(name: "SoulfraClient", dependencies: ["SoulfraHTTP2", "SoulfraHTTP", "SoulfraNet"]),
        .target(name: "SoulfraServer", dependencies: ["SoulfraConfig", "SoulfraBroker", "SoulfraLoop", "SoulfraNet", "SoulfraWire", "SoulfraHTTP", "SoulfraGateway", "SoulfraKeys", "SoulfraTLS", "SoulfraPeer", "SoulfraPeerLink", "SoulfraMetrics", "SoulfraLimits", "SoulfraVault", "SoulfraVaultStore", "SoulfraRuntime"], resources: [.embedInCode("Panel")], swiftSettings: dataPlane),
        .executableTarget(
            name: "soulfra",
            dependencies: ["SoulfraServer", "SoulfraConfig", "SoulfraControl", "SoulfraDocker", "SoulfraKeys", "SoulfraBroker", "SoulfraGateway", "SoulfraLoop", "SoulfraNet", "SoulfraPeer", "SoulfraPeerLink", "SoulfraVaultStore", "SoulfraRuntime", "SoulfraWorld", "SoulfraWire", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        .executableTarget(
            name: "soulfra-loadtest",
            dependencies: [
                "SoulfraPeer", "SoulfraPeerLink", "SoulfraNet", "SoulfraWire", "SoulfraHTTP2", "SoulfraClient",
                "SoulfraLoop", "SoulfraVault", "SoulfraVaultStore",
                .product(name: "Histogram", package: "hdrhistogram-swift"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            path: "loadtest"
        ),
        // Shared by the test targets only: the seeded generator.
        .target(name: "SoulfraTestSupport", dependencies: ["SoulfraPeerLink"], path: "Tests/Support"),
        // Test binary only: counts the calling thread's heap allocations, for tests that a hot path allocates
        // nothing per message.
        .target(name: "CAllocCounter", path: "Tests/AllocCounter"),
        .testTarget(name: "SoulfraWireTests", dependencies: ["SoulfraWire", "SoulfraTestSupport"]),
        .testTarget(name: "SoulfraHTTPTests", dependencies: ["SoulfraHTTP", "SoulfraKeys", "SoulfraTestSupport"]),
        .testTarget(name: "SoulfraHTTP2Tests", dependencies: ["SoulfraHTTP2"]),
        .testTarget(name: "SoulfraLoopTests", dependencies: ["SoulfraLoop", "SoulfraNet", "SoulfraLimits"]),
        .testTarget(name: "SoulfraPeerTests", dependencies: ["SoulfraPeer", "SoulfraPeerLink", "SoulfraWire"]),
        .testTarget(name: "SoulfraTLSTests", dependencies: ["SoulfraTLS"]),
        .testTarget(name: "SoulfraGatewayTests", dependencies: ["SoulfraGateway", "SoulfraLimits", "SoulfraKeys", "SoulfraTestSupport", "SoulfraPeerLink", "SoulfraHTTP", "SoulfraHTTP2", "SoulfraWire"]),
        .testTarget(name: "SoulfraBrokerTests", dependencies: ["SoulfraBroker", "SoulfraWire", "SoulfraKeys", "SoulfraLimits", "CAllocCounter"]),
        .testTarget(name: "SoulfraKeysTests", dependencies: ["SoulfraKeys", "SoulfraTestSupport"]),
        .testTarget(name: "SoulfraRateTests", dependencies: ["SoulfraRate"]),
        .testTarget(name: "SoulfraRuntimeTests", dependencies: ["SoulfraRuntime", "SoulfraPeerLink", "SoulfraWire"]),
        .testTarget(name: "SoulfraVaultTests", dependencies: ["SoulfraVault", "SoulfraVaultStore", "SoulfraLoop", "SoulfraPeerLink", "SoulfraWire", "SoulfraTestSupport"]),
        .testTarget(name: "SoulfraMetricsTests", dependencies: ["SoulfraMetrics"]),
        .testTarget(name: "SoulfraControlTests", dependencies: ["SoulfraControl", "SoulfraTestSupport"]),
        .testTarget(name: "SoulfraConfigTests", dependencies: ["SoulfraConfig"]),
        // The tree's promises, checked: sans-IO modules, declared imports, length limits (docs/architecture.md).
        .testTarget(name: "SoulfraTidyTests"),
        .testTarget(
            name: "SoulfraIntegrationTests",
            dependencies: ["SoulfraServer", "SoulfraConfig", "SoulfraBroker", "SoulfraPeer", "SoulfraPeerLink", "SoulfraNet", "SoulfraWire", "SoulfraLoop",
                           "SoulfraClient", "SoulfraHTTP2", "SoulfraHTTP", "SoulfraGateway", "SoulfraKeys", "SoulfraLimits", "SoulfraVault",
                           "SoulfraRuntime", "SoulfraWorld", "SoulfraControl", "SoulfraDocker", "SoulfraTestSupport"]
        ),
    ],
    swiftLanguageModes: [.v6]
)
