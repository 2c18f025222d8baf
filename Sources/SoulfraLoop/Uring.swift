import CURing
import SoulfraNet
#if canImport(Glibc)
import Glibc
#endif

/// Why io_uring cannot be used here, with what to do about it.
public struct UringUnavailable: Error, CustomStringConvertible, Sendable {
    /// One paragraph: what failed, the likely cause, and the fix.
    public let description: String
}

/// What the start-up probe found.
public struct UringFeatures: Sendable, CustomStringConvertible {
    public let kernel: String
    public let setupFlags: UInt32
    public var description: String {
        var flags: [String] = []
        if setupFlags & (1 << 12) != 0 { flags.append("single_issuer") }
        if setupFlags & (1 << 13) != 0 { flags.append("defer_taskrun") }
        if setupFlags & (1 << 8) != 0 { flags.append("coop_taskrun") }
        return "io_uring on Linux \(kernel) (\(flags.isEmpty ? "no setup flags" : flags.joined(separator: ","))); multishot accept, multishot recv, provided buffer ring"
    }
}

/// Checks that io_uring and every feature the loop uses are available, before anything is started.
public enum UringProbe {
    public static func check() throws(UringUnavailable) -> UringFeatures {
        let kernel = kernelRelease()
        var err: Int32 = 0
        guard let ring = sf_ring_create(8, &err) else {
            throw UringUnavailable(description: explainSetupFailure(errno: -err, kernel: kernel))
        }
        defer { sf_ring_destroy(ring) }
        let needed: [(Int32, String)] = [
            (sf_op_accept(), "ACCEPT"), (sf_op_recv(), "RECV"), (sf_op_send(), "SEND"),
            (sf_op_timeout(), "TIMEOUT"), (sf_op_read(), "READ"), (sf_op_async_cancel(), "ASYNC_CANCEL"),
            (sf_op_write(), "WRITE"), (sf_op_fsync(), "FSYNC"),
        ]
        for (op, name) in needed where sf_ring_probe_opcode(ring, op) != 1 {
            throw UringUnavailable(description:
                "io_uring is available but this kernel (\(kernel)) does not support IORING_OP_\(name), which Soulfra's loop needs. "
                + "Soulfra needs Linux 6.0 or newer (multishot accept and recv, provided buffer rings). Upgrade the kernel.")
        }
        // Multishot recv (6.0) and registered buffer rings (5.19) cannot be probed by opcode; check the version.
        if let (major, _) = parseVersion(kernel), major < 6 {
            throw UringUnavailable(description:
                "this kernel (\(kernel)) is too old: Soulfra's loop uses multishot recv with a provided buffer ring, "
                + "which need Linux 6.0 or newer. Upgrade the kernel.")
        }
        var brErr: Int32 = 0
        guard let br = sf_buf_ring_create(ring, 8, 4096, 0, &brErr) else {
            throw UringUnavailable(description:
                "io_uring could not register a provided buffer ring (\(describe(errno: -brErr))) on Linux \(kernel). "
                + "Soulfra needs Linux 6.0 or newer with IORING_REGISTER_PBUF_RING.")
        }
        sf_buf_ring_destroy(ring, br)
        return UringFeatures(kernel: kernel, setupFlags: sf_ring_flags(ring))
    }

    static func explainSetupFailure(errno code: Int32, kernel: String) -> String {
        let disabled = readSmallFile("/proc/sys/kernel/io_uring_disabled")
            .flatMap { Int($0.trimmingWhitespace) }
        switch code {
        case ENOSYS:
            return "io_uring is not available: io_uring_setup returned ENOSYS on Linux \(kernel). Either the kernel was "
                + "built without CONFIG_IO_URING, or a seccomp profile (a container runtime's default, for instance) "
                + "answers io_uring_setup with ENOSYS. Fix: run on a kernel with io_uring, or allow io_uring_setup, "
                + "io_uring_enter and io_uring_register in the seccomp profile (Docker: --security-opt seccomp=<profile>)."
        case EPERM:
            if let d = disabled, d != 0 {
                return "io_uring is disabled by sysctl: kernel.io_uring_disabled=\(d) on Linux \(kernel) "
                    + "(1 allows only members of kernel.io_uring_group, 2 disables it for everyone). "
                    + "Fix: sysctl -w kernel.io_uring_disabled=0, or add this user to the group named by kernel.io_uring_group."
            }
            return "io_uring_setup was refused with EPERM on Linux \(kernel): a seccomp profile or an LSM blocks it. "
                + "Fix: allow io_uring_setup, io_uring_enter and io_uring_register for this process "
                + "(Docker: --security-opt seccomp=<profile that allows them>)."
        case ENOMEM:
            return "io_uring_setup failed with ENOMEM on Linux \(kernel): the locked-memory limit is too low for the ring. "
                + "Fix: raise RLIMIT_MEMLOCK (ulimit -l) or use a kernel ≥ 5.12, which accounts ring memory to the cgroup."
        default:
            return "io_uring_setup failed on Linux \(kernel): \(describe(errno: code)). Soulfra's broker needs io_uring (Linux 6.0+)."
        }
    }

    static func kernelRelease() -> String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
    }

    static func parseVersion(_ release: String) -> (Int, Int)? {
        let parts = release.split(whereSeparator: { !$0.isNumber }).prefix(2).compactMap { Int($0) }
        return parts.count == 2 ? (parts[0], parts[1]) : nil
    }
}

extension String {
    var trimmingWhitespace: String {
        var s = Substring(self)
        while let f = s.first, f.isWhitespace { s.removeFirst() }
        while let l = s.last, l.isWhitespace { s.removeLast() }
        return String(s)
    }
}

/// Reads a small text file (procfs, sysfs) without Foundation.
public func readSmallFile(_ path: String, limit: Int = 65_536) -> String? {
    let fd = open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    defer { close(fd) }
    var bytes = [UInt8](repeating: 0, count: limit)
    var n = 0
    while n < limit {
        let r = bytes.withUnsafeMutableBytes { read(fd, $0.baseAddress! + n, limit - n) }
        if r <= 0 { break }
        n += r
    }
    return String(decoding: bytes[..<n], as: UTF8.self)
}
