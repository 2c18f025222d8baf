/// WebSocket (RFC 6455) for `/v1/worlds/{w}/ws`: the handshake's accept value and a sans-IO frame codec.
public enum WebSocket {
    public static let guid = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    /// Close codes (RFC 6455 §7.4.1) the gateway uses.
    public enum CloseCode: UInt16, Sendable {
        case normal = 1000
        case goingAway = 1001
        case protocolError = 1002
        case unsupportedData = 1003
        case invalidPayload = 1007
        case policyViolation = 1008
        case messageTooBig = 1009
        case internalError = 1011
        case tryAgainLater = 1013
    }

    public enum Opcode: UInt8, Sendable {
        case continuation = 0, text = 1, binary = 2, close = 8, ping = 9, pong = 10
        var isControl: Bool { rawValue >= 8 }
    }

    /// Checks an upgrade request's headers; returns the `Sec-WebSocket-Accept` value, or why it is refused.
    public static func accept(_ head: HTTPRequestHead, sha1: ([UInt8]) -> [UInt8]) -> Result<String, HTTP1Error> {
        guard head.method == "GET", head.minorVersion == 1 else { return .failure(HTTP1Error(status: 400, reason: "WebSocket upgrades are GET over HTTP/1.1")) }
        guard head.header("upgrade")?.lowercased() == "websocket" else { return .failure(HTTP1Error(status: 400, reason: "missing Upgrade: websocket")) }
        guard let conn = head.header("connection"), conn.lowercased().split(separator: ",").contains(where: { $0.trimmingSpaces == "upgrade" }) else {
            return .failure(HTTP1Error(status: 400, reason: "missing Connection: Upgrade"))
        }
        guard head.header("sec-websocket-version") == "13" else {
            return .failure(HTTP1Error(status: 426, reason: "only WebSocket version 13 is supported"))
        }
        guard let key = head.header("sec-websocket-key"), let raw = Base64.decode(key), raw.count == 16 else {
            return .failure(HTTP1Error(status: 400, reason: "Sec-WebSocket-Key must be 16 bytes in base64"))
        }
        return .success(Base64.encode(sha1(Array((key + guid).utf8))))
    }

    /// Appends one frame. Server frames are unmasked; client frames (load driver, tests) pass a mask.
    public static func encodeFrame(_ opcode: Opcode, payload: [UInt8], fin: Bool = true, mask: (UInt8, UInt8, UInt8, UInt8)? = nil,
                                   into out: inout [UInt8]) {
        out.append((fin ? 0x80 : 0) | opcode.rawValue)
        let m: UInt8 = mask == nil ? 0 : 0x80
        switch payload.count {
        case ..<126: out.append(m | UInt8(payload.count))
        case ..<65_536:
            out.append(m | 126)
            out.append(UInt8(payload.count >> 8)); out.append(UInt8(payload.count & 0xFF))
        default:
            out.append(m | 127)
            for shift in stride(from: 56, through: 0, by: -8) { out.append(UInt8((UInt64(payload.count) >> UInt64(shift)) & 0xFF)) }
        }
        guard let (a, b, c, d) = mask else {
            out.append(contentsOf: payload)
            return
        }
        let key = [a, b, c, d]
        out.append(contentsOf: key)
        for (i, byte) in payload.enumerated() { out.append(byte ^ key[i & 3]) }
    }

    /// A close frame's payload: code and UTF-8 reason (cut to fit the 125-byte control-frame limit).
    public static func closePayload(_ code: CloseCode, _ reason: String) -> [UInt8] {
        [UInt8(code.rawValue >> 8), UInt8(code.rawValue & 0xFF)] + Array(reason.utf8.prefix(123))
    }
}

