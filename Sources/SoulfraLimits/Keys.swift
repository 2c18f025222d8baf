import SoulfraKeys

/// One API key as the gateway knows it: never the secret, only its digest.
public struct KeyRecord: Sendable, Equatable {
    public var id: UInt64
    public var digest: SecretDigest
    /// `sk-slfr_kids_a7B2c9…`, for logs and lists.
    public var prefix: String
    public var world: String
    public var permissions: Permissions
    /// Token bucket: sustained requests per second and burst (0: unlimited).
    public var requestsPerSecond: UInt32
    public var burst: UInt32
    /// Unix seconds after which the key is refused with `key_expired` (nil: never).
    public var expiresAt: UInt64?
    /// Revoked or disabled keys are refused with `key_disabled`.
    public var disabled: Bool
    /// The in-stream quotas the broker enforces (told to streaming clients in `rate_limits` events).
    public var framesPerSecond: UInt32 = 0
    public var bytesPerSecond: UInt32 = 0
    /// Interactions a calendar month (UTC) allows (0: no budget); past it requests are refused with
    /// `usage_exceeded` until `budgetResetsAt` (unix seconds: the next month's first second).
    public var monthlyInteractions: UInt64 = 0
    public var budgetResetsAt: UInt64 = 0
    /// `ratelimit-policy` and `ratelimit-limit` values: the same on every response, made once.
    public let rateLimitPolicy: String
    public let rateLimitLimit: String

    public init(id: UInt64, digest: SecretDigest, prefix: String, world: String, permissions: Permissions,
                requestsPerSecond: UInt32 = 0, burst: UInt32 = 0, expiresAt: UInt64? = nil, disabled: Bool = false) {
        self.id = id
        self.digest = digest
        self.prefix = prefix
        self.world = world
        self.permissions = permissions
        self.requestsPerSecond = requestsPerSecond
        self.burst = burst
        self.expiresAt = expiresAt
        self.disabled = disabled
        let capacity = max(burst, 1)
        self.rateLimitPolicy = "\"burst\";q=\(capacity);w=1"
        self.rateLimitLimit = String(capacity)
    }
}

/// What a key may do (design §6); defaults come from the world's template.
public struct Permissions: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let worldAccess = Permissions(rawValue: 1 << 0)
    public static let agentInteraction = Permissions(rawValue: 1 << 1)
    public static let vaultStorage = Permissions(rawValue: 1 << 2)
    public static let analyticsRead = Permissions(rawValue: 1 << 3)
    public static let userManagement = Permissions(rawValue: 1 << 4)

    /// The stable snake_case names used in config, keys and error messages.
    public static let names: [(String, Permissions)] = [
        ("world_access", .worldAccess), ("agent_interaction", .agentInteraction), ("vault_storage", .vaultStorage),
        ("analytics_read", .analyticsRead), ("user_management", .userManagement),
    ]

    public var names: [String] { Self.names.filter { contains($0.1) }.map(\.0) }
}
