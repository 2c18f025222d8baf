/// The broker wire protocol, version 1. See `docs/protocol.md` for the full specification.
///
/// Every frame is a 12-byte header followed by `length` payload bytes. All integers are big-endian.
///
///     0        4      5       6          8          12
///     +--------+------+-------+----------+----------+----- ... -----+
///     | length | type | flags | reserved | stream   | payload       |
///     | u32    | u8   | u8    | u16 = 0  | u32      | length bytes  |
///     +--------+------+-------+----------+----------+----- ... -----+
public enum Wire {
    /// The protocol version this build speaks.
    public static let version: UInt16 = 1
    /// Bytes in a frame header.
    public static let headerBytes = 12
    /// The largest payload any peer may ever negotiate (16 MiB).
    public static let maxFrameBytesCeiling: UInt32 = 16 << 20
    /// The smallest maximum payload a peer may offer (1 KiB): below this HELLO itself may not fit.
    public static let maxFrameBytesFloor: UInt32 = 1 << 10
    /// The payload limit in force before HELLO/WELCOME have negotiated one.
    public static let handshakeFrameBytes: UInt32 = 4 << 10
    /// Upper bound on a string field in a control frame.
    public static let maxStringBytes = 1024
    /// HELLO's `loop` when the peer has no preference.
    public static let anyLoop: UInt16 = 0xFFFF

    /// The broker loop that serves `world`: FNV-1a (32-bit) of its UTF-8 bytes, modulo the loop count.
    /// Instances of the world, its rooms and its keys' streams all live on that loop.
    public static func loop(forWorld world: String, count: Int) -> Int {
        guard count > 1 else { return 0 }
        var h: UInt32 = 0x811C_9DC5
        for b in world.utf8 {
            h ^= UInt32(b)
            h = h &* 0x0100_0193
        }
        return Int(h % UInt32(count))
    }
}

/// What a frame is. Unknown types are a protocol error.
public enum FrameType: UInt8, Sendable, CaseIterable {
    case hello = 1
    case welcome = 2
    case open = 3
    case data = 4
    case credit = 5
    case close = 6
    case error = 7
    case ping = 8
    case pong = 9
    case subscribe = 10
    case unsubscribe = 11
    case publish = 12
    case goaway = 13
    case dropped = 14
}

/// Per-type flag bits.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// DATA: the sender will send no more DATA on this stream (half close). It also ends the message.
    public static let endStream = FrameFlags(rawValue: 0x01)
    /// DATA: the message continues in the next DATA frame on this stream. A message larger than the frame
    /// size, or than the window the sender holds, travels as several frames; the first DATA without it ends
    /// the message. Not allowed together with END_STREAM.
    public static let more = FrameFlags(rawValue: 0x02)
    /// DATA: the message is binary (a WebSocket binary message); without it, text. Set on every frame of the
    /// message.
    public static let binary = FrameFlags(rawValue: 0x04)
    /// DATA: the message's first 8 bytes (big-endian) are its event's per-session sequence number, and are not
    /// part of the message (set on the message's first frame, which carries all 8). The gateway writes it as the
    /// SSE `id:` and strips it; apps resume from it (`Last-Event-ID`, `?after=`).
    public static let sequenced = FrameFlags(rawValue: 0x08)
    /// The DATA flags this version knows; the broker forwards exactly these.
    public static let dataFlags: FrameFlags = [.endStream, .more, .binary, .sequenced]
    /// CREDIT from the broker to a stream's opener: part of the credit the consumer granted is being held
    /// back by the key's quota (pacing). A CREDIT without it means pacing has ended. The gateway turns this
    /// into its `rate_limits` event.
    public static let paced = FrameFlags(rawValue: 0x01)
}

/// A decoded frame header.
public struct FrameHeader: Sendable, Hashable {
    /// Payload bytes following the header.
    public var length: UInt32
    public var type: FrameType
    public var flags: FrameFlags
    /// The stream the frame belongs to; 0 is the link itself.
    public var stream: UInt32

    public init(length: UInt32, type: FrameType, flags: FrameFlags = [], stream: UInt32) {
        self.length = length
        self.type = type
        self.flags = flags
        self.stream = stream
    }
}

/// The kind of peer on a link, declared in HELLO.
public enum PeerKind: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// A world instance (container or child process).
    case instance = 1
    /// A runtime worker that runs agents.
    case runtime = 2
    /// The vault that persists world events.
    case vault = 3
    /// The HTTP gateway, carrying app streams.
    case gateway = 4

    public var description: String {
        switch self {
        case .instance: "instance"
        case .runtime: "runtime"
        case .vault: "vault"
        case .gateway: "gateway"
        }
    }
}

/// The numeric codes carried by ERROR, CLOSE and GOAWAY. Stable: never renumber.
public enum ErrorCode: UInt16, Sendable, CaseIterable, CustomStringConvertible {
    case none = 0
    case protocolError = 1
    case unsupportedVersion = 2
    case authFailed = 3
    case frameTooLarge = 4
    case flowControl = 5
    case noRoute = 6
    case streamLimit = 7
    case peerGone = 8
    case heartbeatTimeout = 9
    case slowConsumer = 10
    case shutdown = 11
    case notPermitted = 12
    case unknownStream = 13
    case internalError = 14
    case cancelled = 15
    case handshakeTimeout = 16
    case wrongLoop = 17
    case timeout = 18

    /// The stable snake_case name used in logs and metrics.
    public var description: String {
        switch self {
        case .none: "none"
        case .protocolError: "protocol_error"
        case .unsupportedVersion: "unsupported_version"
        case .authFailed: "auth_failed"
        case .frameTooLarge: "frame_too_large"
        case .flowControl: "flow_control"
        case .noRoute: "no_route"
        case .streamLimit: "stream_limit"
        case .peerGone: "peer_gone"
        case .heartbeatTimeout: "heartbeat_timeout"
        case .slowConsumer: "slow_consumer"
        case .shutdown: "shutdown"
        case .notPermitted: "not_permitted"
        case .unknownStream: "unknown_stream"
        case .internalError: "internal_error"
        case .cancelled: "cancelled"
        case .handshakeTimeout: "handshake_timeout"
        case .wrongLoop: "wrong_loop"
        case .timeout: "timeout"
        }
    }

    /// Decodes a code, mapping unknown numbers to `.internalError` so a newer peer cannot crash an older one.
    public init(wire: UInt16) { self = ErrorCode(rawValue: wire) ?? .internalError }
}

/// What OPEN asks the broker to connect a stream to.
public enum OpenTarget: UInt8, Sendable, CaseIterable, CustomStringConvertible {
    /// An instance of the named world, chosen by the balancer (session affinity first).
    case instance = 1
    /// A runtime worker, least outstanding first.
    case runtime = 2
    /// The vault.
    case vault = 3

    public var description: String {
        switch self {
        case .instance: "instance"
        case .runtime: "runtime"
        case .vault: "vault"
        }
    }
}

/// How a room subscriber is treated when it cannot keep up.
public enum SubscribeMode: UInt8, Sendable, CaseIterable {
    /// Every frame or none: past the bound the subscriber is closed with `slow_consumer`.
    case reliable = 0
    /// Realtime: past the bound the oldest frames are dropped and the subscriber gets DROPPED with the count.
    case dropOldest = 1
}
