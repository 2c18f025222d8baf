import SoulfraMetrics
import SoulfraSettings

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
    func requestTimeoutNanos(world: String) -> UInt64 {
        UInt64(requestTimeoutByWorld[world] ?? requestTimeoutMilliseconds) * 1_000_000
    }
}

/// What the gateway counts, per loop; summed over loops for `/metrics`. Labels are bounded: route kinds,
/// status codes and the documented error codes, never keys or worlds.
public struct GatewayCounters: Sendable, Equatable {
    public var connections: [UInt64] = Array(repeating: 0, count: ClientProtocol.allCases.count)
    /// Connections ended, by `CloseReason`.
    public var closes: [UInt64] = Array(repeating: 0, count: CloseReason.allCases.count)
    public var tlsHandshakeFailures: UInt64 = 0
    public var requests: [UInt64] = Array(repeating: 0, count: ExchangeKind.allCases.count)
    /// Responses by status (index: the status code).
    public var responses: [UInt64] = Array(repeating: 0, count: 600)
    /// Refusals and failures, by `GatewayError.Code`.
    public var errors: [UInt64] = Array(repeating: 0, count: GatewayError.Code.allCases.count)
    public var retries: UInt64 = 0
    public var headerTimeouts: UInt64 = 0
    public var bodyTimeouts: UInt64 = 0
    public var idleTimeouts: UInt64 = 0
    public var rapidResetGoaways: UInt64 = 0
    public var protocolErrors: UInt64 = 0
    public var pacedEvents: UInt64 = 0
    public var slowSubscribers: UInt64 = 0
    public var creditHeld: UInt64 = 0
    /// Connections moved to the loop of their world.
    public var moves: UInt64 = 0
    public var sendTimeouts: UInt64 = 0
    public var requestTimeouts: UInt64 = 0
    public var overloadTimeouts: UInt64 = 0
    public var headerFloodResets: UInt64 = 0
    public var streamIDGoaways: UInt64 = 0
    public var outputPauses: UInt64 = 0
    public var addressRefusals: UInt64 = 0
    public var addressResetGoaways: UInt64 = 0
    /// Bytes held for clients plus credit their streams hold (what the output budget bounds), as of the last
    /// publish.
    public var heldBytes: Int = 0
    /// Unary request latency (head received → reply sent), fixed buckets in microseconds.
    public static let bucketsMicros: [UInt64] = [100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000,
                                                  250_000, 500_000, 1_000_000, 2_500_000, 5_000_000, 10_000_000]
    public var latencyBuckets: [UInt64] = Array(repeating: 0, count: bucketsMicros.count + 1)
    public var latencySumMicros: UInt64 = 0
    public var openConnections: Int = 0
    /// Bytes held for clients (send queues, TLS plaintext, HTTP/2 stream queues), as of the last publish.
    public var clientQueueBytes: Int = 0
    public var openExchanges: Int = 0

    public init() {}

    mutating func count(_ p: ClientProtocol) { connections[p.rawValue] += 1 }

    mutating func count(_ r: CloseReason) { closes[r.rawValue] += 1 }

    mutating func count(_ e: GatewayError.Code) { errors[e.rawValue] += 1 }

    /// Refusals and failures with code `e` so far.
    public func errors(_ e: GatewayError.Code) -> UInt64 { errors[e.rawValue] }

    mutating func observe(micros: UInt64) {
        var i = 0
        while i < Self.bucketsMicros.count && micros > Self.bucketsMicros[i] { i += 1 }
        latencyBuckets[i] &+= 1
        latencySumMicros &+= micros
    }

    public func merging(_ o: GatewayCounters) -> GatewayCounters {
        var m = self
        for i in m.connections.indices { m.connections[i] += o.connections[i] }
        for i in m.closes.indices { m.closes[i] += o.closes[i] }
        for i in m.requests.indices { m.requests[i] += o.requests[i] }
        for i in m.latencyBuckets.indices { m.latencyBuckets[i] += o.latencyBuckets[i] }
        for i in m.responses.indices { m.responses[i] += o.responses[i] }
        for i in m.errors.indices { m.errors[i] += o.errors[i] }
        m.tlsHandshakeFailures += o.tlsHandshakeFailures
        m.retries += o.retries
        m.headerTimeouts += o.headerTimeouts
        m.bodyTimeouts += o.bodyTimeouts
        m.idleTimeouts += o.idleTimeouts
        m.rapidResetGoaways += o.rapidResetGoaways
        m.protocolErrors += o.protocolErrors
        m.pacedEvents += o.pacedEvents
        m.slowSubscribers += o.slowSubscribers
        m.creditHeld += o.creditHeld
        m.moves += o.moves
        m.sendTimeouts += o.sendTimeouts
        m.requestTimeouts += o.requestTimeouts
        m.overloadTimeouts += o.overloadTimeouts
        m.headerFloodResets += o.headerFloodResets
        m.streamIDGoaways += o.streamIDGoaways
        m.outputPauses += o.outputPauses
        m.addressRefusals += o.addressRefusals
        m.addressResetGoaways += o.addressResetGoaways
        m.heldBytes += o.heldBytes
        m.latencySumMicros += o.latencySumMicros
        m.openConnections += o.openConnections
        m.clientQueueBytes += o.clientQueueBytes
        m.openExchanges += o.openExchanges
        return m
    }

