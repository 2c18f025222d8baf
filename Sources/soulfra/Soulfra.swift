import ArgumentParser

@main
struct Soulfra: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "soulfra",
        abstract: "Deploy and run isolated AI worlds behind one gateway.",
        discussion: """
            The daemon (`soulfra serve`) runs, on one io_uring loop per core, the HTTP/2 gateway apps talk to
            (HTTP/1.1, h2c and TLS; API keys, quotas, balancing across a world's instances; docs/api.md) and
            the broker that routes World ↔ Runtime ↔ Vault frames. Instances, runtimes and vaults attach to
            the broker over its unix socket or TCP and speak the wire protocol in docs/protocol.md.
            """,
        subcommands: [Init.self, Deploy.self, List.self, Status.self, Scale.self, Logs.self, Master.self, Shutdown.self, Keys.self, Usage.self, CORS.self, Webhooks.self, Down.self,
                      Serve.self, World.self, Vault.self, Runtime.self, Probe.self, Interfaces.self]
    )
}
