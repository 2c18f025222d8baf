import SoulfraLimits
import SoulfraRate
import SoulfraWire

/// What the broker asks of the I/O layer after an event.
public enum BrokerAction: Equatable, Sendable {
    /// Stop reading the link (backpressure); its already-received bytes were handled.
    case pauseRead(UInt32)
    /// Read the link again.
    case resumeRead(UInt32)
    /// Flush what is queued for the link (bounded by a deadline), then close its socket and call `detach`.
    case close(UInt32)
    /// Shutdown has drained (or hit its deadline): every link has been told and is closing.
    case shutdownComplete
}

/// Per-key quota state on this broker.
/// A key's buckets and open streams on this loop. A class: it is updated in place on every stream open and
/// close, and a struct in a dictionary would go through the dictionary's modify accessor each time.
final class KeyState {
    var bytes: TokenBucket
    var frames: TokenBucket
    var streams = 0
    init(bytes: TokenBucket, frames: TokenBucket) {
        self.bytes = bytes
        self.frames = frames
    }
}

/// The broker: routes World ↔ Runtime ↔ Vault frames between links, with per-stream credit, per-link
/// watermarks, per-key quotas, rooms and heartbeats. Sans-IO: it takes bytes, link events and `now`
/// (monotonic nanoseconds) and produces bytes per link plus `BrokerAction`s. One broker is driven by one
/// thread; nothing in it locks.
public final class Broker {
    public let limits: BrokerLimits
    public private(set) var access: AccessTable
    public let serverName: String
    /// This broker's loop and the number of loops: worlds are partitioned across loops by
    /// `Wire.loop(forWorld:count:)`, and this broker serves only its own.
    public let loopIndex: Int
    public let loopCount: Int
    var defaultBalancer: BalancerPolicy
    var balancerPolicies: [String: BalancerPolicy] = [:]

    var links: [Link?] = []
    var attachedLinks = 0
    /// When `tick` last walked every link (heartbeats and deadlines need no finer grain than this).
    var lastLinkScan: UInt64 = 0
    var pairs: [StreamPair] = []
    var freePairs: [Int32] = []
    var livePairs = 0
    var pools: [String: WorldPool] = [:]
    let runtimes = WorldPool()
    let vaults = WorldPool()
    /// Subscribers by "world\0room".
    var rooms: [String: [Subscription]] = [:]
    var keyStates: [UInt64: KeyState] = [:]
    var pacedPairs: [Int32] = []
    var metrics = BrokerCounters()
    var dirtyLinks: [UInt32] = []
    var dirtySpare: [UInt32] = []
    var pendingActions: [BrokerAction] = []
    var actionsSpare: [BrokerAction] = []
    var shutdownDeadline: UInt64?
    public private(set) var shutdownComplete = false
    /// The clock peers are judged by (heartbeats, handshake and slow-consumer deadlines): `now` with the
    /// loop's own stalls cut out. A loop that was busy for seconds — one heavy request, a paused process —
    /// did not hear its peers because it was not listening, not because they were silent; each step of this
    /// clock is at most `maxClockStepNanos`, so after a stall peers get the time they were owed.
    public private(set) var loopTime: UInt64 = 0
    var lastObserved: UInt64 = 0
    /// The longest step `loopTime` takes between two observations. A healthy loop observes every tick (10 ms
    /// by default), so this only ever cuts stalls.
    static let maxClockStepNanos: UInt64 = 100_000_000

    public init(
        limits: BrokerLimits = BrokerLimits(), access: AccessTable, serverName: String = "soulfra",
        balancer: BalancerPolicy = .leastOutstanding, loopIndex: Int = 0, loopCount: Int = 1
    ) {
        precondition(loopCount >= 1 && loopIndex >= 0 && loopIndex < loopCount, "bad loop index \(loopIndex) of \(loopCount)")
        self.loopIndex = loopIndex
        self.loopCount = loopCount
        self.limits = limits
        self.access = access
        self.serverName = serverName
        self.defaultBalancer = balancer
    }

    // MARK: - Link lifecycle

    /// A socket was accepted as link `id` (the I/O layer's slot; unique among attached links).
    public func attach(link id: UInt32, now: UInt64) {
        observe(now)
        let i = Int(id)
        if i >= links.count { links.append(contentsOf: repeatElement(nil, count: i - links.count + 1)) }
        precondition(links[i] == nil, "link \(id) attached twice")
        links[i] = Link(id: id, now: loopTime)
        attachedLinks += 1
    }

    /// Closes a link that never completed its handshake in time, with ERROR `handshake_timeout` (for sockets
    /// the I/O layer held before attaching them, e.g. while reading which loop they belong to).
    public func failHandshake(link id: UInt32) {
        guard let link = liveLink(id), link.state == .handshake else { return }
        fail(link, .handshakeTimeout, "no HELLO within \(limits.handshakeTimeoutMilliseconds) ms")
    }

    /// Advances `loopTime` to `now`, by at most `maxClockStepNanos`.
    @inline(__always) func observe(_ now: UInt64) {
        guard now > lastObserved else { return }
        loopTime = lastObserved == 0 ? now : loopTime &+ min(now &- lastObserved, Self.maxClockStepNanos)
        lastObserved = now
    }

    /// Whether the broker can take another link (the I/O layer refuses the socket otherwise).
    public var canAttach: Bool { attachedLinks < limits.maxLinks && shutdownDeadline == nil }

    /// The link's socket is gone (peer closed, I/O error, or the close the broker asked for is done).
    public func detach(link id: UInt32, now: UInt64) {
        guard let link = liveLink(id) else { return }
        if link.state != .closing {
            metrics.linkCloses[Int(ErrorCode.peerGone.rawValue)] += 1
            teardown(link, .peerGone)
        }
        links[Int(id)] = nil
        attachedLinks -= 1
        checkShutdown(now: now)
    }

