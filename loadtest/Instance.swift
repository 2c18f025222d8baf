import ArgumentParser
import Foundation
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

/// `soulfra-loadtest instance`: echo instances of one world, attached to the broker, answering what the
/// gateway sends (see `EchoInstance`). The benchmark's "one hop to an instance"; until the worlds layer,
/// also what the gateway tests talk to.
struct Instance: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run echo instances of a world (unary reply, streamed tokens, full-duplex echo) until --seconds or SIGTERM.",
        discussion: "--echo exact returns every message byte for byte (text as text, binary as binary): point any WebSocket client at the gateway's /ws route to check it end to end.")
    @OptionGroup var target: TargetOptions
    @Option(help: "Instances to attach (one link each, one thread).") var count = 1
    @Option(name: .customLong("name-prefix"), help: "Instance names: <prefix>-<n>.") var namePrefix = "echo"
    @Option(help: "Frames in a streamed reply (json echo).") var tokens = 8
    @Option(help: ArgumentHelp(
        "How to answer: json (a JSON reply, streamed tokens, {\"echo\":…} per stream message) or exact (every message back byte for byte, binary as binary).",
        valueName: "json|exact"))
    var echo = "json"
    @Option(help: "Seconds to run before exiting (bounded).") var seconds = 600.0

    func validate() throws {
        guard EchoInstance.Mode(rawValue: echo) != nil else {
            throw ValidationError("--echo must be json or exact, got \"\(echo)\"")
        }
    }

    func run() throws {
        let mode = EchoInstance.Mode(rawValue: echo) ?? .json
        let t = try target.target()
        let reactor = PeerReactor()
        var echoes: [EchoInstance] = []
        for i in 0..<count {
            let name = "\(namePrefix)-\(i + 1)"
            let c = t.connection(.instance, name: name)
            try c.handshake()
            let e = EchoInstance(name: name, tokens: tokens, mode: mode)
            c.link.delegate = e
            echoes.append(e)
            reactor.add(c, reconnect: Backoff())
        }
        FileHandle.standardError.write(Data("instance: \(count) echo instance(s) of \"\(t.world)\" attached to \(t.address) (echo \(mode.rawValue))\n".utf8))
        signal(SIGTERM) { _ in Glibc.exit(0) }
        signal(SIGINT) { _ in Glibc.exit(0) }
        let deadline = monotonicMilliseconds() + UInt64(seconds * 1000)
        while monotonicMilliseconds() < deadline {
            reactor.poll(timeoutMilliseconds: 100)
        }
        let answered = echoes.reduce(0) { $0 + $1.answered }
        print("RESULT instance answered=\(answered)")
    }
}
