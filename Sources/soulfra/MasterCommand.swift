import ArgumentParser
import Foundation

struct Master: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Open the master control panel (and print its address).",
        discussion: """
            The panel is served by the daemon's admin listener: the worlds with live figures, a deploy form, \
            each world's scale, keys, stream health, live logs, webhook deliveries and shutdown, and usage and \
            cost over time. Sign in with the admin token (<home>/admin.token); a session cookie stands for it \
            after that. With a desktop (DISPLAY or WAYLAND_DISPLAY set) the address is opened with xdg-open.

            Example:
              soulfra master
              soulfra master --no-open      # print only (over ssh: forward the admin port first)
            """
    )

    @Flag(name: .customLong("no-open"), help: "Print the address without opening a browser.")
    var noOpen = false

    @Flag(name: .long, help: "Print as JSON.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            let status = try client.call("GET", "/admin/v1/status")
            let url = client.adminURL() + "/panel"
            if json { return printJSON(["url": url, "driver": status["driver"] ?? "", "token_file": client.homeDirectory + "/admin.token"]) }
            print("master control panel: \(url)")
            print("sign in with the admin token in \(client.homeDirectory)/admin.token")
            let env = ProcessInfo.processInfo.environment
            guard !noOpen, env["DISPLAY"] != nil || env["WAYLAND_DISPLAY"] != nil,
                  let opener = ["/usr/bin/xdg-open", "/usr/local/bin/xdg-open"].first(where: { FileManager.default.isExecutableFile(atPath: $0) }) else { return }
            let p = Process()
            p.executableURL = URL(fileURLWithPath: opener)
            p.arguments = [url]
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            if (try? p.run()) != nil { print("opened in your browser") }
        }
    }
}
