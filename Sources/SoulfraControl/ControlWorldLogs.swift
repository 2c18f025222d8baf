import Foundation
import SoulfraLimits

/// Logs kept per world beside its instances' (`<instances>/<world>/`): `gateway.log`, the gateway's access log,
/// and `control.log`, what the control plane did to the world. `soulfra logs` and the panel read them with the
/// instances' logs (instance `gateway`, `control`); they rotate with them (10 MiB).
extension ControlService {
    /// Writes the access entries the loops published since the last pass, a line each, for worlds that exist.
    func writeAccessLog(worlds: Set<String>) {
        guard let entries = readAccessLog?(), !entries.isEmpty else { return }
        var byWorld: [String: String] = [:]
        for e in entries where worlds.contains(e.world) { byWorld[e.world, default: ""] += Self.accessLine(e) + "\n" }
        for (world, text) in byWorld { append(world: world, file: "gateway.log", text) }
    }

    /// `[2026-11-30T03:22:04Z] INFO: POST /v1/worlds/playground/messages 200 812.3ms out=1234B key=sk-slfr_kids_6Fq0v… id=req_1_42 HTTP/2`
    /// — 4xx are WARN, 5xx ERROR; an `access_token` in the target is cut to its visible prefix.
    static func accessLine(_ e: AccessEntry) -> String {
        let level = e.status >= 500 ? "ERROR" : e.status >= 400 ? "WARN" : "INFO"
        let ms = String(format: "%.1f", Double(e.micros) / 1000)
        let key = e.key.isEmpty ? "-" : e.key
        return "[\(isoSeconds(Int64(e.unixSeconds) * 1000))] \(level): \(e.method) \(redacted(e.target)) \(e.status) \(ms)ms out=\(e.bytesOut)B key=\(key) id=\(e.requestID) \(e.protocolName)"
    }

    /// The target with every `access_token` value cut to the key's visible prefix (`sk-slfr_kids_6Fq0vZ…`).
    static func redacted(_ target: String) -> String {
        guard let q = target.firstIndex(of: "?"), target[q...].contains("access_token=") else { return target }
        let pairs = target[target.index(after: q)...].split(separator: "&", omittingEmptySubsequences: false).map { pair -> String in
            guard pair.hasPrefix("access_token=") else { return String(pair) }
            return "access_token=" + visiblePrefix(pair.dropFirst("access_token=".count))
        }
        return target[..<q] + "?" + pairs.joined(separator: "&")
    }

    /// A key's visible prefix, as `APIKey.prefix` shows it: up to its second `_` and six more characters, then `…`.
    static func visiblePrefix(_ key: Substring) -> String {
        var underscores = 0, end = key.startIndex
        while end < key.endIndex {
            if key[end] == "_" { underscores += 1 }
            end = key.index(after: end)
            if underscores == 2 { break }
        }
        return String(key[..<end].prefix(24)) + String(key[end...].prefix(6)) + "…"
    }

    /// A line in the world's `control.log` (and the daemon's log): what the control plane did, or an alert.
    func note(world: String, _ message: String, level: String = "INFO") {
        log((level == "ERROR" ? "error_alert " : "") + "world \(world): \(message)")
        append(world: world, file: "control.log", "[\(Self.isoSeconds(Self.now()))] \(level): \(message)\n")
    }

    func append(world: String, file: String, _ text: String) {
        let dir = Self.instanceDirectory(settings.directory) + "/" + world
        try? FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o750])
        let fd = open(dir + "/" + file, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0o640)
        guard fd >= 0 else { return }
        defer { close(fd) }
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    static func isoSeconds(_ ms: Int64) -> String {
        let c = utcCalendar.dateComponents([.year, .month, .day, .hour, .minute, .second], from: Date(timeIntervalSince1970: Double(ms) / 1000))
        return String(format: "%04d-%02d-%02dT%02d:%02d:%02dZ", c.year ?? 1970, c.month ?? 1, c.day ?? 1, c.hour ?? 0, c.minute ?? 0, c.second ?? 0)
    }
}
