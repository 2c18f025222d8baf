import COpenSSL

/// The SHA-256 of a secret. Tokens are kept only in this form once the table is built.
public struct SecretDigest: Sendable, Hashable {
    var bytes: (UInt64, UInt64, UInt64, UInt64) = (0, 0, 0, 0)

    public init(of secret: String) {
        var utf8 = Array(secret.utf8)
        withUnsafeMutableBytes(of: &bytes) { out in
            utf8.withUnsafeMutableBytes { sf_sha256($0.baseAddress, $0.count, out.baseAddress!.assumingMemoryBound(to: UInt8.self)) }
        }
    }

    /// Compares in constant time (CRYPTO_memcmp).
    public func matches(_ other: SecretDigest) -> Bool {
        var a = bytes, b = other.bytes
        return withUnsafeBytes(of: &a) { pa in
            withUnsafeBytes(of: &b) { pb in sf_constant_time_equal(pa.baseAddress, pb.baseAddress, 32) == 1 }
        }
    }

    public static func == (l: SecretDigest, r: SecretDigest) -> Bool { l.matches(r) }

    /// Hashing a digest of a high-entropy secret reveals nothing useful, so a key table can index by it;
    /// equality stays constant-time.
    public func hash(into h: inout Hasher) {
        h.combine(bytes.0)
        h.combine(bytes.1)
        h.combine(bytes.2)
        h.combine(bytes.3)
    }
}


/// SHA-1, for protocols that fix it (the WebSocket handshake). Never for secrets.
public func sha1(_ bytes: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 20)
    bytes.withUnsafeBytes { b in out.withUnsafeMutableBytes { sf_sha1(b.baseAddress, b.count, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) } }
    return out
}
