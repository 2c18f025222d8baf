import Foundation
import Synchronization

/// One line of an instance's log, as `soulfra logs` and the panel show it.
public struct LogLine: Sendable, Equatable {
    public var unixMilliseconds: Int64
    public var instance: String
    public var level: String
    public var message: String

    static let levels = ["DEBUG", "INFO", "WARN", "ERROR"]

    /// `[2026-11-30T12:34:56Z] INFO: New user connected to playground` (a line without a level is INFO; one
    /// without a stamp takes `fallback`).
    init(raw: Substring, instance: String, fallback: Int64) {
        self.instance = instance
        var rest = raw
        unixMilliseconds = fallback
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            let stamp = rest[rest.index(after: rest.startIndex)..<close]
            if let d = try? Date(String(stamp), strategy: .iso8601) { unixMilliseconds = Int64(d.timeIntervalSince1970 * 1000) }
            rest = rest[rest.index(after: close)...].drop { $0 == " " }
        }
        level = "INFO"
        for l in Self.levels where rest.hasPrefix(l + ": ") {
            level = l
            rest = rest.dropFirst(l.count + 2)
        }
        if level == "INFO" && (rest.hasPrefix("error") || rest.hasPrefix("soulfra world: ")) { level = "ERROR" }
        message = String(rest)
    }

    /// `[12:34:56] INFO: …` (UTC).
    public var text: String {
        let s = (unixMilliseconds / 1000) % 86_400
        func two(_ v: Int64) -> String { v < 10 ? "0\(v)" : "\(v)" }
        return "[\(two(s / 3600)):\(two(s / 60 % 60)):\(two(s % 60))] \(level): \(message)"
    }

    var object: [String: Any] {
        ["time_ms": unixMilliseconds, "instance": instance, "level": level, "message": message, "text": text]
    }

    var json: String {
        String(decoding: (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data(), as: UTF8.self)
    }
}

/// Which lines a reader wants: from a time, at least a level, one instance, containing some text.
struct LogFilter: Sendable {
    var sinceMilliseconds: Int64 = 0
    var minimumLevel = 0
    var instance: String?
    var contains: String?

    func admits(_ l: LogLine) -> Bool {
        l.unixMilliseconds >= sinceMilliseconds && (LogLine.levels.firstIndex(of: l.level) ?? 1) >= minimumLevel
            && (instance.map { $0 == l.instance } ?? true) && (contains.map { l.message.contains($0) } ?? true)
    }
}

/// The instances' log files (`<instances>/<world>/<id>.log`): recent lines, and followers that get each new
/// line as a server-sent event, polled on a queue of their own.
final class LogFollowers: @unchecked Sendable {
    let directory: String
    private let queue = DispatchQueue(label: "soulfra-logs")
    private var timer: DispatchSourceTimer?

    struct Follower {
        let world: String
        let filter: LogFilter
        var offsets: [String: Int]
        let reply: @Sendable (ControlReply) -> Bool
    }

    private var followers: [Follower] = []
    /// Worlds that exist (a follow ends when its world is gone), set by the control pass.
    let worlds = Mutex<Set<String>>([])
    /// How much of a file one read takes at most (a burst of output is sent over several polls).
    static let readLimit = 256 << 10

    init(directory: String) { self.directory = directory }

    func start() {
        let t = DispatchSource.makeTimerSource(queue: queue)
        t.schedule(deadline: .now() + .milliseconds(200), repeating: .milliseconds(200))
        t.setEventHandler { [unowned self] in poll() }
        t.resume()
        timer = t
    }

    func stop() {
        queue.sync {
            timer?.cancel()
            timer = nil
            for f in followers { _ = f.reply(.end) }
            followers = []
        }
    }

    /// A log file over this size is copied to `<id>.log.1` (replacing the previous one) and truncated: each
    /// instance keeps at most twice this on disk. The writer (the instance's stdout, or a docker log pump)
    /// appends, so it goes on at the new end; a follower sees the file start over.
    static let rotateBytes = 10 << 20

