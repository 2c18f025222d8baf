import SoulfraWire

/// Why a link is not being read. Reading resumes when the set is empty.
public struct PauseReasons: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// A link this one feeds is above its high watermark.
    public static let peerCongested = PauseReasons(rawValue: 1 << 0)
    /// This link's own send queue is above its high watermark (it is not reading what we send).
    public static let ownQueueFull = PauseReasons(rawValue: 1 << 1)

    /// Every reason, in the order of their bits, with its metric label.
    static let labelled: [(PauseReasons, String)] = [(.peerCongested, "peer_congested"), (.ownQueueFull, "own_queue_full")]

    /// The index of a single reason in per-reason counters (its bit's position).
    var index: Int { rawValue.trailingZeroBitCount }
}

/// Where a link is in its life.
enum LinkState: Equatable {
    /// Connected, waiting for HELLO.
    case handshake
    /// HELLO accepted.
    case active
    /// The broker decided to close it; waiting for the socket to be closed.
    case closing
}

/// One peer connection, as the broker sees it.
final class Link {
    let id: UInt32
    var state: LinkState = .handshake
    var kind: PeerKind = .gateway
    var world = ""
    var instance = ""
    /// The peer sent GOAWAY: no new streams are routed to it.
    var draining = false
    let decoder = FrameDecoder()
    /// Frames for the socket: appended to `queue.out` (the one copy of a routed frame), handed over by
    /// `Broker.takeOutput`.
    let queue = SendQueue()
    /// Where frames for this peer are written.
    @inline(__always) var out: ByteQueue { queue.out }
    @inline(__always) var sendInFlight: Bool { queue.inFlight }
    /// In the broker's list of links with output to send.
    var dirty = false
    var maxFrameBytes: UInt32 = Wire.handshakeFrameBytes
    /// Link-local stream id (and subscription id) → pair index.
    var streams: [UInt32: Int32] = [:]
    /// Subscriptions by link-local id.
    var subscriptions: [UInt32: Subscription] = [:]
    /// The last PUBLISH topic as raw bytes, and what was built from it (see `Broker.publishTopic`).
    var publishTopic: [UInt8] = []
    var publishWorld = ""
    var publishRoom = ""
    var publishKey = ""
    /// Drop-oldest subscriptions with frames held back, flushed when the queue drains.
    var hasHeldRoomFrames = false
    /// Broker-initiated stream ids are even.
    var nextStreamID: UInt32 = 2
    /// The highest peer-initiated stream id seen (for GOAWAY).
    var lastPeerStream: UInt32 = 0
    let openedAt: UInt64
    var lastHeard: UInt64
    var lastPing: UInt64
    var pause: PauseReasons = []
    /// Links paused because this one is congested.
    var waiters: [UInt32] = []
    /// When the queue crossed the high watermark (nil while below it).
    var congestedSince: UInt64?
    /// Streams routed to this link as acceptor and still open (the balancer's load figure).
    var outstanding = 0
    /// Outlier detection (instances): streams that failed in a row, how often the instance was ejected, and
    /// until when it is out of rotation (0: in rotation).
    var consecutiveFailures: UInt32 = 0
    var ejections: UInt32 = 0
    var ejectedUntil: UInt64 = 0

    init(id: UInt32, now: UInt64) {
        self.id = id
        self.openedAt = now
        self.lastHeard = now
        self.lastPing = now
    }

    /// Bytes queued towards this peer, including a send in flight.
    @inline(__always) var queuedBytes: Int { queue.count }
}

/// Credit through a key's buckets (`Broker.pace`): what is granted now and what stays held back.
struct PacedCredit {
    var bytes: UInt32
    var frames: UInt32
    var heldBytes: UInt32
    var heldFrames: UInt32
}

/// One end of a pair: a link and the stream id on that link.
struct StreamEnd {
    var link: UInt32
    var stream: UInt32
    /// What this end may still send before it needs CREDIT (the broker checks, the peer should never exceed).
    var windowBytes: Int64
    var windowFrames: Int64
    /// Sent DATA with END.
    var ended = false

    enum Charge { case ok, afterEnd, overWindow }

    /// Charges one DATA frame of `n` bytes sent by this end against its window.
    @inline(__always) mutating func charge(bytes n: Int64, end: Bool) -> Charge {
        if ended { return .afterEnd }
        windowBytes -= n
        windowFrames -= 1
        if windowBytes < 0 || windowFrames < 0 { return .overWindow }
        ended = end
        return .ok
    }
}

/// A stream across the broker: the opener's stream paired with the acceptor's, with both ends' windows.
struct StreamPair {
    var live = false
    var opener: StreamEnd
    var acceptor: StreamEnd
    var keyID: UInt64 = 0
    /// Credit for the opener held back by the key's quota, released as tokens refill.
    var deferredBytes: UInt32 = 0
    var deferredFrames: UInt32 = 0
    /// The same for the acceptor (the reply direction): a key's frames/s and bytes/s cover both directions.
    var deferredReplyBytes: UInt32 = 0
    var deferredReplyFrames: UInt32 = 0
    var pacing = false
    /// The opener has been told (CREDIT with PACED) that its key's quota is holding credit back.
    var pacedNotified = false

    /// Whether the key's quota holds credit back in either direction now.
    var pacedNow: Bool { deferredBytes > 0 || deferredFrames > 0 || deferredReplyBytes > 0 || deferredReplyFrames > 0 }
}

/// A subscriber in a room.
final class Subscription {
    let link: UInt32
    let stream: UInt32
    let mode: SubscribeMode
    let roomKey: String
    /// Held frames (drop-oldest mode only), oldest first from `heldHead`.
    var held: [[UInt8]] = []
    var heldHead = 0
    /// Frames dropped since the subscriber was last told.
    var lost: UInt32 = 0

    init(link: UInt32, stream: UInt32, mode: SubscribeMode, roomKey: String) {
        self.link = link
        self.stream = stream
        self.mode = mode
        self.roomKey = roomKey
    }

    var heldCount: Int { held.count - heldHead }
}

/// The instances of one world, with balancing state.
final class WorldPool {
    var links: [UInt32] = []
    var cursor = 0
    /// session → instance link; insertion order kept for bounded eviction.
    var affinity: [String: UInt32] = [:]
    var affinityOrder: [String] = []
    var affinityOrderHead = 0
}