/// What a WebSocket peer sent. Data messages are handed on in parts as their bytes arrive (never buffered
/// whole): `first` and `last` mark a message's ends, and an empty message is one part with both set. Byte
/// buffers are valid only during the callback.
public enum WebSocketEvent {
    case data(binary: Bool, UnsafeRawBufferPointer, first: Bool, last: Bool)
    case ping(UnsafeRawBufferPointer)
    case pong(UnsafeRawBufferPointer)
    /// A valid close: its code (nil when the frame had none) and UTF-8 reason. Nothing is decoded after it.
    case close(code: UInt16?, reason: UnsafeRawBufferPointer)
}

/// Decodes client-to-server frames incrementally (any chunking), enforcing RFC 6455: masking, reserved
/// bits and opcodes, control-frame rules, fragmentation order, UTF-8 in text messages (checked as the bytes
/// arrive, across fragments), close codes and reasons (§7.4), and a message-size limit. A violation yields
/// the close code to send and stops decoding; so does a close frame. Memory held is one frame header, one
/// control frame and the unmasked bytes of one input chunk.
public struct WebSocketDecoder {
    public let maxMessageBytes: Int
    /// Client frames must be masked (RFC 6455 §5.1); the gateway's own tests of the client side turn this off.
    public let requireMask: Bool
    public private(set) var failed: WebSocket.CloseCode?
    /// A close frame was received: nothing more is decoded.
    public private(set) var closeReceived = false

    var header: [UInt8] = []
    var inFrame = false
    var opcode = WebSocket.Opcode.continuation
    var fin = false
    var mask: (UInt8, UInt8, UInt8, UInt8)?
    var remaining = 0
    var frameOffset = 0
    /// The data message in progress (text or binary), its size so far, and whether its first part was handed on.
    var messageOpcode: WebSocket.Opcode?
    var messageBytes = 0
    var messageStarted = false
    var utf8 = UTF8Validator()
    var control: [UInt8] = []
    var scratch: [UInt8] = []

    public init(maxMessageBytes: Int = 1 << 20, requireMask: Bool = true) {
        self.maxMessageBytes = maxMessageBytes
        self.requireMask = requireMask
    }

