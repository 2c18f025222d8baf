/// HELLO: the first frame a peer sends on a new link.
public struct Hello: Sendable, Equatable {
    public var version: UInt16
    public var kind: PeerKind
    /// The largest frame payload this peer accepts.
    public var maxFrameBytes: UInt32
    /// The heartbeat interval the peer would like, in milliseconds (0: the broker's default).
    public var heartbeatMilliseconds: UInt32
    /// The world an instance belongs to; empty for runtime, vault and gateway peers.
    public var world: String
    /// The instance's id within its world (or a worker name), for logs and affinity.
    public var instance: String
    /// The secret that proves the peer's right to attach: per world for instances, per daemon otherwise.
    public var token: String
    /// The broker loop this link should be served by (`Wire.anyLoop`: the broker decides). Instances are
    /// always placed on their world's loop.
    public var loop: UInt16

    public init(
        version: UInt16 = Wire.version, kind: PeerKind, maxFrameBytes: UInt32 = 64 << 10,
        heartbeatMilliseconds: UInt32 = 0, world: String = "", instance: String = "", token: String,
        loop: UInt16 = Wire.anyLoop
    ) {
        self.version = version
        self.kind = kind
        self.maxFrameBytes = maxFrameBytes
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.world = world
        self.instance = instance
        self.token = token
        self.loop = loop
    }
}

/// WELCOME: the broker's answer to a valid HELLO; the link is active from here on.
public struct Welcome: Sendable, Equatable {
    public var version: UInt16
    /// The negotiated maximum payload, in both directions.
    public var maxFrameBytes: UInt32
    /// The broker sends PING at this interval; a peer silent for three intervals is closed.
    public var heartbeatMilliseconds: UInt32
    /// Every new stream starts with this send window, in each direction (bytes).
    public var streamCreditBytes: UInt32
    /// Every new stream starts with this send window, in each direction (frames).
    public var streamCreditFrames: UInt32
    /// The broker's id for this link (for logs).
    public var linkID: UInt32
    public var server: String
    /// The loop serving this link, and how many loops the broker runs (see `Wire.loop(forWorld:count:)`).
    public var loopIndex: UInt16
    public var loopCount: UInt16

    public init(
        version: UInt16 = Wire.version, maxFrameBytes: UInt32, heartbeatMilliseconds: UInt32,
        streamCreditBytes: UInt32, streamCreditFrames: UInt32, linkID: UInt32, server: String,
        loopIndex: UInt16 = 0, loopCount: UInt16 = 1
    ) {
        self.version = version
        self.maxFrameBytes = maxFrameBytes
        self.heartbeatMilliseconds = heartbeatMilliseconds
        self.streamCreditBytes = streamCreditBytes
        self.streamCreditFrames = streamCreditFrames
        self.linkID = linkID
        self.server = server
        self.loopIndex = loopIndex
        self.loopCount = loopCount
    }
}

/// A send window: bytes and frames.
public struct Window: Sendable, Equatable, Hashable {
    public var bytes: UInt32
    public var frames: UInt32
    public init(bytes: UInt32, frames: UInt32) {
        self.bytes = bytes
        self.frames = frames
    }
}

/// OPEN: starts a stream. From a peer, asks the broker to route it; from the broker, offers it to the acceptor.
public struct Open: Sendable, Equatable {
    public var target: OpenTarget
    /// The API key the stream is charged to (0: none, internal traffic).
    public var keyID: UInt64
    public var world: String
    /// The end user's session, for affinity (may be empty).
    public var session: String
    /// Free-form routing detail for the acceptor: the agent name, the vault stream name.
    public var detail: String
    /// The window the opener grants the acceptor: what the acceptor may send before the first CREDIT. Nil:
    /// WELCOME's `stream_credit_*`. An opener that bounds what it holds per client (the gateway) starts
    /// streams smaller and grows them with CREDIT.
    public var window: Window?

    public init(target: OpenTarget, keyID: UInt64 = 0, world: String, session: String = "", detail: String = "",
                window: Window? = nil) {
        self.target = target
        self.keyID = keyID
        self.world = world
        self.session = session
        self.detail = detail
        self.window = window
    }
}

/// SUBSCRIBE: join a room; the stream id names the subscription.
public struct Subscribe: Sendable, Equatable {
    public var mode: SubscribeMode
    public var world: String
    public var room: String