    /// Sets the balancer for one world's instances.
    public func setBalancer(_ policy: BalancerPolicy, forWorld world: String) {
        balancerPolicies[world] = policy
    }

    /// Replaces the access table. Streams whose key is gone are ended with `not_permitted`.
    public func install(access: AccessTable, now: UInt64) {
        self.access = access
        keyStates = keyStates.filter { access.keys[$0.key] != nil }
        for ri in pairs.indices where pairs[ri].live && pairs[ri].keyID != 0 && access.keys[pairs[ri].keyID] == nil {
            endPair(Int32(ri), code: .notPermitted, reason: "key revoked", notifyOpener: true, notifyAcceptor: true)
        }
    }

    @inline(__always) func liveLink(_ id: UInt32) -> Link? {
        let i = Int(id)
        return i < links.count ? links[i] : nil
    }

    /// Whether `world` is served by this broker's loop.
    @inline(__always) func serves(_ world: String) -> Bool {
        loopCount == 1 || Wire.loop(forWorld: world, count: loopCount) == loopIndex
    }

    func wrongLoopReason(_ world: String) -> String {
        "world \"\(world)\" is served by loop \(Wire.loop(forWorld: world, count: loopCount)) of \(loopCount); "
            + "this link is on loop \(loopIndex)"
    }

    @inline(__always) func kindIndex(_ link: Link) -> Int {
        link.state == .handshake ? 0 : Int(link.kind.rawValue)
    }

    // MARK: - Input

