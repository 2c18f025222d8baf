import ArgumentParser
import Foundation

struct Usage: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Usage and cost per world: requests, interactions, bytes, tokens, instance time.",
        discussion: """
            Figures come from the roll-ups in control.db (at most a few seconds behind the gateway) and cost \
            from the config's price table (pricing). Monthly interaction budgets count from the 1st (UTC).

            Examples:
              soulfra usage                          # every world, this month
              soulfra usage playground --by key      # one world, per key (prefix only)
              soulfra usage --since 7d --by day
              soulfra usage boardroom --by agent     # replies and tokens per agent (the world's whole history)
              soulfra usage --json | jq .total.cost
            """
    )

    @Argument(help: "Only this world.")
    var world: String?

    @Option(name: .long, help: "From this day on: 2026-11-01, or days back (7d; 0d is today). Default: the 1st of this month.")
    var since: String?

    @Option(name: .long, help: "Break each world down by key, day or agent.")
    var by: String?

    @Flag(name: .long, help: "Print the answer as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            var query: [String] = []
            if let world { query.append("world=\(escape(world))") }
            if let since { query.append("since=\(escape(since))") }
            if let by { query.append("by=\(escape(by))") }
            let path = "/admin/v1/usage" + (query.isEmpty ? "" : "?" + query.joined(separator: "&"))
            let answer = try client.call("GET", path)
            if json { return printJSON(answer) }
            let currency = answer["currency"] as? String ?? ""
            let worlds = answer["worlds"] as? [[String: Any]] ?? []
            guard !worlds.isEmpty else {
                print("no usage since \(answer["since"] ?? "")" + (world.map { " for \($0)" } ?? ""))
                return
            }
            func n(_ o: [String: Any], _ k: String) -> String { "\(o[k] ?? 0)" }
            func cost(_ o: [String: Any]) -> String { String(format: "%.4f", (o["cost"] as? [String: Any])?["total"] as? Double ?? o["cost"] as? Double ?? 0) }
            print("since \(answer["since"] ?? "") · cost in \(currency)")
            printTable(["WORLD", "TYPE", "REQUESTS", "INTERACTIONS", "BYTES IN", "BYTES OUT", "TOKENS IN", "TOKENS OUT", "INSTANCE-S", "COST"], worlds.map { w in
                ["\(w["world"] ?? "")", "\(w["template"] ?? "")", n(w, "requests"), n(w, "interactions"), n(w, "bytes_in"), n(w, "bytes_out"),
                 n(w, "tokens_in"), n(w, "tokens_out"), String(format: "%.0f", w["instance_seconds"] as? Double ?? 0), cost(w)]
            })
            let total = answer["total"] as? [String: Any] ?? [:]
            print("total: \(n(total, "requests")) requests, \(n(total, "interactions")) interactions, cost \(cost(total)) \(currency)")
            for w in worlds {
                if let keys = w["keys"] as? [[String: Any]] {
                    print("\n\(w["world"] ?? "") by key")
                    printTable(["KEY", "REQUESTS", "INTERACTIONS", "BYTES IN", "BYTES OUT", "TOKENS IN", "TOKENS OUT", "COST"], keys.map { k in
                        ["\(k["prefix"] ?? "")", n(k, "requests"), n(k, "interactions"), n(k, "bytes_in"), n(k, "bytes_out"), n(k, "tokens_in"), n(k, "tokens_out"), cost(k)]
                    })
                } else if let days = w["days"] as? [[String: Any]] {
                    print("\n\(w["world"] ?? "") by day")
                    printTable(["DAY", "REQUESTS", "INTERACTIONS", "TOKENS IN", "TOKENS OUT", "INSTANCE-S", "COST"], days.map { d in
                        ["\(d["day"] ?? "")", n(d, "requests"), n(d, "interactions"), n(d, "tokens_in"), n(d, "tokens_out"),
                         String(format: "%.0f", d["instance_seconds"] as? Double ?? 0), cost(d)]
                    })
                } else if let agents = w["agents"] as? [[String: Any]] {
                    print("\n\(w["world"] ?? "") by agent")
                    printTable(["AGENT", "REPLIES", "TOKENS IN", "TOKENS OUT"], agents.map { a in
                        ["\(a["agent"] ?? "")", n(a, "replies"), n(a, "tokens_in"), n(a, "tokens_out")]
                    })
                }
            }
        }
    }
}