    public init(mode: SubscribeMode = .reliable, world: String, room: String) {
        self.mode = mode
        self.world = world
        self.room = room
    }
}

/// A frame with its payload parsed. Used for control frames and in tests; the broker's DATA path works on
/// `FrameHeader` + raw payload instead, without building one of these.
public enum Frame: Sendable, Equatable {
    case hello(Hello)
    case welcome(Welcome)
    case open(stream: UInt32, Open)
    /// `flags`: MORE and BINARY (END_STREAM is `end`).
    case data(stream: UInt32, payload: [UInt8], end: Bool, flags: FrameFlags = [])
    case credit(stream: UInt32, bytes: UInt32, frames: UInt32, paced: Bool = false)
    case close(stream: UInt32, code: ErrorCode, reason: String)
    case error(stream: UInt32, code: ErrorCode, reason: String)
    case ping(UInt64)
    case pong(UInt64)
    case subscribe(stream: UInt32, Subscribe)
    case unsubscribe(stream: UInt32)
    case publish(world: String, room: String, payload: [UInt8])
    case goaway(lastStream: UInt32, code: ErrorCode, reason: String)
    case dropped(stream: UInt32, count: UInt32)
}

// MARK: - Parsing

/// Reads fields from a payload, failing with `truncated` instead of reading past the end.
public struct PayloadReader {
    private let bytes: UnsafeRawBufferPointer
    public private(set) var offset = 0

    public init(_ bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    public var remaining: Int { bytes.count - offset }

    public mutating func u8(_ field: String) throws(WireError) -> UInt8 {
        guard remaining >= 1 else { throw .truncated(field: field) }
        defer { offset += 1 }
        return bytes[offset]
    }
    public mutating func u16(_ field: String) throws(WireError) -> UInt16 {
        guard remaining >= 2 else { throw .truncated(field: field) }
        defer { offset += 2 }
        return bytes.loadBE(UInt16.self, at: offset)
    }
    public mutating func u32(_ field: String) throws(WireError) -> UInt32 {
        guard remaining >= 4 else { throw .truncated(field: field) }
        defer { offset += 4 }
        return bytes.loadBE(UInt32.self, at: offset)
    }
    public mutating func u64(_ field: String) throws(WireError) -> UInt64 {
        guard remaining >= 8 else { throw .truncated(field: field) }
        defer { offset += 8 }
        return bytes.loadBE(UInt64.self, at: offset)
    }
    /// A u16 length followed by that many bytes of UTF-8.
    public mutating func string(_ field: String) throws(WireError) -> String {
        let n = Int(try u16(field))
        guard n <= Wire.maxStringBytes else { throw .invalidString(field: field) }
        guard remaining >= n else { throw .truncated(field: field) }
        let slice = UnsafeRawBufferPointer(rebasing: bytes[offset..<offset + n])
        offset += n
        guard let s = String(validating: slice, as: UTF8.self) else { throw .invalidString(field: field) }
        return s
    }
    /// Everything left.
    public mutating func rest() -> UnsafeRawBufferPointer {
        defer { offset = bytes.count }
        return UnsafeRawBufferPointer(rebasing: bytes[offset...])
    }
    public func expectEnd(_ type: FrameType) throws(WireError) {
        guard remaining == 0 else { throw .trailingBytes(type: type) }
    }
}

extension Frame {
    /// Parses a frame's payload. Strict: unknown enum values, bad UTF-8 and trailing bytes are errors, except
    /// after HELLO and WELCOME whose tails are reserved for later fields.
    public static func parse(_ header: FrameHeader, _ payload: UnsafeRawBufferPointer) throws(WireError) -> Frame {
        var r = PayloadReader(payload)
        let s = header.stream
        switch header.type {
        case .hello:
            try requireLink(header)
            return .hello(try parseHello(&r))
        case .welcome:
            try requireLink(header)
            return .welcome(try parseWelcome(&r))
        case .open:
            try requireStream(header)
            return .open(stream: s, try parseOpen(&r))
        case .data:
            try requireStream(header)
            let flags = header.flags.intersection(FrameFlags.dataFlags)
            if flags.contains(.endStream) && flags.contains(.more) { throw .invalidValue(field: "data.flags (MORE with END_STREAM)") }
            return .data(stream: s, payload: Array(payload), end: flags.contains(.endStream),
                         flags: flags.subtracting(.endStream))
        case .credit:
            try requireStream(header)
            let bytes = try r.u32("credit.bytes")
            let frames = try r.u32("credit.frames")
            try r.expectEnd(.credit)
            return .credit(stream: s, bytes: bytes, frames: frames, paced: header.flags.contains(.paced))
        case .close, .error:
            let isClose = header.type == .close
            let code = ErrorCode(wire: try r.u16(isClose ? "close.code" : "error.code"))
            let reason = try r.string(isClose ? "close.reason" : "error.reason")
            try r.expectEnd(header.type)
            if header.type == .close {
                try requireStream(header)
                return .close(stream: s, code: code, reason: reason)
            }
            return .error(stream: s, code: code, reason: reason)
        case .ping, .pong:
            try requireLink(header)
            let v = try r.u64("ping.opaque")
            try r.expectEnd(header.type)
            return header.type == .ping ? .ping(v) : .pong(v)
        case .subscribe:
            try requireStream(header)
            let rawMode = try r.u8("subscribe.mode")
            guard let mode = SubscribeMode(rawValue: rawMode) else { throw .invalidValue(field: "subscribe.mode") }
            _ = try r.u8("subscribe.reserved")
            let sub = Subscribe(mode: mode, world: try r.string("subscribe.world"), room: try r.string("subscribe.room"))
            try r.expectEnd(.subscribe)
            return .subscribe(stream: s, sub)
        case .unsubscribe:
            try requireStream(header)
            try r.expectEnd(.unsubscribe)
            return .unsubscribe(stream: s)
        case .publish:
            try requireLink(header)
            let world = try r.string("publish.world")
            let room = try r.string("publish.room")
            return .publish(world: world, room: room, payload: Array(r.rest()))
        case .goaway:
            try requireLink(header)
            let last = try r.u32("goaway.last_stream")
            let code = ErrorCode(wire: try r.u16("goaway.code"))
            let reason = try r.string("goaway.reason")
            try r.expectEnd(.goaway)
            return .goaway(lastStream: last, code: code, reason: reason)
        case .dropped:
            try requireStream(header)
            let n = try r.u32("dropped.count")
            try r.expectEnd(.dropped)
            return .dropped(stream: s, count: n)
        }
    }

