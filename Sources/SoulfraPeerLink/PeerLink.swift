import SoulfraWire

/// What a session reports to its owner. DATA payloads are only valid during the call.
public protocol PeerLinkDelegate: AnyObject {
    /// WELCOME arrived: the link is ready.
    func linkReady(_ link: PeerLink, welcome: Welcome)
    /// The broker offered a stream (this peer is the acceptor).
    func linkAccepted(_ link: PeerLink, stream: UInt32, open: Open)
    /// DATA on a stream or a room subscription. `flags`: END_STREAM (the other side sends no more), MORE (the
    /// message continues in the next DATA; see `MessageAssembler`), BINARY (a binary message).
    func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags)
    /// The stream can send again after CREDIT.
    func linkWritable(_ link: PeerLink, stream: UInt32)
    /// The stream ended: `code` is `.none` for a clean CLOSE or both sides' END.
    func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String)
    /// A drop-oldest subscription lost `count` frames.
    func linkDropped(_ link: PeerLink, stream: UInt32, count: UInt32)
    /// The broker started (`true`) or stopped (`false`) holding back this stream's credit for its key's quota.
    func linkPaced(_ link: PeerLink, stream: UInt32, paced: Bool)
    /// The broker is going away; no new streams will be accepted.
    func linkGoaway(_ link: PeerLink, code: ErrorCode, reason: String)
    /// The link is finished (ERROR from the broker, a protocol violation, or the socket closed).
    func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String)
}

extension PeerLinkDelegate {
    public func linkReady(_ link: PeerLink, welcome: Welcome) {}
    public func linkAccepted(_ link: PeerLink, stream: UInt32, open: Open) {}
    public func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {}
    public func linkWritable(_ link: PeerLink, stream: UInt32) {}
    public func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {}
    public func linkDropped(_ link: PeerLink, stream: UInt32, count: UInt32) {}
    public func linkPaced(_ link: PeerLink, stream: UInt32, paced: Bool) {}
    public func linkGoaway(_ link: PeerLink, code: ErrorCode, reason: String) {}
    public func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String) {}
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
/// It tracks each stream's send window (DATA is refused past it) and receive window (what it granted and has
/// not yet received) and, with `autoCredit`, grants credit back as the owner consumes DATA, in batches of half
/// the initial window (like HTTP/2 WINDOW_UPDATE). Messages larger than the frame size or the window go out
/// as several DATA frames flagged MORE (`sendPartial`).
public final class PeerLink {
    // Stored properties are `@exclusivity(unchecked)` for the reason given at `ByteQueue`.
    public enum State: Equatable {
        case idle
        case helloSent
        case ready
        case closed(ErrorCode, String)
    }

    struct StreamState {
        /// What this side may still send.
        var windowBytes: Int64
        var windowFrames: Int64
        /// What the other side may still send (its window as this side granted it), and the initial grant.
        var receiveBytes: Int64
        var receiveFrames: Int64
        var initialReceive: Window
        var unackedBytes: UInt32 = 0
        var unackedFrames: UInt32 = 0
        var sentEnd = false
        var receivedEnd = false
        var isSubscription = false
        var paced = false
    }

    public let identity: PeerIdentity
    public weak var delegate: (any PeerLinkDelegate)?
    /// Grant credit automatically after each DATA is delivered (off: call `grant` yourself).
    @exclusivity(unchecked) public var autoCredit = true
    @exclusivity(unchecked) public private(set) var state: State = .idle
    @exclusivity(unchecked) public private(set) var welcome: Welcome?
    /// Frames to write to the socket.
    public let output = ByteQueue()
    let decoder = FrameDecoder()
    @exclusivity(unchecked) var streams: [UInt32: StreamState] = [:]
    @exclusivity(unchecked) var nextStreamID: UInt32 = 1
    @exclusivity(unchecked) public private(set) var goawayReceived = false

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

    /// When bytes last arrived (monotonic milliseconds; the `now` of the last `receive`).
    @exclusivity(unchecked) public private(set) var lastHeardMilliseconds: UInt64 = 0