    /// Feeds bytes; calls `body` for each event. After a violation, returns the close code and ignores input.
    @discardableResult
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ body: (WebSocketEvent) -> Void) -> WebSocket.CloseCode? {
        var i = 0
        while failed == nil && !closeReceived {
            if !inFrame {
                guard i < bytes.count || headerComplete else { return nil }
                while !headerComplete && i < bytes.count {
                    header.append(bytes[i])
                    i += 1
                }
                // A length that can never be accepted fails as soon as it is read, without waiting for the mask.
                if header.count >= 10 && header[1] & 0x7F == 127 {
                    var l: UInt64 = 0
                    for k in 0..<8 { l = l << 8 | UInt64(header[2 + k]) }
                    if l >> 63 != 0 { return fail(.protocolError) }
                    if l > UInt64(maxMessageBytes) { return fail(.messageTooBig) }
                }
                guard headerComplete else { return nil }
                if let f = startFrame() { return fail(f) }
                if remaining == 0, let f = endFrame(body) { return fail(f) }
                continue
            }
            guard i < bytes.count else { return nil }
            let n = min(remaining, bytes.count - i)
            let chunk = UnsafeRawBufferPointer(rebasing: bytes[i..<(i + n)])
            i += n
            remaining -= n
            if opcode.isControl {
                for (k, b) in chunk.enumerated() { control.append(Self.unmask(b, mask, at: frameOffset + k)) }
                frameOffset += n
                if remaining == 0, let f = endFrame(body) { return fail(f) }
                continue
            }
            // Unmask into the scratch buffer (taken out of `self` while it is written, then put back).
            var buf = scratch
            scratch = []
            if buf.count < n { buf = [UInt8](repeating: 0, count: max(n, 4_096)) }
            let last = fin && remaining == 0
            let key = mask, offset = frameOffset, isText = messageOpcode == .text, first = !messageStarted
            var check = utf8
            var bad = false
            buf.withUnsafeMutableBytes { out in
                Self.unmask(chunk, into: out.baseAddress!, key, at: offset)
                let part = UnsafeRawBufferPointer(rebasing: out[0..<n])
                if isText && (!check.feed(part) || (last && !check.isComplete)) {
                    bad = true
                    return
                }
                body(.data(binary: !isText, part, first: first, last: last))
            }
            utf8 = check
            scratch = buf
            if bad { return fail(.invalidPayload) }
            frameOffset += n
            messageStarted = true
            if remaining == 0, let f = endFrame(body) { return fail(f) }
        }
        return failed
    }

    @inline(__always) static func unmask(_ b: UInt8, _ mask: (UInt8, UInt8, UInt8, UInt8)?, at offset: Int) -> UInt8 {
        guard let m = mask else { return b }
        return b ^ maskByte(m, offset)
    }

    @inline(__always) static func maskByte(_ m: (UInt8, UInt8, UInt8, UInt8), _ offset: Int) -> UInt8 {
        switch offset & 3 {
        case 0: m.0
        case 1: m.1
        case 2: m.2
        default: m.3
        }
    }

    /// Unmasks `src` (at `offset` in its frame's payload) into `dst`, eight bytes at a time.
    static func unmask(_ src: UnsafeRawBufferPointer, into dst: UnsafeMutableRawPointer, _ mask: (UInt8, UInt8, UInt8, UInt8)?,
                       at offset: Int) {
        guard src.count > 0 else { return }
        guard let m = mask else {
            dst.copyMemory(from: src.baseAddress!, byteCount: src.count)
            return
        }
        // The key as a word whose byte j masks byte j of each eight (rotated to where `offset` falls).
        var k: UInt64 = 0
        for j in 0..<8 { k |= UInt64(maskByte(m, offset + j)) << UInt64(8 * j) }
        var i = 0
        while i + 8 <= src.count {
            let w = UInt64(littleEndian: src.loadUnaligned(fromByteOffset: i, as: UInt64.self))
            dst.storeBytes(of: (w ^ k).littleEndian, toByteOffset: i, as: UInt64.self)
            i += 8
        }
        while i < src.count {
            dst.storeBytes(of: src[i] ^ maskByte(m, offset + i), toByteOffset: i, as: UInt8.self)
            i += 1
        }
    }

    /// Whether `header` holds a whole frame header (2–14 bytes, known from its first two).
    var headerComplete: Bool {
        guard header.count >= 2 else { return false }
        let len = header[1] & 0x7F
        let need = 2 + (len == 126 ? 2 : len == 127 ? 8 : 0) + (header[1] & 0x80 != 0 ? 4 : 0)
        return header.count >= need
    }

    /// Validates the header just read and starts its frame.
    mutating func startFrame() -> WebSocket.CloseCode? {
        let b0 = header[0], b1 = header[1]
        defer { header.removeAll(keepingCapacity: true) }
        guard b0 & 0x70 == 0 else { return .protocolError }  // no extensions negotiated
        guard let op = WebSocket.Opcode(rawValue: b0 & 0x0F) else { return .protocolError }
        let masked = b1 & 0x80 != 0
        if requireMask && !masked { return .protocolError }
        var length = UInt64(b1 & 0x7F)
        var at = 2
        if length == 126 {
            length = UInt64(header[2]) << 8 | UInt64(header[3])
            at = 4
        } else if length == 127 {
            length = 0
            for k in 0..<8 { length = length << 8 | UInt64(header[2 + k]) }
            guard length >> 63 == 0 else { return .protocolError }
            at = 10
        }
        fin = b0 & 0x80 != 0
        if op.isControl {
            guard length <= 125 && fin else { return .protocolError }
        } else {
            switch op {
            case .continuation: guard messageOpcode != nil else { return .protocolError }
            default:
                guard messageOpcode == nil else { return .protocolError }  // a new message inside a fragmented one
                messageOpcode = op
                messageBytes = 0
                messageStarted = false
                utf8 = UTF8Validator()
            }
            guard length <= UInt64(maxMessageBytes - messageBytes) else { return .messageTooBig }
            messageBytes += Int(length)
        }
        mask = masked ? (header[at], header[at + 1], header[at + 2], header[at + 3]) : nil
        opcode = op
        remaining = Int(length)
        frameOffset = 0
        inFrame = true
        control.removeAll(keepingCapacity: true)
        return nil
    }

    /// The frame is complete: control frames are handed on whole; an empty data frame still marks its message.
    mutating func endFrame(_ body: (WebSocketEvent) -> Void) -> WebSocket.CloseCode? {
        inFrame = false
        switch opcode {
        case .ping: control.withUnsafeBytes { body(.ping($0)) }
        case .pong: control.withUnsafeBytes { body(.pong($0)) }
        case .close:
            if control.count == 1 { return .protocolError }
            var code: UInt16?
            if control.count >= 2 {
                let c = UInt16(control[0]) << 8 | UInt16(control[1])
                guard WebSocket.isValidReceivedCloseCode(c) else { return .protocolError }
                var v = UTF8Validator()
                guard control.withUnsafeBytes({ v.feed(UnsafeRawBufferPointer(rebasing: $0[2...])) }) && v.isComplete else {
                    return .protocolError
                }
                code = c
            }
            closeReceived = true
            control.withUnsafeBytes { body(.close(code: code, reason: UnsafeRawBufferPointer(rebasing: $0[min(2, $0.count)...]))) }
        case .text, .binary, .continuation:
            if fin {
                if frameOffset == 0 {
                    // An empty final frame still ends the message (and an empty message is a message).
                    if messageOpcode == .text && !utf8.isComplete { return .invalidPayload }
                    body(.data(binary: messageOpcode == .binary, UnsafeRawBufferPointer(start: nil, count: 0),
                               first: !messageStarted, last: true))
                }
                messageOpcode = nil
                messageStarted = false
            }
        }
        return nil
    }

    mutating func fail(_ code: WebSocket.CloseCode) -> WebSocket.CloseCode {
        failed = code
        return code
    }
}

