import COpenSSL

/// Encryption at rest for one world's events: AES-256-GCM with the world's own key. A sealed payload is
/// `nonce (12) · ciphertext · tag (16)`; the AAD binds it to its world, session and kind, so a record moved to
/// another world or session, or relabelled, does not open.
///
/// **Nonces never repeat under a key**: a nonce is the key's `epoch` (u32, raised and stored with the key every
/// time the world is opened) followed by a counter (u64) that only grows while it is open.
public final class VaultCipher {
    public static let keyBytes = 32
    public static let overheadBytes = 12 + 16
    /// The record flag of a sealed payload.
    public static let sealedFlag: UInt8 = 0x01

    private let key: [UInt8]
    public let epoch: UInt32
    private var counter: UInt64 = 0
    private let world: [UInt8]

    public init(key: [UInt8], epoch: UInt32, world: String) {
        precondition(key.count == Self.keyBytes, "an AES-256 key is 32 bytes")
        self.key = key
        self.epoch = epoch
        self.world = Array(world.utf8)
    }

    /// A fresh key from OpenSSL's generator (nil if it fails).
    public static func newKey() -> [UInt8]? {
        var k = [UInt8](repeating: 0, count: keyBytes)
        return sf_random_bytes(&k, Int32(keyBytes)) == 0 ? k : nil
    }

    private func aad(session: [UInt8], kind: UInt8) -> [UInt8] {
        var a: [UInt8] = []
        a.reserveCapacity(world.count + session.count + 5)
        a += withUnsafeBytes(of: UInt16(world.count).bigEndian, Array.init)
        a += world
        a += withUnsafeBytes(of: UInt16(session.count).bigEndian, Array.init)
        a += session
        a.append(kind)
        return a
    }

    /// Seals `plaintext` (nil only if OpenSSL fails).
    public func seal(_ plaintext: [UInt8], session: [UInt8], kind: UInt8) -> [UInt8]? {
        counter &+= 1
        var out = [UInt8](repeating: 0, count: plaintext.count + Self.overheadBytes)
        out.replaceSubrange(0..<4, with: withUnsafeBytes(of: epoch.bigEndian, Array.init))
        out.replaceSubrange(4..<12, with: withUnsafeBytes(of: counter.bigEndian, Array.init))
        let a = aad(session: session, kind: kind)
        let ok = out.withUnsafeMutableBufferPointer { o in
            sf_aes256gcm_seal(key, o.baseAddress!, a, a.count, plaintext, plaintext.count, o.baseAddress! + 12,
                              o.baseAddress! + 12 + plaintext.count)
        }
        return ok == 0 ? out : nil
    }

    /// Opens a sealed payload; nil when it does not check out (wrong key, world, session or kind, or damage).
    public func open(_ sealed: [UInt8], session: [UInt8], kind: UInt8) -> [UInt8]? {
        guard sealed.count >= Self.overheadBytes else { return nil }
        let n = sealed.count - Self.overheadBytes
        var out = [UInt8](repeating: 0, count: n)
        let a = aad(session: session, kind: kind)
        let ok = sealed.withUnsafeBufferPointer { s in
            out.withUnsafeMutableBufferPointer { o in
                sf_aes256gcm_open(key, s.baseAddress!, a, a.count, s.baseAddress! + 12, n, s.baseAddress! + 12 + n,
                                  o.baseAddress ?? UnsafeMutablePointer(mutating: s.baseAddress!))
            }
        }
        return ok == 0 ? out : nil
    }
}
