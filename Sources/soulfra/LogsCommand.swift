import ArgumentParser
import Foundation

struct Logs: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show a world's logs: all its instances interleaved, each line prefixed with its instance.",
        discussion: """
            Examples:
              soulfra logs playground                   # the last 100 lines
              soulfra logs playground -f                # then follow new lines (Ctrl-C to stop)
              soulfra logs playground -n 20 --since 10m --filter level=warn
              soulfra logs playground --filter instance=playground-2 --filter contains=user

            Filters: level=debug|info|warn|error (that level and above), instance=<id>, contains=<text>.
            --since takes 90s, 10m, 2h, 1d or a time such as 2026-11-30T12:00:00Z.
            """
    )

    @Argument(help: "The world.")
    var world: String

    @Flag(name: .shortAndLong, help: "Follow: print new lines as they are written.")
    var follow = false

    @Option(name: [.customShort("n"), .long], help: "How many recent lines first.")
    var lines = 100

    @Option(name: .long, help: "Only lines from this time on (90s, 10m, 2h, 1d, or an ISO 8601 time).")
    var since: String?

    @Option(name: .long, help: "level=…, instance=… or contains=… (repeat for several).")
    var filter: [String] = []

    @Flag(name: .long, help: "One JSON object per line.")
    var json = false

    @OptionGroup var client: ClientOptions

    func run() {
        runCLI { () throws(CLIError) in
            var query = ["lines=\(lines)"]
            if let since { query.append("since=\(escape(since))") }
            for f in filter {
                let kv = f.split(separator: "=", maxSplits: 1).map(String.init)
                guard kv.count == 2, ["level", "instance", "contains"].contains(kv[0]) else {
                    throw CLIError("--filter takes level=…, instance=… or contains=…, got \"\(f)\"", code: 5)
                }
                query.append("\(kv[0])=\(escape(kv[1]))")
            }
            let path = "/admin/v1/worlds/\(world)/logs?" + query.joined(separator: "&")
            guard follow else {
                let answer = try client.call("GET", path)
                for l in answer["lines"] as? [[String: Any]] ?? [] { show(l) }
                return
            }
            // Follow: check the world first (a clear error), then read the event stream until it ends.
            _ = try client.call("GET", "/admin/v1/worlds/\(world)")
            var pending = ""
            let response = try HTTPClient(base: client.adminURL()).request(
                "GET", path + "&follow=1", headers: [("authorization", "Bearer \(try client.adminToken())"), ("accept", "text/event-stream")],
                timeoutSeconds: 86_400 * 365) { bytes in
                pending += String(decoding: bytes, as: UTF8.self)
                while let end = pending.range(of: "\n\n") {
                    let event = pending[..<end.lowerBound]
                    pending = String(pending[end.upperBound...])
                    for line in event.split(separator: "\n") where line.hasPrefix("data: ") {
                        if let o = (try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8))) as? [String: Any] { show(o) }
                    }
                }
                return true
            }
            if response.status != 200 { throw CLIError("following the logs got HTTP \(response.status)", code: ClientOptions.exitCode(status: response.status)) }
        }
    }

    func show(_ l: [String: Any]) {
        if json {
            let data = (try? JSONSerialization.data(withJSONObject: l, options: [.sortedKeys, .withoutEscapingSlashes])) ?? Data()
            print(String(decoding: data, as: UTF8.self))
        } else {
            print("\(l["instance"] ?? "") | \(l["text"] ?? "")")
        }
        if follow { fflush(nil) }  // a follower's lines go out as they come, also into a pipe
    }
}

/// A query parameter's value, percent-encoded.
func escape(_ s: String) -> String {
    s.addingPercentEncoding(withAllowedCharacters: .alphanumerics.union(CharacterSet(charactersIn: "-._~:"))) ?? s
}
