import ArgumentParser
import Foundation

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the daemon, or one world: instances with health, CPU and memory, keys, endpoints, recent errors.",
        discussion: """
            Examples:
              soulfra status                 # the daemon: driver, worlds, instances, uptime
              soulfra status playground      # one world
              soulfra status playground --json
            """
    )

    @Argument(help: "A world (none: the daemon).")
    var world: String?

    @Flag(name: .long, help: "Print the answer as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            guard let world else {
                let s = try client.call("GET", "/admin/v1/status")
                if json { return printJSON(s) }
                print("daemon:    \(client.adminURL()) (up \(duration(seconds: s["uptime_seconds"] as? Int ?? 0)))")
                print("driver:    \(s["driver"] ?? "?")")
                print("gateway:   \(s["gateway"] ?? "?")")
                print("worlds:    \(s["worlds"] ?? 0), instances running: \(s["instances"] ?? 0)")
                print("templates: \((s["templates"] as? [String] ?? []).joined(separator: ", "))")
                return
            }
            let w = try client.call("GET", "/admin/v1/worlds/\(world)")
            if json { return printJSON(w) }
            print("\(world): \(w["type"] ?? "") world, \(w["state"] ?? ""), \(w["instances_ready"] ?? 0)/\(w["instances_desired"] ?? 0) instances ready "
                  + "(\(w["driver"] ?? "") driver, region \(w["region"] ?? ""), stream \(w["stream"] ?? ""), up \(duration(seconds: w["uptime_seconds"] as? Int ?? 0)))")
            print("endpoint: \(w["endpoint"] ?? "")/messages")
            print("agents:   \((w["agents"] as? [String] ?? []).joined(separator: ", ")) (runtime \(w["runtime"] ?? ""))")
            print("viewers:  \(w["viewers"] ?? 0) in \(w["rooms"] ?? 0) room\((w["rooms"] as? Int) == 1 ? "" : "s")")
            print("")
            let instances = w["instances"] as? [[String: Any]] ?? []
            printTable(["INSTANCE", "HEALTH", "PID/ID", "CPU", "MEMORY", "UP"], instances.map { i in
                let started = (i["started_at_ms"] as? Int).map { Int(Date().timeIntervalSince1970) - $0 / 1000 } ?? 0
                return ["\(i["id"] ?? "")", "\(i["health"] ?? "")" + ((i["exit_code"] as? Int).map { " (\($0))" } ?? ""), "\(i["handle"] ?? "")",
                        (i["cpu_seconds"] as? Double).map { String(format: "%.2f s", $0) } ?? "-",
                        (i["memory_bytes"] as? Int).map(bytesText) ?? "-", duration(seconds: max(0, started))]
            })
            print("")
            let keys = w["keys"] as? [[String: Any]] ?? []
            printTable(["KEY", "PREFIX", "STATE", "PERMISSIONS"], keys.map { k in
                ["\(k["id"] ?? "")", "\(k["prefix"] ?? "")", "\(k["state"] ?? "")", (k["permissions"] as? [String] ?? []).joined(separator: ",")]
            })
            let errors = w["recent_errors"] as? [String] ?? []
            if !errors.isEmpty {
                print("\nrecent errors:")
                for e in errors { print("  \(e)") }
            }
        }
    }
}