    /// Whether the broker has been silent for longer than three of its heartbeat intervals (it PINGs every
    /// interval, so a live broker is never that quiet): the link is dead even if TCP has not noticed.
    public func brokerSilent(now: UInt64) -> Bool {
        guard let w = welcome, w.heartbeatMilliseconds > 0 else { return false }
        return now &- lastHeardMilliseconds > 3 * UInt64(w.heartbeatMilliseconds)
    }

    /// Feeds bytes read from the socket; `nowMilliseconds` is the monotonic clock's reading for their batch.
    public func receive(_ bytes: UnsafeRawBufferPointer, nowMilliseconds: UInt64) {
        guard !isClosed else { return }
        lastHeardMilliseconds = nowMilliseconds
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
        for s in open { delegate?.linkStreamClosed(self, stream: s, code: .peerGone, reason: "link closed: \(reason)") }
        delegate?.linkClosed(self, code: code, reason: reason)
    }

    @inline(__always)
    func handle(_ h: FrameHeader, _ payload: UnsafeRawBufferPointer) throws(WireError) {
        switch h.type {
        case .data:
            try Frame.requireStream(h)
            guard var st = streams[h.stream] else { return }  // ended locally; late DATA
            let flags = h.flags.intersection(FrameFlags.dataFlags)
            let end = flags.contains(.endStream)
            if end && flags.contains(.more) { throw .invalidValue(field: "data.flags (MORE with END_STREAM)") }
            if !st.isSubscription {
                st.receivedEnd = end || st.receivedEnd
                st.receiveBytes -= Int64(payload.count)
                st.receiveFrames -= 1
                if autoCredit {
                    st.unackedBytes += UInt32(payload.count)
                    st.unackedFrames += 1
                }
            }
            streams[h.stream] = st
            delegate?.linkData(self, stream: h.stream, payload: payload, flags: flags)
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
            if pacingChanged { delegate?.linkPaced(self, stream: h.stream, paced: paced) }
            if wasBlocked && st.windowBytes > 0 && st.windowFrames > 0 { delegate?.linkWritable(self, stream: h.stream) }
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
            delegate?.linkReady(self, welcome: w)
        case .open(let stream, let open):
            guard let w = welcome else { throw .invalidValue(field: "OPEN before WELCOME") }
            // The opener's grant (OPEN's window) is what this side may send; it grants the default back.
            let send = open.window ?? Window(bytes: w.streamCreditBytes, frames: w.streamCreditFrames)
            streams[stream] = StreamState(send: send, receive: Window(bytes: w.streamCreditBytes, frames: w.streamCreditFrames))
            delegate?.linkAccepted(self, stream: stream, open: open)
        case .close(let stream, let code, let reason):
            guard streams.removeValue(forKey: stream) != nil else { return }
            delegate?.linkStreamClosed(self, stream: stream, code: code, reason: reason)
        case .error(let stream, let code, let reason):
            if stream == 0 {
                close(code: code, reason: reason)
                return
            }
            guard streams.removeValue(forKey: stream) != nil else { return }
            delegate?.linkStreamClosed(self, stream: stream, code: code, reason: reason)
        case .ping(let v):
            FrameWriter.write(.pong(v), to: output)
        case .pong:
            break
        case .goaway(_, let code, let reason):
            goawayReceived = true
            delegate?.linkGoaway(self, code: code, reason: reason)
        case .dropped(let stream, let count):
            delegate?.linkDropped(self, stream: stream, count: count)
        case .hello, .subscribe, .unsubscribe, .publish, .data, .credit:
            throw .invalidValue(field: "frame type the broker never sends")
        }
    }

    func maybeGrant(_ stream: UInt32) {
        guard var st = streams[stream] else { return }
        if st.unackedBytes >= st.initialReceive.bytes / 2 || st.unackedFrames >= max(1, st.initialReceive.frames / 2) {
            FrameWriter.credit(output, stream: stream, bytes: st.unackedBytes, frames: st.unackedFrames)
            st.receiveBytes += Int64(st.unackedBytes)
            st.receiveFrames += Int64(st.unackedFrames)
            st.unackedBytes = 0
            st.unackedFrames = 0
            streams[stream] = st
        }
    }

