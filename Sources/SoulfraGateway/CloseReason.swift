/// Why a client connection ended. Every connection is counted once, by the first reason it was given
/// (`soulfra_gateway_closes_total{reason}`), like the broker's link closes.
public enum CloseReason: Int, CaseIterable, Sendable {
    /// The client closed or reset it first.
    case clientClosed
    /// Its conversation was over: HTTP/1.1 without keep-alive, an HTTP/2 session after GOAWAY, a WebSocket
    /// after its close handshake.
    case finished
    /// Malformed HTTP/1.1, HTTP/2 or WebSocket input, or TLS on the cleartext port.
    case protocolError
    /// A TLS handshake or record failed.
    case tlsError
    /// HTTP/2 streams reset too fast, by the connection or by its client address: GOAWAY ENHANCE_YOUR_CALM.
    case resetFlood
    /// No complete request head within `gateway.header_timeout_milliseconds` (slowloris).
    case headerTimeout
    /// An HTTP/1.1 request body stalled past `gateway.body_timeout_milliseconds`.
    case bodyTimeout
    /// Nothing in flight for `gateway.idle_timeout_milliseconds`.
    case idleTimeout
    /// Pending output did not move for `gateway.send_timeout_milliseconds` (dropped, not flushed).
    case sendTimeout
    /// A unary HTTP/1.1 reply failed after it started: closing is the only way to tell the client.
    case replyCutOff
    /// A WebSocket whose stream failed, or whose world sent text that is not UTF-8 (closed with 1011).
    case streamFailed
    /// The daemon shut down.
    case shutdown
    /// The connection's HTTP/2 session could not be created.
    case sessionFailed

    /// The metric label.
    public var name: String { Self.names[rawValue] }

    static let names = [
        "client_closed", "finished", "protocol_error", "tls_error", "reset_flood", "header_timeout", "body_timeout",
        "idle_timeout", "send_timeout", "reply_cut_off", "stream_failed", "shutdown", "session_failed",
    ]
}

/// How a client connection speaks (`soulfra_gateway_connections_total{protocol}`): TLS is counted on its own
/// when accepted, then as the protocol ALPN chose.
public enum ClientProtocol: Int, CaseIterable, Sendable {
    case http1, h2, tls

    /// The metric label.
    public var name: String { ["http1", "h2", "tls"][rawValue] }
}
