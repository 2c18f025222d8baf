import Foundation
import SoulfraConfig
import SoulfraPeer

/// What the peer processes (`soulfra world`, `vault`, `runtime`) start from: the config file (`--config`, else
/// config/soulfra.json when present), then `SOULFRA_*` variables, then the command's own flags (`adjust`),
/// validated; and the broker to attach to. A problem exits with EX_CONFIG, naming the key.
func peerSettings(config: String?, broker: String?, adjust: (inout ServerConfig) throws -> Void) -> (ServerConfig, PeerAddress) {
    var cfg = ServerConfig()
    let path = config ?? (FileManager.default.fileExists(atPath: "config/soulfra.json") ? "config/soulfra.json" : nil)
    do {
        if let path { cfg = try ServerConfig.load(path: path) }
        try cfg.applyEnvironment(ProcessInfo.processInfo.environment)
        try adjust(&cfg)
        try cfg.validate()
        return (cfg, try brokerAddress(broker, cfg))
    } catch {
        fail("\(error)", code: 78)  // EX_CONFIG
    }
}

/// Blocks SIGINT and SIGTERM on every thread to come (a `sigwait` takes them) and ignores SIGPIPE.
func blockStopSignals() -> sigset_t {
    var set = sigset_t()
    sigemptyset(&set)
    sigaddset(&set, SIGINT)
    sigaddset(&set, SIGTERM)
    pthread_sigmask(SIG_BLOCK, &set, nil)
    signal(SIGPIPE, SIG_IGN)
    return set
}

/// A `--broker` value (a socket path, or host:port), else the config's broker socket, else its TCP listener.
func brokerAddress(_ flag: String?, _ cfg: ServerConfig) throws -> PeerAddress {
    if let b = flag {
        if b.contains("/") { return .unix(path: b) }
        guard case .tcp(let host, let port) = try ServerConfig.parseHostPort(b, key: "--broker") else {
            throw ServerConfig.Invalid(key: "--broker", message: "expected a socket path or host:port")
        }
        return .tcp(host: host, port: port)
    }
    if !cfg.brokerUnixPath.isEmpty { return .unix(path: cfg.brokerUnixPath) }
    guard case .tcp(let host, let port) = try ServerConfig.parseHostPort(cfg.brokerTCP, key: "listen.broker_tcp") else {
        throw ServerConfig.Invalid(key: "listen.broker_tcp", message: "expected host:port")
    }
    return .tcp(host: host, port: port)
}
