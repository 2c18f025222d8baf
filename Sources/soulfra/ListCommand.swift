import ArgumentParser
import Foundation

struct List: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "List the worlds: type, instances ready/desired, driver, region, stream mode, uptime.",
        discussion: """
            Examples:
              soulfra list
              soulfra list --json | jq '.worlds[].name'
            """
    )

    @Flag(name: .long, help: "Print the worlds as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let answer = try client.call("GET", "/admin/v1/worlds")
            let worlds = answer["worlds"] as? [[String: Any]] ?? []
            if json { return printJSON(answer) }
            guard !worlds.isEmpty else {
                print("no worlds yet: soulfra deploy --type kids --name playground")
                return
            }
            printTable(["NAME", "TYPE", "STATE", "READY", "DRIVER", "REGION", "STREAM", "USERS", "VIEWERS", "AGENTS", "UPTIME"], worlds.map { w in
                ["\(w["name"] ?? "")", "\(w["type"] ?? "")", "\(w["state"] ?? "")", "\(w["instances_ready"] ?? 0)/\(w["instances_desired"] ?? 0)",
                 "\(w["driver"] ?? "")", "\(w["region"] ?? "")", "\(w["stream"] ?? "")", "\(w["users"] ?? 0)", "\(w["viewers"] ?? 0)", (w["agents"] as? [String] ?? []).joined(separator: ","),
                 duration(seconds: w["uptime_seconds"] as? Int ?? 0)]
            })
        }
    }
}
