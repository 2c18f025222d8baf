import ArgumentParser
import Foundation
import SoulfraConfig
import SoulfraPeer
import SoulfraServer
import SoulfraVaultStore

struct Vault: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the vault on its own, attached to a daemon's broker.",
        discussion: """
            The daemon runs a vault in its own process by default. To run it apart (its own disk, its own \
            process to restart), start the daemon with --vault-dir "" and run this next to it: it attaches \
            to the broker as a peer of kind vault, one link per broker loop, and stores every world under \
            --directory exactly as the daemon would (the same files: either can open what the other wrote, \
            never both at once — each world's LOCK is held while it is open).

            Settings come from the config file (vault.*, tokens.vault, listen.broker_unix_path or \
            listen.broker_tcp), then SOULFRA_* environment variables, then these flags. SIGINT or SIGTERM \
            stops it once the writes in flight completed.

            Example:  soulfra vault --broker /tmp/soulfra/broker.sock --directory /var/lib/soulfra/vault
            """
    )

    @Option(name: .long, help: "JSON config file (default: config/soulfra.json if present).")
    var config: String?

    @Option(name: .long, help: "The broker: a unix socket path, or host:port (default: the config's broker socket, else its TCP listener).")
    var broker: String?

    @Option(name: .long, help: "The data directory, one directory per world (default: vault.directory).")
    var directory: String?

    @Option(name: .customLong("key-directory"), help: "Where encrypted worlds' keys live, outside the data directory (default: vault.key_directory).")
    var keyDirectory: String?

    @Option(name: .customLong("encrypt"), help: "A world to encrypt at rest (repeat for several; adds to vault.encrypt_worlds).")
    var encrypt: [String] = []

    func run() throws {
        let (cfg, address) = peerSettings(config: config, broker: broker) { cfg in
            if let v = directory { cfg.vaultDirectory = v }
            if let v = keyDirectory { cfg.vaultKeyDirectory = v }
            cfg.vaultEncryptedWorlds += encrypt
            guard !cfg.vaultDirectory.isEmpty else { throw ServerConfig.Invalid(key: "vault.directory", message: "is empty: give --directory") }
            guard !cfg.vaultToken.isEmpty else { throw ServerConfig.Invalid(key: "tokens.vault", message: "is empty: the broker admits a vault by this token (SOULFRA_VAULT_TOKEN)") }
        }
        var settings = VaultSettings(directory: cfg.vaultDirectory)
        settings.segmentBytes = cfg.vault.segmentBytes
        settings.maxAgeSeconds = UInt64(cfg.vault.retentionMaxAgeSeconds)
        settings.maxBytes = UInt64(cfg.vault.retentionMaxBytes)
        settings.encryptedWorlds = Set(cfg.vaultEncryptedWorlds)
        settings.keyDirectory = cfg.vaultKeyDirectory
        var options = VaultProcess.Options(broker: address, token: cfg.vaultToken, settings: settings)
        options.limits = cfg.vault
        options.maxFrameBytes = cfg.broker.maxFrameBytes
        let set = blockStopSignals()
        let process: VaultProcess
        do {
            process = try VaultProcess(options) { line in logLine(line) }
        } catch {
            fail("soulfra vault: cannot start: \(error)", code: 71)
        }
        let signals = set
        Thread {
            var s = signals
            var sig: Int32 = 0
            sigwait(&s, &sig)
            logLine("received signal \(sig): stopping the vault")
            process.stop()
        }.start()
        process.run()
        logLine("vault stopped")
    }
}
