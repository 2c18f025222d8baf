import SoulfraWire

/// Every bound the broker enforces, in one place, each with its unit in its name.
/// `validate()` runs at start-up and names the offending key and its allowed range.
public struct BrokerLimits: Sendable, Equatable, SettingsTable {
    /// The largest frame payload the broker accepts or sends; peers may negotiate lower.
    public var maxFrameBytes: UInt32 = 64 << 10
    /// The broker PINGs each link at this interval.
    public var heartbeatIntervalMilliseconds: UInt32 = 1_000
    /// A link silent for this many intervals is closed with `heartbeat_timeout`.
    public var heartbeatMissesAllowed: UInt32 = 3
    /// A link that has not sent a valid HELLO in this time is closed with `handshake_timeout`.
    public var handshakeTimeoutMilliseconds: UInt32 = 5_000
    /// Every stream starts with this send window in each direction.
    public var streamCreditBytes: UInt32 = 256 << 10
    /// Every stream starts with this many frames of send window in each direction.
    public var streamCreditFrames: UInt32 = 1_024
    /// Below this, a congested link's paused producers are resumed.
    public var linkQueueBytesLow: Int = 256 << 10
    /// Above this, producers feeding the link are paused (and app-side links start their slow-consumer clock).
    public var linkQueueBytesHigh: Int = 1 << 20
    /// Above this, app-side links and reliable room subscribers are closed with `slow_consumer`.
    public var linkQueueBytesHard: Int = 8 << 20
    /// An app-side link that stays above the high watermark this long is closed with `slow_consumer`.
    public var slowConsumerDeadlineMilliseconds: UInt32 = 5_000
    /// Links (all kinds) the broker keeps at once.
    public var maxLinks: Int = 16_384
    /// Streams plus subscriptions one link may hold.
    public var maxStreamsPerLink: Int = 16_384
    /// Streams across the broker.
    public var maxStreams: Int = 262_144
    /// A drop-oldest room subscriber keeps at most this many frames waiting; older ones are dropped.
    public var roomSubscriberQueueFrames: Int = 256
    /// Sessions remembered per world for affinity; the oldest pin is forgotten past this.
    public var affinitySessionsPerWorld: Int = 65_536
    /// On shutdown, streams get this long to finish before links are closed.
    public var shutdownDrainMilliseconds: UInt32 = 5_000
    /// Passive outlier detection: an instance whose streams fail this many times in a row (the opener gave up
    /// with `timeout`, or the instance ended them with an error) leaves rotation for a while. 0: off.
    public var outlierConsecutiveFailures: UInt32 = 5
    /// How long the first ejection lasts; each further ejection of the same instance doubles it (up to 32×).
    public var outlierEjectionMilliseconds: UInt32 = 10_000
    /// At most this share of a world's instances is out of rotation at once (a world with one instance
    /// never loses it: answering slowly beats not answering).
    public var outlierMaxEjectionPercent: UInt32 = 50

    public init() {}

    /// Checks every value against its range, then the bounds that depend on each other.
    public func validate() throws(SettingError) {
        try checkRanges()
        func check(_ ok: Bool, _ key: String, _ message: String) throws(SettingError) {
            if !ok { throw SettingError(key: key, message: message) }
        }
        try check(streamCreditBytes >= maxFrameBytes,
                  "stream_credit_bytes", "must be at least max_frame_bytes (\(maxFrameBytes)), got \(streamCreditBytes)")
        try check(linkQueueBytesLow < linkQueueBytesHigh,
                  "link_queue_bytes_low", "must be below link_queue_bytes_high (\(linkQueueBytesHigh)), got \(linkQueueBytesLow)")
        try check(linkQueueBytesHigh < linkQueueBytesHard,
                  "link_queue_bytes_high", "must be below link_queue_bytes_hard (\(linkQueueBytesHard)), got \(linkQueueBytesHigh)")
        try check(linkQueueBytesHard >= Int(maxFrameBytes) * 2,
                  "link_queue_bytes_hard", "must be at least twice max_frame_bytes (\(maxFrameBytes)), got \(linkQueueBytesHard)")
    }

