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

/// What a WebSocket peer sent, after reassembly of fragmented messages.
public enum WebSocketEvent: Equatable, Sendable {
    case text([UInt8])
    case binary([UInt8])
    case ping([UInt8])
    case pong([UInt8])
    case close(code: UInt16?, reason: [UInt8])
}

/// Decodes client-to-server frames incrementally (any chunking): unmasks, reassembles fragments up to
/// `maxMessageBytes`, enforces the RFC's rules. A violation yields the close code to send.
public struct WebSocketDecoder {
    public let maxMessageBytes: Int
    /// Client frames must be masked (RFC 6455 §5.1); the gateway's own tests of the client side turn this off.
    public let requireMask: Bool
    var buffer: [UInt8] = []
    var message: [UInt8] = []
    var messageOpcode: WebSocket.Opcode?
    public private(set) var failed: WebSocket.CloseCode?

    public init(maxMessageBytes: Int = 1 << 20, requireMask: Bool = true) {
        self.maxMessageBytes = maxMessageBytes
        self.requireMask = requireMask
    }

    /// Feeds bytes; calls `body` for each event. After a violation, returns the close code and ignores input.
    @discardableResult
    public mutating func feed(_ bytes: UnsafeRawBufferPointer, _ body: (WebSocketEvent) -> Void) -> WebSocket.CloseCode? {
        guard failed == nil else { return failed }
        buffer.append(contentsOf: bytes)
        var offset = 0
        defer { buffer.removeFirst(offset) }
        while true {
            let avail = buffer.count - offset
            guard avail >= 2 else { return nil }
            let b0 = buffer[offset], b1 = buffer[offset + 1]
            let fin = b0 & 0x80 != 0
            guard b0 & 0x70 == 0 else { return fail(.protocolError) }  // no extensions negotiated
            guard let op = WebSocket.Opcode(rawValue: b0 & 0x0F) else { return fail(.protocolError) }
            let masked = b1 & 0x80 != 0
            if requireMask && !masked { return fail(.protocolError) }
            var length = Int(b1 & 0x7F)
            var header = 2
            if length == 126 {
                guard avail >= 4 else { return nil }
                length = Int(buffer[offset + 2]) << 8 | Int(buffer[offset + 3])
                header = 4
            } else if length == 127 {
                guard avail >= 10 else { return nil }
                var l: UInt64 = 0
                for k in 0..<8 { l = l << 8 | UInt64(buffer[offset + 2 + k]) }
                guard l >> 63 == 0 else { return fail(.protocolError) }
                guard l <= UInt64(maxMessageBytes) else { return fail(.messageTooBig) }
                length = Int(l)
                header = 10
            }
            if op.isControl && (length > 125 || !fin) { return fail(.protocolError) }
            if !op.isControl && message.count + length > maxMessageBytes { return fail(.messageTooBig) }
            let maskBytes = masked ? 4 : 0
            guard avail >= header + maskBytes + length else { return nil }
            var payload = Array(buffer[(offset + header + maskBytes)..<(offset + header + maskBytes + length)])
            if masked {
                let k = offset + header
                for i in payload.indices { payload[i] ^= buffer[k + (i & 3)] }
            }
            offset += header + maskBytes + length
            switch op {
            case .ping: body(.ping(payload))
            case .pong: body(.pong(payload))
            case .close:
                guard payload.count != 1 else { return fail(.protocolError) }
                let code = payload.count >= 2 ? UInt16(payload[0]) << 8 | UInt16(payload[1]) : nil
                body(.close(code: code, reason: Array(payload.dropFirst(2))))
            case .text, .binary:
                guard messageOpcode == nil else { return fail(.protocolError) }  // a new message inside a fragmented one
                if fin { deliver(op, payload, body) } else {
                    messageOpcode = op
                    message = payload
                }
            case .continuation:
                guard let first = messageOpcode else { return fail(.protocolError) }
                message.append(contentsOf: payload)
                if fin {
                    let whole = message
                    message.removeAll()
                    messageOpcode = nil
                    deliver(first, whole, body)
                }
            }
            if let f = failed { return f }
        }
    }

    mutating func deliver(_ op: WebSocket.Opcode, _ payload: [UInt8], _ body: (WebSocketEvent) -> Void) {
        if op == .text {
            guard String(validating: payload, as: UTF8.self) != nil else {
                failed = .invalidPayload
                return
            }
            body(.text(payload))
        } else {
            body(.binary(payload))
        }
    }

    mutating func fail(_ code: WebSocket.CloseCode) -> WebSocket.CloseCode {
        failed = code
        return code
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
