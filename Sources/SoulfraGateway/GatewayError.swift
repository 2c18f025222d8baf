import SoulfraHTTP

/// An error answered to an app: status, stable code, message, and any headers it needs (design §5).
public struct GatewayError: Error, Sendable, Equatable {
    /// The documented error codes: the table in docs/api.md "Errors", each with the status it is sent with.
    public enum Code: Int, CaseIterable, Sendable {
        case unauthorized, keyDisabled, keyExpired, wrongWorld, insufficientPermissions, notFound, methodNotAllowed
        case invalidRequest, badRequest, requestTimeout, payloadTooLarge, upgradeRequired, rateLimited, tooManyStreams
        case headersTooLarge, notImplemented, replyTooLarge, instanceGone, messageTooLarge, badGateway, invalidUTF8
        case noHealthyInstance, shuttingDown, slowConsumer, overloaded, instanceTimeout, vaultUnavailable
        case analyticsUnavailable, usageExceeded, originNotAllowed, csrfFailed

        /// The code as apps see it (`rate_limited`).
        public var name: String { Self.table[rawValue].name }
        /// The HTTP status it is sent with (an HTTP/1.1 parse error keeps the parser's own: 414, 505, …).
        public var status: Int { Self.table[rawValue].status }

        static let table: [(name: String, status: Int)] = [
            ("unauthorized", 401), ("key_disabled", 401), ("key_expired", 401), ("wrong_world", 403),
            ("insufficient_permissions", 403), ("not_found", 404), ("method_not_allowed", 405),
            ("invalid_request", 400), ("bad_request", 400), ("request_timeout", 408), ("payload_too_large", 413),
            ("upgrade_required", 426), ("rate_limited", 429), ("too_many_streams", 429), ("headers_too_large", 431),
            ("not_implemented", 501), ("reply_too_large", 502), ("instance_gone", 502), ("message_too_large", 502),
            ("bad_gateway", 502), ("invalid_utf8", 502), ("no_healthy_instance", 503), ("shutting_down", 503),
            ("slow_consumer", 503), ("overloaded", 503), ("instance_timeout", 504), ("vault_unavailable", 503),
            ("analytics_unavailable", 503), ("usage_exceeded", 429),
            ("origin_not_allowed", 403), ("csrf_failed", 403),
        ]
    }

    public let status: Int
    public let code: Code
    public let message: String
    public var headers: [(String, String)] = []

    public static func == (l: GatewayError, r: GatewayError) -> Bool {
        l.status == r.status && l.code == r.code && l.message == r.message
            && l.headers.map(\.0) == r.headers.map(\.0) && l.headers.map(\.1) == r.headers.map(\.1)
    }

    /// An error with its code's status, or `status` where the HTTP/1.1 parser chose a more precise one.
    public init(_ code: Code, _ message: String, status: Int? = nil, headers: [(String, String)] = []) {
        self.status = status ?? code.status
        self.code = code
        self.message = message
        self.headers = headers
    }

    /// `{"error":{"code":"…","message":"…","request_id":"…"}}`
    public func json(requestID: String) -> String {
        #"{"error":{"code":"\#(code.name)","message":"\#(JSONText.escaped(message))","request_id":"\#(JSONText.escaped(requestID))"}}"#
    }

    static func notFound(_ path: String) -> GatewayError {
        GatewayError(.notFound, "no route for \(path)")
    }
    static func methodNotAllowed(_ method: String, allowed: [String]) -> GatewayError {
        GatewayError(.methodNotAllowed, "\(method) is not allowed here",
                     headers: [("allow", allowed.joined(separator: ", "))])
    }
    static let unauthorized = GatewayError(
        .unauthorized, "a valid API key is required (Authorization: Bearer sk-slfr_…)",
        headers: [("www-authenticate", #"Bearer realm="soulfra""#)])
}
