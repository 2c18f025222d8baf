/// An error answered to an app: status, stable code, message, and any headers it needs (design §5).
public struct GatewayError: Error, Sendable, Equatable {
    public let status: Int
    /// One of the documented codes (`unauthorized`, `rate_limited`, …).
    public let code: String
    public let message: String
    public var headers: [(String, String)] = []

    public static func == (l: GatewayError, r: GatewayError) -> Bool {
        l.status == r.status && l.code == r.code && l.message == r.message
            && l.headers.map(\.0) == r.headers.map(\.0) && l.headers.map(\.1) == r.headers.map(\.1)
    }

    public init(status: Int, code: String, message: String, headers: [(String, String)] = []) {
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
    }

    /// `{"error":{"code":"…","message":"…","request_id":"…"}}`
    public func json(requestID: String) -> String {
        #"{"error":{"code":"\#(code)","message":"\#(Self.escape(message))","request_id":"\#(Self.escape(requestID))"}}"#
    }

    static func escape(_ s: String) -> String {
        var out = ""
        out.reserveCapacity(s.utf8.count)
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case let c where c.value < 0x20:
                let hex = Array("0123456789abcdef")
                out += "\\u00" + String(hex[Int(c.value >> 4)]) + String(hex[Int(c.value & 0xF)])
            default: out.unicodeScalars.append(u)
            }
        }
        return out
    }

    static func notFound(_ path: String) -> GatewayError {
        GatewayError(status: 404, code: "not_found", message: "no route for \(path)")
    }
    static func methodNotAllowed(_ method: String, allowed: [String]) -> GatewayError {
        GatewayError(status: 405, code: "method_not_allowed", message: "\(method) is not allowed here",
                     headers: [("allow", allowed.joined(separator: ", "))])
    }
    static let unauthorized = GatewayError(
        status: 401, code: "unauthorized", message: "a valid API key is required (Authorization: Bearer sk-slfr_…)",
        headers: [("www-authenticate", #"Bearer realm="soulfra""#)])
}
