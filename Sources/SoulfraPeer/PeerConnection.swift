#if canImport(Glibc)
import Glibc
#endif
import SoulfraNet
import SoulfraPeerLink
import SoulfraWire

/// Where the broker listens.
public enum PeerAddress: Sendable, Equatable, CustomStringConvertible {
    case tcp(host: String, port: UInt16)
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(let h, let p): "\(h):\(p)"
        case .unix(let p): "unix:\(p)"
        }
    }
}

/// A connection failure, with the call and errno.
public struct PeerError: Error, CustomStringConvertible, Sendable {
    public let message: String
    public var description: String { message }
}

/// One link to the broker over a plain non-blocking socket (no io_uring: world instances run under seccomp
/// profiles that may block it). Drive it with `pump` or register it with a `PeerReactor`.
public final class PeerConnection {
    // Stored properties are `@exclusivity(unchecked)` for the reason given at `ByteQueue`.
    public let address: PeerAddress
    public let identity: PeerIdentity
    @exclusivity(unchecked) public private(set) var link: PeerLink
    @exclusivity(unchecked) public private(set) var fd: Int32 = -1
    /// While true the connection is not read (to test slow consumers); writes continue.
    @exclusivity(unchecked) public var readingPaused = false
    private let readBuffer: UnsafeMutableRawBufferPointer
    /// Bytes read in total.
    @exclusivity(unchecked) public private(set) var bytesRead: UInt64 = 0
    @exclusivity(unchecked) public private(set) var bytesWritten: UInt64 = 0

    public init(address: PeerAddress, identity: PeerIdentity, readBufferBytes: Int = 256 << 10) {
        self.address = address
        self.identity = identity
        self.link = PeerLink(identity: identity)
        self.readBuffer = .allocate(byteCount: readBufferBytes, alignment: 16)
    }

    deinit {
        if fd >= 0 { Glibc.close(fd) }
        readBuffer.deallocate()
    }

    /// Connects and queues HELLO. A fresh `PeerLink` replaces the old one (streams do not survive a reconnect).
    public func connect(timeoutMilliseconds: Int32 = 2_000) throws(PeerError) {
        if fd >= 0 { Glibc.close(fd); fd = -1 }
        let delegate = link.delegate
        let autoCredit = link.autoCredit
        link = PeerLink(identity: identity)
        link.delegate = delegate
        link.autoCredit = autoCredit
        fd = try Self.dial(address, timeoutMilliseconds: timeoutMilliseconds)
        link.start()
    }

    /// Connects, retrying with backoff until `attempts` are used up.
    public func connect(retrying backoff: Backoff, attempts: Int, rng: inout some RandomNumberGenerator) throws(PeerError) {
        var b = backoff
        var last = PeerError(message: "no attempt made")
        for _ in 0..<max(1, attempts) {
            do {
                try connect()
                return
            } catch {
                last = error
                let ms = b.next(using: &rng)
                usleep(ms * 1_000)
            }
        }
        throw PeerError(message: "could not connect to \(address) after \(attempts) attempts: \(last)")
    }

    /// Connects, sends HELLO and waits for WELCOME (or the broker's refusal).
    public func handshake(timeoutMilliseconds: Int32 = 2_000) throws(PeerError) {
        try connect(timeoutMilliseconds: timeoutMilliseconds)
        let deadline = monotonicMilliseconds() + UInt64(timeoutMilliseconds)
        while !link.isReady {
            if case .closed(let code, let reason) = link.state {
                throw PeerError(message: "broker refused the link: \(code): \(reason)")
            }
            let now = monotonicMilliseconds()
            guard now < deadline else { throw PeerError(message: "no WELCOME from \(address) within \(timeoutMilliseconds) ms") }
            _ = pump(timeoutMilliseconds: Int32(deadline - now))
        }
    }

    /// Hands the socket and the session over (to an io_uring loop, say) after the handshake: this connection no
    /// longer owns or closes the descriptor.
    public func detach() -> (fd: Int32, link: PeerLink) {
        let taken = fd
        fd = -1
        return (taken, link)
    }

