import Foundation
import Histogram
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet

/// Reads a server process's RSS and CPU from /proc, to report memory and CPU per frame.
struct ProcessStats: Sendable {
    let pid: Int32

    /// Resident set size in KiB (VmRSS), or nil if the process is gone.
    var rssKiB: Int? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8) else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix("VmRSS:") {
            return Int(line.split(whereSeparator: { $0 == " " || $0 == "\t" })[1])
        }
        return nil
    }

    /// utime + stime of the process and its reaped children, in microseconds.
    var cpuMicroseconds: UInt64? {
        guard let s = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let close = s.lastIndex(of: ")") else { return nil }
        // Fields after the command name; utime is field 14, stime 15, cutime 16, cstime 17 (1-based).
        let f = s[s.index(after: close)...].split(separator: " ")
        guard f.count > 14, let ut = UInt64(f[11]), let st = UInt64(f[12]), let cut = UInt64(f[13]), let cst = UInt64(f[14]) else {
            return nil
        }
        let hz = UInt64(sysconf(Int32(_SC_CLK_TCK)))
        return (ut + st + cut + cst) * 1_000_000 / hz
    }
}

/// Latency histogram in nanoseconds.
struct Latency {
    var h = Histogram<UInt64>(highestTrackableValue: 60_000_000_000, numberOfSignificantValueDigits: .three)

    mutating func record(_ ns: UInt64) { _ = h.record(max(1, ns)) }
    mutating func merge(_ o: Latency) { h.add(o.h) }
    var count: UInt64 { h.totalCount }
    func micros(_ p: Double) -> Double { count == 0 ? 0 : Double(h.valueAtPercentile(p)) / 1_000 }
}

/// One scenario's outcome: printed as a table, then one `RESULT` line for scripts.
struct Report {
    var scenario: String
    var target: String
    var seconds: Double
    var frames: UInt64
    var bytes: UInt64
    var latency: Latency
    /// "rate" latency is at a fixed offered load; "saturation" is queueing at full speed (not for comparison).
    var latencyKind: String
    var serverRSSKiB: Int?
    var serverCPUMicros: UInt64?
    var extra: [(String, String)] = []

    var framesPerSecond: Double { seconds > 0 ? Double(frames) / seconds : 0 }
    var megabytesPerSecond: Double { seconds > 0 ? Double(bytes) / seconds / 1e6 : 0 }
    var cpuPerFrame: Double? { serverCPUMicros.map { frames > 0 ? Double($0) / Double(frames) : 0 } }

    func print() {
        func f(_ v: Double, _ d: Int = 1) -> String { String(format: "%.\(d)f", v) }
        var rows: [(String, String)] = [
            ("scenario", scenario), ("target", target), ("duration_s", f(seconds, 2)),
            ("frames", "\(frames)"), ("frames/s", f(framesPerSecond, 0)), ("MB/s", f(megabytesPerSecond, 2)),
            ("latency", latencyKind),
            ("p50 µs", f(latency.micros(50))), ("p99 µs", f(latency.micros(99))), ("p99.9 µs", f(latency.micros(99.9))),
            ("samples", "\(latency.count)"),
        ]
        if let r = serverRSSKiB { rows.append(("server RSS KiB", "\(r)")) }
        if let c = cpuPerFrame { rows.append(("server CPU µs/frame", f(c, 3))) }
        rows += extra
        let w = rows.map(\.0.count).max() ?? 10
        Swift.print(String(repeating: "-", count: w + 24))
        for (k, v) in rows { Swift.print(k.padding(toLength: w, withPad: " ", startingAt: 0) + " | " + v) }
        Swift.print(String(repeating: "-", count: w + 24))
        var line = "RESULT \(scenario) target=\(target) frames_per_sec=\(f(framesPerSecond, 0)) mb_per_sec=\(f(megabytesPerSecond, 2))"
        line += " p50_us=\(f(latency.micros(50))) p99_us=\(f(latency.micros(99))) p999_us=\(f(latency.micros(99.9))) latency=\(latencyKind)"
        if let r = serverRSSKiB { line += " server_rss_kib=\(r)" }
        if let c = cpuPerFrame { line += " cpu_us_per_frame=\(f(c, 3))" }
        for (k, v) in extra { line += " \(k.replacingOccurrences(of: " ", with: "_"))=\(v.replacingOccurrences(of: " ", with: "_"))" }
        Swift.print(line)
    }
}

/// Runs closures on their own threads and returns their results in order.
func onThreads<T: Sendable>(_ bodies: [@Sendable () -> T]) -> [T] {
    let results = ResultBox<T>(count: bodies.count)
    let group = DispatchGroup()
    for (i, body) in bodies.enumerated() {
        group.enter()
        let t = Thread {
            results.set(i, body())
            group.leave()
        }
        t.stackSize = 4 << 20
        t.start()
    }
    group.wait()
    return results.values()
}

final class ResultBox<T: Sendable>: @unchecked Sendable {
    private var items: [T?]
    private let lock = NSLock()
    init(count: Int) { items = Array(repeating: nil, count: count) }
    func set(_ i: Int, _ v: T) { lock.lock(); items[i] = v; lock.unlock() }
    func values() -> [T] { lock.lock(); defer { lock.unlock() }; return items.map { $0! } }
}

/// Writes the monotonic send time into the first 8 bytes of a payload.
@inline(__always) func stamp(_ p: UnsafeMutableRawBufferPointer, _ now: UInt64) {
    p.storeBytes(of: now, toByteOffset: 0, as: UInt64.self)
}

@inline(__always) func readStamp(_ p: UnsafeRawBufferPointer) -> UInt64 {
    p.count >= 8 ? p.loadUnaligned(fromByteOffset: 0, as: UInt64.self) : 0
}

/// Parses "tcp:host:port", "host:port" or "unix:/path".
func parseAddress(_ s: String) throws -> PeerAddress {
    if s.hasPrefix("unix:") { return .unix(path: String(s.dropFirst(5))) }
    let rest = s.hasPrefix("tcp:") ? String(s.dropFirst(4)) : s
    guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]) else {
        throw LoadtestError("expected tcp:host:port, host:port or unix:/path, got \"\(s)\"")
    }
    var host = String(rest[..<colon])
    if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
    if host == "localhost" { host = "127.0.0.1" }
    return .tcp(host: host, port: port)
}

struct LoadtestError: Error, CustomStringConvertible {
    let description: String
    init(_ s: String) { description = s }
}
