import SoulfraHTTP

/// How replies are framed for the client, and the few fields the gateway reads from a request body.
enum Framing {
    /// One Server-Sent Event: `event:` (optional) and one `data:` line per line of the payload.
    static func sse(_ payload: UnsafeRawBufferPointer, event: String? = nil, into out: inout [UInt8]) {
        if let event { out.append(contentsOf: "event: \(event)\n".utf8) }
        var lastByte: UInt8 = 0
        ssePart(payload, first: true, last: true, lastByte: &lastByte, into: &out)
    }

    /// One NDJSON line (the payload's own trailing newline is kept, one is added otherwise).
    static func ndjson(_ payload: UnsafeRawBufferPointer, into out: inout [UInt8]) {
        out.append(contentsOf: payload)
        if payload.last != 0x0A { out.append(0x0A) }
    }

    /// Part of one SSE event as a message arrives in parts: `data: ` opens it, every line break in the payload
    /// starts another `data:` line, and the blank line closes it with the message's last part. LF, CR and CRLF
    /// all end an SSE line (WHATWG HTML §9.2.6), so all three are breaks here: a payload cannot inject a field
    /// (`event:`, `id:`, `retry:`). `lastByte` carries a CR over to the next part, so a CRLF split between
    /// parts is one break.
    static func ssePart(_ payload: UnsafeRawBufferPointer, first: Bool, last: Bool, lastByte: inout UInt8,
                        into out: inout [UInt8]) {
        if first { out.append(contentsOf: "data: ".utf8) }
        var i = lastByte == 0x0D && payload.first == 0x0A ? 1 : 0
        var start = i
        while i < payload.count {
            let b = payload[i]
            if b == 0x0A || b == 0x0D {
                out.append(contentsOf: payload[start..<i])
                out.append(contentsOf: "\ndata: ".utf8)
                if b == 0x0D && i + 1 < payload.count && payload[i + 1] == 0x0A { i += 1 }
                start = i + 1
            }
            i += 1
        }
        out.append(contentsOf: payload[start...])
        if let b = payload.last { lastByte = b }
        if last {
            out.append(contentsOf: [0x0A, 0x0A])
            lastByte = 0
        }
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
        #"{"event":"error","error":{"code":"\#(e.code.name)","message":"\#(JSONText.escaped(e.message))","retryable":\#(retryable),"request_id":"\#(requestID)"}}"#
    }
}

/// The top-level `"session"` (a string) and `"stream"` (a boolean) of a JSON object, read without building
/// the object. Nil when the body is not a JSON object.
///
/// It runs over every message body, so it is one pass over raw bytes with no allocation but the session
/// string: string contents are skipped a word at a time (most of a large body is one long string).
struct MessageFields: Equatable {
    var session = ""
    var stream = false

    static func scan(_ body: [UInt8]) -> MessageFields? {
        body.withUnsafeBytes { raw in
            var s = JSONScanner(raw)
            return s.topLevelFields()
        }
    }
}

/// A cursor over JSON bytes that checks structure and skips values (MessageFields).
struct JSONScanner {
    let b: UnsafeRawBufferPointer
    var i = 0
    init(_ b: UnsafeRawBufferPointer) { self.b = b }

    @inline(__always) mutating func ws() {
        while i < b.count {
            let c = b[i]
            guard c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 else { return }
            i += 1
        }
    }

    /// A string starting at `"`; returns its raw byte range (escapes kept, which is fine for matching names
    /// and for session ids, which are [a-z0-9-_]).
    mutating func string() -> Range<Int>? {
        guard i < b.count, b[i] == 0x22 else { return nil }
        i += 1
        let start = i
        let n = b.count
        let base = b.baseAddress!
        while i < n {
            // Eight bytes at a time while none of them is a quote or a backslash.
            while i + 8 <= n {
                let w = base.loadUnaligned(fromByteOffset: i, as: UInt64.self)
                if Self.hasByte(w, 0x22) || Self.hasByte(w, 0x5C) { break }
                i += 8
            }
            guard i < n else { break }
            let c = b[i]
            if c == 0x5C { i += 2; continue }
            if c == 0x22 { i += 1; return start..<(i - 1) }
            i += 1
        }
        return nil
    }

    /// Whether any byte of `w` equals `v` (the classic SWAR test).
    @inline(__always) static func hasByte(_ w: UInt64, _ v: UInt8) -> Bool {
        let x = w ^ (0x0101_0101_0101_0101 &* UInt64(v))
        return (x &- 0x0101_0101_0101_0101) & ~x & 0x8080_8080_8080_8080 != 0
    }

    /// Skips any value; false on malformed input.
    mutating func skipValue() -> Bool {
        guard i < b.count else { return false }
        switch b[i] {
        case 0x22: return string() != nil
        case 0x7B, 0x5B:
            var depth = 0
            while i < b.count {
                switch b[i] {
                case 0x22:
                    if string() == nil { return false }
                    continue
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
            while i < b.count {
                let c = b[i]
                if c == 0x2C || c == 0x7D || c == 0x5D || c == 0x20 || c == 0x0A || c == 0x0D || c == 0x09 { break }
                i += 1
            }
            return i > start
        }
    }

    func equals(_ r: Range<Int>, _ s: StaticString) -> Bool {
        guard r.count == s.utf8CodeUnitCount else { return false }
        let p = s.utf8Start
        for k in 0..<r.count where b[r.lowerBound + k] != p[k] { return false }
        return true
    }

    /// Reads the top-level object's `session` and `stream`; nil unless the whole input is one JSON object.
    mutating func topLevelFields() -> MessageFields? {
        var f = MessageFields()
        ws()
        guard i < b.count, b[i] == 0x7B else { return nil }
        i += 1
        ws()
        if i < b.count && b[i] == 0x7D { i += 1; ws(); return i == b.count ? f : nil }
        while true {
            ws()
            guard let name = string() else { return nil }
            ws()
            guard i < b.count, b[i] == 0x3A else { return nil }
            i += 1
            ws()
            let valueStart = i
            if equals(name, "session"), i < b.count, b[i] == 0x22 {
                guard let r = string() else { return nil }
                f.session = String(decoding: UnsafeRawBufferPointer(rebasing: b[r]), as: UTF8.self)
            } else {
                guard skipValue() else { return nil }
                if equals(name, "stream") { f.stream = equals(valueStart..<i, "true") }
            }
            ws()
            guard i < b.count else { return nil }
            if b[i] == 0x2C { i += 1; continue }
            guard b[i] == 0x7D else { return nil }
            i += 1
            ws()
            return i == b.count ? f : nil
        }
    }
}

/// Lowercase hex digits (chunk sizes, request ids).
let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

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
