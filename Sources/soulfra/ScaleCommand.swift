import ArgumentParser
import Foundation

struct Scale: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Change how many instances a world runs (stopped ones drain their open streams first).",
        discussion: """
            Examples:
              soulfra scale playground --instances 5
              soulfra scale playground --instances 1 --wait

            The template's scaling.max_instances is the ceiling (exit status 5 above it).
            """
    )

    @Argument(help: "The world.")
    var world: String

    @Option(name: .long, help: "Instances wanted.")
    var instances: Int

    @Flag(name: .long, help: "Wait until exactly that many instances are ready.")
    var wait = false

    @Option(name: .long, help: "Seconds --wait waits at most.")
    var timeout: Double = 60

    @Flag(name: .long, help: "Print the world as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let started = Date()
            var w = try client.call("POST", "/admin/v1/worlds/\(world)/scale", body: ["instances": instances])
            if wait {
                while (w["instances_ready"] as? Int) != instances || (w["instances_running"] as? Int) != instances {
                    guard Date().timeIntervalSince(started) < timeout else {
                        throw CLIError("\(world) has \(w["instances_ready"] ?? 0) ready instances, not \(instances), after \(Int(timeout)) s: see `soulfra status \(world)`", code: 75)
                    }
                    usleep(100_000)
                    w = try client.call("GET", "/admin/v1/worlds/\(world)")
                }
            }
            if json { return printJSON(w) }
            print("\(world): \(instances) instance\(instances == 1 ? "" : "s") wanted, \(w["instances_ready"] ?? 0) ready"
                  + (wait ? " (\(String(format: "%.2f", Date().timeIntervalSince(started))) s)" : ""))
        }
    }
}
