import SoulfraWire

/// What a session reports to its owner. DATA payloads are only valid during the call.
public protocol PeerSessionDelegate: AnyObject {
    /// WELCOME arrived: the link is ready.
    func sessionReady(_ session: PeerSession, welcome: Welcome)
    /// The broker offered a stream (this peer is the acceptor).
    func sessionAccepted(_ session: PeerSession, stream: UInt32, open: Open)
    /// DATA on a stream or a room subscription.
    func sessionData(_ session: PeerSession, stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool)
    /// The stream can send again after CREDIT.
    func sessionWritable(_ session: PeerSession, stream: UInt32)
    /// The stream ended: `code` is `.none` for a clean CLOSE or both sides' END.
    func sessionStreamClosed(_ session: PeerSession, stream: UInt32, code: ErrorCode, reason: String)
    /// A drop-oldest subscription lost `count` frames.
    func sessionDropped(_ session: PeerSession, stream: UInt32, count: UInt32)
    /// The broker started (`true`) or stopped (`false`) holding back this stream's credit for its key's quota.
    func sessionPaced(_ session: PeerSession, stream: UInt32, paced: Bool)
    /// The broker is going away; no new streams will be accepted.
    func sessionGoaway(_ session: PeerSession, code: ErrorCode, reason: String)
    /// The link is finished (ERROR from the broker, a protocol violation, or the socket closed).
    func sessionClosed(_ session: PeerSession, code: ErrorCode, reason: String)
}

extension PeerSessionDelegate {
    public func sessionReady(_ session: PeerSession, welcome: Welcome) {}
    public func sessionAccepted(_ session: PeerSession, stream: UInt32, open: Open) {}
    public func sessionData(_ session: PeerSession, stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool) {}
    public func sessionWritable(_ session: PeerSession, stream: UInt32) {}
    public func sessionStreamClosed(_ session: PeerSession, stream: UInt32, code: ErrorCode, reason: String) {}
    public func sessionDropped(_ session: PeerSession, stream: UInt32, count: UInt32) {}
    public func sessionPaced(_ session: PeerSession, stream: UInt32, paced: Bool) {}
    public func sessionGoaway(_ session: PeerSession, code: ErrorCode, reason: String) {}
    public func sessionClosed(_ session: PeerSession, code: ErrorCode, reason: String) {}
}

/// Who this peer is, as told in HELLO.
public struct PeerIdentity: Sendable, Equatable {
    public var kind: PeerKind
    public var world: String
    public var instance: String
    public var token: String
    /// The largest frame this peer accepts.
    public var maxFrameBytes: UInt32
    /// The broker loop to attach to (`Wire.anyLoop`: the broker's choice; instances always go to their
    /// world's loop). See `PeerGroup` for one link per loop.
    public var loop: UInt16

    public init(kind: PeerKind, world: String = "", instance: String = "", token: String, maxFrameBytes: UInt32 = 64 << 10,
                loop: UInt16 = Wire.anyLoop) {
        self.kind = kind
        self.world = world
        self.instance = instance
        self.token = token
        self.maxFrameBytes = maxFrameBytes
        self.loop = loop
    }
}

/// The peer side of one broker link, sans-IO: bytes in through `receive`, bytes out in `output`.
///
/// It tracks each stream's send window (DATA is refused past it) and, with `autoCredit`, grants credit back
/// as the owner consumes DATA, in batches of half the initial window (like HTTP/2 WINDOW_UPDATE).
public final class PeerSession {
    public enum State: Equatable {
        case idle
        case helloSent
        case ready
        case closed(ErrorCode, String)
    }

    struct StreamState {
        var windowBytes: Int64
        var windowFrames: Int64
        var unackedBytes: UInt32 = 0
        var unackedFrames: UInt32 = 0
        var sentEnd = false
        var receivedEnd = false
        var isSubscription = false
        var paced = false
    }

    public let identity: PeerIdentity
    public weak var delegate: (any PeerSessionDelegate)?
    /// Grant credit automatically after each DATA is delivered (off: call `grant` yourself).
    public var autoCredit = true
    public private(set) var state: State = .idle
    public private(set) var welcome: Welcome?
    /// Frames to write to the socket.
    public let output = ByteQueue()
    let decoder = FrameDecoder()
    var streams: [UInt32: StreamState] = [:]
    var nextStreamID: UInt32 = 1
    public private(set) var goawayReceived = false

    public init(identity: PeerIdentity) {
        self.identity = identity
    }

    /// Queues HELLO. Call once the socket is connected.
    public func start() {
        precondition(state == .idle, "start() called twice")
        FrameWriter.write(.hello(Hello(kind: identity.kind, maxFrameBytes: identity.maxFrameBytes,
                                       world: identity.world, instance: identity.instance, token: identity.token,
                                       loop: identity.loop)), to: output)
        state = .helloSent
    }

