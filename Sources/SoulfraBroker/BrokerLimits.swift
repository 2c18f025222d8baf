import SoulfraWire

/// Every bound the broker enforces, in one place, each with its unit in its name.
/// `validate()` runs at start-up and names the offending key and its allowed range.
public struct BrokerLimits: Sendable, Equatable {
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

    /// A start-up configuration error: the key and what it must be.
    public struct Invalid: Error, CustomStringConvertible, Equatable {
        public let key: String
        public let message: String
        public var description: String { "\(key): \(message)" }
    }

    /// Checks every value against its allowed range.
    public func validate() throws(Invalid) {
        func check(_ ok: Bool, _ key: String, _ message: String) throws(Invalid) {
            if !ok { throw Invalid(key: key, message: message) }
        }
        try check((Wire.maxFrameBytesFloor...Wire.maxFrameBytesCeiling).contains(maxFrameBytes),
                  "max_frame_bytes", "must be between \(Wire.maxFrameBytesFloor) and \(Wire.maxFrameBytesCeiling), got \(maxFrameBytes)")
        try check((10...600_000).contains(heartbeatIntervalMilliseconds),
                  "heartbeat_interval_milliseconds", "must be between 10 and 600000, got \(heartbeatIntervalMilliseconds)")
        try check((1...100).contains(heartbeatMissesAllowed),
                  "heartbeat_misses_allowed", "must be between 1 and 100, got \(heartbeatMissesAllowed)")
        try check((10...600_000).contains(handshakeTimeoutMilliseconds),
                  "handshake_timeout_milliseconds", "must be between 10 and 600000, got \(handshakeTimeoutMilliseconds)")
        try check(streamCreditBytes >= maxFrameBytes && streamCreditBytes <= 1 << 30,
                  "stream_credit_bytes", "must be at least max_frame_bytes (\(maxFrameBytes)) and at most 1073741824, got \(streamCreditBytes)")
        try check((1...1 << 20).contains(streamCreditFrames),
                  "stream_credit_frames", "must be between 1 and 1048576, got \(streamCreditFrames)")
        try check(linkQueueBytesLow > 0 && linkQueueBytesLow < linkQueueBytesHigh,
                  "link_queue_bytes_low", "must be positive and below link_queue_bytes_high (\(linkQueueBytesHigh)), got \(linkQueueBytesLow)")
        try check(linkQueueBytesHigh < linkQueueBytesHard,
                  "link_queue_bytes_high", "must be below link_queue_bytes_hard (\(linkQueueBytesHard)), got \(linkQueueBytesHigh)")
        try check(linkQueueBytesHard >= Int(maxFrameBytes) * 2 && linkQueueBytesHard <= 1 << 30,
                  "link_queue_bytes_hard", "must be at least twice max_frame_bytes and at most 1073741824, got \(linkQueueBytesHard)")
        try check((1...3_600_000).contains(slowConsumerDeadlineMilliseconds),
                  "slow_consumer_deadline_milliseconds", "must be between 1 and 3600000, got \(slowConsumerDeadlineMilliseconds)")
        try check((1...1_000_000).contains(maxLinks), "max_links", "must be between 1 and 1000000, got \(maxLinks)")
        try check((1...1_000_000).contains(maxStreamsPerLink),
                  "max_streams_per_link", "must be between 1 and 1000000, got \(maxStreamsPerLink)")
        try check((1...16_000_000).contains(maxStreams), "max_streams", "must be between 1 and 16000000, got \(maxStreams)")
        try check((1...1_000_000).contains(roomSubscriberQueueFrames),
                  "room_subscriber_queue_frames", "must be between 1 and 1000000, got \(roomSubscriberQueueFrames)")
        try check((1...100_000_000).contains(affinitySessionsPerWorld),
                  "affinity_sessions_per_world", "must be between 1 and 100000000, got \(affinitySessionsPerWorld)")
        try check(shutdownDrainMilliseconds <= 3_600_000,
                  "shutdown_drain_milliseconds", "must be at most 3600000, got \(shutdownDrainMilliseconds)")
        try check(outlierConsecutiveFailures <= 1_000,
                  "outlier_consecutive_failures", "must be between 0 (off) and 1000, got \(outlierConsecutiveFailures)")
        try check((100...3_600_000).contains(outlierEjectionMilliseconds),
                  "outlier_ejection_milliseconds", "must be between 100 and 3600000, got \(outlierEjectionMilliseconds)")
        try check(outlierMaxEjectionPercent <= 100,
                  "outlier_max_ejection_percent", "must be between 0 and 100, got \(outlierMaxEjectionPercent)")
    }

    var heartbeatIntervalNanos: UInt64 { UInt64(heartbeatIntervalMilliseconds) * 1_000_000 }
    var heartbeatTimeoutNanos: UInt64 { heartbeatIntervalNanos * UInt64(heartbeatMissesAllowed) }
    var handshakeTimeoutNanos: UInt64 { UInt64(handshakeTimeoutMilliseconds) * 1_000_000 }
    var slowConsumerDeadlineNanos: UInt64 { UInt64(slowConsumerDeadlineMilliseconds) * 1_000_000 }
    var shutdownDrainNanos: UInt64 { UInt64(shutdownDrainMilliseconds) * 1_000_000 }
}
