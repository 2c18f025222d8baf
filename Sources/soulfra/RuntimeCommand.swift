import ArgumentParser
import Foundation
import SoulfraConfig
import SoulfraPeer
import SoulfraRuntime

struct Runtime: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run runtime workers on their own, attached to a daemon's broker (to scale AI work out).",
        discussion: """
            The daemon runs runtime.workers worker threads itself (2 by default). For more, or on another \
            machine, run this: each worker attaches to every broker loop as a peer of kind runtime (over the \
            unix socket, or TCP for a remote daemon), takes agent requests from instances and streams the \
            replies back token by token (docs/protocol.md, Runtime streams). A lost link is dialled again \
            with backoff. SIGINT or SIGTERM stops the workers (replies in progress end).

            Profiles: balanced (8 replies at once per worker, 64 waiting) and enterprise (32 at once, 256 \
            waiting; enterprise requests go first). Backends: builtin (the persona engine; no model, no \
            network) and openai, any OpenAI-compatible /v1/chat/completions with streaming (llama.cpp server, \
            vLLM, Ollama, OpenAI): runtime.openai_base_url / SOULFRA_OPENAI_BASE_URL, runtime.openai_api_key / \
            OPENAI_API_KEY, runtime.openai_model / SOULFRA_OPENAI_MODEL.

            Example:  soulfra runtime --broker 127.0.0.1:7400 --workers 4 --profile enterprise
            """
    )

    @Option(name: .long, help: "JSON config file (default: config/soulfra.json if present).")
    var config: String?

    @Option(name: .long, help: "The broker: a unix socket path, or host:port (default: the config's broker socket, else its TCP listener).")
    var broker: String?

    @Option(name: .long, help: "Worker threads (default: runtime.workers, at least 1).")
    var workers: Int?

    @Option(name: .long, help: "balanced or enterprise (default: runtime.profile).")
    var profile: String?

    func run() throws {
        let (cfg, address) = peerSettings(config: config, broker: broker) { cfg in
            if let v = workers { cfg.runtimeWorkers = v }
            if let v = profile { cfg.runtimeProfile = v }
            guard cfg.runtimeWorkers >= 1 else { throw ServerConfig.Invalid(key: "--workers", message: "must be at least 1") }
            guard !cfg.runtimeToken.isEmpty else {
                throw ServerConfig.Invalid(key: "tokens.runtime", message: "is empty: the broker admits a runtime worker by this token (SOULFRA_RUNTIME_TOKEN)")
            }
        }
        var set = blockStopSignals()
        let threads = RuntimeThreads()
        var o = RuntimeThreads.Options(broker: address, token: cfg.runtimeToken, workers: cfg.runtimeWorkers,
                                       profile: RuntimeProfile.named(cfg.runtimeProfile) ?? .balanced)
        o.maxFrameBytes = cfg.broker.maxFrameBytes
        o.openai = cfg.openAISettings.map { OpenAISettings(baseURL: $0.baseURL, apiKey: $0.key, model: $0.model) }
        threads.start(o) { line in logLine(line) }
        var sig: Int32 = 0
        sigwait(&set, &sig)
        logLine("received signal \(sig): stopping the runtime workers")
        threads.stop()
        threads.wait()
        let c = threads.counters
        logLine("runtime stopped: \(c.replies) replies, \(c.tokens) tokens, \(c.cancelled) cancelled")
    }
}
