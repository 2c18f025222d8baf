#if canImport(Glibc)
import Glibc
#endif

/// A socket address (IPv4, IPv6 or unix path) in a form bind(2) and connect(2) take. SoulfraNet is the small
/// platform layer the loop and the peer library share: socket addresses, the monotonic clock, errno text.
public struct SocketAddress: Sendable {
    private var storage = sockaddr_storage()
    /// Bytes of `storage` in use.
    public let length: socklen_t

    /// An IP literal and port; nil if `host` is not an IPv4 or IPv6 literal.
    public init?(host: String, port: UInt16) {
        var v4 = sockaddr_in()
        var v6 = sockaddr_in6()
        if inet_pton(AF_INET, host, &v4.sin_addr) == 1 {
            v4.sin_family = sa_family_t(AF_INET)
            v4.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: v4, as: sockaddr_in.self) }
            length = socklen_t(MemoryLayout<sockaddr_in>.size)
        } else if inet_pton(AF_INET6, host, &v6.sin6_addr) == 1 {
            v6.sin6_family = sa_family_t(AF_INET6)
            v6.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: v6, as: sockaddr_in6.self) }
            length = socklen_t(MemoryLayout<sockaddr_in6>.size)
        } else {
            return nil
        }
    }

    /// A unix socket path; nil if it does not fit sun_path.
    public init?(unixPath path: String) {
        let bytes = Array(path.utf8)
        var sa = sockaddr_un()
        guard bytes.count < MemoryLayout.size(ofValue: sa.sun_path) else { return nil }
        sa.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &sa.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
            raw[bytes.count] = 0
        }
        withUnsafeMutableBytes(of: &storage) { $0.storeBytes(of: sa, as: sockaddr_un.self) }
        length = socklen_t(MemoryLayout<sockaddr_un>.size)
    }

    /// AF_INET, AF_INET6 or AF_UNIX.
    public var family: Int32 { Int32(storage.ss_family) }

    /// A new non-blocking, close-on-exec stream socket of this address's family.
    public func makeSocket() -> Int32 {
        socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    }

    /// Calls `body` with the address as `sockaddr *` and its length.
    public func withSockaddr<T>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> T) -> T {
        withUnsafePointer(to: storage) { p in
            p.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, length) }
        }
    }
}

/// A connected pair of non-blocking, close-on-exec unix stream sockets (links between loops in one process,
/// tests). Nil with `errno` set when the call fails.
public func unixSocketPair() -> (Int32, Int32)? {
    var fds: [Int32] = [-1, -1]
    let type = Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue)
    guard socketpair(AF_UNIX, type, 0, &fds) == 0 else { return nil }
    return (fds[0], fds[1])
}

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
