/// Limits of the HTTP/1.1 request parser, each with its unit in its name.
public struct HTTP1Limits: Sendable, Equatable {
    /// Request line (method, target, version); past it: 414.
    public var maxRequestLineBytes = 8 << 10
    /// The whole head (request line and header fields); past it: 431.
    public var maxHeadBytes = 32 << 10
    /// Header fields; past it: 431.
    public var maxHeaderCount = 100
    /// Request body (declared or chunked total); past it: 413.
    public var maxBodyBytes = 1 << 20
    /// One chunk-size line, extensions included; past it: 400.
    public var maxChunkLineBytes = 1_024
    /// Trailer section after the last chunk; past it: 431.
    public var maxTrailerBytes = 8 << 10

    public init() {}
}

/// A request's head.
public struct HTTPRequestHead: Sendable, Equatable {
    public enum Body: Sendable, Equatable {
        case none
        case length(Int)
        case chunked
    }

    public var method: String
    /// The request target as sent (origin form `/path?query`, or `*`, or absolute form).
    public var target: String
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    public var minorVersion: Int
    /// Header fields in order, names as sent.
    public var headers: [(name: String, value: String)]
    public var body: Body
    /// Whether the connection stays open after this exchange (version default, then `Connection`).
    public var keepAlive: Bool

    /// The first value of a header, matched case-insensitively.
    public func header(_ name: String) -> String? {
        headers.first { $0.name.lowercased() == name.lowercased() }?.value
    }

    public static func == (l: HTTPRequestHead, r: HTTPRequestHead) -> Bool {
        l.method == r.method && l.target == r.target && l.minorVersion == r.minorVersion && l.body == r.body
            && l.keepAlive == r.keepAlive && l.headers.map(\.name) == r.headers.map(\.name)
            && l.headers.map(\.value) == r.headers.map(\.value)
    }
}

/// Why a request was rejected: the status to answer with and a reason for the error body and the log.
public struct HTTP1Error: Error, Sendable, Equatable, CustomStringConvertible {
    public let status: Int
    public let reason: String
    public var description: String { "\(status): \(reason)" }
}

/// What the parser found.
public enum HTTP1Event {
    case head(HTTPRequestHead)
    /// Body bytes, in place: valid only during the callback.
    case body(UnsafeRawBufferPointer)
    /// The request is complete (its body, if any, fully delivered).
    case end
}

/// An incremental, sans-IO HTTP/1.1 request parser (RFC 9112).
///
/// Strict where leniency lets requests be smuggled: CRLF line endings only, no whitespace before a field's
/// colon, no obsolete line folding, Content-Length and Transfer-Encoding together refused, differing
/// Content-Lengths refused, only `chunked` as transfer coding. Body bytes are handed out in place; only a
/// head that spans reads is copied (bounded by `maxHeadBytes`). Pipelined requests parse one after another;
/// the callback can pause after any event, and `feed` reports how much it consumed.
public struct HTTP1Parser {
    enum State {
        case head
        case fixedBody(remaining: Int)
        case chunkSize
        case chunkData(remaining: Int)
        case chunkDataEnd
        case trailers
        case closed
        case failed(HTTP1Error)
    }

    public let limits: HTTP1Limits
    var state: State = .head
    /// Bytes of a head or chunk line that spans reads.
    var pending: [UInt8] = []
    var chunkedTotal = 0
    var trailerBytes = 0
    var keepAlive = true

    public init(limits: HTTP1Limits = HTTP1Limits()) {
        self.limits = limits
    }

    /// The error the parser stopped on, if any.
    public var error: HTTP1Error? {
        if case .failed(let e) = state { return e }
        return nil
    }

    /// True after a request whose connection does not stay open: nothing more is parsed.
    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    /// Whether the parser is between requests (nothing partial held).
    public var isIdle: Bool {
        if case .head = state { return pending.isEmpty }
        return false
    }

