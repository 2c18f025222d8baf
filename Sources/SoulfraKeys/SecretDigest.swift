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

    /// A digest given as 64 hex digits (how key files store keys); nil if malformed.
    public init?(hex: String) {
        let digits = Array(hex.utf8)
        guard digits.count == 64 else { return nil }
        var raw = [UInt8](repeating: 0, count: 32)
        for i in 0..<32 {
            guard let hi = Self.nibble(digits[2 * i]), let lo = Self.nibble(digits[2 * i + 1]) else { return nil }
            raw[i] = hi << 4 | lo
        }
        withUnsafeMutableBytes(of: &bytes) { $0.copyBytes(from: raw) }
    }

    /// A digest stored as its 32 bytes; nil if it is not 32 bytes long.
    public init?(raw: [UInt8]) {
        guard raw.count == 32 else { return nil }
        withUnsafeMutableBytes(of: &bytes) { $0.copyBytes(from: raw) }
    }

    /// The digest's 32 bytes (how the control state stores keys).
    public var raw: [UInt8] {
        var b = bytes
        return withUnsafeBytes(of: &b) { Array($0) }
    }

    /// The digest as 64 lowercase hex digits.
    public var hex: String {
        var b = bytes
        return withUnsafeBytes(of: &b) { raw in raw.map { String($0, radix: 16).count == 1 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined() }
    }

    static func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: c - 0x30
        case 0x61...0x66: c - 0x61 + 10
        case 0x41...0x46: c - 0x41 + 10
        default: nil
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

/// SHA-256 of bytes.
public func sha256(_ bytes: [UInt8]) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: 32)
    var input = bytes
    input.withUnsafeMutableBytes { b in out.withUnsafeMutableBytes { sf_sha256(b.baseAddress, b.count, $0.baseAddress!.assumingMemoryBound(to: UInt8.self)) } }
    return out
}

/// HMAC-SHA256 (RFC 2104): for secrets derived from a daemon secret, and for signatures.
public func hmacSHA256(key: [UInt8], message: [UInt8]) -> [UInt8] {
    var k = key.count > 64 ? sha256(key) : key
    k += [UInt8](repeating: 0, count: 64 - k.count)
    let inner = sha256(k.map { $0 ^ 0x36 } + message)
    return sha256(k.map { $0 ^ 0x5C } + inner)
}

/// Whether two secrets are equal, compared in constant time (CRYPTO_memcmp; only the lengths may differ fast).
public func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    guard !a.isEmpty else { return true }
    return a.withUnsafeBytes { pa in b.withUnsafeBytes { pb in sf_constant_time_equal(pa.baseAddress, pb.baseAddress, a.count) == 1 } }
}
