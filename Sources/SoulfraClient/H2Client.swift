import Glibc
import SoulfraHTTP2
import SoulfraNet

/// A client-side failure (connect, protocol).
public struct ClientError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ d: String) { description = d }
}

/// One h2c connection driven with poll(2): nghttp2 client session, non-blocking socket.
public final class H2Client {
    public let fd: Int32
    public let h2: H2Connection
    var pending: [UInt8] = []
    var pendingHead = 0
    public private(set) var failed = false
    var readBuffer = [UInt8](repeating: 0, count: 64 << 10)

    public init(host: String, port: UInt16) throws {
        guard let sa = SocketAddress(host: host, port: port) else { throw ClientError("\(host) is not an IP address") }
        let fd = sa.makeSocket()
        guard fd >= 0 else { throw ClientError("socket: \(describe(errno: errno))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        // Blocking connect on loopback, then non-blocking I/O.
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags & ~O_NONBLOCK)
        guard sa.withSockaddr({ Glibc.connect(fd, $0, $1) }) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw ClientError("connect \(host):\(port): \(describe(errno: e))")
        }
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
        self.fd = fd
        var s = H2Settings()
        s.initialWindowBytes = 1 << 20
        s.maxConcurrentStreams = 1_000
        h2 = try H2Connection(role: .client, settings: s)
    }

    deinit { Glibc.close(fd) }

    /// Writes what the session has queued, as far as the socket takes it.
    public func flush() {
        if pendingHead == pending.count {
            pending.removeAll(keepingCapacity: true)
            pendingHead = 0
        }
        try? h2.drainOutput { pending.append(contentsOf: $0) }
        while pendingHead < pending.count {
            let n = pending.withUnsafeBytes { Glibc.send(fd, $0.baseAddress! + pendingHead, $0.count - pendingHead, Int32(MSG_NOSIGNAL)) }
            if n > 0 { pendingHead += n; continue }
            if n < 0 && (errno == EAGAIN || errno == EINTR) { return }
            failed = true
            return
        }
    }

    public var wantsWrite: Bool { pendingHead < pending.count }

    /// Reads what is there and feeds the session; the events it produced.
    public func read() -> [H2Event] {
        while true {
            let n = readBuffer.withUnsafeMutableBytes { Glibc.recv(fd, $0.baseAddress, $0.count, 0) }
            if n > 0 {
                do { try readBuffer.withUnsafeBytes { try h2.receive(UnsafeRawBufferPointer(rebasing: $0[..<n]), now: monotonicNanoseconds()) } } catch {
                    failed = true
                }
                if n < readBuffer.count { break }
                continue
            }
            if n == 0 || (errno != EAGAIN && errno != EINTR) { failed = true }
            break
        }
        return h2.takeEvents()
    }

    public func request(method: String, authority: String, path: String, headers: [(String, String)], endStream: Bool) -> Int32? {
        let hs = [H2Header(":method", method), H2Header(":scheme", "http"), H2Header(":authority", authority),
                  H2Header(":path", path)] + headers.map { H2Header($0.0, $0.1) }
        return try? h2.request(headers: hs, endStream: endStream)
    }
}

/// Polls a set of connections once; calls `body` with each one's events.
public func pollConnections(_ conns: [H2Client], timeoutMilliseconds: Int32, _ body: (H2Client, [H2Event]) -> Void) {
    var fds = conns.map { pollfd(fd: $0.fd, events: Int16(POLLIN) | ($0.wantsWrite ? Int16(POLLOUT) : 0), revents: 0) }
    guard poll(&fds, nfds_t(fds.count), timeoutMilliseconds) > 0 else { return }
    for (i, c) in conns.enumerated() where fds[i].revents != 0 {
        if fds[i].revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { body(c, c.read()) }
        c.flush()
    }
}

