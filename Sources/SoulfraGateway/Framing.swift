/// How replies are framed for the client, and the few fields the gateway reads from a request body.
enum Framing {
    /// One Server-Sent Event: `event:` (optional) and one `data:` line per line of the payload.
    static func sse(_ payload: UnsafeRawBufferPointer, event: String? = nil, into out: inout [UInt8]) {
        if let event { out.append(contentsOf: "event: \(event)\n".utf8) }
        var start = 0
        for i in 0..<payload.count where payload[i] == 0x0A {
            out.append(contentsOf: "data: ".utf8)
            out.append(contentsOf: payload[start..<i])
            out.append(0x0A)
            start = i + 1
        }
        out.append(contentsOf: "data: ".utf8)
        out.append(contentsOf: payload[start...])
        out.append(contentsOf: [0x0A, 0x0A])
    }

    /// One NDJSON line (the payload's own trailing newline is kept, one is added otherwise).
    static func ndjson(_ payload: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        out.append(contentsOf: payload)
        if payload.last != 0x0A { out.append(0x0A) }
    }

    /// Part of one SSE event as a message arrives in parts: `data: ` opens it, every newline in the payload
    /// starts another `data:` line, and the blank line closes it with the message's last part. The same bytes
    /// as `sse` for a message in one part.
    static func ssePart(_ payload: UnsafeRawBufferPointer, first: Bool, last: Bool, into out: inout [UInt8]) {
        if first { out.append(contentsOf: "data: ".utf8) }
        var start = 0
        for i in 0..<payload.count where payload[i] == 0x0A {
            out.append(contentsOf: payload[start..<i])
            out.append(contentsOf: "\ndata: ".utf8)
            start = i + 1
        }
        out.append(contentsOf: payload[start...])
        if last { out.append(contentsOf: [0x0A, 0x0A]) }
    }

    /// Part of one NDJSON line; the newline follows the message's last part unless it ended with one.
    static func ndjsonPart(_ payload: UnsafeRawBufferPointer, lastByte: inout UInt8, last: Bool, into out: inout [UInt8]) {
        out.append(contentsOf: payload)
        if let b = payload.last { lastByte = b }
        if last {
            if lastByte != 0x0A { out.append(0x0A) }
            lastByte = 0
        }
    }

    /// A control event's JSON: `{"event":"rate_limits",…}`.
    static func rateLimits(paced: Bool, framesPerSecond: UInt32, bytesPerSecond: UInt32) -> String {
        #"{"event":"rate_limits","paced":\#(paced),"frames_per_second":\#(framesPerSecond),"bytes_per_second":\#(bytesPerSecond)}"#
    }

    static func errorEvent(_ e: GatewayError, retryable: Bool, requestID: String) -> String {
        #"{"event":"error","error":{"code":"\#(e.code)","message":"\#(GatewayError.escape(e.message))","retryable":\#(retryable),"request_id":"\#(requestID)"}}"#
    }
}

/// The top-level `"session"` (a string) and `"stream"` (a boolean) of a JSON object, read without building
/// the object. Nil when the body is not a JSON object.
struct MessageFields: Equatable {
    var session = ""
    var stream = false

    static func scan(_ b: [UInt8]) -> MessageFields? {
        var i = 0
        let n = b.count
        func ws() { while i < n && (b[i] == 0x20 || b[i] == 0x0A || b[i] == 0x0D || b[i] == 0x09) { i += 1 } }
        /// Reads a string starting at `"`; returns its raw bytes (escapes kept, which is fine for matching
        /// names and for session ids, which are [a-z0-9-_]).
        func string() -> ArraySlice<UInt8>? {
            guard i < n, b[i] == 0x22 else { return nil }
            i += 1
            let start = i
            while i < n {
                if b[i] == 0x5C { i += 2; continue }
                if b[i] == 0x22 { i += 1; return b[start..<(i - 1)] }
                i += 1
            }
            return nil
        }
        /// Skips any value; false on malformed input.
        func skipValue() -> Bool {
            guard i < n else { return false }
            switch b[i] {
            case 0x22: return string() != nil
            case 0x7B, 0x5B:
                var depth = 0
                while i < n {
                    switch b[i] {
                    case 0x22: if string() == nil { return false }; continue
                    case 0x7B, 0x5B: depth += 1
                    case 0x7D, 0x5D:
                        depth -= 1
                        if depth == 0 { i += 1; return true }
                    default: break
                    }
                    i += 1
                }
                return false
            default:
                let start = i
                while i < n, b[i] != 0x2C, b[i] != 0x7D, b[i] != 0x5D, b[i] != 0x20, b[i] != 0x0A, b[i] != 0x0D, b[i] != 0x09 { i += 1 }
                return i > start
            }
        }
        var f = MessageFields()
        ws()
        guard i < n, b[i] == 0x7B else { return nil }
        i += 1
        ws()
        if i < n && b[i] == 0x7D { i += 1; ws(); return i == n ? f : nil }
        while true {
            ws()
            guard let name = string() else { return nil }
            ws()
            guard i < n, b[i] == 0x3A else { return nil }
            i += 1
            ws()
            let valueStart = i
            if name.elementsEqual("session".utf8), i < n, b[i] == 0x22 {
                guard let s = string() else { return nil }
                f.session = String(decoding: s, as: UTF8.self)
            } else {
                guard skipValue() else { return nil }
                if name.elementsEqual("stream".utf8) { f.stream = b[valueStart..<i].elementsEqual("true".utf8) }
            }
            ws()
            guard i < n else { return nil }
            if b[i] == 0x2C { i += 1; continue }
            guard b[i] == 0x7D else { return nil }
            i += 1
            ws()
            return i == n ? f : nil
        }
    }
}

/// Lowercase hex digits (chunk sizes, request ids).
let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

/// HTTP reason phrases for the statuses the gateway sends.
func reasonPhrase(_ status: Int) -> String {
    switch status {
    case 101: "Switching Protocols"
    case 200: "OK"
    case 202: "Accepted"
    case 400: "Bad Request"
    case 401: "Unauthorized"
    case 403: "Forbidden"
    case 404: "Not Found"
    case 405: "Method Not Allowed"
    case 408: "Request Timeout"
    case 413: "Content Too Large"
    case 414: "URI Too Long"
    case 426: "Upgrade Required"
    case 429: "Too Many Requests"
    case 431: "Request Header Fields Too Large"
    case 501: "Not Implemented"
    case 502: "Bad Gateway"
    case 503: "Service Unavailable"
    case 505: "HTTP Version Not Supported"
    default: "Status"
    }
}

/// Whether `s` contains the ASCII `needle` (byte-wise; header values are ASCII).
func containsASCII(_ s: String, _ needle: StaticString) -> Bool {
    let n = needle.utf8CodeUnitCount
    var s = s
    return s.withUTF8 { h in
        guard h.count >= n else { return false }
        let p = needle.utf8Start
        outer: for i in 0...(h.count - n) {
            for j in 0..<n where h[i + j] != p[j] { continue outer }
            return true
        }
        return false
    }
}
