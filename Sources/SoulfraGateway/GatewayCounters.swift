import SoulfraMetrics

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
    public var accessLogDropped: UInt64 = 0
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
    /// Each world's latency by route kind (filled at publish, see `Gateway.countersSnapshot`).
    public var worldLatency: [String: WorldLatency] = [:]

    public init() {}

    mutating func count(_ p: ClientProtocol) { connections[p.rawValue] += 1 }

    mutating func count(_ r: CloseReason) { closes[r.rawValue] += 1 }

    mutating func count(_ e: GatewayError.Code) { errors[e.rawValue] += 1 }

    /// Refusals and failures with code `e` so far.
    public func errors(_ e: GatewayError.Code) -> UInt64 { errors[e.rawValue] }

    mutating func observe(micros: UInt64) {
        latencyBuckets[Self.bucket(micros)] &+= 1
        latencySumMicros &+= micros
    }

    /// The bucket of `bucketsMicros` a latency falls in (the last: above them all). Compares constants: the
    /// table itself is a lazily made global, not worth reaching for twice per request.
    @inline(__always) static func bucket(_ micros: UInt64) -> Int {
        switch micros {
        case ...100: 0
        case ...250: 1
        case ...500: 2
        case ...1_000: 3
        case ...2_500: 4
        case ...5_000: 5
        case ...10_000: 6
        case ...25_000: 7
        case ...50_000: 8
        case ...100_000: 9
        case ...250_000: 10
        case ...500_000: 11
        case ...1_000_000: 12
        case ...2_500_000: 13
        case ...5_000_000: 14
        case ...10_000_000: 15
        default: 16
        }
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
        m.accessLogDropped += o.accessLogDropped
        m.heldBytes += o.heldBytes
        m.latencySumMicros += o.latencySumMicros
        m.openConnections += o.openConnections
        m.clientQueueBytes += o.clientQueueBytes
        m.openExchanges += o.openExchanges
        m.worldLatency.merge(o.worldLatency) { $0.merging($1) }
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
            ("access_log_dropped_total", "Access log entries dropped: more than 65536 a loop between publishes (a second), or 262144 waiting for the control plane.", accessLogDropped),
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
        worldLatencyText(&o)
        return o.text
    }

    /// `soulfra_gateway_world_request_duration_seconds{world, route}`: route kinds a world has had requests on.
    func worldLatencyText(_ o: inout PrometheusText) {
        guard !worldLatency.isEmpty else { return }
        o.family("world_credit_stalls_total", .counter, "Times a world's stream waited for credit because its client, or the loop's output budget, held it back.")
        for world in worldLatency.keys.sorted() { o.sample("world_credit_stalls_total", ["world": world], worldLatency[world]!.creditStalls) }
        o.family("world_request_duration_seconds", .histogram,
                 "Request latency per world and route kind: unary, head to complete reply; streamed, head to the reply's start.")
        let width = WorldLatency.width
        for world in worldLatency.keys.sorted() {
            let l = worldLatency[world]!
            for kind in ExchangeKind.allCases {
                let row = l.buckets[(kind.index * width)..<((kind.index + 1) * width)]
                let total = row.reduce(0, +)
                guard total > 0 else { continue }
                var cumulative: UInt64 = 0
                for (i, b) in Self.bucketsMicros.enumerated() {
                    cumulative += row[row.startIndex + i]
                    o.sample("world_request_duration_seconds_bucket", ["world": world, "route": kind.rawValue, "le": String(Double(b) / 1e6)], cumulative)
                }
                o.sample("world_request_duration_seconds_bucket", ["world": world, "route": kind.rawValue, "le": "+Inf"], total)
                o.sample("world_request_duration_seconds_sum", ["world": world, "route": kind.rawValue], Double(l.sumMicros[kind.index]) / 1e6)
                o.sample("world_request_duration_seconds_count", ["world": world, "route": kind.rawValue], total)
            }
        }
    }
}
