import ArgumentParser
import Foundation
import SoulfraPeer
import SoulfraPeerLink

/// Common options of every scenario.
struct TargetOptions: ParsableArguments {
    @Option(help: "Broker address: tcp:host:port, host:port or unix:/path.")
    var broker = "tcp:127.0.0.1:7400"
    @Option(name: .customLong("server-pid"), help: "PID of the server to read RSS and CPU from (/proc).")
    var serverPID: Int32?
    @Option(help: "World the instances belong to.") var world = "bench"
    @Option(name: .customLong("key-id"), help: "API key id the app-side streams carry.") var keyID: UInt64 = 1
    @Option(name: .customLong("instance-token")) var instanceToken = "dev-instance-token-bench"
    @Option(name: .customLong("gateway-token")) var gatewayToken = "dev-gateway-token-0001"
    @Option(name: .customLong("runtime-token")) var runtimeToken = "dev-runtime-token-0001"
    @Option(name: .customLong("vault-token")) var vaultToken = "dev-vault-token-000001"

    func target() throws -> Target {
        try Target(address: try parseAddress(broker), world: world, keyID: keyID, instanceToken: instanceToken,
                   gatewayToken: gatewayToken, runtimeToken: runtimeToken, vaultToken: vaultToken, serverPID: serverPID)
            .discovered()
    }
}

@main
struct LoadTest: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soulfra-loadtest",
        abstract: "Drives a Soulfra broker (or nats-server) as any peer kind and reports throughput and latency.",
        discussion: """
            Every scenario prints a table, then one line `RESULT <scenario> key=value ...` for scripts.
            Latency comes from send times stamped in each payload; report it at a fixed --rate, not at
            saturation. Loops are bounded by --seconds; traffic goes only to the address given (loopback).
            """,
        subcommands: [Pipe.self, Chain.self, Rooms.self, SlowConsumer.self, Idle.self, Instance.self, GatewayClient.self, VaultBench.self])
}

struct Pipe: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "N producers → N consumers, one stream each (gateway → instance), or the same through nats-server.")
    @OptionGroup var target: TargetOptions
    @Option(help: "Producer/consumer pairs.") var pairs = 1
    @Option(help: "Payload bytes per frame (≥ 8).") var size = 256
    @Option(help: "Seconds to send.") var seconds = 5.0
    @Option(help: "Offered frames/s across all pairs (0: as fast as credit allows).") var rate = 0
    @Option(help: "Drive nats-server at host:port instead of Soulfra (same client pattern, same window).")
    var nats: String?
    @Option(name: .customLong("window-frames"), help: "NATS only: frames in flight (Soulfra's is its stream credit).")
    var windowFrames = 1_024
    @Option(name: .customLong("window-bytes"), help: "NATS only: bytes in flight.") var windowBytes = 256 << 10

    func run() throws {
        let o = PipeOptions(pairs: pairs, size: max(8, size), seconds: seconds, rate: rate)
        if let nats {
            let a = try parseAddress(nats)
            guard case .tcp(let host, let port) = a else { throw LoadtestError("--nats takes host:port") }
            try runNATSPipe(host: host, port: port, serverPID: target.serverPID, o, windowFrames: windowFrames, windowBytes: windowBytes).print()
        } else {
            try runPipe(try target.target(), o).print()
        }
    }
}

struct Chain: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The 3-way path: app → instance → runtime → vault and back, with simulated peers; closed loop.")
    @OptionGroup var target: TargetOptions
    @Option(help: "Concurrent conversations (streams), one request outstanding each.") var concurrency = 16
    @Option(help: "Payload bytes.") var size = 256
    @Option(help: "Seconds to run.") var seconds = 5.0

    func run() throws {
        try runChain(try target.target(), ChainOptions(concurrency: concurrency, size: max(8, size), seconds: seconds)).print()
    }
}

struct Rooms: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "One publisher → N room subscribers (fan-out).")
    @OptionGroup var target: TargetOptions
    @Option(help: "Subscribers.") var subscribers = 100
    @Option(help: "Payload bytes.") var size = 256
    @Option(help: "Seconds to publish.") var seconds = 5.0
    @Option(help: "Published frames/s (0: full speed).") var rate = 2_000
    @Flag(name: .customLong("drop-oldest"), help: "Subscribe in realtime drop-oldest mode.") var dropOldest = false
    @Option(help: "Drive nats-server at host:port instead (1 publisher → N subscribers on one subject).")
    var nats: String?

    func run() throws {
        let o = RoomsOptions(subscribers: subscribers, size: max(8, size), seconds: seconds, rate: rate, dropOldest: dropOldest)
        if let nats {
            guard case .tcp(let host, let port) = try parseAddress(nats) else { throw LoadtestError("--nats takes host:port") }
            try runNATSRooms(host: host, port: port, serverPID: target.serverPID, o).print()
        } else {
            try runRooms(try target.target(), o).print()
        }
    }
}

struct SlowConsumer: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slow-consumer",
        abstract: "A consumer that stops reading: shows the producer paused and the broker's memory bounded.")
    @OptionGroup var target: TargetOptions
    @Option(help: "Streams from the producer to the stalled consumer.") var streams = 64
    @Option(help: "Payload bytes.") var size = 16 << 10
    @Option(name: .customLong("read-seconds"), help: "Seconds of normal reading first.") var readSeconds = 1.0
    @Option(name: .customLong("stall-seconds"), help: "Seconds stalled (past the heartbeat timeout the broker closes the silent consumer).") var stallSeconds = 2.5

    func run() throws {
        try runSlowConsumer(try target.target(), SlowOptions(streams: streams, size: size, readSeconds: readSeconds, stallSeconds: stallSeconds)).print()
    }
}

struct Idle: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Memory per idle link and per idle stream (server RSS deltas), or the same for nats-server.")
    @OptionGroup var target: TargetOptions
    @Option(help: "Idle links (app-side connections).") var links = 1_000
    @Option(help: "Idle streams spread over them (NATS: subscriptions).") var streams = 10_000
    @Option(help: "Drive nats-server at host:port instead.") var nats: String?

    func run() throws {
        let o = IdleOptions(links: links, streams: streams)
        if let nats {
            guard case .tcp(let host, let port) = try parseAddress(nats), let pid = target.serverPID else {
                throw LoadtestError("--nats takes host:port and needs --server-pid")
            }
            try runNATSIdle(host: host, port: port, pid: pid, o).print()
        } else {
            try runIdle(try target.target(), o).print()
        }
    }
}
