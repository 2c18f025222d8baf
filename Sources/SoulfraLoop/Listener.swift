#if canImport(Glibc)
import Glibc
#endif

/// Where a listener binds.
public enum ListenAddress: Sendable, Equatable, CustomStringConvertible {
    /// IPv4 or IPv6 literal and port (0: any free port).
    case tcp(host: String, port: UInt16)
    /// A unix stream socket path (an existing socket file there is replaced).
    case unix(path: String)

    public var description: String {
        switch self {
        case .tcp(let h, let p): h.contains(":") ? "[\(h)]:\(p)" : "\(h):\(p)"
        case .unix(let path): "unix:\(path)"
        }
    }
}

/// A socket error with the call that failed.
public struct SocketError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let errno: Int32
    public let address: String
    public var description: String { "\(call) \(address): \(describe(errno: errno))" }
}

/// A bound, listening, non-blocking socket.
public struct BoundListener: Sendable {
    public let fd: Int32
    public let address: ListenAddress
    /// The port actually bound (TCP), useful with port 0.
    public let port: UInt16

    /// Creates, binds and listens.
    public static func bind(_ address: ListenAddress, backlog: Int32 = 4096) throws(SocketError) -> BoundListener {
        switch address {
        case .tcp(let host, let port):
            var v4 = sockaddr_in(), v6 = sockaddr_in6()
            let isV6: Bool
            if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
                isV6 = false
                v4.sin_family = sa_family_t(AF_INET)
                v4.sin_port = port.bigEndian
            } else if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
                isV6 = true
                v6.sin6_family = sa_family_t(AF_INET6)
                v6.sin6_port = port.bigEndian
            } else {
                throw SocketError(call: "parse address", errno: EINVAL, address: address.description)
            }
            let fd = socket(isV6 ? AF_INET6 : AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SocketError(call: "socket", errno: errno, address: address.description) }
            var one: Int32 = 1
            setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            let rc = isV6
                ? withUnsafePointer(to: &v6) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) } }
                : withUnsafePointer(to: &v4) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard rc == 0 else {
                let e = errno
                close(fd)
                throw SocketError(call: "bind", errno: e, address: address.description)
            }
            guard listen(fd, backlog) == 0 else {
                let e = errno
                close(fd)
                throw SocketError(call: "listen", errno: e, address: address.description)
            }
            return BoundListener(fd: fd, address: address, port: localPort(fd))
        case .unix(let path):
            var sa = sockaddr_un()
            sa.sun_family = sa_family_t(AF_UNIX)
            let bytes = Array(path.utf8)
            guard bytes.count < MemoryLayout.size(ofValue: sa.sun_path) else {
                throw SocketError(call: "unix path too long", errno: ENAMETOOLONG, address: address.description)
            }
            withUnsafeMutableBytes(of: &sa.sun_path) { raw in
                for (i, b) in bytes.enumerated() { raw[i] = b }
                raw[bytes.count] = 0
            }
            unlink(path)
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { throw SocketError(call: "socket", errno: errno, address: address.description) }
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
            }
            guard rc == 0 else {
                let e = errno
                close(fd)
                throw SocketError(call: "bind", errno: e, address: address.description)
            }
            guard listen(fd, backlog) == 0 else {
                let e = errno
                close(fd)
                throw SocketError(call: "listen", errno: e, address: address.description)
            }
            return BoundListener(fd: fd, address: address, port: 0)
        }
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