    /// Parses what it can of `bytes`. `onEvent` returns false to pause: `feed` then returns the bytes consumed
    /// so far, and the caller feeds the rest later. On a protocol error, `onError` runs once and the parser stops.
    @discardableResult
    public mutating func feed(
        _ bytes: UnsafeRawBufferPointer, onEvent: (HTTP1Event) -> Bool, onError: (HTTP1Error) -> Void = { _ in }
    ) -> Int {
        var i = 0
        let n = bytes.count
        while i < n {
            switch state {
            case .closed, .failed:
                return n
            case .head:
                // Find the end of the head ("\r\n\r\n"), scanning only bytes not scanned before.
                guard let (consumed, complete) = scanHead(bytes, from: i, onError: onError) else { return n }
                i += consumed
                guard complete else { return n }
                let head: HTTPRequestHead
                do {
                    head = try parseHead(pending)
                } catch {
                    fail(error, onError)
                    return n
                }
                pending.removeAll(keepingCapacity: pending.capacity <= 4096)
                keepAlive = head.keepAlive
                switch head.body {
                case .none: state = .fixedBody(remaining: 0)
                case .length(let l): state = .fixedBody(remaining: l)
                case .chunked:
                    state = .chunkSize
                    chunkedTotal = 0
                }
                if !onEvent(.head(head)) { return i }
                if case .fixedBody(0) = state {
                    finishRequest()
                    if !onEvent(.end) { return i }
                }
            case .fixedBody(let remaining):
                let take = min(remaining, n - i)
                precondition(take >= 0 && remaining >= 0, "a body length went negative")
                state = .fixedBody(remaining: remaining - take)
                let chunk = UnsafeRawBufferPointer(rebasing: bytes[i..<i + take])
                i += take
                // Paused after the last body bytes: `.end` comes with the next `feed` (even an empty one).
                if take > 0 && !onEvent(.body(chunk)) { return i }
                if remaining - take == 0 {
                    finishRequest()
                    if !onEvent(.end) { return i }
                }
            case .chunkSize:
                guard let line = takeLine(bytes, &i, limit: limits.maxChunkLineBytes, what: "chunk-size line", onError: onError) else {
                    return n
                }
                guard let size = Self.parseChunkSize(line) else {
                    fail(HTTP1Error(status: 400, reason: "invalid chunk size"), onError)
                    return n
                }
                if size == 0 {
                    state = .trailers
                    trailerBytes = 0
                    continue
                }
                chunkedTotal += size
                if chunkedTotal > limits.maxBodyBytes {
                    fail(HTTP1Error(status: 413, reason: "chunked body exceeds \(limits.maxBodyBytes) bytes"), onError)
                    return n
                }
                state = .chunkData(remaining: size)
            case .chunkData(let remaining):
                let take = min(remaining, n - i)
                let chunk = UnsafeRawBufferPointer(rebasing: bytes[i..<i + take])
                i += take
                state = remaining - take == 0 ? .chunkDataEnd : .chunkData(remaining: remaining - take)
                if !onEvent(.body(chunk)) { return i }
            case .chunkDataEnd:
                guard let line = takeLine(bytes, &i, limit: 2, what: "chunk terminator", onError: onError) else { return n }
                guard line.isEmpty else {
                    fail(HTTP1Error(status: 400, reason: "chunk data not followed by CRLF"), onError)
                    return n
                }
                state = .chunkSize
            case .trailers:
                guard let line = takeLine(bytes, &i, limit: limits.maxTrailerBytes, what: "trailer field", onError: onError) else {
                    return n
                }
                trailerBytes += line.count + 2
                if trailerBytes > limits.maxTrailerBytes {
                    fail(HTTP1Error(status: 431, reason: "trailer section exceeds \(limits.maxTrailerBytes) bytes"), onError)
                    return n
                }
                if line.isEmpty {
                    finishRequest()
                    if !onEvent(.end) { return i }
                }
            }
        }
        // A request with an empty body completes without more input.
        if case .fixedBody(0) = state {
            finishRequest()
            _ = onEvent(.end)
        }
        return n
    }

    mutating func finishRequest() {
        state = keepAlive ? .head : .closed
    }

    mutating func fail(_ e: HTTP1Error, _ onError: (HTTP1Error) -> Void) {
        state = .failed(e)
        pending.removeAll()
        onError(e)
    }

    /// Appends head bytes to `pending` until the blank line. Returns bytes consumed and whether the head is
    /// complete; nil after failing.
    mutating func scanHead(_ bytes: UnsafeRawBufferPointer, from start: Int, onError: (HTTP1Error) -> Void) -> (Int, Bool)? {
        var i = start
        while i < bytes.count {
            let b = bytes[i]
            pending.append(b)
            i += 1
            let c = pending.count
            if b == 0x0A {
                guard c >= 2 && pending[c - 2] == 0x0D else {
                    fail(HTTP1Error(status: 400, reason: "bare LF in the request head"), onError)
                    return nil
                }
                // Empty lines before the request line are ignored (RFC 9112 §2.2).
                if c == 2 {
                    pending.removeAll(keepingCapacity: true)
                    continue
                }
                if c >= 4 && pending[c - 3] == 0x0A && pending[c - 4] == 0x0D { return (i - start, true) }
            }
            if c > limits.maxHeadBytes {
                fail(HTTP1Error(status: 431, reason: "request head exceeds \(limits.maxHeadBytes) bytes"), onError)
                return nil
            }
            if !pending.contains(0x0A) && c > limits.maxRequestLineBytes {
                fail(HTTP1Error(status: 414, reason: "request line exceeds \(limits.maxRequestLineBytes) bytes"), onError)
                return nil
            }
        }
        return (i - start, false)
    }