    public func close() {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        link.transportClosed(reason: "closed locally")
    }

    /// Writes as much queued output as the socket takes. Returns false if the socket failed.
    @discardableResult
    public func flush() -> Bool {
        let out = link.output
        while !out.isEmpty {
            let r = out.readable
            let n = Glibc.send(fd, r.baseAddress, r.count, Int32(MSG_NOSIGNAL))
            if n > 0 {
                out.consume(n)
                bytesWritten &+= UInt64(n)
                continue
            }
            if n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { return true }
            if n < 0 && errno == EINTR { continue }
            failTransport("send failed: \(describe(errno: errno))")
            return false
        }
        return true
    }

    /// Reads what is available (bounded) and feeds the link. Returns false once the link is closed.
    @discardableResult
    public func readAvailable(maxReads: Int = 16) -> Bool {
        guard fd >= 0 else { return false }
        for _ in 0..<maxReads {
            let n = Glibc.recv(fd, readBuffer.baseAddress, readBuffer.count, 0)
            if n > 0 {
                bytesRead &+= UInt64(n)
                link.receive(UnsafeRawBufferPointer(rebasing: readBuffer[..<n]), nowMilliseconds: monotonicMilliseconds())
                if link.isClosed { return false }
                if n < readBuffer.count { return true }
                continue
            }
            if n == 0 {
                failTransport("broker closed the connection")
                return false
            }
            if errno == EAGAIN || errno == EWOULDBLOCK { return true }
            if errno == EINTR { continue }
            failTransport("recv failed: \(describe(errno: errno))")
            return false
        }
        return true
    }

    /// Closes the link if the broker has gone silent (see `PeerLink.brokerSilent`). Returns false if it did.
    @discardableResult
    public func checkBrokerAlive(now: UInt64 = monotonicMilliseconds()) -> Bool {
        guard fd >= 0, link.brokerSilent(now: now), !readingPaused else { return true }
        failTransport("no frame from the broker for three heartbeat intervals (\(link.welcome!.heartbeatMilliseconds) ms each)")
        return false
    }

    /// Flushes, waits up to `timeoutMilliseconds` for input (or writability when output is queued), reads.
    /// Returns false once the link is closed.
    @discardableResult
    public func pump(timeoutMilliseconds: Int32) -> Bool {
        guard fd >= 0, checkBrokerAlive() else { return false }
        guard flush() else { return false }
        var p = pollfd(fd: fd, events: Int16(readingPaused ? 0 : POLLIN), revents: 0)
        if !link.output.isEmpty { p.events |= Int16(POLLOUT) }
        let r = poll(&p, 1, timeoutMilliseconds)
        if r > 0 {
            if p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 && !readingPaused {
                guard readAvailable() else { return false }
            }
            if p.revents & Int16(POLLOUT) != 0 { guard flush() else { return false } }
            if readingPaused && p.revents & Int16(POLLHUP | POLLERR) != 0 {
                failTransport("connection reset")
                return false
            }
        }
        return flush() && !link.isClosed
    }

    func failTransport(_ reason: String) {
        if fd >= 0 {
            Glibc.close(fd)
            fd = -1
        }
        link.transportClosed(reason: reason)
    }

    static func dial(_ address: PeerAddress, timeoutMilliseconds: Int32) throws(PeerError) -> Int32 {
        let sa: SocketAddress
        switch address {
        case .tcp(let host, let port):
            guard let a = SocketAddress(host: host, port: port) else {
                throw PeerError(message: "\(host) is not an IPv4 or IPv6 address")
            }
            sa = a
        case .unix(let path):
            guard let a = SocketAddress(unixPath: path) else { throw PeerError(message: "unix path too long: \(path)") }
            sa = a
        }
        let fd = sa.makeSocket()
        guard fd >= 0 else { throw PeerError(message: "socket: \(describe(errno: errno))") }
        if sa.family != AF_UNIX {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        let rc = sa.withSockaddr { Glibc.connect(fd, $0, $1) }
        if rc != 0 && errno != EINPROGRESS && errno != EAGAIN {
            let e = errno
            Glibc.close(fd)
            throw PeerError(message: "connect \(address): \(describe(errno: e))")
        }
        if rc != 0 {
            var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
            let r = poll(&p, 1, timeoutMilliseconds)
            var err: Int32 = 0
            var len = socklen_t(MemoryLayout<Int32>.size)
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len)
            if r <= 0 || err != 0 {
                Glibc.close(fd)
                throw PeerError(message: "connect \(address): \(r <= 0 ? "timed out after \(timeoutMilliseconds) ms" : describe(errno: err))")
            }
        }
        return fd
    }
}