/// Checks UTF-8 incrementally, across any split of the bytes (Björn Höhrmann's DFA): text messages and close
/// reasons both ways, so a text frame is only ever valid UTF-8.
public struct UTF8Validator: Sendable, Equatable {
    var state: UInt8 = 0
    public init() {}

    /// Feeds bytes; false once the sequence cannot be valid UTF-8.
    public mutating func feed(_ bytes: UnsafeRawBufferPointer) -> Bool {
        guard let base = bytes.baseAddress else { return state != 1 }
        var s = state
        let n = bytes.count
        var i = 0
        let ok = Self.transitions.withUnsafeBufferPointer { t in
            Self.classes.withUnsafeBufferPointer { c in
                while i < n {
                    // Between characters, ASCII goes eight bytes at a time.
                    if s == 0 && i + 8 <= n && base.loadUnaligned(fromByteOffset: i, as: UInt64.self) & 0x8080_8080_8080_8080 == 0 {
                        i += 8
                        continue
                    }
                    s = t[Int(s) * 16 + Int(c[Int(base.load(fromByteOffset: i, as: UInt8.self))])]
                    if s == 1 { return false }
                    i += 1
                }
                return true
            }
        }
        state = ok ? s : 1
        return ok
    }

    /// Whether the bytes so far end on a character boundary.
    public var isComplete: Bool { state == 0 }

    // Byte classes and the state machine (states are multiples of one: 0 accept, 1 reject).
    static let classes: [UInt8] = {
        var c = [UInt8](repeating: 0, count: 256)
        for b in 0x80...0x8F { c[b] = 1 }
        for b in 0x90...0x9F { c[b] = 9 }
        for b in 0xA0...0xBF { c[b] = 7 }
        c[0xC0] = 8; c[0xC1] = 8
        for b in 0xC2...0xDF { c[b] = 2 }
        c[0xE0] = 10
        for b in 0xE1...0xEC { c[b] = 3 }
        c[0xED] = 4
        c[0xEE] = 3; c[0xEF] = 3
        c[0xF0] = 11
        for b in 0xF1...0xF3 { c[b] = 6 }
        c[0xF4] = 5
        for b in 0xF5...0xFF { c[b] = 8 }
        return c
    }()

