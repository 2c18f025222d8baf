import ArgumentParser
import Foundation
import SoulfraConfig

/// Where the CLI finds the daemon: the home `init` made (its config, admin token and ready file), or flags
/// and environment. Every world command is a client of the admin API only.
struct ClientOptions: ParsableArguments {
    @Option(name: .long, help: "Soulfra's home: config, admin token, daemon pid and log (default: $SOULFRA_HOME or /tmp/soulfra).")
    var home: String?

    @Option(name: .long, help: "The admin API, http://host:port (default: $SOULFRA_ADMIN_URL, else the daemon `init` started).")
    var admin: String?

    @Option(name: .long, help: "The admin token (default: $SOULFRA_ADMIN_TOKEN, else <home>/admin.token).")
    var token: String?

    var homeDirectory: String { home ?? ProcessInfo.processInfo.environment["SOULFRA_HOME"] ?? "/tmp/soulfra" }
    var configPath: String { homeDirectory + "/soulfra.json" }

    /// The admin API's base URL.
    func adminURL() -> String {
        if let admin { return admin }
        if let env = ProcessInfo.processInfo.environment["SOULFRA_ADMIN_URL"] { return env }
        let cfg = (try? ServerConfig.load(path: configPath)) ?? ServerConfig()
        var host = "127.0.0.1", port = "7401"
        if let colon = cfg.adminTCP.lastIndex(of: ":") {
            host = String(cfg.adminTCP[..<colon])
            port = String(cfg.adminTCP[cfg.adminTCP.index(after: colon)...])
        }
        // The ready file holds the ports the daemon really bound (port 0 in config picks one).
        if let ready = try? String(contentsOfFile: homeDirectory + "/ready", encoding: .utf8) {
            let lines = ready.split(separator: "\n")
            if lines.count >= 4, lines[3] != "0" { port = String(lines[3]) }
        }
        return "http://\(host):\(port)"
    }

    func adminToken() throws(CLIError) -> String {
        if let token { return token }
        if let env = ProcessInfo.processInfo.environment["SOULFRA_ADMIN_TOKEN"], !env.isEmpty { return env }
        if let t = try? String(contentsOfFile: homeDirectory + "/admin.token", encoding: .utf8) {
            return t.trimmingCharacters(in: .whitespacesAndNewlines)
        }
        throw CLIError("no admin token in \(homeDirectory)/admin.token: run ./soulfra-deploy.sh init (or give --token)", code: 77)
    }

    /// One admin API call: the JSON answer, or a CLIError saying what went wrong and what to do.
    func call(_ method: String, _ path: String, body: [String: Any]? = nil) throws(CLIError) -> [String: Any] {
        let url = adminURL()
        let client = HTTPClient(base: url)
        let bytes = body.map { Array((try? JSONSerialization.data(withJSONObject: $0)) ?? Data()) }
        let response: HTTPClient.Response
        do {
            response = try client.request(method, path, headers: [("authorization", "Bearer \(try adminToken())")], body: bytes)
        } catch where error.code == 69 {
            throw CLIError("no daemon at \(url) (\(error.description)): run ./soulfra-deploy.sh init", code: 69)
        }
        let object = (try? JSONSerialization.jsonObject(with: Data(response.body))) as? [String: Any] ?? [:]
        guard (200..<300).contains(response.status) else {
            let e = object["error"] as? [String: Any]
            let message = e?["message"] as? String ?? "HTTP \(response.status): \(response.text.prefix(200))"
            throw CLIError("error: \(message)", code: Self.exitCode(status: response.status))
        }
        return object
    }

    /// Exit statuses by the API's answer (docs/operations.md, "CLI exit codes").
    static func exitCode(status: Int) -> Int32 {
        switch status {
        case 400, 422: 5
        case 401, 403: 77
        case 404: 3
        case 409: 4
        case 501: 6
        default: 70
        }
    }
}

/// Runs a command body, turning its CLIError into the message on stderr and the exit status.
func runCLI(_ body: () throws(CLIError) -> Void) {
    do { try body() } catch {
        fflush(nil)  // what was printed comes before the error
        fail(error.description, code: error.code)
    }
}

/// JSON for `--json`: sorted keys, indented.
func printJSON(_ value: Any) {
    let data = (try? JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes])) ?? Data()
    print(String(decoding: data, as: UTF8.self))
}

/// Columns padded to their widest cell.
func printTable(_ header: [String], _ rows: [[String]]) {
    var widths = header.map(\.count)
    for r in rows { for (i, c) in r.enumerated() where i < widths.count { widths[i] = max(widths[i], c.count) } }
    func line(_ cells: [String]) -> String {
        cells.enumerated().map { i, c in i == cells.count - 1 ? c : c.padding(toLength: widths[i], withPad: " ", startingAt: 0) }
            .joined(separator: "  ")
    }
    print(line(header))
    for r in rows { print(line(r)) }
}

/// "3d 4h", "12m 5s", "40s".
func duration(seconds: Int) -> String {
    if seconds >= 86_400 { return "\(seconds / 86_400)d \(seconds % 86_400 / 3600)h" }
    if seconds >= 3600 { return "\(seconds / 3600)h \(seconds % 3600 / 60)m" }
    if seconds >= 60 { return "\(seconds / 60)m \(seconds % 60)s" }
    return "\(seconds)s"
}

func bytesText(_ b: Int) -> String {
    b >= 1 << 30 ? String(format: "%.1f GiB", Double(b) / Double(1 << 30))
        : b >= 1 << 20 ? String(format: "%.1f MiB", Double(b) / Double(1 << 20)) : "\(b / 1024) KiB"
}
