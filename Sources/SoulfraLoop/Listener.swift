#if canImport(Glibc)
import Glibc
#endif
import SoulfraNet

/// A socket error with the call that failed.
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public let address: String
    public var description: String { "\(call) \(address): \(describe(errno: errno))" }
    public init(call: String, errno: Int32, address: String) {
        self.call = call
        self.errno = errno
        self.address = address
    }
}

/// A bound, listening, non-blocking socket.
public struct BoundListener: Sendable {
    public let fd: Int32
    public let address: ListenAddress
    /// The port actually bound (TCP), useful with port 0.
    public let port: UInt16

    /// Closes the socket of a listener that was never handed to a loop (a loop closes those it was given).
    public func close() { _ = Glibc.close(fd) }

    /// Creates, binds and listens.
    /// With `reusePort`, several sockets (one per loop) may bind the same TCP port and the kernel spreads
    /// connections across them (SO_REUSEPORT).
    public static func bind(_ address: ListenAddress, backlog: Int32 = 4096, reusePort: Bool = false) throws(SocketError) -> BoundListener {
        func failure(_ call: String, _ e: Int32) -> SocketError { SocketError(call: call, errno: e, address: address.description) }
        let sa: SocketAddress
        switch address {
        case .tcp(let host, let port):
            guard let a = SocketAddress(host: host, port: port) else { throw failure("parse address", EINVAL) }
            sa = a
        case .unix(let path):
            guard let a = SocketAddress(unixPath: path) else { throw failure("unix path too long", ENAMETOOLONG) }
            sa = a
            unlink(path)  // a stale socket file from an earlier run
        }
        let fd = sa.makeSocket()
        guard fd >= 0 else { throw failure("socket", errno) }
        if case .tcp = address {
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            if reusePort { setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, socklen_t(MemoryLayout<Int32>.size)) }
        }
        guard sa.withSockaddr({ Glibc.bind(fd, $0, $1) }) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw failure("bind", e)
        }
        guard listen(fd, backlog) == 0 else {
            let e = errno
            Glibc.close(fd)
            throw failure("listen", e)
        }
        if case .tcp = address { return BoundListener(fd: fd, address: address, port: localPort(fd)) }
        return BoundListener(fd: fd, address: address, port: 0)
    }

    static func localPort(_ fd: Int32) -> UInt16 {
        var ss = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
        if ss.ss_family == sa_family_t(AF_INET) {
            return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin_port) } }
        }
        return withUnsafePointer(to: &ss) { $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { UInt16(bigEndian: $0.pointee.sin6_port) } }
    }
}
