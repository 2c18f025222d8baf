import ArgumentParser
import Foundation

struct CORS: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cors",
        abstract: "Show or set the browser origins allowed to call a world's gateway routes.",
        discussion: """
            Browser apps call the gateway directly: their page's origin must be allowed (CORS). Preflights are \
            answered by the gateway itself; the control panel's own origin is always allowed. A world that \
            lists origins also refuses WebSockets from other pages.

            Examples:
              soulfra cors playground                                    # show
              soulfra cors playground https://app.example.com http://localhost:3000
              soulfra cors playground --clear                            # no browser origin
            """
    )

    @Argument(help: "The world.") var world: String
    @Argument(help: "Origins to allow (replacing the list): scheme://host[:port], or *.") var origins: [String] = []
    @Flag(name: .long, help: "Allow no browser origin.") var clear = false
    @Flag(name: .long, help: "Print as JSON.") var json = false
    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            guard !(clear && !origins.isEmpty) else { throw CLIError("give origins or --clear, not both", code: 2) }
            let w = origins.isEmpty && !clear
                ? try client.call("GET", "/admin/v1/worlds/\(world)")
                : try client.call("POST", "/admin/v1/worlds/\(world)/cors", body: ["allowed_origins": origins])
            if json { return printJSON(["world": world, "cors_origins": w["cors_origins"] ?? []]) }
            let list = w["cors_origins"] as? [String] ?? []
            print(list.isEmpty ? "\(world): no browser origin may call it (only the control panel's)" : "\(world): " + list.joined(separator: " "))
        }
    }
}