    /// Takes one CRLF-terminated line (without the CRLF), spanning reads through `pending`; nil if incomplete
    /// or failed.
    mutating func takeLine(
        _ bytes: UnsafeRawBufferPointer, _ i: inout Int, limit: Int, what: String, onError: (HTTP1Error) -> Void
    ) -> [UInt8]? {
        while i < bytes.count {
            let b = bytes[i]
            i += 1
            if b == 0x0A {
                guard pending.last == 0x0D else {
                    fail(HTTP1Error(status: 400, reason: "bare LF in \(what)"), onError)
                    return nil
                }
                pending.removeLast()
                defer { pending.removeAll(keepingCapacity: true) }
                return pending
            }
            pending.append(b)
            if pending.count > limit + 1 {
                fail(HTTP1Error(status: limit == limits.maxTrailerBytes ? 431 : 400, reason: "\(what) too long"), onError)
                return nil
            }
        }
        return nil
    }

    static func parseChunkSize(_ line: [UInt8]) -> Int? {
        var size = 0
        var digits = 0
        for b in line {
            let v: Int
            switch b {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = Int(b - UInt8(ascii: "0"))
            case UInt8(ascii: "a")...UInt8(ascii: "f"): v = Int(b - UInt8(ascii: "a")) + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): v = Int(b - UInt8(ascii: "A")) + 10
            case UInt8(ascii: ";"), UInt8(ascii: " "), UInt8(ascii: "\t"):
                return digits > 0 ? size : nil  // chunk extensions are ignored
            default: return nil
            }
            digits += 1
            guard digits <= 15 else { return nil }  // no overflow games
            size = size * 16 + v
        }
        return digits > 0 ? size : nil
    }

    /// Parses a complete head (request line and fields, ending in CRLF CRLF).
    func parseHead(_ head: [UInt8]) throws(HTTP1Error) -> HTTPRequestHead {
        var lines: [ArraySlice<UInt8>] = []
        var start = 0
        for k in 0..<head.count where head[k] == 0x0A {
            lines.append(head[start..<k - 1])  // without CR
            start = k + 1
        }
        // The last element is the empty line.
        guard lines.count >= 2, lines.last!.isEmpty else { throw HTTP1Error(status: 400, reason: "malformed request head") }
        let (method, target, minor) = try parseRequestLine(lines[0])
        let fieldLines = lines[1..<lines.count - 1]
        guard fieldLines.count <= limits.maxHeaderCount else {
            throw HTTP1Error(status: 431, reason: "more than \(limits.maxHeaderCount) header fields")
        }
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(fieldLines.count)
        var contentLength: Int?
        var transferEncoding: String?
        var connection = ""
        var hosts = 0
        for line in fieldLines {
            guard let first = line.first, first != 0x20 && first != 0x09 else {
                throw HTTP1Error(status: 400, reason: "obsolete line folding is not accepted")
            }
            guard let colon = line.firstIndex(of: UInt8(ascii: ":")) else { throw HTTP1Error(status: 400, reason: "header field without a colon") }
            let nameBytes = line[line.startIndex..<colon]
            guard !nameBytes.isEmpty, nameBytes.allSatisfy(Self.isTokenByte) else {
                throw HTTP1Error(status: 400, reason: "invalid header field name")
            }
            var valueBytes = line[(colon + 1)...]
            while let f = valueBytes.first, f == 0x20 || f == 0x09 { valueBytes = valueBytes.dropFirst() }
            while let l = valueBytes.last, l == 0x20 || l == 0x09 { valueBytes = valueBytes.dropLast() }
            guard valueBytes.allSatisfy({ $0 == 0x09 || ($0 >= 0x20 && $0 != 0x7F) }) else {
                throw HTTP1Error(status: 400, reason: "invalid character in a header field value")
            }
            let name = String(decoding: nameBytes, as: UTF8.self)
            let value = String(decoding: valueBytes, as: UTF8.self)
            headers.append((name, value))
            switch name.lowercased() {
            case "content-length":
                guard !value.isEmpty, value.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }), value.utf8.count <= 15, let l = Int(value) else {
                    throw HTTP1Error(status: 400, reason: "invalid Content-Length")
                }
                if let c = contentLength, c != l { throw HTTP1Error(status: 400, reason: "conflicting Content-Length values") }
                contentLength = l
            case "transfer-encoding":
                transferEncoding = (transferEncoding.map { $0 + "," } ?? "") + value
            case "connection":
                connection += "," + value.lowercased()
            case "host":
                hosts += 1
            default:
                break
            }
        }
        if minor == 1 && hosts == 0 {
            throw HTTP1Error(status: 400, reason: "HTTP/1.1 request without Host")
        }
        // RFC 9112 §3.2: a request with more than one Host field is refused (two hosts are an ambiguity a proxy
        // and its backend may resolve differently).
        if hosts > 1 { throw HTTP1Error(status: 400, reason: "more than one Host header field") }
        let body = try bodyFraming(contentLength: contentLength, transferEncoding: transferEncoding, minor: minor)
        let tokens = connection.split(separator: ",").map { $0.trimmingSpaces }
        let keepAlive = minor == 1 ? !tokens.contains("close") : tokens.contains("keep-alive")
        return HTTPRequestHead(method: method, target: target, minorVersion: minor, headers: headers, body: body, keepAlive: keepAlive)
    }

    /// Method, target and minor version from the request line (RFC 9112 §3).
    func parseRequestLine(_ requestLine: ArraySlice<UInt8>) throws(HTTP1Error) -> (String, String, Int) {
        guard requestLine.count <= limits.maxRequestLineBytes else {
            throw HTTP1Error(status: 414, reason: "request line exceeds \(limits.maxRequestLineBytes) bytes")
        }
        let parts = requestLine.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: false)
        guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty else {
            throw HTTP1Error(status: 400, reason: "malformed request line")
        }
        guard parts[0].allSatisfy(Self.isTokenByte) else { throw HTTP1Error(status: 400, reason: "invalid method") }
        guard parts[1].allSatisfy({ $0 > 0x20 && $0 != 0x7F }) else { throw HTTP1Error(status: 400, reason: "invalid request target") }
        let version = Array(parts[2])
        let minor: Int
        if version == Array("HTTP/1.1".utf8) {
            minor = 1
        } else if version == Array("HTTP/1.0".utf8) {
            minor = 0
        } else if version.starts(with: Array("HTTP/".utf8)) {
            throw HTTP1Error(status: 505, reason: "HTTP version not supported")
        } else {
            throw HTTP1Error(status: 400, reason: "malformed HTTP version")
        }
        return (String(decoding: parts[0], as: UTF8.self), String(decoding: parts[1], as: UTF8.self), minor)
    }

    /// How the body is framed (RFC 9112 §6.3): chunked, a length, or none; conflicting or unsupported framing
    /// is refused.
    func bodyFraming(contentLength: Int?, transferEncoding: String?, minor: Int) throws(HTTP1Error) -> HTTPRequestHead.Body {
        if let te = transferEncoding {
            guard contentLength == nil else {
                throw HTTP1Error(status: 400, reason: "both Content-Length and Transfer-Encoding")
            }
            let codings = te.lowercased().split(separator: ",").map { $0.trimmingSpaces }
            guard codings == ["chunked"] else {
                throw HTTP1Error(status: 501, reason: "only the chunked transfer coding is supported")
            }
            guard minor == 1 else { throw HTTP1Error(status: 400, reason: "Transfer-Encoding in an HTTP/1.0 request") }
            return .chunked
        } else if let l = contentLength {
            guard l <= limits.maxBodyBytes else {
                throw HTTP1Error(status: 413, reason: "body of \(l) bytes exceeds \(limits.maxBodyBytes)")
            }
            return l == 0 ? .none : .length(l)
        }
        return .none
    }

    /// tchar (RFC 9110 §5.6.2).
    static func isTokenByte(_ b: UInt8) -> Bool {
        switch b {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(b)
        }
    }
}

extension Substring {
    var trimmingSpaces: String {
        var s = self
        while let f = s.first, f == " " || f == "\t" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" { s.removeLast() }
        return String(s)
    }
}