    static func parseHello(_ r: inout PayloadReader) throws(WireError) -> Hello {
        let version = try r.u16("hello.version")
        let rawKind = try r.u8("hello.kind")
        guard let kind = PeerKind(rawValue: rawKind) else { throw .invalidValue(field: "hello.kind") }
        _ = try r.u8("hello.reserved")
        let maxFrame = try r.u32("hello.max_frame")
        let heartbeat = try r.u32("hello.heartbeat_ms")
        let world = try r.string("hello.world")
        let instance = try r.string("hello.instance")
        let token = try r.string("hello.token")
        // Added fields are optional: a shorter HELLO is valid and gets the defaults.
        let loop = r.remaining >= 2 ? try r.u16("hello.loop") : Wire.anyLoop
        return Hello(version: version, kind: kind, maxFrameBytes: maxFrame, heartbeatMilliseconds: heartbeat,
                     world: world, instance: instance, token: token, loop: loop)
    }

    static func parseWelcome(_ r: inout PayloadReader) throws(WireError) -> Welcome {
        let version = try r.u16("welcome.version")
        _ = try r.u16("welcome.reserved")
        var w = Welcome(
            version: version, maxFrameBytes: try r.u32("welcome.max_frame"),
            heartbeatMilliseconds: try r.u32("welcome.heartbeat_ms"),
            streamCreditBytes: try r.u32("welcome.stream_credit_bytes"),
            streamCreditFrames: try r.u32("welcome.stream_credit_frames"),
            linkID: try r.u32("welcome.link_id"), server: try r.string("welcome.server"))
        if r.remaining >= 4 {
            w.loopIndex = try r.u16("welcome.loop_index")
            w.loopCount = try r.u16("welcome.loop_count")
            guard w.loopCount >= 1, w.loopIndex < w.loopCount else { throw .invalidValue(field: "welcome.loop_count") }
        }
        return w
    }