    /// Prometheus text format.
    public func prometheusText() -> String {
        var o = PrometheusText(prefix: "soulfra_gateway")
        o.family("connections_total", .counter, "Client connections accepted, by protocol.")
        for p in ClientProtocol.allCases { o.sample("connections_total", ["protocol": p.name], connections[p.rawValue]) }
        o.family("closes_total", .counter, "Client connections ended, by the first reason they were given.")
        for r in CloseReason.allCases { o.sample("closes_total", ["reason": r.name], closes[r.rawValue]) }
        o.single("open_connections", .gauge, "Client connections open now.", openConnections)
        o.single("client_queue_bytes", .gauge, "Bytes queued for clients, not yet taken (bounded by credit and gateway.*_bytes).", clientQueueBytes)
        o.single("held_bytes", .gauge, "Bytes queued for clients plus the credit their streams hold: what gateway.output_budget_bytes bounds.", heldBytes)
        o.single("open_requests", .gauge, "Requests and streams in flight now.", openExchanges)
        o.family("requests_total", .counter, "Requests admitted, by route kind.")
        for k in ExchangeKind.allCases { o.sample("requests_total", ["kind": k.rawValue], requests[k.index]) }
        o.family("responses_total", .counter, "Responses by HTTP status.")
        for (s, n) in responses.enumerated() where n > 0 { o.sample("responses_total", ["status": String(s)], n) }
        o.family("errors_total", .counter, "Requests refused or ended with an error, by stable error code.")
        for c in GatewayError.Code.allCases { o.sample("errors_total", ["code": c.name], errors[c.rawValue]) }
        let singles: [(String, String, UInt64)] = [
            ("tls_handshake_failures_total", "TLS handshakes that failed.", tlsHandshakeFailures),
            ("retries_total", "Unary requests retried on another instance after theirs went away.", retries),
            ("header_timeouts_total", "Connections closed for not completing a request head in time (slowloris).", headerTimeouts),
            ("body_timeouts_total", "Unary requests whose body stalled past gateway.body_timeout_milliseconds (408).", bodyTimeouts),
            ("idle_timeouts_total", "Connections closed after gateway.idle_timeout_milliseconds with nothing in flight.", idleTimeouts),
            ("rapid_reset_goaways_total", "HTTP/2 connections ended with ENHANCE_YOUR_CALM for resetting streams too fast.", rapidResetGoaways),
            ("protocol_errors_total", "Connections ended for malformed HTTP/1.1, HTTP/2 or WebSocket input.", protocolErrors),
            ("paced_events_total", "rate_limits events sent to streaming clients.", pacedEvents),
            ("slow_subscribers_total", "Room subscribers dropped because their connection stopped reading.", slowSubscribers),
            ("credit_held_total", "Times a stream waited for credit because its connection or the gateway held its whole budget.", creditHeld),
            ("connection_moves_total", "Client connections moved to the loop that owns their world.", moves),
            ("send_timeouts_total", "Connections closed because their pending output did not move for gateway.send_timeout_milliseconds.", sendTimeouts),
            ("request_timeouts_total", "Requests whose instance did not answer within the request deadline (504 instance_timeout).", requestTimeouts),
            ("overload_timeouts_total", "Requests that waited for the gateway's output budget past their deadline (503 overloaded).", overloadTimeouts),
            ("header_flood_resets_total", "HTTP/2 streams reset because their header block decoded past four times the limit (HPACK bomb); decoding stopped there.", headerFloodResets),
            ("stream_id_goaways_total", "HTTP/2 connections ended with PROTOCOL_ERROR for HEADERS on a skipped, lower stream id.", streamIDGoaways),
            ("output_pauses_total", "Times a client's reading was paused because the gateway's own replies to it (pongs, errors) passed its budget.", outputPauses),
            ("address_refusals_total", "Connections closed on arrival because their client address opened too many too fast.", addressRefusals),
            ("address_reset_goaways_total", "HTTP/2 connections ended with ENHANCE_YOUR_CALM because their client address reset too many streams.", addressResetGoaways),
        ]
        for (n, h, v) in singles { o.single(n, .counter, h, v) }
        o.family("request_duration_seconds", .histogram, "Unary request latency at the gateway, head received to reply sent.")
        var cumulative: UInt64 = 0
        for (i, b) in Self.bucketsMicros.enumerated() {
            cumulative += latencyBuckets[i]
            o.sample("request_duration_seconds_bucket", ["le": String(Double(b) / 1e6)], cumulative)
        }
        cumulative += latencyBuckets[Self.bucketsMicros.count]
        o.sample("request_duration_seconds_bucket", ["le": "+Inf"], cumulative)
        o.sample("request_duration_seconds_sum", Double(latencySumMicros) / 1e6)
        o.sample("request_duration_seconds_count", cumulative)
        return o.text
    }
}
