/// An API key: `sk-slfr_<type>_<30 base62 random><6 base62 checksum>`, e.g. `sk-slfr_kids_a7B2…Xq91Zk`.
///
/// - Typed and `_`-separated, so a double-click selects it whole and a leak scanner can match it.
/// - The checksum is CRC32 (IEEE) of everything before it, in base62: a mistyped or made-up key is rejected
///   by `parse` before any table lookup.
/// - 30 random base62 characters carry ~178 bits: the key is stored only as its SHA-256 (`digest`), with a
///   visible `prefix` (type and the first 6 random characters) to recognise it in lists and logs.
public struct APIKey: Sendable, Equatable {
    public static let scheme = "sk-slfr_"
    public static let randomLength = 30
    public static let checksumLength = 6
    /// Key types are lowercase letters, 1 to 16 of them (`kids`, `exec`, `sports`, `custom`, …).
    public static let maxTypeLength = 16

    /// The world type the key was made for.
    public let type: String
    /// The whole key, as shown once at creation. Keep it out of logs; store `digest`.
    public let plaintext: String

    /// What the key table stores.
    public var digest: SecretDigest { SecretDigest(of: plaintext) }

    /// A prefix safe to show: `sk-slfr_kids_a7B2c9…`.
    public var prefix: String {
        let head = Self.scheme + type + "_"
        return head + plaintext.dropFirst(head.count).prefix(6) + "…"
    }

    /// Makes a new key of `type` with randomness from `rng` (SystemRandomNumberGenerator in production, a
    /// seeded generator in tests).
    public static func generate(type: String, using rng: inout some RandomNumberGenerator) -> APIKey? {
        guard validType(type) else { return nil }
        var body = Self.scheme + type + "_"
        for _ in 0..<randomLength { body.append(Character(Unicode.Scalar(base62[Int.random(in: 0..<62, using: &rng)]))) }
        return APIKey(type: type, plaintext: body + checksum(of: body))
    }

    /// Reads a key as presented (an `Authorization: Bearer` value, say). Nil when the shape or the checksum is
    /// wrong: such a key is refused without touching the key table.
    public static func parse(_ presented: some StringProtocol) -> APIKey? {
        let utf8 = Array(presented.utf8)
        let schemeBytes = Array(scheme.utf8)
        guard utf8.count > schemeBytes.count + 2 + randomLength + checksumLength,
              utf8.count <= schemeBytes.count + maxTypeLength + 1 + randomLength + checksumLength,
              Array(utf8.prefix(schemeBytes.count)) == schemeBytes else { return nil }
        let rest = utf8.dropFirst(schemeBytes.count)
        guard let sep = rest.firstIndex(of: UInt8(ascii: "_")) else { return nil }
        let typeBytes = rest[rest.startIndex..<sep]
        let tail = rest[(sep + 1)...]
        guard tail.count == randomLength + checksumLength, tail.allSatisfy(isBase62) else { return nil }
        let type = String(decoding: typeBytes, as: UTF8.self)
        guard validType(type) else { return nil }
        let text = String(decoding: utf8, as: UTF8.self)
        let body = String(decoding: utf8.dropLast(checksumLength), as: UTF8.self)
        guard text.hasSuffix(checksum(of: body)) else { return nil }
        return APIKey(type: type, plaintext: text)
    }

    static let base62: [UInt8] = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    static func isBase62(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
    }

    static func validType(_ t: String) -> Bool {
        !t.isEmpty && t.utf8.count <= maxTypeLength && t.utf8.allSatisfy { $0 >= 0x61 && $0 <= 0x7A }
    }

    /// CRC32 of `body`, as 6 base62 digits (62⁶ > 2³²).
    static func checksum(of body: String) -> String {
        var v = UInt64(CRC32.of(Array(body.utf8)))
        var digits = [UInt8](repeating: base62[0], count: checksumLength)
        for i in stride(from: checksumLength - 1, through: 0, by: -1) {
            digits[i] = base62[Int(v % 62)]
            v /= 62
        }
        return String(decoding: digits, as: UTF8.self)
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), table-driven.
public enum CRC32 {
    static let table: [UInt32] = (0..<256).map { i -> UInt32 in
        var c = UInt32(i)
        for _ in 0..<8 { c = c & 1 != 0 ? 0xEDB8_8320 ^ (c >> 1) : c >> 1 }
        return c
    }

    public static func of(_ bytes: some Sequence<UInt8>) -> UInt32 {
        var c: UInt32 = 0xFFFF_FFFF
        for b in bytes { c = table[Int((c ^ UInt32(b)) & 0xFF)] ^ (c >> 8) }
        return c ^ 0xFFFF_FFFF
    }
}