    public var isReady: Bool { state == .ready }
    public var isClosed: Bool { if case .closed = state { true } else { false } }
    /// Streams (and subscriptions) open now.
    public var openStreams: Int { streams.count }

    // MARK: - Input

    /// When bytes last arrived (monotonic milliseconds; set by `receive`).
    public private(set) var lastHeardMilliseconds: UInt64 = 0

    /// Whether the broker has been silent for longer than three of its heartbeat intervals (it PINGs every
    /// interval, so a live broker is never that quiet): the link is dead even if TCP has not noticed.
    public func brokerSilent(now: UInt64) -> Bool {
        guard let w = welcome, w.heartbeatMilliseconds > 0 else { return false }
        return now &- lastHeardMilliseconds > 3 * UInt64(w.heartbeatMilliseconds)
    }

    /// Feeds bytes read from the socket.
    public func receive(_ bytes: UnsafeRawBufferPointer) {
        guard !isClosed else { return }
        lastHeardMilliseconds = monotonicMilliseconds()
        do {
            try decoder.feed(bytes) { header, payload throws(WireError) in
                try self.handle(header, payload)
                return !self.isClosed
            }
        } catch {
            FrameWriter.write(.error(stream: 0, code: error.code, reason: error.description), to: output)
            close(code: error.code, reason: "broker sent an invalid frame: \(error)")
        }
    }

    /// The socket closed underneath.
    public func transportClosed(reason: String) {
        close(code: .peerGone, reason: reason)
    }

    func close(code: ErrorCode, reason: String) {
        guard !isClosed else { return }
        state = .closed(code, reason)
        let open = Array(streams.keys)
        streams.removeAll()
        for s in open { delegate?.sessionStreamClosed(self, stream: s, code: .peerGone, reason: "link closed: \(reason)") }
        delegate?.sessionClosed(self, code: code, reason: reason)
    }

    @inline(__always)
    func handle(_ h: FrameHeader, _ payload: UnsafeRawBufferPointer) throws(WireError) {
        switch h.type {
        case .data:
            try Frame.requireStream(h)
            guard var st = streams[h.stream] else { return }  // ended locally; late DATA
            let end = h.flags.contains(.endStream)
            if !st.isSubscription {
                st.receivedEnd = end || st.receivedEnd
                if autoCredit {
                    st.unackedBytes += UInt32(payload.count)
                    st.unackedFrames += 1
                }
            }
            streams[h.stream] = st
            delegate?.sessionData(self, stream: h.stream, payload: payload, end: end)
            if autoCredit && !st.isSubscription { maybeGrant(h.stream) }
            if st.receivedEnd && st.sentEnd { finish(h.stream) }
        case .credit:
            try Frame.requireStream(h)
            guard payload.count == 8 else { throw .truncated(field: "credit") }
            guard var st = streams[h.stream] else { return }
            let wasBlocked = st.windowBytes <= 0 || st.windowFrames <= 0
            st.windowBytes += Int64(payload.loadBE(UInt32.self, at: 0))
            st.windowFrames += Int64(payload.loadBE(UInt32.self, at: 4))
            let paced = h.flags.contains(.paced)
            let pacingChanged = paced != st.paced
            st.paced = paced
            streams[h.stream] = st
            if pacingChanged { delegate?.sessionPaced(self, stream: h.stream, paced: paced) }
            if wasBlocked && st.windowBytes > 0 && st.windowFrames > 0 { delegate?.sessionWritable(self, stream: h.stream) }
        default:
            try control(Frame.parse(h, payload))
        }
    }

    func control(_ frame: Frame) throws(WireError) {
        switch frame {
        case .welcome(let w):
            guard state == .helloSent else { throw .invalidValue(field: "unexpected WELCOME") }
            welcome = w
            state = .ready
            decoder.maxPayload = w.maxFrameBytes
            delegate?.sessionReady(self, welcome: w)
        case .open(let stream, let open):
            guard let w = welcome else { throw .invalidValue(field: "OPEN before WELCOME") }
            streams[stream] = StreamState(windowBytes: Int64(w.streamCreditBytes), windowFrames: Int64(w.streamCreditFrames))
            delegate?.sessionAccepted(self, stream: stream, open: open)
        case .close(let stream, let code, let reason):
            guard streams.removeValue(forKey: stream) != nil else { return }
            delegate?.sessionStreamClosed(self, stream: stream, code: code, reason: reason)
        case .error(let stream, let code, let reason):
            if stream == 0 {
                close(code: code, reason: reason)
                return
            }
            guard streams.removeValue(forKey: stream) != nil else { return }
            delegate?.sessionStreamClosed(self, stream: stream, code: code, reason: reason)
        case .ping(let v):
            FrameWriter.write(.pong(v), to: output)
        case .pong:
            break
        case .goaway(_, let code, let reason):
            goawayReceived = true
            delegate?.sessionGoaway(self, code: code, reason: reason)
        case .dropped(let stream, let count):
            delegate?.sessionDropped(self, stream: stream, count: count)
        case .hello, .subscribe, .unsubscribe, .publish, .data, .credit:
            throw .invalidValue(field: "frame type the broker never sends")
        }
    }