    static func parseOpen(_ r: inout PayloadReader) throws(WireError) -> Open {
        let rawTarget = try r.u8("open.target")
        guard let target = OpenTarget(rawValue: rawTarget) else { throw .invalidValue(field: "open.target") }
        _ = try r.u8("open.reserved")
        _ = try r.u16("open.reserved")
        let key = try r.u64("open.key_id")
        var open = Open(target: target, keyID: key, world: try r.string("open.world"),
                        session: try r.string("open.session"), detail: try r.string("open.detail"))
        // The window is optional: an OPEN without it gets WELCOME's stream credit.
        if r.remaining > 0 {
            open.window = Window(bytes: try r.u32("open.window_bytes"), frames: try r.u32("open.window_frames"))
        }
        try r.expectEnd(.open)
        return open
    }

    @inline(__always) public static func requireStream(_ h: FrameHeader) throws(WireError) {
        if h.stream == 0 { throw .streamRequired(type: h.type) }
    }
    @inline(__always) public static func requireLink(_ h: FrameHeader) throws(WireError) {
        if h.stream != 0 { throw .streamForbidden(type: h.type) }
    }
}

// MARK: - Encoding

/// Appends encoded frames to a `ByteQueue`. The DATA and CREDIT writers are the hot path: one reserve, a
/// few stores, one copy of the payload.
public enum FrameWriter {
    @inline(__always)
    static func header(_ p: UnsafeMutableRawPointer, length: Int, type: FrameType, flags: FrameFlags, stream: UInt32) {
        p.storeBE(UInt32(truncatingIfNeeded: length), at: 0)
        p.storeBytes(of: type.rawValue, toByteOffset: 4, as: UInt8.self)
        p.storeBytes(of: flags.rawValue, toByteOffset: 5, as: UInt8.self)
        p.storeBE(UInt16(0), at: 6)
        p.storeBE(stream, at: 8)
    }

    /// DATA with a copy of `payload`.
    @inline(__always)
    public static func data(_ q: ByteQueue, stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool = false) {
        data(q, stream: stream, payload: payload, flags: end ? .endStream : [])
    }

    /// DATA with a copy of `payload` and the given flags (END_STREAM, MORE, BINARY).
    @inline(__always)
    public static func data(_ q: ByteQueue, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        let p = q.reserve(Wire.headerBytes + payload.count)
        header(p, length: payload.count, type: .data, flags: flags, stream: stream)
        if payload.count > 0 {
            (p + Wire.headerBytes).copyMemory(from: payload.baseAddress.unsafelyUnwrapped, byteCount: payload.count)
        }
        q.commit(Wire.headerBytes + payload.count)
    }

    /// CREDIT granting `bytes` and `frames` more on `stream` (`paced`: the broker is holding some back).
    @inline(__always)
    public static func credit(_ q: ByteQueue, stream: UInt32, bytes: UInt32, frames: UInt32, paced: Bool = false) {
        let p = q.reserve(Wire.headerBytes + 8)
        header(p, length: 8, type: .credit, flags: paced ? .paced : [], stream: stream)
        p.storeBE(bytes, at: 12)
        p.storeBE(frames, at: 16)
        q.commit(Wire.headerBytes + 8)
    }

