/// HTTP/1.1 response heads, for the gateway and the admin listener alike.
public enum HTTP1Response {
    /// The status line and fields, then `content-length` — or, without a length, `transfer-encoding: chunked`
    /// (none for 101, whose connection stops being HTTP, nor for 204 and 304, which have no body) — `connection: close` when asked, and the blank line.
    /// A `content-length` among `fields` is ignored: the length given here is the one that frames the body.
    public static func head(status: Int, fields: [(name: String, value: String)], contentLength: Int?, close: Bool) -> [UInt8] {
        var s = "HTTP/1.1 \(status) \(reasonPhrase(status))\r\n"
        for f in fields where f.name != "content-length" { s += "\(f.name): \(f.value)\r\n" }
        if status == 204 || status == 304 {
            // No body and no length (RFC 9110 §8.6).
        } else if let contentLength {
            s += "content-length: \(contentLength)\r\n"
        } else if status != 101 {
            s += "transfer-encoding: chunked\r\n"
        }
        if close { s += "connection: close\r\n" }
        s += "\r\n"
        return Array(s.utf8)
    }

    /// The reason phrase for the statuses Soulfra sends (RFC 9110 §15).
    public static func reasonPhrase(_ status: Int) -> String {
        switch status {
        case 101: "Switching Protocols"
        case 200: "OK"
        case 201: "Created"
        case 202: "Accepted"
        case 204: "No Content"
        case 303: "See Other"
        case 400: "Bad Request"
        case 401: "Unauthorized"
        case 403: "Forbidden"
        case 404: "Not Found"
        case 405: "Method Not Allowed"
        case 409: "Conflict"
        case 408: "Request Timeout"
        case 413: "Content Too Large"
        case 414: "URI Too Long"
        case 422: "Unprocessable Content"
        case 426: "Upgrade Required"
        case 429: "Too Many Requests"
        case 431: "Request Header Fields Too Large"
        case 501: "Not Implemented"
        case 502: "Bad Gateway"
        case 503: "Service Unavailable"
        case 504: "Gateway Timeout"
        case 505: "HTTP Version Not Supported"
        default: "Status"
        }
    }
}