    func maybeGrant(_ stream: UInt32) {
        guard let w = welcome, var st = streams[stream] else { return }
        if st.unackedBytes >= w.streamCreditBytes / 2 || st.unackedFrames >= max(1, w.streamCreditFrames / 2) {
            FrameWriter.credit(output, stream: stream, bytes: st.unackedBytes, frames: st.unackedFrames)
            st.unackedBytes = 0
            st.unackedFrames = 0
            streams[stream] = st
        }
    }

    func finish(_ stream: UInt32) {
        guard streams.removeValue(forKey: stream) != nil else { return }
        delegate?.sessionStreamClosed(self, stream: stream, code: .none, reason: "ended")
    }

    // MARK: - Output

    /// Opens a stream; returns its id. The initial send window comes from WELCOME.
    @discardableResult
    public func open(_ open: Open) -> UInt32 {
        precondition(isReady, "open() before the link is ready")
        let id = nextStreamID
        nextStreamID += 2
        let w = welcome!
        streams[id] = StreamState(windowBytes: Int64(w.streamCreditBytes), windowFrames: Int64(w.streamCreditFrames))
        FrameWriter.write(.open(stream: id, open), to: output)
        return id
    }

    /// Whether the broker is pacing this stream for its key's quota (from CREDIT's PACED flag).
    public func isPaced(_ stream: UInt32) -> Bool { streams[stream]?.paced ?? false }

    /// Bytes and frames this stream may still send.
    public func window(_ stream: UInt32) -> (bytes: Int64, frames: Int64)? {
        streams[stream].map { ($0.windowBytes, $0.windowFrames) }
    }

    /// Queues DATA if the window allows; false means wait for `sessionWritable` (or the stream is gone).
    @inline(__always)
    public func send(stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool = false) -> Bool {
        guard var st = streams[stream], !st.sentEnd, st.windowBytes >= Int64(payload.count), st.windowFrames >= 1 else {
            return false
        }
        st.windowBytes -= Int64(payload.count)
        st.windowFrames -= 1
        st.sentEnd = end
        streams[stream] = st
        FrameWriter.data(output, stream: stream, payload: payload, end: end)
        if st.sentEnd && st.receivedEnd { finish(stream) }
        return true
    }

    /// Grants the other side more window (when `autoCredit` is off).
    public func grant(stream: UInt32, bytes: UInt32, frames: UInt32) {
        guard streams[stream] != nil else { return }
        FrameWriter.credit(output, stream: stream, bytes: bytes, frames: frames)
    }

    /// Ends a stream at once (CLOSE): both directions stop.
    public func closeStream(_ stream: UInt32, code: ErrorCode = .none, reason: String = "") {
        guard streams.removeValue(forKey: stream) != nil else { return }
        FrameWriter.write(.close(stream: stream, code: code, reason: reason), to: output)
    }

    /// Joins a room; returns the subscription id (DATA arrives on it).
    @discardableResult
    public func subscribe(world: String, room: String, mode: SubscribeMode = .reliable) -> UInt32 {
        precondition(isReady, "subscribe() before the link is ready")
        let id = nextStreamID
        nextStreamID += 2
        streams[id] = StreamState(windowBytes: 0, windowFrames: 0, isSubscription: true)
        FrameWriter.write(.subscribe(stream: id, Subscribe(mode: mode, world: world, room: room)), to: output)
        return id
    }

    public func unsubscribe(_ id: UInt32) {
        guard streams.removeValue(forKey: id) != nil else { return }
        FrameWriter.write(.unsubscribe(stream: id), to: output)
    }

    /// Publishes to a room (no credit: rooms are bounded per subscriber instead).
    @inline(__always)
    public func publish(world: String, room: String, payload: UnsafeRawBufferPointer) {
        FrameWriter.publish(output, world: world, room: room, payload: payload)
    }

    /// Tells the broker this peer is going away (no new streams).
    public func goaway(reason: String = "peer shutting down") {
        FrameWriter.write(.goaway(lastStream: 0, code: .shutdown, reason: reason), to: output)
    }

    /// Sends PING (the broker answers PONG).
    public func ping(_ value: UInt64) {
        FrameWriter.write(.ping(value), to: output)
    }
}