/// Drives many connections on one thread with poll(2) (portable to any seccomp profile; fine for the
/// hundreds of links a load-test thread or an instance holds). Connections added with a `Backoff` are
/// reconnected when their link drops: each attempt after a jittered, growing delay; a fresh `PeerLink` (new
/// HELLO, same delegate) once it succeeds. Streams do not survive a reconnect.
public final class PeerReactor {
    struct Entry {
        let conn: PeerConnection
        var backoff: Backoff?
        var nextAttempt: UInt64 = 0
    }

    @exclusivity(unchecked) private var entries: [Entry] = []
    @exclusivity(unchecked) private var fds: [pollfd] = []
    @exclusivity(unchecked) private var rng: SplitMix64
    /// Successful reconnects so far.
    @exclusivity(unchecked) public private(set) var reconnects = 0

    /// `seed` drives the reconnect jitter (fixed in tests, random by default).
    public init(seed: UInt64 = UInt64.random(in: 0...UInt64.max)) {
        rng = SplitMix64(seed: seed)
    }

    public var connections: [PeerConnection] { entries.map(\.conn) }

    /// Watches a connected connection; with `reconnect`, brings it back whenever its link drops.
    public func add(_ c: PeerConnection, reconnect: Backoff? = nil) {
        precondition(c.fd >= 0, "add() needs a connected connection")
        entries.append(Entry(conn: c, backoff: reconnect))
    }

    public func remove(_ c: PeerConnection) {
        entries.removeAll { $0.conn === c }
    }

    /// One turn: reconnect what is due, flush everything, wait up to `timeoutMilliseconds`, read what arrived,
    /// flush again.
    public func poll(timeoutMilliseconds: Int32) {
        let now = monotonicMilliseconds()
        for e in entries where e.conn.fd >= 0 { e.conn.checkBrokerAlive(now: now) }
        reconnectDue()
        entries.removeAll { $0.conn.fd < 0 && $0.backoff == nil }
        fds.removeAll(keepingCapacity: true)
        var live: [Int] = []
        for (i, e) in entries.enumerated() where e.conn.fd >= 0 {
            let c = e.conn
            if !c.link.output.isEmpty { c.flush() }
            guard c.fd >= 0 else { continue }
            var ev = Int16(c.readingPaused ? 0 : POLLIN)
            if !c.link.output.isEmpty { ev |= Int16(POLLOUT) }
            fds.append(pollfd(fd: c.fd, events: ev, revents: 0))
            live.append(i)
        }
        let n = fds.withUnsafeMutableBufferPointer { Glibc.poll($0.baseAddress, nfds_t($0.count), timeoutMilliseconds) }
        guard n > 0 else { return }
        for (k, p) in fds.enumerated() where p.revents != 0 {
            let c = entries[live[k]].conn
            guard c.fd == p.fd else { continue }
            if p.revents & Int16(POLLOUT) != 0 { c.flush() }
            if !c.readingPaused && p.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 { c.readAvailable() }
        }
        for e in entries where e.conn.fd >= 0 && !e.conn.link.output.isEmpty { e.conn.flush() }
    }

    private func reconnectDue() {
        let now = monotonicMilliseconds()
        for i in entries.indices where entries[i].conn.fd < 0 && entries[i].backoff != nil && now >= entries[i].nextAttempt {
            do {
                try entries[i].conn.connect(timeoutMilliseconds: 250)
                entries[i].backoff!.reset()
                reconnects += 1
            } catch {
                entries[i].nextAttempt = now + UInt64(entries[i].backoff!.next(using: &rng))
            }
        }
    }
}
