import ArgumentParser
import Foundation
import SoulfraConfig
import SoulfraNet
import SoulfraPeer
import SoulfraPeerLink
import SoulfraRuntime
import SoulfraWorld

struct World: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run one instance of a world: the 3-way conversation between apps, agents and the vault.",
        discussion: """
            An instance attaches to the broker (plain sockets: it runs under any seccomp profile) with its \
            world's instance token and serves the app streams the gateway sends it: each message is stored in \
            the world's vault, answered by an agent in a runtime worker, and relayed back token by token with \
            each event's sequence number (docs/protocol.md, World events). --stream-mode 3way_full (the \
            default) shows an event only once it is durable; realtime shows it at once.

            Agents are given as name[:style[:greeting]] (styles: cheerful, calm, curious, formal, playful). \
            The world templates (kids, executive, sports, custom) and their agents, moderation and rooms come \
            with the control plane; this runs a world of the agents named here.

            Example:  soulfra world --world playground --agent 'cal:cheerful:Hi, I am Cal!' --agent domingo:calm
            """
    )

    @Option(name: .long, help: "The world this instance serves.")
    var world: String

    @Option(name: .long, help: "JSON config file (default: config/soulfra.json if present): tokens.instances and the broker's address.")
    var config: String?

    @Option(name: .long, help: "The broker: a unix socket path, or host:port (default: the config's broker socket, else its TCP listener).")
    var broker: String?

    @Option(name: .long, help: "An agent: name[:style[:greeting]] (repeat for several; the first answers by default).")
    var agent: [String] = ["cal:cheerful"]

    @Option(name: .customLong("stream-mode"), help: "3way_full or realtime.")
    var streamMode = "3way_full"

    @Option(name: .customLong("pacing-ms"), help: "Milliseconds between an agent's tokens (0: as fast as credit allows).")
    var pacing = 0

    @Option(name: .long, help: "The runtime backend the agents answer with: builtin (the persona engine) or openai (the runtime's endpoint).")
    var backend = "builtin"

    @Option(name: .long, help: "The template whose rules the world follows: kids (moderation both ways, a trust score per user), executive (tantrums counted), sports, custom.")
    var template = "custom"

    @Option(name: .customLong("drain-seconds"), help: "On SIGTERM, how long open streams may take to finish before the instance exits.")
    var drainSeconds = 10

    @Option(name: .customLong("name"), help: "This instance's name in logs.")
    var name = "world-\(getpid())"

    func run() throws {
        let (cfg, address) = peerSettings(config: config, broker: broker) { cfg in
            guard !(ProcessInfo.processInfo.environment["SOULFRA_INSTANCE_TOKEN"] ?? cfg.instanceTokens[world] ?? "").isEmpty else {
                throw ServerConfig.Invalid(key: "tokens.instances.\(world)", message: "no instance token for this world (or SOULFRA_INSTANCE_TOKEN)")
            }
            guard StreamMode(rawValue: streamMode) != nil else {
                throw ServerConfig.Invalid(key: "--stream-mode", message: "must be 3way_full or realtime, got \"\(streamMode)\"")
            }
        }
        let token = ProcessInfo.processInfo.environment["SOULFRA_INSTANCE_TOKEN"] ?? cfg.instanceTokens[world]!
        let mode = StreamMode(rawValue: streamMode)!
        var personas = agent.map { spec -> AgentPersona in
            let parts = spec.split(separator: ":", maxSplits: 2).map(String.init)
            return AgentPersona(name: parts[0], style: parts.count > 1 ? parts[1] : "calm", greeting: parts.count > 2 ? parts[2] : "")
        }
        // The control plane hands over the template's agents whole (topics and knowledge too).
        if let json = ProcessInfo.processInfo.environment["SOULFRA_AGENTS"] {
            guard let list = (try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [[String: Any]], !list.isEmpty else {
                fail("SOULFRA_AGENTS must be a JSON list of agents ({\"name\", \"style\", \"greeting\", \"topics\", \"knowledge\"})", code: 78)
            }
            personas = list.map { a in
                AgentPersona(name: a["name"] as? String ?? "agent", style: a["style"] as? String ?? "calm", greeting: a["greeting"] as? String ?? "",
                             topics: a["topics"] as? [String] ?? [], knowledge: a["knowledge"] as? [String: String] ?? [:])
            }
        }
        var settings = AgentInstance.Settings(personas: personas, mode: mode)
        settings.pacingMilliseconds = pacing
        guard ["builtin", "openai"].contains(backend) else { fail("--backend must be builtin or openai, got \"\(backend)\"", code: 78) }
        settings.backend = backend
        settings.rules = WorldRules.forTemplate(template)
        settings.log = { logLine($0) }
        let instance = AgentInstance(settings)
        _ = blockStopSignals()
        let conn = PeerConnection(address: address, identity: PeerIdentity(kind: .instance, world: world, instance: name, token: token))
        instance.add(conn.link)
        var attempt = Backoff()
        var rng = SplitMix64(seed: UInt64(getpid()))
        do {
            try conn.connect(retrying: attempt, attempts: 20, rng: &rng)
        } catch {
            fail("soulfra world: \(error)", code: 69)
        }
        attempt.reset()
        let reactor = PeerReactor()
        reactor.add(conn, reconnect: Backoff())
        logLine("INFO: world \(world): instance \(name) attached to \(address) (\(mode.rawValue); agents \(personas.map(\.name).joined(separator: ", ")))")
        var pending = sigset_t()
        while true {
            reactor.poll(timeoutMilliseconds: 20)
            sigpending(&pending)
            if sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1 { break }
        }
        drain(conn, reactor: reactor)
        logLine("INFO: world \(world): instance \(name) stopped after \(instance.counters.turns) turns")
    }

    /// Stopping: GOAWAY tells the broker to send no new streams here; the open ones are served to their end
    /// (up to `drainSeconds`), then the link closes. A second signal stops at once.
    func drain(_ conn: PeerConnection, reactor: PeerReactor) {
        conn.link.goaway(reason: "instance stopping")
        let open = conn.link.openStreams
        logLine("INFO: world \(world): instance \(name) draining \(open) open stream\(open == 1 ? "" : "s")")
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGTERM)
        sigaddset(&set, SIGINT)
        var sig: Int32 = 0
        sigwait(&set, &sig)  // take the signal that started the drain, so a second one can be seen
        let deadline = Date().addingTimeInterval(Double(drainSeconds))
        // A stream the broker routed here before it read the GOAWAY is still on its way: the link stays up
        // a moment after the last stream ends, so such a stream is served, not cut.
        let settle = Date().addingTimeInterval(0.25)
        var pending = sigset_t()
        while (conn.link.openStreams > 0 || Date() < settle) && Date() < deadline {
            reactor.poll(timeoutMilliseconds: 20)
            sigpending(&pending)
            if sigismember(&pending, SIGTERM) == 1 || sigismember(&pending, SIGINT) == 1 { break }
        }
        _ = conn.flush()
        conn.close()
    }
}