    func finish(_ stream: UInt32) {
        guard streams.removeValue(forKey: stream) != nil else { return }
        delegate?.linkStreamClosed(self, stream: stream, code: .none, reason: "ended")
    }

    // MARK: - Output

    /// Opens a stream; returns its id. The initial send window comes from WELCOME; what the acceptor may send
    /// first is `open.window` when set (else WELCOME's credit too).
    @discardableResult
    public func open(_ open: Open) -> UInt32 {
        precondition(isReady, "open() before the link is ready")
        let id = nextStreamID
        nextStreamID += 2
        let w = welcome!
        let credit = Window(bytes: w.streamCreditBytes, frames: w.streamCreditFrames)
        streams[id] = StreamState(send: credit, receive: open.window ?? credit)
        FrameWriter.write(.open(stream: id, open), to: output)
        return id
    }

    /// What the other side may still send on `stream` before this side grants more (nil: no such stream).
    public func receiveWindow(_ stream: UInt32) -> (bytes: Int64, frames: Int64)? {
        streams[stream].map { ($0.receiveBytes, $0.receiveFrames) }
    }

    /// The largest DATA payload this link carries (negotiated in WELCOME).
    public var maxFrameBytes: Int { Int(welcome?.maxFrameBytes ?? Wire.handshakeFrameBytes) }

    /// Whether the broker is pacing this stream for its key's quota (from CREDIT's PACED flag).
    public func isPaced(_ stream: UInt32) -> Bool { streams[stream]?.paced ?? false }

    /// Bytes and frames this stream may still send.
    public func window(_ stream: UInt32) -> (bytes: Int64, frames: Int64)? {
        streams[stream].map { ($0.windowBytes, $0.windowFrames) }
    }

    /// Queues one whole message if the window allows it all (split into frames of at most `maxFrameBytes`,
    /// flagged MORE but the last); false means wait for `linkWritable` (or the stream is gone). Messages
    /// that may be larger than the window go through `sendPartial`.
    @inline(__always)
    public func send(stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool = false, binary: Bool = false) -> Bool {
        guard let st = streams[stream], !st.sentEnd else { return false }
        let frames = payload.count <= maxFrameBytes ? 1 : (payload.count + maxFrameBytes - 1) / maxFrameBytes
        guard st.windowBytes >= Int64(payload.count), st.windowFrames >= Int64(frames) else { return false }
        return sendPartial(stream: stream, payload: payload, end: end, binary: binary) == payload.count
    }

    /// Queues one whole event message that carries its per-session sequence number (DATA flag SEQUENCED: the
    /// number leads the first frame, which the gateway turns into the SSE `id:`), if the window allows it all.
    public func sendSequenced(stream: UInt32, sequence: UInt64, payload: UnsafeRawBufferPointer, end: Bool = false) -> Bool {
        var bytes = [UInt8](repeating: 0, count: 8 + payload.count)
        withUnsafeBytes(of: sequence.bigEndian) { bytes.replaceSubrange(0..<8, with: $0) }
        if payload.count > 0 { bytes.replaceSubrange(8..., with: payload) }
        guard let st = streams[stream], !st.sentEnd else { return false }
        let frames = bytes.count <= maxFrameBytes ? 1 : (bytes.count + maxFrameBytes - 1) / maxFrameBytes
        guard st.windowBytes >= Int64(bytes.count), st.windowFrames >= Int64(frames) else { return false }
        return bytes.withUnsafeBytes { sendPartial(stream: stream, payload: $0, end: end, sequenced: true) } == bytes.count
    }

