import SoulfraConfig
import Foundation
import SoulfraServer

/// The host of a "host:port" setting, bracketed if it is IPv6 (for URLs in log lines).
func hostOf(_ hostPort: String) -> String {
    if case .tcp(let h, _)? = try? ServerConfig.parseHostPort(hostPort, key: "") { return h.contains(":") ? "[\(h)]" : h }
    return hostPort
}

/// One line to stderr, stamped with the wall clock.
func logLine(_ s: String) {
    let ts = ISO8601DateFormatter().string(from: Date())
    FileHandle.standardError.write(Data("[\(ts)] \(s)\n".utf8))
}

/// Says what is wrong on stderr and exits with `code` (sysexits.h).
func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data((message + "\n").utf8))
    Glibc.exit(code)
}
