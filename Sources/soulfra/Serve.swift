import SoulfraConfig
import ArgumentParser
import Foundation
import SoulfraServer

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the daemon: the gateway, the broker and the admin endpoints.",
        discussion: """
            Settings come from, in order: built-in defaults, the config file (config/soulfra.json when it \
            exists, or --config), SOULFRA_* environment variables, then these flags. Every value is checked \
            at start-up; an error names the key and its allowed range.

            Keys and tokens are re-read when the keys file (--keys-file, or the config file) changes, polled \
            four times a second, and on SIGHUP; they are swapped in atomically on every loop (a revoked key is \
            refused from the next request and its open streams end). Other settings need a restart.

            SIGINT or SIGTERM starts a graceful shutdown: HTTP/2 clients and peers get GOAWAY, open requests \
            and streams get up to broker.shutdown_drain_milliseconds to finish, then connections close and the \
            process exits 0. A second signal exits at once.

            Environment: SOULFRA_BROKER_UNIX, SOULFRA_BROKER_TCP, SOULFRA_RUNTIME_TOKEN, SOULFRA_VAULT_TOKEN, \
            SOULFRA_GATEWAY_TOKEN, SOULFRA_ADMIN_TOKEN, SOULFRA_ADMIN_TCP, SOULFRA_GATEWAY_TCP, SOULFRA_GATEWAY_TLS, \
            SOULFRA_KEYS_FILE, SOULFRA_LOOPS, SOULFRA_STATS_INTERVAL_MILLISECONDS, SOULFRA_VAULT_DIR, SOULFRA_CONTROL_DIR, \
            SOULFRA_DRIVER, SOULFRA_TEMPLATES_DIR.

            The control plane (control.directory, /tmp/soulfra/control by default) keeps worlds, keys and \
            instances in SQLite and serves the admin API the CLI uses (docs/api.md); `soulfra init` sets it up.

            The vault runs in the daemon by default, storing every world's events under vault.directory \
            (/tmp/soulfra/vault; set it to a real disk for production). It needs tokens.vault.
            """
    )

    @Option(name: .long, help: "JSON config file (default: config/soulfra.json if present).")
    var config: String?

    @Option(name: .customLong("broker-unix"), help: "Unix socket path for local peers (\"\" disables).")
    var brokerUnix: String?

    @Option(name: .customLong("broker-tcp"), help: "TCP host:port for remote peers (\"\" disables; port 0 picks one).")
    var brokerTCP: String?

    @Option(name: .customLong("admin-tcp"), help: "Admin endpoints host:port (/healthz, /readyz, /metrics; \"\" disables).")
    var adminTCP: String?

    @Option(name: .customLong("gateway-tcp"), help: "Gateway cleartext listener host:port, HTTP/1.1 and h2c (\"\" disables; port 0 picks one).")
    var gatewayTCP: String?

    @Option(name: .customLong("gateway-tls"), help: "Gateway TLS listener host:port, ALPN h2 and http/1.1 (\"\" disables; port 0 picks one).")
    var gatewayTLS: String?

    @Option(name: .customLong("keys-file"), help: "JSON file of API keys ({\"keys\": [...]}), re-read whenever it changes.")
    var keysFile: String?

    @Option(name: .customLong("loops"), help: "Broker loops, one thread and ring each (0: one per CPU).")
    var loops: Int?

    @Option(name: .customLong("stats-interval-ms"), help: "Print a broker summary line to stderr at this interval (0: off).")
    var statsInterval: UInt32?

    @Option(name: .customLong("ready-file"), help: "Write the bound TCP port here once listening (for scripts and tests).")
    var readyFile: String?

    @Option(name: .customLong("control-dir"), help: "The control plane's directory: worlds, keys, instances (\"\": no control plane; worlds come from the config's keys and tokens).")
    var controlDir: String?

    @Option(name: .customLong("vault-dir"), help: "The vault's data directory, one directory per world (\"\": no vault in this process; run `soulfra vault` instead).")
    var vaultDir: String?

    func run() throws {
        let (cfg, fromFile) = settings()
        try Daemon(config: cfg, fromFile: fromFile, configPath: configPath, readyFile: readyFile).run()
    }

    /// The config file named with --config, or config/soulfra.json when it exists.
    var configPath: String? {
        config ?? (FileManager.default.fileExists(atPath: "config/soulfra.json") ? "config/soulfra.json" : nil)
    }

    /// Defaults, the config file, the environment, then these flags, validated; and the settings before the
    /// flags (what a reload compares against). A problem exits with EX_CONFIG.
    func settings() -> (ServerConfig, ServerConfig) {
        var cfg = ServerConfig()
        var fromFile = cfg  // file + environment, without flags: what SIGHUP compares a reload against
        let env = ProcessInfo.processInfo.environment
        do {
            if let path = configPath { cfg = try ServerConfig.load(path: path) }
            try cfg.applyEnvironment(env)
            fromFile = cfg
            if let v = brokerUnix { cfg.brokerUnixPath = v }
            if let v = brokerTCP { cfg.brokerTCP = v }
            if let v = statsInterval { cfg.statsIntervalMilliseconds = v }
            if let v = loops { cfg.loopCount = v }
            if let v = adminTCP { cfg.adminTCP = v }
            if let v = gatewayTCP { cfg.gatewayTCP = v }
            if let v = gatewayTLS { cfg.gatewayTLS = v }
            if let v = keysFile { cfg.keysFile = v }
            if let v = vaultDir { cfg.vaultDirectory = v }
            if let v = controlDir { cfg.controlDirectory = v }
            try cfg.loadKeysFile()
            try cfg.validate()
        } catch {
            fail(error.description, code: 78)  // EX_CONFIG
        }
        return (cfg, fromFile)
    }
}