    /// Any frame. Control frames go through here; they are rare enough that building the enum is fine.
    public static func write(_ frame: Frame, to q: ByteQueue) {
        switch frame {
        case .data(let s, let payload, let end, let flags):
            payload.withUnsafeBytes { data(q, stream: s, payload: $0, flags: end ? flags.union(.endStream) : flags) }
            return
        case .credit(let s, let b, let f, let paced):
            credit(q, stream: s, bytes: b, frames: f, paced: paced)
            return
        default:
            break
        }
        var w = FieldWriter(q)
        switch frame {
        case .data, .credit:
            return
        case .hello(let h):
            w.u16(h.version); w.u8(h.kind.rawValue); w.u8(0); w.u32(h.maxFrameBytes); w.u32(h.heartbeatMilliseconds)
            w.string(h.world); w.string(h.instance); w.string(h.token); w.u16(h.loop)
            w.flush(.hello, [], 0)
        case .welcome(let m):
            w.u16(m.version); w.u16(0); w.u32(m.maxFrameBytes); w.u32(m.heartbeatMilliseconds)
            w.u32(m.streamCreditBytes); w.u32(m.streamCreditFrames); w.u32(m.linkID); w.string(m.server)
            w.u16(m.loopIndex); w.u16(m.loopCount)
            w.flush(.welcome, [], 0)
        case .open(let s, let o):
            w.u8(o.target.rawValue); w.u8(0); w.u16(0); w.u64(o.keyID)
            w.string(o.world); w.string(o.session); w.string(o.detail)
            if let window = o.window { w.u32(window.bytes); w.u32(window.frames) }
            w.flush(.open, [], s)
        case .close(let s, let code, let reason):
            w.u16(code.rawValue); w.string(reason)
            w.flush(.close, [], s)
        case .error(let s, let code, let reason):
            w.u16(code.rawValue); w.string(reason)
            w.flush(.error, [], s)
        case .ping(let v):
            w.u64(v); w.flush(.ping, [], 0)
        case .pong(let v):
            w.u64(v); w.flush(.pong, [], 0)
        case .subscribe(let s, let sub):
            w.u8(sub.mode.rawValue); w.u8(0); w.string(sub.world); w.string(sub.room)
            w.flush(.subscribe, [], s)
        case .unsubscribe(let s):
            w.flush(.unsubscribe, [], s)
        case .publish(let world, let room, let payload):
            w.string(world); w.string(room); payload.withUnsafeBytes { w.bytes($0) }
            w.flush(.publish, [], 0)
        case .goaway(let last, let code, let reason):
            w.u32(last); w.u16(code.rawValue); w.string(reason)
            w.flush(.goaway, [], 0)
        case .dropped(let s, let n):
            w.u32(n); w.flush(.dropped, [], s)
        }
    }

    /// PUBLISH without building the enum: world and room as UTF-8, then the payload.
    public static func publish(_ q: ByteQueue, world: String, room: String, payload: UnsafeRawBufferPointer) {
        var w = FieldWriter(q)
        w.string(world)
        w.string(room)
        if payload.count > 0 { w.bytes(payload) }
        w.flush(.publish, [], 0)
    }

    /// Encodes a frame into a fresh array (tests, tools).
    public static func encode(_ frame: Frame) -> [UInt8] {
        let q = ByteQueue()
        write(frame, to: q)
        return Array(q.readable)
    }
}

/// Writes a control frame's fields straight into the queue after a header placeholder, then fills in the
/// header: no temporary buffers (an OPEN is written for every stream).
struct FieldWriter {
    let q: ByteQueue
    /// Where the frame's header starts, counted from the queue's head.
    let start: Int

    init(_ q: ByteQueue) {
        self.q = q
        start = q.count
        _ = q.reserve(Wire.headerBytes)
        q.commit(Wire.headerBytes)
    }

    @inline(__always) mutating func u8(_ v: UInt8) {
        q.reserve(1).storeBytes(of: v, as: UInt8.self)
        q.commit(1)
    }
    @inline(__always) mutating func u16(_ v: UInt16) {
        q.reserve(2).storeBE(v, at: 0)
        q.commit(2)
    }
    @inline(__always) mutating func u32(_ v: UInt32) {
        q.reserve(4).storeBE(v, at: 0)
        q.commit(4)
    }
    @inline(__always) mutating func u64(_ v: UInt64) {
        q.reserve(8).storeBE(v, at: 0)
        q.commit(8)
    }
    /// Strings longer than the protocol allows are cut at a UTF-8 boundary (they are reasons and names).
    mutating func string(_ s: String) {
        var s = s
        s.withUTF8 { utf8 in
            var n = utf8.count
            if n > Wire.maxStringBytes {
                n = Wire.maxStringBytes
                while n > 0 && (utf8[n] & 0xC0) == 0x80 { n -= 1 }
            }
            u16(UInt16(n))
            if n > 0 { q.append(UnsafeRawBufferPointer(rebasing: UnsafeRawBufferPointer(utf8)[0..<n])) }
        }
    }
    mutating func bytes(_ b: UnsafeRawBufferPointer) { q.append(b) }

    func flush(_ type: FrameType, _ flags: FrameFlags, _ stream: UInt32) {
        let length = q.count - start - Wire.headerBytes
        let p = UnsafeMutableRawPointer(mutating: q.readable.baseAddress!) + start
        FrameWriter.header(p, length: length, type: type, flags: flags, stream: stream)
    }
}
