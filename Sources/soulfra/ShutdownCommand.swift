import ArgumentParser
import Foundation

struct Shutdown: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Shut a world down: its keys stop working, its instances drain and stop; its vault is kept.",
        discussion: """
            Examples:
              soulfra shutdown playground
              soulfra shutdown playground --no-wait

            --purge removes the world's vault (every event, and its key) once the instances have stopped; it \
            cannot be undone.
            """
    )

    @Argument(help: "The world.")
    var world: String

    @Flag(name: .long, help: "Remove the world's vault as well.")
    var purge = false

    @Flag(inversion: .prefixedNo, help: "Wait until the instances have stopped and the world is gone.")
    var wait = true

    @Option(name: .long, help: "Seconds to wait at most.")
    var timeout: Double = 60

    @Flag(name: .long, help: "Print the answer as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let started = Date()
            var answer = try client.call("DELETE", "/admin/v1/worlds/\(world)" + (purge ? "?purge=true" : ""))
            if wait {
                while true {
                    do throws(CLIError) {
                        _ = try client.call("GET", "/admin/v1/worlds/\(world)")
                    } catch where error.code == 3 {
                        answer["state"] = "gone"
                        break
                    }
                    guard Date().timeIntervalSince(started) < timeout else {
                        throw CLIError("\(world) is still stopping after \(Int(timeout)) s: see `soulfra status \(world)`", code: 75)
                    }
                    usleep(100_000)
                }
            }
            if json { return printJSON(answer) }
            let vault = purge ? "vault purged" : "vault kept"
            print(wait ? "\(world): shut down in \(String(format: "%.2f", Date().timeIntervalSince(started))) s; keys revoked, \(vault)"
                       : "\(world): shutting down; keys revoked, \(purge ? "vault purged once its instances stop" : vault)")
        }
    }
}