    public var heartbeatIntervalNanos: UInt64 { UInt64(heartbeatIntervalMilliseconds) * 1_000_000 }
    public var heartbeatTimeoutNanos: UInt64 { heartbeatIntervalNanos * UInt64(heartbeatMissesAllowed) }
    public var handshakeTimeoutNanos: UInt64 { UInt64(handshakeTimeoutMilliseconds) * 1_000_000 }
    public var slowConsumerDeadlineNanos: UInt64 { UInt64(slowConsumerDeadlineMilliseconds) * 1_000_000 }
    public var shutdownDrainNanos: UInt64 { UInt64(shutdownDrainMilliseconds) * 1_000_000 }
}

extension BrokerLimits {
    /// The `broker` section's numeric settings.
    public static let settings: [Setting<BrokerLimits>] = [
        Setting("max_frame_bytes", \.maxFrameBytes, UInt32(Wire.maxFrameBytesFloor)...UInt32(Wire.maxFrameBytesCeiling)),
        Setting("heartbeat_interval_milliseconds", \.heartbeatIntervalMilliseconds, 10...600_000),
        Setting("heartbeat_misses_allowed", \.heartbeatMissesAllowed, 1...100),
        Setting("handshake_timeout_milliseconds", \.handshakeTimeoutMilliseconds, 10...600_000),
        Setting("stream_credit_bytes", \.streamCreditBytes, 1_024...(1 << 30)),
        Setting("stream_credit_frames", \.streamCreditFrames, 1...(1 << 20)),
        Setting("link_queue_bytes_low", \.linkQueueBytesLow, 1...(1 << 30)),
        Setting("link_queue_bytes_high", \.linkQueueBytesHigh, 1...(1 << 30)),
        Setting("link_queue_bytes_hard", \.linkQueueBytesHard, 1...(1 << 30)),
        Setting("slow_consumer_deadline_milliseconds", \.slowConsumerDeadlineMilliseconds, 1...3_600_000),
        Setting("max_links", \.maxLinks, 1...1_000_000),
        Setting("max_streams_per_link", \.maxStreamsPerLink, 1...1_000_000),
        Setting("max_streams", \.maxStreams, 1...16_000_000),
        Setting("room_subscriber_queue_frames", \.roomSubscriberQueueFrames, 1...1_000_000),
        Setting("affinity_sessions_per_world", \.affinitySessionsPerWorld, 1...100_000_000),
        Setting("shutdown_drain_milliseconds", \.shutdownDrainMilliseconds, 0...3_600_000),
        Setting("outlier_consecutive_failures", \.outlierConsecutiveFailures, 0...1_000, note: "0: off"),
        Setting("outlier_ejection_milliseconds", \.outlierEjectionMilliseconds, 100...3_600_000),
        Setting("outlier_max_ejection_percent", \.outlierMaxEjectionPercent, 0...100),
    ]
}

/// How a world's streams are spread over its instances.
public enum BalancerPolicy: String, Sendable, CaseIterable {
    /// The instance with the fewest open streams; ties go round-robin.
    case leastOutstanding = "least_outstanding"
    /// Each instance in turn.
    case roundRobin = "round_robin"
}

/// The quotas of one API key, as the broker enforces them inside streams.
public struct KeyQuota: Sendable, Equatable {
    /// The key's id as carried in OPEN (never the secret).
    public var keyID: UInt64
    /// The only world this key can reach.
    public var world: String
    /// Streams open at once (0: unlimited).
    public var maxStreams: Int
    /// Frames per second the key's streams may send towards the world (0: unlimited).
    public var framesPerSecond: UInt32
    /// Bytes per second the key's streams may send towards the world (0: unlimited).
    public var bytesPerSecond: UInt32

    public init(keyID: UInt64, world: String, maxStreams: Int = 0, framesPerSecond: UInt32 = 0, bytesPerSecond: UInt32 = 0) {
        self.keyID = keyID
        self.world = world
        self.maxStreams = maxStreams
        self.framesPerSecond = framesPerSecond
        self.bytesPerSecond = bytesPerSecond
    }
}
