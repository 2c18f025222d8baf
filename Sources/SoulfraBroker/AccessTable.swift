import SoulfraKeys
import SoulfraLimits
import SoulfraWire


/// Who may attach and what each key may do: an immutable snapshot, replaced whole (never edited in place)
/// when keys or tokens change, so a loop reads it without locks. Tokens are held only as SHA-256 digests.
public final class AccessTable: Sendable {
    /// Keys by id.
    public let keys: [UInt64: KeyQuota]
    /// Instance token digests, one per world.
    let instanceTokens: [String: SecretDigest]
    /// Digests of the daemon-wide tokens for runtime, vault and gateway peers (nil: that kind is disabled).
    let runtimeToken: SecretDigest?
    let vaultToken: SecretDigest?
    let gatewayToken: SecretDigest?

    /// Builds the table; an empty token disables its kind (or world).
    public init(
        keys: [KeyQuota] = [], instanceTokens: [String: String] = [:],
        runtimeToken: String = "", vaultToken: String = "", gatewayToken: String = ""
    ) {
        var byID: [UInt64: KeyQuota] = [:]
        for k in keys { byID[k.keyID] = k }
        self.keys = byID
        self.instanceTokens = instanceTokens.filter { !$0.value.isEmpty }.mapValues(SecretDigest.init(of:))
        func digest(_ t: String) -> SecretDigest? { t.isEmpty ? nil : SecretDigest(of: t) }
        self.runtimeToken = digest(runtimeToken)
        self.vaultToken = digest(vaultToken)
        self.gatewayToken = digest(gatewayToken)
    }

    /// Whether `token` admits a peer of `kind` (in `world`, for instances). The presented token is hashed and
    /// the digests compared in constant time.
    func admits(kind: PeerKind, world: String, token: String) -> Bool {
        let expected: SecretDigest?
        switch kind {
        case .instance: expected = instanceTokens[world]
        case .runtime: expected = runtimeToken
        case .vault: expected = vaultToken
        case .gateway: expected = gatewayToken
        }
        guard let expected else { return false }
        return expected.matches(SecretDigest(of: token))
    }
}