    /// Bytes arrived on a link. Every complete frame is handled before this returns.
    public func receive(link id: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {
        guard let link = liveLink(id), link.state != .closing else { return }
        observe(now)
        link.lastHeard = loopTime
        metrics.bytesIn[kindIndex(link)] &+= UInt64(bytes.count)
        do {
            try link.decoder.feed(bytes, oversize: { self.oversizeData(link, $0, now: now) }) { header, payload throws(WireError) in
                self.metrics.framesIn[self.kindIndex(link)] &+= 1
                try self.handle(link, header, payload, now: now)
                return link.state != .closing
            }
        } catch {
            fail(link, error.code, error.description)
        }
        if shutdownDeadline != nil { checkShutdown(now: now) }
    }

    /// A DATA frame over the link's maximum on an open stream ends that stream (both ends get
    /// `frame_too_large`), not the link: its payload is dropped as it arrives. Anything else oversize fails
    /// the link.
    func oversizeData(_ link: Link, _ h: FrameHeader, now: UInt64) -> Bool {
        guard link.state == .active, h.type == .data, h.stream != 0 else { return false }
        metrics.oversizeFrames += 1
        let reason = "\(h.length)-byte DATA exceeds the link's maximum frame \(link.maxFrameBytes); split messages with MORE"
        if let ri = link.streams[h.stream] {
            metrics.streamErrors[Int(ErrorCode.frameTooLarge.rawValue)] += 1
            endPair(ri, code: .frameTooLarge, reason: reason, notifyOpener: true, notifyAcceptor: true)
        } else {
            refuse(link, h.stream, .frameTooLarge, reason, now: now)
        }
        return true
    }

    @inline(__always)
    func handle(_ link: Link, _ h: FrameHeader, _ payload: UnsafeRawBufferPointer, now: UInt64) throws(WireError) {
        if link.state == .handshake && h.type != .hello {
            fail(link, .protocolError, "the first frame on a link must be HELLO, got \(h.type)")
            return
        }
        switch h.type {
        case .data:
            try Frame.requireStream(h)
            onData(link, h, payload, now: now)
        case .credit:
            try Frame.requireStream(h)
            guard payload.count == 8 else {
                throw payload.count < 8 ? .truncated(field: "credit") : .trailingBytes(type: .credit)
            }
            onCredit(link, stream: h.stream, bytes: payload.loadBE(UInt32.self, at: 0),
                     frames: payload.loadBE(UInt32.self, at: 4), now: now)
        case .publish:
            try Frame.requireLink(h)
            let topicBytes = try publishTopic(link, payload)
            onPublish(link, world: link.publishWorld, room: link.publishRoom, key: link.publishKey,
                      payload: UnsafeRawBufferPointer(rebasing: payload[topicBytes...]), now: now)
        default:
            try onControl(link, Frame.parse(h, payload), now: now)
        }
    }

    /// Reads PUBLISH's world and room into the link's topic cache and returns how many payload bytes they
    /// take. A publisher usually repeats one topic, so the strings and the room key are built only when the
    /// raw topic bytes change: the fan-out path then allocates nothing per message.
    @inline(__always)
    func publishTopic(_ link: Link, _ payload: UnsafeRawBufferPointer) throws(WireError) -> Int {
        guard payload.count >= 2 else { throw .truncated(field: "publish.world") }
        let worldEnd = 2 + Int(payload.loadBE(UInt16.self, at: 0))
        guard payload.count >= worldEnd + 2 else { throw .truncated(field: "publish.room") }
        let end = worldEnd + 2 + Int(payload.loadBE(UInt16.self, at: worldEnd))
        guard payload.count >= end else { throw .truncated(field: "publish.room") }
        let same = link.publishTopic.count == end && link.publishTopic.withUnsafeBytes { cached in
            cached.elementsEqual(UnsafeRawBufferPointer(rebasing: payload[..<end]))
        }
        if !same {
            var r = PayloadReader(payload)
            link.publishWorld = try r.string("publish.world")
            link.publishRoom = try r.string("publish.room")
            link.publishKey = Self.roomKey(world: link.publishWorld, room: link.publishRoom)
            link.publishTopic = Array(UnsafeRawBufferPointer(rebasing: payload[..<end]))
        }
        return end
    }

    func onControl(_ link: Link, _ frame: Frame, now: UInt64) throws(WireError) {
        switch frame {
        case .hello(let hello):
            onHello(link, hello, now: now)
        case .open(let stream, let open):
            onOpen(link, stream: stream, open, now: now)
        case .close(let stream, let code, let reason):
            guard let ri = link.streams[stream] else { return }  // already gone: nothing to do
            let fromOpener = pairs[Int(ri)].opener.link == link.id
            judge(ri, endedByOpener: fromOpener, code: code, now: now)
            endPair(ri, code: code, reason: reason, notifyOpener: !fromOpener, notifyAcceptor: fromOpener, asClose: true)
        case .error(let stream, let code, let reason):
            if stream == 0 {
                // The peer reports a fatal problem with the link: close it without answering.
                fail(link, code, "peer reported: \(reason)", notify: false)
                return
            }
            if let sub = link.subscriptions[stream] {
                removeSubscription(sub, from: link)
                return
            }
            guard let ri = link.streams[stream] else { return }
            metrics.streamErrors[Int(code.rawValue)] += 1
            let fromOpener = pairs[Int(ri)].opener.link == link.id
            judge(ri, endedByOpener: fromOpener, code: code, now: now)
            endPair(ri, code: code, reason: reason, notifyOpener: !fromOpener, notifyAcceptor: fromOpener)
        case .ping(let v):
            FrameWriter.write(.pong(v), to: link.out)
            queued(on: link, from: link, frames: 1, bytes: Wire.headerBytes + 8, now: now)
        case .pong:
            break  // lastHeard was updated on receipt
        case .subscribe(let stream, let sub):
            onSubscribe(link, stream: stream, sub, now: now)
        case .unsubscribe(let stream):
            if let sub = link.subscriptions[stream] { removeSubscription(sub, from: link) }
        case .goaway:
            link.draining = true
        case .welcome, .dropped:
            fail(link, .protocolError, "peers may not send \(frame.typeName)")
        case .data, .credit, .publish:
            break  // handled on the fast path
        }
    }

    // MARK: - Handshake

    func onHello(_ link: Link, _ hello: Hello, now: UInt64) {
        guard link.state == .handshake else {
            fail(link, .protocolError, "HELLO sent twice")
            return
        }
        guard hello.version == Wire.version else {
            fail(link, .unsupportedVersion, "this broker speaks protocol version \(Wire.version); the peer offered \(hello.version)")
            return
        }
        if shutdownDeadline != nil {
            fail(link, .shutdown, "broker is shutting down")
            return
        }
        if hello.kind == .instance && hello.world.isEmpty {
            fail(link, .protocolError, "an instance must name its world in HELLO")
            return
        }
        if hello.kind == .instance && !serves(hello.world) {
            fail(link, .wrongLoop, wrongLoopReason(hello.world))
            return
        }
        guard access.admits(kind: hello.kind, world: hello.world, token: hello.token) else {
            let scope = hello.kind == .instance ? "world \"\(hello.world)\"" : "\(hello.kind) peers"
            fail(link, .authFailed, "token not valid for \(scope)")
            return
        }
        let negotiated = min(hello.maxFrameBytes, limits.maxFrameBytes)
        guard negotiated >= Wire.maxFrameBytesFloor else {
            fail(link, .protocolError, "max frame \(hello.maxFrameBytes) is below the protocol minimum \(Wire.maxFrameBytesFloor)")
            return
        }
        link.maxFrameBytes = negotiated
        link.decoder.maxPayload = negotiated
        link.state = .active
        link.kind = hello.kind
        link.world = hello.world
        link.instance = hello.instance
        switch hello.kind {
        case .instance:
            let pool: WorldPool
            if let p = pools[hello.world] { pool = p } else { pool = WorldPool(); pools[hello.world] = pool }
            pool.links.append(link.id)
        case .runtime: runtimes.links.append(link.id)
        case .vault: vaults.links.append(link.id)
        case .gateway: break
        }
        let welcome = Welcome(
            maxFrameBytes: negotiated, heartbeatMilliseconds: limits.heartbeatIntervalMilliseconds,
            streamCreditBytes: limits.streamCreditBytes, streamCreditFrames: limits.streamCreditFrames,
            linkID: link.id, server: serverName, loopIndex: UInt16(loopIndex), loopCount: UInt16(loopCount))
        FrameWriter.write(.welcome(welcome), to: link.out)
        queued(on: link, from: nil, frames: 1, bytes: 0, now: now)
    }

    // MARK: - Streams

    func onOpen(_ link: Link, stream: UInt32, _ open: Open, now: UInt64) {
        guard stream & 1 == 1 else {
            fail(link, .protocolError, "peer-initiated stream ids must be odd, got \(stream)")
            return
        }
        guard link.streams[stream] == nil && link.subscriptions[stream] == nil else {
            fail(link, .protocolError, "stream id \(stream) is already in use")
            return
        }
        link.lastPeerStream = max(link.lastPeerStream, stream)
        if shutdownDeadline != nil { return refuse(link, stream, .shutdown, "broker is shutting down", now: now) }
        if link.streams.count + link.subscriptions.count >= limits.maxStreamsPerLink {
            return refuse(link, stream, .streamLimit, "link holds max_streams_per_link (\(limits.maxStreamsPerLink)) streams", now: now)
        }
        if livePairs >= limits.maxStreams {
            return refuse(link, stream, .streamLimit, "broker holds max_streams (\(limits.maxStreams)) streams", now: now)
        }
        let quota: KeyQuota?
        switch admit(open, on: link) {
        case .success(let q): quota = q
        case .failure(let refusal): return refuse(link, stream, refusal.code, refusal.reason, now: now)
        }
        let target: Link?
        switch open.target {
        case .instance: target = pickInstance(world: open.world, session: open.session, now: now)
        case .runtime: target = pickService(runtimes)
        case .vault: target = pickService(vaults)
        }
        guard let acceptor = target else {
            let what = open.target == .instance ? "instance of world \"\(open.world)\"" : "\(open.target)"
            return refuse(link, stream, .noRoute, "no \(what) is attached", now: now)
        }
        guard acceptor.nextStreamID < UInt32.max - 1 else {
            fail(acceptor, .streamLimit, "stream ids exhausted on this link; reconnect")
            return refuse(link, stream, .noRoute, "the chosen \(open.target) is reconnecting", now: now)
        }
        let acceptorStream = acceptor.nextStreamID
        acceptor.nextStreamID += 2

        let window = Int64(limits.streamCreditBytes), frames = Int64(limits.streamCreditFrames)
        // The acceptor may send what the opener granted in OPEN, else the default credit.
        let replyWindow = open.window.map { Int64($0.bytes) } ?? window
        let replyFrames = open.window.map { Int64($0.frames) } ?? frames
        guard replyWindow <= Int64(Int32.max), replyFrames <= Int64(Int32.max) else {
            return refuse(link, stream, .flowControl, "OPEN's window is above 2^31-1", now: now)
        }
        var pair = StreamPair(
            live: true,
            opener: StreamEnd(link: link.id, stream: stream, windowBytes: window, windowFrames: frames),
            acceptor: StreamEnd(link: acceptor.id, stream: acceptorStream, windowBytes: replyWindow, windowFrames: replyFrames))
        pair.keyID = open.keyID
        let ri: Int32
        if let free = freePairs.popLast() {
            ri = free
            pairs[Int(ri)] = pair
        } else {
            ri = Int32(pairs.count)
            pairs.append(pair)
        }
        livePairs += 1
        metrics.streamsOpened += 1
        link.streams[stream] = ri
        acceptor.streams[acceptorStream] = ri
        acceptor.outstanding += 1
        if let q = quota { chargeOpen(q, replyWindow: replyWindow, replyFrames: replyFrames, now: now) }
        let before = acceptor.out.count
        FrameWriter.write(.open(stream: acceptorStream, open), to: acceptor.out)
        queued(on: acceptor, from: link, frames: 1, bytes: acceptor.out.count - before, now: now)
    }

    /// Why a stream may not be opened: the code and reason its ERROR carries.
    struct Refusal: Error {
        let code: ErrorCode
        let reason: String
    }

    /// Whether `link` may open `open`: its kind may reach the target, the world is this loop's, and the key
    /// (if any) is known, belongs to the world and has a stream to spare. The key's quota when there is one.
    func admit(_ open: Open, on link: Link) -> Result<KeyQuota?, Refusal> {
        let allowed: Bool
        switch open.target {
        case .instance: allowed = link.kind == .gateway
        case .runtime: allowed = link.kind == .instance || link.kind == .gateway
        case .vault: allowed = link.kind != .vault
        }
        guard allowed else { return .failure(Refusal(code: .notPermitted, reason: "\(link.kind) peers may not open \(open.target) streams")) }
        if open.target == .instance && !serves(open.world) {
            return .failure(Refusal(code: .wrongLoop, reason: wrongLoopReason(open.world)))
        }
        if link.kind == .instance && open.world != link.world {
            return .failure(Refusal(code: .notPermitted, reason: "an instance of \"\(link.world)\" opened a stream for \"\(open.world)\""))
        }
        guard open.keyID != 0 else {
            return link.kind == .gateway ? .failure(Refusal(code: .notPermitted, reason: "gateway streams must carry a key id")) : .success(nil)
        }
        guard let q = access.keys[open.keyID] else {
            return .failure(Refusal(code: .notPermitted, reason: "unknown or revoked key \(open.keyID)"))
        }
        guard q.world == open.world else {
            return .failure(Refusal(code: .notPermitted, reason: "key \(open.keyID) does not belong to world \"\(open.world)\""))
        }
        if q.maxStreams > 0, (keyStates[q.keyID]?.streams ?? 0) >= q.maxStreams {
            metrics.quotaRejections += 1
            return .failure(Refusal(code: .streamLimit, reason: "key \(q.keyID) is at its limit of \(q.maxStreams) concurrent streams"))
        }
        return .success(q)
    }

    /// Counts a new stream against its key and charges both initial windows up front: the buckets may go into
    /// debt, which delays later credit instead of being forgiven, so long-run pacing is exact (a key's frames/s
    /// and bytes/s cover what it sends and what it is sent).
    func chargeOpen(_ q: KeyQuota, replyWindow: Int64, replyFrames: Int64, now: UInt64) {
        let state: KeyState
        if let existing = keyStates[q.keyID] {
            state = existing
        } else {
            state = KeyState(bytes: TokenBucket(quotaPerSecond: q.bytesPerSecond, now: now),
                             frames: TokenBucket(quotaPerSecond: q.framesPerSecond, now: now))
            keyStates[q.keyID] = state
        }
        state.streams += 1
        state.bytes.refill(now: now)
        state.frames.refill(now: now)
        state.bytes.charge(Double(limits.streamCreditBytes &+ UInt32(replyWindow)))
        state.frames.charge(Double(limits.streamCreditFrames &+ UInt32(replyFrames)))
    }

    /// Refuses a stream the peer asked to open: ERROR on that stream, the link stays.
    func refuse(_ link: Link, _ stream: UInt32, _ code: ErrorCode, _ reason: String, now: UInt64) {
        metrics.streamErrors[Int(code.rawValue)] += 1
        let before = link.out.count
        FrameWriter.write(.error(stream: stream, code: code, reason: reason), to: link.out)
        queued(on: link, from: link, frames: 1, bytes: link.out.count - before, now: now)
    }

    @inline(__always)
    func onData(_ link: Link, _ h: FrameHeader, _ payload: UnsafeRawBufferPointer, now: UInt64) {
        guard let ri = link.streams[h.stream] else {
            if link.subscriptions[h.stream] != nil {
                fail(link, .protocolError, "DATA on subscription \(h.stream)")
            } else {
                refuse(link, h.stream, .unknownStream, "no open stream \(h.stream)", now: now)
            }
            return
        }
        let i = Int(ri)
        let fromOpener = pairs[i].opener.link == link.id
        let flags = h.flags.intersection(FrameFlags.dataFlags)
        let end = flags.contains(.endStream)
        if end && flags.contains(.more) { return protocolOnStream(ri, link, "DATA with both MORE and END_STREAM") }
        let n = Int64(payload.count)
        let charged = fromOpener
            ? pairs[i].opener.charge(bytes: n, end: end)
            : pairs[i].acceptor.charge(bytes: n, end: end)
        switch charged {
        case .afterEnd: return protocolOnStream(ri, link, "DATA after END")
        case .overWindow: return flowControlViolation(ri, link)
        case .ok: break
        }
        let other = fromOpener ? pairs[i].acceptor : pairs[i].opener
        let dstLink = other.link, dstStream = other.stream
        let dst = links[Int(dstLink)].unsafelyUnwrapped
        if payload.count > Int(dst.maxFrameBytes) {
            metrics.streamErrors[Int(ErrorCode.frameTooLarge.rawValue)] += 1
            endPair(ri, code: .frameTooLarge,
                     reason: "\(payload.count)-byte frame exceeds the other end's maximum \(dst.maxFrameBytes)",
                     notifyOpener: true, notifyAcceptor: true)
            return
        }
        FrameWriter.data(dst.out, stream: dstStream, payload: payload, flags: flags)
        queued(on: dst, from: link, frames: 1, bytes: Wire.headerBytes + payload.count, now: now)
        if pairs[i].opener.ended && pairs[i].acceptor.ended {
            judge(ri, endedByOpener: false, code: .none, now: now)
            freePair(ri)
        }
    }

    func flowControlViolation(_ ri: Int32, _ link: Link) {
        metrics.streamErrors[Int(ErrorCode.flowControl.rawValue)] += 1
        endPair(ri, code: .flowControl, reason: "DATA beyond the granted credit", notifyOpener: true, notifyAcceptor: true)
    }

    func protocolOnStream(_ ri: Int32, _ link: Link, _ why: String) {
        metrics.streamErrors[Int(ErrorCode.protocolError.rawValue)] += 1
        endPair(ri, code: .protocolError, reason: why, notifyOpener: true, notifyAcceptor: true)
    }

    @inline(__always)
    func onCredit(_ link: Link, stream: UInt32, bytes: UInt32, frames: UInt32, now: UInt64) {
        guard let ri = link.streams[stream] else { return }  // the stream ended while the credit was in flight
        let i = Int(ri)
        let fromOpener = pairs[i].opener.link == link.id
        if fromOpener {
            // The opener lets the acceptor send more: the key's quota paces the reply direction here.
            grantAcceptor(ri, bytes: bytes, frames: frames, from: link, now: now)
        } else {
            // The acceptor lets the opener send more: this is where a key's quota paces the opener.
            grantOpener(ri, bytes: bytes, frames: frames, from: link, now: now)
        }
    }

    /// Passes credit to the opener, holding back what the key's buckets cannot cover yet.
    func grantOpener(_ ri: Int32, bytes: UInt32, frames: UInt32, from source: Link?, now: UInt64) {
        let i = Int(ri)
        guard let p = pace(ri, bytes: bytes, frames: frames, window: pairs[i].opener,
                           held: (pairs[i].deferredBytes, pairs[i].deferredFrames), source: source, now: now) else { return }
        pairs[i].deferredBytes = p.heldBytes
        pairs[i].deferredFrames = p.heldFrames
        // PACED on the CREDIT tells the opener its key is being paced (in either direction); the first CREDIT
        // without it, that pacing ended. A zero CREDIT carries the news when nothing can be granted yet.
        let paced = pairs[i].pacedNow
        let news = paced != pairs[i].pacedNotified
        guard p.bytes > 0 || p.frames > 0 || news else { return }
        pairs[i].pacedNotified = paced
        pairs[i].opener.windowBytes += Int64(p.bytes)
        pairs[i].opener.windowFrames += Int64(p.frames)
        // `pace` refused anything that would take a window past 2^31-1 (what CREDIT can carry and peers count).
        precondition(pairs[i].opener.windowBytes <= Int64(Int32.max) && pairs[i].opener.windowFrames <= Int64(Int32.max),
                     "an opener's window passed 2^31-1")
        let dst = links[Int(pairs[i].opener.link)].unsafelyUnwrapped
        FrameWriter.credit(dst.out, stream: pairs[i].opener.stream, bytes: p.bytes, frames: p.frames, paced: paced)
        queued(on: dst, from: source, frames: 1, bytes: Wire.headerBytes + 8, now: now)
    }

    /// Passes credit to the acceptor (the reply direction), holding back what the key's buckets cannot cover
    /// yet; the opener hears of pacing through a PACED CREDIT.
    func grantAcceptor(_ ri: Int32, bytes: UInt32, frames: UInt32, from source: Link?, now: UInt64) {
        let i = Int(ri)
        guard let p = pace(ri, bytes: bytes, frames: frames, window: pairs[i].acceptor,
                           held: (pairs[i].deferredReplyBytes, pairs[i].deferredReplyFrames), source: source, now: now) else { return }
        pairs[i].deferredReplyBytes = p.heldBytes
        pairs[i].deferredReplyFrames = p.heldFrames
        if p.bytes > 0 || p.frames > 0 {
            pairs[i].acceptor.windowBytes += Int64(p.bytes)
            pairs[i].acceptor.windowFrames += Int64(p.frames)
            precondition(pairs[i].acceptor.windowBytes <= Int64(Int32.max) && pairs[i].acceptor.windowFrames <= Int64(Int32.max),
                         "an acceptor's window passed 2^31-1")
            let dst = links[Int(pairs[i].acceptor.link)].unsafelyUnwrapped
            FrameWriter.credit(dst.out, stream: pairs[i].acceptor.stream, bytes: p.bytes, frames: p.frames)
            queued(on: dst, from: source, frames: 1, bytes: Wire.headerBytes + 8, now: now)
        }
        // The opener learns that pacing started or stopped from a zero CREDIT with (or without) PACED.
        if pairs[i].pacedNow != pairs[i].pacedNotified { grantOpener(ri, bytes: 0, frames: 0, from: source, now: now) }
    }

    /// Credit for one end of a pair through the key's buckets: what may be granted now, and what stays held
    /// (released by the tick as the buckets refill), given what was held before. Nil when the stream was ended
    /// instead: what the end would be owed in all — its window, credit held back, and this — must stay within
    /// 2^31-1; beyond that the peer is broken or hostile.
    @inline(__always)
    func pace(_ ri: Int32, bytes: UInt32, frames: UInt32, window: StreamEnd, held: (UInt32, UInt32),
              source: Link?, now: UInt64) -> PacedCredit? {
        let i = Int(ri)
        let (heldBytes, heldFrames) = held
        guard window.windowBytes + Int64(heldBytes) + Int64(bytes) <= Int64(Int32.max),
              window.windowFrames + Int64(heldFrames) + Int64(frames) <= Int64(Int32.max) else {
            flowControlViolation(ri, source ?? links[Int(pairs[i].opener.link)]!)
            return nil
        }
        let key = pairs[i].keyID
        guard key != 0, let state = keyStates[key] else {
            return PacedCredit(bytes: bytes, frames: frames, heldBytes: heldBytes, heldFrames: heldFrames)
        }
        state.bytes.refill(now: now)
        state.frames.refill(now: now)
        let wantedBytes = bytes + heldBytes, wantedFrames = frames + heldFrames
        let grantedBytes = state.bytes.take(upTo: wantedBytes), grantedFrames = state.frames.take(upTo: wantedFrames)
        let p = PacedCredit(bytes: grantedBytes, frames: grantedFrames,
                            heldBytes: wantedBytes - grantedBytes, heldFrames: wantedFrames - grantedFrames)
        if p.heldBytes > heldBytes { metrics.quotaPacedBytes += UInt64(p.heldBytes - heldBytes) }
        if p.heldFrames > heldFrames { metrics.quotaPacedFrames += UInt64(p.heldFrames - heldFrames) }
        if (p.heldBytes > 0 || p.heldFrames > 0) && !pairs[i].pacing {
            pairs[i].pacing = true
            pacedPairs.append(ri)
        }
        return p
    }

    /// Outlier detection: a stream to an instance ended. The opener giving up with `timeout`, or the instance
    /// ending it with an error, is a failure; a clean end is a success. Enough failures in a row take the
    /// instance out of rotation (see `BrokerLimits.outlierConsecutiveFailures`).
    func judge(_ ri: Int32, endedByOpener: Bool, code: ErrorCode, now: UInt64) {
        guard limits.outlierConsecutiveFailures > 0, let inst = liveLink(pairs[Int(ri)].acceptor.link),
              inst.kind == .instance, inst.state == .active else { return }
        // Failures are the instance's own: the opener's deadline passed, or the instance reported an internal
        // error. A stream the client broke (too large, malformed) or gave up on says nothing about the instance.
        let failed = endedByOpener ? code == .timeout : code == .internalError
        guard failed else {
            if code == .none {
                inst.consecutiveFailures = 0
                // A clean stream after an ejection ran out: the instance starts again from the shortest backoff.
                if inst.ejectedUntil <= now {
                    inst.ejectedUntil = 0
                    inst.ejections = 0
                }
            }
            return
        }
        inst.consecutiveFailures += 1
        guard inst.consecutiveFailures >= limits.outlierConsecutiveFailures, inst.ejectedUntil <= now,
              let pool = pools[inst.world] else { return }
        let ejected = pool.links.reduce(0) { n, id in n + ((liveLink(id)?.ejectedUntil ?? 0) > now ? 1 : 0) }
        guard (ejected + 1) * 100 <= pool.links.count * Int(limits.outlierMaxEjectionPercent) else { return }
        let backoff = UInt64(limits.outlierEjectionMilliseconds) * 1_000_000 << UInt64(min(inst.ejections, 5))
        inst.ejections += 1
        inst.ejectedUntil = now &+ backoff
        inst.consecutiveFailures = 0
        metrics.outlierEjections += 1
    }

    /// Ends a pair: tells the chosen ends (CLOSE for a clean end, else ERROR) and frees it.
    func endPair(
        _ ri: Int32, code: ErrorCode, reason: String, notifyOpener: Bool, notifyAcceptor: Bool, asClose: Bool = false
    ) {
        let r = pairs[Int(ri)]
        guard r.live else { return }
        for (end, notify) in [(r.opener, notifyOpener), (r.acceptor, notifyAcceptor)] where notify {
            guard let l = liveLink(end.link), l.state != .closing else { continue }
            let before = l.out.count
            let frame: Frame = asClose
                ? .close(stream: end.stream, code: code, reason: reason)
                : .error(stream: end.stream, code: code, reason: reason)
            FrameWriter.write(frame, to: l.out)
            queued(on: l, from: nil, frames: 1, bytes: l.out.count - before, now: l.lastHeard)
        }
        freePair(ri)
    }

    func freePair(_ ri: Int32) {
        let i = Int(ri)
        guard pairs[i].live else { return }
        let r = pairs[i]
        pairs[i].live = false
        pairs[i].pacing = false
        pairs[i].deferredBytes = 0
        pairs[i].deferredFrames = 0
        pairs[i].deferredReplyBytes = 0
        pairs[i].deferredReplyFrames = 0
        pairs[i].pacedNotified = false
        if let a = liveLink(r.opener.link) { a.streams.removeValue(forKey: r.opener.stream) }
        if let b = liveLink(r.acceptor.link) {
            b.streams.removeValue(forKey: r.acceptor.stream)
            b.outstanding -= 1
        }
        if r.keyID != 0, let state = keyStates[r.keyID] { state.streams -= 1 }
        livePairs -= 1
        freePairs.append(ri)
    }

    // MARK: - Output and backpressure

    /// Records that frames were queued on `dst` and applies its watermarks. `source` is the link whose input
    /// produced them (paused if `dst` is congested).
    @inline(__always)
    func queued(on dst: Link, from source: Link?, frames: Int, bytes: Int, now: UInt64) {
        let k = kindIndex(dst)
        metrics.framesOut[k] &+= UInt64(frames)
        metrics.bytesOut[k] &+= UInt64(bytes)
        markReady(dst)
        let q = dst.queuedBytes
        guard q > limits.linkQueueBytesHigh else { return }
        overHigh(dst, from: source, queued: q, now: now)
    }

    /// Lists the link for the next hand-off to the I/O layer (once; not while a send is in flight, since
    /// `sent` lists it again).
    @inline(__always)
    func markReady(_ link: Link) {
        guard !link.dirty && !link.sendInFlight else { return }
        link.dirty = true
        dirtyLinks.append(link.id)
    }

    func overHigh(_ dst: Link, from source: Link?, queued q: Int, now: UInt64) {
        if dst.congestedSince == nil {
            dst.congestedSince = loopTime
            if dst.state == .active && dst.kind != .gateway { metrics.congestionAlerts[Int(dst.kind.rawValue)] += 1 }
        }
        if dst.kind == .gateway && dst.state == .active && q > limits.linkQueueBytesHard {
            fail(dst, .slowConsumer, "send queue passed link_queue_bytes_hard (\(limits.linkQueueBytesHard) bytes)", notify: false)
            return
        }
        guard let src = source, src.state == .active else { return }
        if src === dst {
            pauseRead(src, .ownQueueFull)
        } else {
            pauseRead(src, .peerCongested)
            if !dst.waiters.contains(src.id) { dst.waiters.append(src.id) }
        }
    }

    func pauseRead(_ link: Link, _ reason: PauseReasons) {
        guard !link.pause.contains(reason) else { return }
        if link.pause.isEmpty { pendingActions.append(.pauseRead(link.id)) }
        link.pause.insert(reason)
        metrics.pauses[reason.index] += 1
    }

    func resumeRead(_ link: Link, _ reason: PauseReasons) {
        guard link.pause.contains(reason) else { return }
        link.pause.remove(reason)
        if link.pause.isEmpty && link.state != .closing { pendingActions.append(.resumeRead(link.id)) }
    }

    /// Hands the link's queued bytes to the I/O layer. The memory stays valid and unmoved until `sent` is
    /// called; at most one hand-off per link is outstanding. Empty when there is nothing to send.
    public func takeOutput(link id: UInt32) -> UnsafeRawBufferPointer {
        guard let link = liveLink(id), !link.sendInFlight else { return UnsafeRawBufferPointer(start: nil, count: 0) }
        link.dirty = false
        return link.queue.take() ?? UnsafeRawBufferPointer(start: nil, count: 0)
    }

    /// The I/O layer wrote `count` bytes of the last hand-off (0 when the send failed and the link is closing).
    public func sent(link id: UInt32, count: Int, now: UInt64) {
        guard let link = liveLink(id) else { return }
        link.queue.sent(count)
        if link.queuedBytes > 0 { markReady(link) }
        guard link.congestedSince != nil || !link.pause.isEmpty || link.hasHeldRoomFrames else { return }
        if link.queuedBytes < limits.linkQueueBytesLow {
            link.congestedSince = nil
            resumeRead(link, .ownQueueFull)
            let waiters = link.waiters
            link.waiters.removeAll()
            for w in waiters { if let p = liveLink(w) { resumeRead(p, .peerCongested) } }
            if link.hasHeldRoomFrames { releaseHeldRoomFrames(link, now: now) }
        }
    }

    /// Links with output waiting and no send in flight, in the order they became ready.
    public func drainReady(_ body: (UInt32) -> Void) {
        guard !dirtyLinks.isEmpty else { return }
        // Swap with a spare list rather than copy: copying and then clearing would allocate once per batch.
        swap(&dirtyLinks, &dirtySpare)
        defer { dirtySpare.removeAll(keepingCapacity: true) }
        for i in dirtySpare.indices {  // indexed: see `onPublish`
            let id = dirtySpare[i]
            guard let l = liveLink(id), l.dirty else { continue }
            // Cleared before the hand-off: if the I/O layer cannot take output now, `sent` re-queues the link.
            l.dirty = false
            body(id)
        }
    }

    /// Actions produced since the last call.
    public func drainActions(_ body: (BrokerAction) -> Void) {
        guard !pendingActions.isEmpty else { return }
        swap(&pendingActions, &actionsSpare)
        defer { actionsSpare.removeAll(keepingCapacity: true) }
        for a in actionsSpare { body(a) }
    }

    // MARK: - Closing

    /// Closes a link for `code`: optionally tells the peer (ERROR on stream 0), ends its streams on the other
    /// side, and asks the I/O layer to close the socket.
    func fail(_ link: Link, _ code: ErrorCode, _ reason: String, notify: Bool = true) {
        guard link.state != .closing else { return }
        if notify {
            FrameWriter.write(.error(stream: 0, code: code, reason: reason), to: link.out)
            markReady(link)
        }
        metrics.linkCloses[Int(code.rawValue)] += 1
        teardown(link, code)
        link.state = .closing
        pendingActions.append(.close(link.id))
    }

    /// Removes everything the link takes part in. Streams on the other side get ERROR naming why.
    func teardown(_ link: Link, _ code: ErrorCode) {
        let streamCode: ErrorCode = code == .heartbeatTimeout ? .heartbeatTimeout : .peerGone
        for ri in Array(link.streams.values) {
            let fromOpener = pairs[Int(ri)].opener.link == link.id
            metrics.streamErrors[Int(streamCode.rawValue)] += 1
            endPair(ri, code: streamCode, reason: "the \(link.kind) on the other side is gone (\(code))",
                     notifyOpener: !fromOpener, notifyAcceptor: fromOpener)
        }
        for sub in Array(link.subscriptions.values) { removeSubscription(sub, from: link) }
        if link.state == .active {
            switch link.kind {
            case .instance:
                if let pool = pools[link.world] {
                    pool.links.removeAll { $0 == link.id }
                    unpinAll(link: link.id, in: pool)
                    if pool.links.isEmpty && pool.affinity.isEmpty { pools.removeValue(forKey: link.world) }
                }
            case .runtime: runtimes.links.removeAll { $0 == link.id }
            case .vault: vaults.links.removeAll { $0 == link.id }
            case .gateway: break
            }
        }
        for w in link.waiters { if let p = liveLink(w) { resumeRead(p, .peerCongested) } }
        link.waiters.removeAll()
        link.decoder.reset()
    }

    // MARK: - Time

    /// Heartbeats, handshake and slow-consumer deadlines, quota pacing, shutdown. Call every few milliseconds:
    /// quota pacing runs on every call; the walk over all links (heartbeats, deadlines) at most every
    /// `linkScanIntervalNanos`, so a loop with many idle links does not spend its ticks walking them.
    public func tick(now: UInt64) {
        observe(now)
        if now &- lastLinkScan >= linkScanIntervalNanos {
            lastLinkScan = now
            scanLinks(now: loopTime)
        }
        releasePacedCredit(now: now)
        checkShutdown(now: now)
    }

    /// A quarter of the heartbeat interval, between 10 and 100 ms.
    var linkScanIntervalNanos: UInt64 { min(100_000_000, max(10_000_000, limits.heartbeatIntervalNanos / 4)) }

    func scanLinks(now: UInt64) {
        for case let link? in links {
            switch link.state {
            case .closing:
                continue
            case .handshake:
                if now &- link.openedAt > limits.handshakeTimeoutNanos {
                    fail(link, .handshakeTimeout, "no HELLO within \(limits.handshakeTimeoutMilliseconds) ms")
                }
            case .active:
                if !link.pause.isEmpty {
                    // The broker is not reading this link (backpressure): its silence is the broker's doing, not
                    // a missed heartbeat. The interval starts again when reading does.
                    link.lastHeard = now
                } else if now &- link.lastHeard > limits.heartbeatTimeoutNanos {
                    fail(link, .heartbeatTimeout,
                         "nothing heard for \(limits.heartbeatMissesAllowed) heartbeat intervals of \(limits.heartbeatIntervalMilliseconds) ms")
                    continue
                }
                if now &- link.lastPing >= limits.heartbeatIntervalNanos {
                    link.lastPing = now
                    FrameWriter.write(.ping(now), to: link.out)
                    queued(on: link, from: nil, frames: 1, bytes: Wire.headerBytes + 8, now: now)
                }
                // Idle links give their send buffers back (done here, not per send, so a busy link never
                // allocates per message).
                if link.queuedBytes == 0 && !link.sendInFlight && now &- link.lastHeard > limits.heartbeatIntervalNanos {
                    link.queue.shrinkIfIdle()
                }
                if link.kind == .gateway, let since = link.congestedSince, now &- since > limits.slowConsumerDeadlineNanos {
                    fail(link, .slowConsumer,
                         "send queue above link_queue_bytes_high for over \(limits.slowConsumerDeadlineMilliseconds) ms",
                         notify: false)
                }
            }
        }
    }

    func releasePacedCredit(now: UInt64) {
        var i = 0
        while i < pacedPairs.count {
            let ri = pacedPairs[i]
            if pairs[Int(ri)].live && pairs[Int(ri)].pacing {
                grantOpener(ri, bytes: 0, frames: 0, from: nil, now: now)
                if pairs[Int(ri)].live { grantAcceptor(ri, bytes: 0, frames: 0, from: nil, now: now) }
                if pairs[Int(ri)].live && pairs[Int(ri)].pacedNow {
                    i += 1
                    continue
                }
                pairs[Int(ri)].pacing = false
            }
            pacedPairs.swapAt(i, pacedPairs.count - 1)
            pacedPairs.removeLast()
        }
    }

    /// Starts a graceful shutdown: GOAWAY to every peer, no new streams; links close once streams have
    /// drained or `shutdown_drain_milliseconds` has passed.
    public func beginShutdown(now: UInt64) {
        guard shutdownDeadline == nil else { return }
        shutdownDeadline = now &+ limits.shutdownDrainNanos
        for case let link? in links where link.state == .active {
            let before = link.out.count
            FrameWriter.write(.goaway(lastStream: link.lastPeerStream, code: .shutdown, reason: "broker shutting down"), to: link.out)
            queued(on: link, from: nil, frames: 1, bytes: link.out.count - before, now: now)
        }
        checkShutdown(now: now)
    }

    func checkShutdown(now: UInt64) {
        guard let deadline = shutdownDeadline, !shutdownComplete else { return }
        guard livePairs == 0 || now >= deadline else { return }
        shutdownComplete = true
        for case let link? in links where link.state != .closing {
            fail(link, .shutdown, livePairs == 0 ? "broker shut down" : "broker shut down; drain deadline passed")
        }
        pendingActions.append(.shutdownComplete)
    }
}

extension Frame {
    var typeName: String {
        switch self {
        case .hello: "HELLO"
        case .welcome: "WELCOME"
        case .open: "OPEN"
        case .data: "DATA"
        case .credit: "CREDIT"
        case .close: "CLOSE"
        case .error: "ERROR"
        case .ping: "PING"
        case .pong: "PONG"
        case .subscribe: "SUBSCRIBE"
        case .unsubscribe: "UNSUBSCRIBE"
        case .publish: "PUBLISH"
        case .goaway: "GOAWAY"
        case .dropped: "DROPPED"
        }
    }
}
