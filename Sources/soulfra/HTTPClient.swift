import Foundation
import SoulfraNet

/// A failure talking to the daemon: what happened and what to do.
struct CLIError: Error, CustomStringConvertible {
    let description: String
    /// The exit status (docs/operations.md, CLI exit codes).
    let code: Int32
    init(_ d: String, code: Int32 = 1) {
        description = d
        self.code = code
    }
}

/// The CLI's HTTP/1.1 client: blocking, one request per connection, for the daemon's admin API and the
/// gateway on loopback. Bodies come whole, or chunk by chunk (`onData`) for server-sent events.
struct HTTPClient {
    struct Response {
        var status: Int
        var headers: [String: String]
        var body: [UInt8]
        var text: String { String(decoding: body, as: UTF8.self) }
    }

    /// `http://host:port` — the host an IP address (the daemon listens on loopback).
    let base: String

    /// Sends a request; `onData` (if given) gets the body as it arrives and returns false to stop reading.
    func request(_ method: String, _ path: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
                 timeoutSeconds: Double = 30, onData: (([UInt8]) -> Bool)? = nil) throws(CLIError) -> Response {
        let (host, port) = try hostPort()
        guard let address = SocketAddress(host: host, port: port) else { throw CLIError("\(base): \(host) is not an IP address") }
        let fd = address.makeSocket()
        guard fd >= 0 else { throw CLIError("socket: \(String(cString: strerror(errno)))") }
        defer { close(fd) }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK)  // blocking, with the timeouts below
        var tv = timeval(tv_sec: Int(timeoutSeconds), tv_usec: Int((timeoutSeconds - Double(Int(timeoutSeconds))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        guard address.withSockaddr({ connect(fd, $0, $1) }) == 0 else {
            throw CLIError("cannot connect to \(base): \(String(cString: strerror(errno)))", code: 69)
        }
        var head = "\(method) \(path) HTTP/1.1\r\nhost: \(host):\(port)\r\nconnection: close\r\nuser-agent: soulfra-cli\r\n"
        for (n, v) in headers { head += "\(n): \(v)\r\n" }
        if let body { head += "content-type: application/json\r\ncontent-length: \(body.count)\r\n" }
        let out = Array((head + "\r\n").utf8) + (body ?? [])
        var sent = 0
        while sent < out.count {
            let n = out[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw CLIError("sending to \(base): \(String(cString: strerror(errno)))", code: 69) }
            sent += n
        }
        return try read(fd, onData: onData)
    }

    private func hostPort() throws(CLIError) -> (String, UInt16) {
        var rest = Substring(base)
        guard rest.hasPrefix("http://") else { throw CLIError("\(base): only http:// addresses are supported here") }
        rest = rest.dropFirst(7)
        if let slash = rest.firstIndex(of: "/") { rest = rest[..<slash] }
        guard let colon = rest.lastIndex(of: ":"), let port = UInt16(rest[rest.index(after: colon)...]) else {
            throw CLIError("\(base): give host:port")
        }
        return (String(rest[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), port)
    }

    /// Reads the head, then the body: by length, chunked, or to the end of the connection.
    private func read(_ fd: Int32, onData: (([UInt8]) -> Bool)?) throws(CLIError) -> Response {
        var buffer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 64 << 10)
        func fill() throws(CLIError) -> Bool {
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EAGAIN { throw CLIError("\(base) did not answer in time", code: 75) }
                throw CLIError("reading from \(base): \(String(cString: strerror(errno)))", code: 69)
            }
            buffer += chunk[0..<n]
            return n > 0
        }
        var headEnd: Int?
        while headEnd == nil {
            guard try fill() else { throw CLIError("\(base) closed the connection before answering", code: 69) }
            headEnd = Self.find([13, 10, 13, 10], in: buffer)
        }
        let headText = String(decoding: buffer[..<headEnd!], as: UTF8.self)
        buffer.removeFirst(headEnd! + 4)
        let lines = headText.components(separatedBy: "\r\n")
        let parts = lines[0].split(separator: " ")
        guard parts.count >= 2, let status = Int(parts[1]) else { throw CLIError("\(base) sent a malformed status line", code: 69) }
        var headers: [String: String] = [:]
        for l in lines.dropFirst() {
            guard let c = l.firstIndex(of: ":") else { continue }
            headers[l[..<c].lowercased()] = l[l.index(after: c)...].trimmingCharacters(in: .whitespaces)
        }
        var body: [UInt8] = []
        func deliver(_ bytes: [UInt8]) -> Bool {
            if let onData { return onData(bytes) }
            body += bytes
            return true
        }
        if headers["transfer-encoding"]?.lowercased() == "chunked" {
            let cutShort = CLIError("\(base) closed the connection before the end of its answer", code: 69)
            while true {
                guard let lineEnd = Self.find([13, 10], in: buffer) else {
                    guard try fill() else { throw cutShort }
                    continue
                }
                guard let size = Int(String(decoding: buffer[..<lineEnd], as: UTF8.self).split(separator: ";")[0], radix: 16) else {
                    throw CLIError("\(base) sent a malformed chunk", code: 69)
                }
                while buffer.count < lineEnd + 2 + size + 2 { guard try fill() else { throw cutShort } }
                if size == 0 { break }
                let data = Array(buffer[(lineEnd + 2)..<(lineEnd + 2 + size)])
                buffer.removeFirst(lineEnd + 2 + size + 2)
                if !deliver(data) { break }
            }
        } else if let length = headers["content-length"].flatMap(Int.init) {
            while buffer.count < length {
                guard try fill() else { throw CLIError("\(base) sent \(buffer.count) of the \(length) bytes it announced", code: 69) }
            }
            _ = deliver(Array(buffer.prefix(length)))
        } else {
            if !buffer.isEmpty && !deliver(buffer) { return Response(status: status, headers: headers, body: body) }
            buffer = []
            while try fill() {
                if !deliver(buffer) { break }
                buffer = []
            }
        }
        return Response(status: status, headers: headers, body: body)
    }

    static func find(_ needle: [UInt8], in hay: [UInt8]) -> Int? {
        guard hay.count >= needle.count else { return nil }
        for i in 0...(hay.count - needle.count) where hay[i] == needle[0] && Array(hay[i..<(i + needle.count)]) == needle { return i }
        return nil
    }
}