    /// next = transitions[state * 16 + class]; state 0 accepts, 1 rejects, 2…8 wait for continuation bytes.
    static let transitions: [UInt8] = {
        // Rows: states 0–8; columns: classes 0–11 (12–15 unused → reject).
        let rows: [[UInt8]] = [
            // 0 accept
            [0, 1, 2, 3, 5, 8, 7, 1, 1, 1, 4, 6],
            // 1 reject
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
            // 2: one continuation byte left
            [1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1, 1],
            // 3: two left
            [1, 2, 1, 1, 1, 1, 1, 2, 1, 2, 1, 1],
            // 4: after E0 (needs A0–BF)
            [1, 1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1],
            // 5: after ED (needs 80–9F: no surrogates)
            [1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1, 1],
            // 6: after F0 (needs 90–BF)
            [1, 1, 1, 1, 1, 1, 1, 3, 1, 3, 1, 1],
            // 7: after F1–F3 (needs 80–BF)
            [1, 3, 1, 1, 1, 1, 1, 3, 1, 3, 1, 1],
            // 8: after F4 (needs 80–8F)
            [1, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        ]
        var t = [UInt8](repeating: 1, count: rows.count * 16)
        for (s, row) in rows.enumerated() { for (c, next) in row.enumerated() { t[s * 16 + c] = next } }
        return t
    }()
}

extension WebSocket {
    /// Whether a peer may send `code` in a close frame (RFC 6455 §7.4: 1000–1003 and 1007–1011, the
    /// registered 1012–1014, and 3000–4999 for libraries and applications; 1005, 1006 and 1015 are never sent
    /// on the wire, and everything else is reserved).
    public static func isValidReceivedCloseCode(_ code: UInt16) -> Bool {
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: true
        default: false
        }
    }
}

/// Base64 (RFC 4648), for the handshake.
public enum Base64 {
    static let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)

    public static func encode(_ bytes: [UInt8]) -> String {
        var out: [UInt8] = []
        out.reserveCapacity((bytes.count + 2) / 3 * 4)
        var i = 0
        while i < bytes.count {
            let n = min(3, bytes.count - i)
            let b0 = bytes[i], b1 = n > 1 ? bytes[i + 1] : 0, b2 = n > 2 ? bytes[i + 2] : 0
            out.append(alphabet[Int(b0 >> 2)])
            out.append(alphabet[Int((b0 & 3) << 4 | b1 >> 4)])
            out.append(n > 1 ? alphabet[Int((b1 & 0xF) << 2 | b2 >> 6)] : UInt8(ascii: "="))
            out.append(n > 2 ? alphabet[Int(b2 & 0x3F)] : UInt8(ascii: "="))
            i += 3
        }
        return String(decoding: out, as: UTF8.self)
    }

    public static func decode(_ s: String) -> [UInt8]? {
        let chars = Array(s.utf8)
        guard chars.count % 4 == 0 else { return nil }
        var out: [UInt8] = []
        var i = 0
        while i < chars.count {
            var v: UInt32 = 0
            var pad = 0
            for k in 0..<4 {
                let c = chars[i + k]
                let d: UInt32
                if c == UInt8(ascii: "=") && i + 4 == chars.count && k >= 2 {
                    pad += 1
                    d = 0
                } else if let idx = alphabet.firstIndex(of: c), pad == 0 {
                    d = UInt32(idx)
                } else {
                    return nil
                }
                v = v << 6 | d
            }
            out.append(UInt8(v >> 16))
            if pad < 2 { out.append(UInt8((v >> 8) & 0xFF)) }
            if pad < 1 { out.append(UInt8(v & 0xFF)) }
            i += 4
        }
        return out
    }
}
