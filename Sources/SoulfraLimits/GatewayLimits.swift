import SoulfraWire

/// The gateway's own bounds (config section `gateway`). Every bound has a counter and a named reason when
/// it is hit (see `GatewayCounters`).
public struct GatewayLimits: Sendable, Equatable, SettingsTable {
    /// Request bodies larger than this are refused with 413 `payload_too_large` (unary messages and room
    /// publishes are held whole so a request can be retried on another instance).
    public var maxBodyBytes = 1 << 20
    /// A unary reply larger than this ends the request with 502 `reply_too_large`.
    public var maxReplyBytes = 1 << 20
    /// One NDJSON line (one frame) in a full-duplex stream.
    public var maxLineBytes = 64 << 10
    /// A connection must complete a request head (HTTP/1.1) or the HTTP/2 preface within this (slowloris).
    public var headerTimeoutMilliseconds: UInt32 = 10_000
    /// A unary request (message, publish) whose body stops arriving for this long is answered 408 (slow
    /// POST). Full-duplex streams are long-lived by design and have no such bound.
    public var bodyTimeoutMilliseconds: UInt32 = 30_000
    /// A connection with no request in flight is closed after this.
    public var idleTimeoutMilliseconds: UInt32 = 120_000
    /// HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS.
    public var maxConcurrentStreams: UInt32 = 256
    /// HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE, and the HTTP/1.1 head limit.
    public var maxHeaderListBytes: UInt32 = 16 << 10
    /// HTTP/2 stream resets allowed per second (sustained, burst) before GOAWAY ENHANCE_YOUR_CALM.
    public var resetsPerSecond: UInt32 = 100
    public var resetBurst: UInt32 = 200
    /// What one client connection may hold for its client: output not yet taken by the client plus the
    /// credit its streams hold at the broker (what their instances may still send), in client bytes. The
    /// credit a connection's streams hold in total fits in it, as HTTP/2's connection window bounds its
    /// streams; a client that stops reading stops its instances once this much is held. Output past it (only
    /// the gateway's own replies: pongs, errors) pauses reading the client.
    public var connectionOutputHighBytes = 256 << 10
    /// The most credit one stream may hold (its window grows to this while its client keeps up).
    public var streamQueueHighBytes = 64 << 10
    /// What all client connections together may hold (per daemon; each loop gets its share). Past it, streams
    /// wait for credit until connections drain.
    public var outputBudgetBytes = 256 << 20
    /// A connection whose pending output has not moved for this long is closed (`send_timeout`): a client
    /// that stopped reading gives its budget back.
    public var sendTimeoutMilliseconds: UInt32 = 30_000
    /// A request's instance must answer in this time, else 504 `instance_timeout` (unary: the whole reply;
    /// streams: the first reply frame after the request, or the client's first message, went out). 0: off.
    public var requestTimeoutMilliseconds: UInt32 = 30_000
    /// Per-world overrides of `requestTimeoutMilliseconds`.
    public var requestTimeoutByWorld: [String: UInt32] = [:]
    /// New connections one client address may open per second (sustained, burst), per loop; past it they are
    /// closed at once (`address_rate_limited`).
    public var connectionsPerSecondPerAddress: UInt32 = 500
    public var connectionBurstPerAddress: UInt32 = 1_000
    /// HTTP/2 stream resets one client address may send per second (sustained, burst) across its connections,
    /// per loop; past it the connection that reset gets GOAWAY ENHANCE_YOUR_CALM.
    public var resetsPerSecondPerAddress: UInt32 = 200
    public var resetBurstPerAddress: UInt32 = 400
    /// Room subscribers whose connection holds this many unsent bytes are dropped (`slow_consumer`): a slow
    /// viewer never slows the room.
    public var roomSubscriberOutputBytes = 1 << 20
    /// Retry-After on 503.
    public var retryAfterSeconds: UInt32 = 1

    public init() {}

    /// The `gateway` section's numeric settings.
    public static let settings: [Setting<GatewayLimits>] = [
        Setting("max_body_bytes", \.maxBodyBytes, 1_024...(256 << 20)),
        Setting("max_reply_bytes", \.maxReplyBytes, 1_024...(256 << 20)),
        Setting("max_line_bytes", \.maxLineBytes, 256...(16 << 20), note: "at most broker.max_frame_bytes"),
        Setting("header_timeout_milliseconds", \.headerTimeoutMilliseconds, 100...600_000),
        Setting("body_timeout_milliseconds", \.bodyTimeoutMilliseconds, 100...3_600_000),
        Setting("idle_timeout_milliseconds", \.idleTimeoutMilliseconds, 1_000...86_400_000),
        Setting("max_concurrent_streams", \.maxConcurrentStreams, 1...100_000),
        Setting("max_header_list_bytes", \.maxHeaderListBytes, 1_024...(1 << 20)),
        Setting("resets_per_second", \.resetsPerSecond, 1...1_000_000),
        Setting("reset_burst", \.resetBurst, 1...1_000_000),
        Setting("connection_output_high_bytes", \.connectionOutputHighBytes, (16 << 10)...(1 << 30)),
        Setting("stream_queue_high_bytes", \.streamQueueHighBytes, (4 << 10)...(1 << 29)),
        Setting("output_budget_bytes", \.outputBudgetBytes, (16 << 10)...(1 << 40)),
        Setting("send_timeout_milliseconds", \.sendTimeoutMilliseconds, 1_000...3_600_000),
        Setting("request_timeout_milliseconds", \.requestTimeoutMilliseconds, 0...3_600_000, note: "0: off, else at least 100"),
        Setting("connections_per_second_per_address", \.connectionsPerSecondPerAddress, 1...1_000_000),
        Setting("connection_burst_per_address", \.connectionBurstPerAddress, 1...1_000_000),
        Setting("resets_per_second_per_address", \.resetsPerSecondPerAddress, 1...1_000_000),
        Setting("reset_burst_per_address", \.resetBurstPerAddress, 1...1_000_000),
        Setting("room_subscriber_output_bytes", \.roomSubscriberOutputBytes, (16 << 10)...(1 << 30)),
        Setting("retry_after_seconds", \.retryAfterSeconds, 1...3_600),
    ]

    /// Checks every range, then the bounds that depend on each other.
    public func validate() throws(SettingError) {
        try checkRanges()
        func check(_ ok: Bool, _ key: String, _ message: String) throws(SettingError) {
            if !ok { throw SettingError(key: key, message: message) }
        }
        try check(streamQueueHighBytes <= connectionOutputHighBytes / 2, "stream_queue_high_bytes",
                  "must be at most half of connection_output_high_bytes (\(connectionOutputHighBytes)), got \(streamQueueHighBytes)")
        try check(outputBudgetBytes >= connectionOutputHighBytes, "output_budget_bytes",
                  "must be at least connection_output_high_bytes (\(connectionOutputHighBytes)), got \(outputBudgetBytes)")
        for (world, ms) in [("", requestTimeoutMilliseconds)] + requestTimeoutByWorld.sorted(by: { $0.key < $1.key }).map({ ($0.key, $0.value) }) {
            try check(ms == 0 || (100...3_600_000).contains(ms),
                      world.isEmpty ? "request_timeout_milliseconds" : "request_timeout_by_world.\(world)",
                      "must be 0 (off) or between 100 and 3600000, got \(ms)")
        }
    }

    /// The request deadline for `world`, in nanoseconds (0: none).
    public func requestTimeoutNanos(world: String) -> UInt64 {
        UInt64(requestTimeoutByWorld[world] ?? requestTimeoutMilliseconds) * 1_000_000
    }
}