    /// Queues as much of one message as the window allows, in frames of at most `maxFrameBytes`; every frame
    /// but the message's last is flagged MORE (END_STREAM, with `end`, only on the last). With `continues`
    /// the message goes on after `payload` (its bytes are still arriving), so even the last frame carries MORE.
    /// Returns the bytes taken — call again with the rest after `linkWritable` — or nil when nothing could be
    /// sent (no window, or the stream is gone or ended). An empty payload takes one frame and returns 0.
    public func sendPartial(stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool = false, binary: Bool = false,
                            continues: Bool = false, sequenced: Bool = false) -> Int? {
        guard var st = streams[stream], !st.sentEnd, st.windowFrames >= 1 else { return nil }
        guard payload.count == 0 || st.windowBytes >= 1 else { return nil }
        var sent = 0
        let base: FrameFlags = binary ? .binary : []
        repeat {
            let n = min(payload.count - sent, maxFrameBytes, Int(max(0, st.windowBytes)))
            let last = sent + n == payload.count
            var flags = base
            if sequenced && sent == 0 { flags.insert(.sequenced) }
            if !last || continues { flags.insert(.more) } else if end { flags.insert(.endStream) }
            FrameWriter.data(output, stream: stream, payload: n == 0 ? UnsafeRawBufferPointer(start: nil, count: 0)
                                                      : UnsafeRawBufferPointer(rebasing: payload[sent..<(sent + n)]), flags: flags)
            sent += n
            st.windowBytes -= Int64(n)
            st.windowFrames -= 1
            if last {
                st.sentEnd = end && !continues
                break
            }
        } while st.windowFrames >= 1 && st.windowBytes >= 1
        streams[stream] = st
        if st.sentEnd && st.receivedEnd { finish(stream) }
        return sent
    }

    /// Grants the other side more window (when `autoCredit` is off).
    public func grant(stream: UInt32, bytes: UInt32, frames: UInt32) {
        guard var st = streams[stream] else { return }
        st.receiveBytes += Int64(bytes)
        st.receiveFrames += Int64(frames)
        streams[stream] = st
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
        var st = StreamState(send: Window(bytes: 0, frames: 0), receive: Window(bytes: 0, frames: 0))
        st.isSubscription = true
        streams[id] = st
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

extension PeerLink.StreamState {
    init(send: Window, receive: Window) {
        self.init(windowBytes: Int64(send.bytes), windowFrames: Int64(send.frames),
                  receiveBytes: Int64(receive.bytes), receiveFrames: Int64(receive.frames), initialReceive: receive)
    }
}

/// Puts messages back together from DATA frames flagged MORE, per stream, up to a size limit. A message that
/// arrives in one frame is handed on in place, without a copy. A class, so that whoever handles a message may
/// end streams (and `drop` them here) from inside `feed`'s callback: its state is not being modified then.
public final class MessageAssembler {
    public let maxMessageBytes: Int
    @exclusivity(unchecked) var partial: [UInt32: [UInt8]] = [:]

    public init(maxMessageBytes: Int = 1 << 20) { self.maxMessageBytes = maxMessageBytes }

    /// Feeds one DATA frame. `body` gets each complete message with the flags of its last frame (END_STREAM,
    /// BINARY). Returns false when the message grew past `maxMessageBytes` (what was gathered is dropped).
    public func feed(stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags,
                              _ body: (UnsafeRawBufferPointer, FrameFlags) -> Void) -> Bool {
        let more = flags.contains(.more)
        if partial[stream] == nil && !more {
            guard payload.count <= maxMessageBytes else { return false }
            body(payload, flags)
            return true
        }
        var gathered = partial.removeValue(forKey: stream) ?? []
        guard gathered.count + payload.count <= maxMessageBytes else { return false }
        gathered.append(contentsOf: payload)
        if more {
            partial[stream] = gathered
        } else {
            gathered.withUnsafeBytes { body($0, flags) }
        }
        return true
    }

    /// Forgets a stream's partial message (the stream ended).
    public func drop(stream: UInt32) { partial.removeValue(forKey: stream) }

    /// Bytes held for partial messages.
    public var bufferedBytes: Int { partial.values.reduce(0) { $0 + $1.count } }
}