    /// Rotates every instance log of every world that grew past `rotateBytes`; returns how many.
    @discardableResult
    func rotate() -> Int {
        var rotated = 0
        for world in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            for (_, path) in files(world) where Self.size(path) > Self.rotateBytes {
                let fd = open(path, O_RDWR | O_CLOEXEC)
                guard fd >= 0 else { continue }
                defer { close(fd) }
                guard let data = FileManager.default.contents(atPath: path),
                      FileManager.default.createFile(atPath: path + ".1", contents: data, attributes: [.posixPermissions: 0o640]) else { continue }
                if ftruncate(fd, 0) == 0 { rotated += 1 }
            }
        }
        return rotated
    }

    func files(_ world: String) -> [(instance: String, path: String)] {
        let dir = directory + "/" + world
        let names = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return names.filter { $0.hasSuffix(".log") }.sorted().map { (String($0.dropLast(4)), dir + "/" + $0) }
    }

    /// The last `lines` lines of the world's instances, interleaved by time.
    func recent(world: String, lines: Int, filter: LogFilter = LogFilter()) -> [LogLine] {
        var all: [LogLine] = []
        for (instance, path) in files(world) {
            guard let h = FileHandle(forReadingAtPath: path) else { continue }
            let size = (try? h.seekToEnd()) ?? 0
            let from = size > UInt64(Self.readLimit) ? size - UInt64(Self.readLimit) : 0
            try? h.seek(toOffset: from)
            let data = (try? h.readToEnd()) ?? Data()
            try? h.close()
            var text = Substring(String(decoding: data, as: UTF8.self))
            if from > 0, let nl = text.firstIndex(of: "\n") { text = text[text.index(after: nl)...] }  // a cut first line
            var last = Int64(Self.modifiedSeconds(path)) * 1000  // lines before the first stamp (a runtime's own) take the file's time
            for raw in text.split(separator: "\n") {
                let l = LogLine(raw: raw, instance: instance, fallback: last)
                last = l.unixMilliseconds
                if filter.admits(l) { all.append(l) }
            }
        }
        all = all.enumerated().sorted { ($0.element.unixMilliseconds, $0.offset) < ($1.element.unixMilliseconds, $1.offset) }.map(\.element)
        return Array(all.suffix(lines))
    }

    /// Sends the recent lines, then every new one until the client goes or the world does.
    func follow(world: String, lines: Int, filter: LogFilter, reply: @escaping @Sendable (ControlReply) -> Bool) {
        queue.async { [self] in
            guard reply(.streamHead) else { return }
            for l in recent(world: world, lines: lines, filter: filter) { _ = reply(.event(l.json)) }
            var offsets: [String: Int] = [:]
            for (_, path) in files(world) { offsets[path] = Self.size(path) }
            followers.append(Follower(world: world, filter: filter, offsets: offsets, reply: reply))
        }
    }

    static func modifiedSeconds(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_mtim.tv_sec) : 0
    }

    static func size(_ path: String) -> Int {
        var st = stat()
        return stat(path, &st) == 0 ? Int(st.st_size) : 0
    }

    private func poll() {
        guard !followers.isEmpty else { return }
        let alive = worlds.withLock { $0 }
        followers = followers.compactMap { f in
            var f = f
            guard alive.contains(f.world) else {
                _ = f.reply(.end)
                return nil
            }
            for (instance, path) in files(f.world) {
                let from = f.offsets[path] ?? 0
                let size = Self.size(path)
                guard size != from else { continue }
                let start = size < from ? 0 : from  // a file started over
                guard let h = FileHandle(forReadingAtPath: path) else { continue }
                try? h.seek(toOffset: UInt64(start))
                let data = (try? h.read(upToCount: Self.readLimit)) ?? Data()
                try? h.close()
                // Only whole lines: a partial last line waits for its end — unless it fills a whole read, when it
                // goes as it is (a line that long must not stop the follow).
                let whole: Data
                if let lastNewline = data.lastIndex(of: 0x0A) {
                    whole = data[data.startIndex...lastNewline]
                } else if data.count >= Self.readLimit {
                    whole = data
                } else {
                    continue
                }
                f.offsets[path] = start + whole.count
                var last = Int64(Date().timeIntervalSince1970 * 1000)
                for raw in String(decoding: whole, as: UTF8.self).split(separator: "\n") {
                    let l = LogLine(raw: raw, instance: instance, fallback: last)
                    last = l.unixMilliseconds
                    if f.filter.admits(l) && !f.reply(.event(l.json)) { return nil }
                }
            }
            return f
        }
    }
}

extension ControlService {
    /// `GET /admin/v1/worlds/{world}/logs?lines=&since=&level=&instance=&contains=&follow=`.
    func logs(_ r: ControlRequest, reply: @escaping @Sendable (ControlReply) -> Bool) throws(APIError) -> (Int, Any)? {
        let w = try existingWorld(r.world)
        var filter = LogFilter()
        let lines = Int(r.value("lines") ?? "100") ?? -1
        guard (0...10_000).contains(lines) else { throw APIError(400, "invalid_request", "lines must be 0 to 10000") }
        if let s = r.value("since") {
            guard let v = Self.parseSince(s) else {
                throw APIError(400, "invalid_since", "since takes a duration (90s, 10m, 2h) or a time (2026-11-30T12:00:00Z), got \"\(s)\"")
            }
            filter.sinceMilliseconds = v
        }
        if let l = r.value("level") {
            guard let i = LogLine.levels.firstIndex(of: l.uppercased()) else {
                throw APIError(400, "invalid_level", "level is one of debug, info, warn, error (that level and above), got \"\(l)\"")
            }
            filter.minimumLevel = i
        }
        filter.instance = r.value("instance")
        filter.contains = r.value("contains")
        if r.value("follow") == "1" || r.value("follow") == "true" || r.wantsEvents {
            logs.follow(world: w.name, lines: lines, filter: filter, reply: reply)
            return nil
        }
        return (200, ["world": w.name, "lines": logs.recent(world: w.name, lines: lines, filter: filter).map(\.object)])
    }

    /// `90s`, `10m`, `2h`, `1d` ago, or an ISO 8601 time: unix milliseconds.
    static func parseSince(_ s: String) -> Int64? {
        if let d = try? Date(s, strategy: .iso8601) { return Int64(d.timeIntervalSince1970 * 1000) }
        let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let unit = s.last.flatMap({ units[$0] }), let n = Int64(s.dropLast()), n >= 0, n <= 3_650 * 86_400 / unit else { return nil }
        return now() - n * unit * 1000
    }
}
