import ArgumentParser
import Foundation

struct Master: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Print the master control panel's address.",
        discussion: """
            The panel is served by the daemon's admin listener; sign in with the admin token (<home>/admin.token).

            Example:
              soulfra master
            """
    )

    @Flag(name: .long, help: "Print as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let status = try client.call("GET", "/admin/v1/status")
            let url = client.adminURL() + "/"
            if json { return printJSON(["url": url, "driver": status["driver"] ?? "", "token_file": client.homeDirectory + "/admin.token"]) }
            print("master control panel: \(url)")
            print("sign in with the admin token in \(client.homeDirectory)/admin.token")
            print("note: this version serves the admin API there; the panel's pages come with the next release")
        }
    }
}
