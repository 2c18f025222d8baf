import Foundation

/// A webhook endpoint for tests: a real HTTP/1.1 server on 127.0.0.1 (one thread, one request per
/// connection) that records every request and answers with the statuses it is told to, in order, then
/// `defaultStatus`.
public final class WebhookReceiver: @unchecked Sendable {
    public struct Request: Sendable {
        public var path: String
        public var headers: [String: String]
        public var body: [UInt8]
    }

    public let port: UInt16
    private let fd: Int32
    /// What the server thread and the test share, under a lock.
    final class State: @unchecked Sendable {
        let lock = NSLock()
        var requests: [Request] = []
        var statuses: [Int] = []
        var defaultStatus = 204
        var stopped = false
        func withLock<T>(_ body: (State) -> T) -> T {
            lock.lock()
            defer { lock.unlock() }
            return body(self)
        }
    }
    private let state: State
    private let thread: Thread

    public init(defaultStatus: Int = 204) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        self.fd = fd
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
        guard fd >= 0, bound == 0, listen(fd, 64) == 0 else {
            if fd >= 0 { close(fd) }
            throw POSIXError(.EADDRNOTAVAIL)
        }
        _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        port = UInt16(bigEndian: addr.sin_port)
        let listener = fd
        let state = State()
        self.state = state
        state.withLock { $0.defaultStatus = defaultStatus }
        thread = Thread {
            while true {
                let c = accept(listener, nil, nil)
                if c >= 0 { _ = fcntl(c, F_SETFD, FD_CLOEXEC) }
                if c < 0 { if state.withLock({ $0.stopped }) { return } else { continue } }
                Self.serve(c, state)
                close(c)
            }
        }
        thread.start()
    }

    public var url: String { "http://127.0.0.1:\(port)/hook" }

    /// Answers the next requests with these statuses (then the default again).
    public func answer(_ statuses: [Int]) { state.withLock { $0.statuses += statuses } }
    public func setDefault(_ status: Int) { state.withLock { $0.defaultStatus = status } }
    public var requests: [Request] { state.withLock { $0.requests } }

    /// Waits (bounded) until at least `n` requests came; returns them.
    public func wait(for n: Int, seconds: Double = 10) -> [Request] {
        let deadline = Date().addingTimeInterval(seconds)
        while requests.count < n && Date() < deadline { usleep(10_000) }
        return requests
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    private static func serve(_ c: Int32, _ state: State) {
        var tv = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var data = [UInt8]()
        var buf = [UInt8](repeating: 0, count: 65_536)
        var head: (end: Int, length: Int, path: String, headers: [String: String])?
        while true {
            if head == nil, let r = data.firstRange(of: Array("\r\n\r\n".utf8)) {
                let lines = String(decoding: data[..<r.lowerBound], as: UTF8.self).split(separator: "\r\n")
                var headers: [String: String] = [:]
                for l in lines.dropFirst() {
                    guard let colon = l.firstIndex(of: ":") else { continue }
                    headers[l[..<colon].lowercased()] = l[l.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                let path = lines.first?.split(separator: " ").dropFirst().first.map(String.init) ?? ""
                head = (r.upperBound, Int(headers["content-length"] ?? "0") ?? 0, path, headers)
            }
            if let h = head, data.count >= h.end + h.length {
                let request = Request(path: h.path, headers: h.headers, body: Array(data[h.end..<(h.end + h.length)]))
                let status = state.withLock { s -> Int in
                    s.requests.append(request)
                    return s.statuses.isEmpty ? s.defaultStatus : s.statuses.removeFirst()
                }
                let answer = "HTTP/1.1 \(status) X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok"
                _ = answer.withCString { send(c, $0, strlen($0), Int32(MSG_NOSIGNAL)) }
                return
            }
            let n = recv(c, &buf, buf.count, 0)
            if n <= 0 { return }
            data += buf[0..<n]
        }
    }
}
