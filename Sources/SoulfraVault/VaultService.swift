import SoulfraPeerLink
import SoulfraWire

/// Where the vault keeps worlds' events: the service hands appends and reads to it, and hears back through
/// `VaultService.durable` / `failed`. `VaultStore` keeps them in segment files through the loop.
public protocol VaultStorage: AnyObject {
    /// Takes one event of `world` to store; nil, or why the world's log cannot take it at all (the append is
    /// then answered FAIL at once).
    func append(world: String, _ append: GroupCommit.Append, now: UInt64) -> VaultFailure?
    /// Bytes of `world`'s events taken and not yet written (what withheld credit bounds).
    func pendingBytes(world: String) -> Int
    /// Reads one page of `world`'s events; `done` runs later on the same thread (or at once).
    func read(world: String, session: [UInt8], _ request: VaultRequest, now: UInt64,
              done: @escaping (Result<VaultPage, VaultFailure>) -> Void)
}

/// One page of events and the cursor after it.
public struct VaultPage: Equatable, Sendable {
    public var events: [StoredEvent]
    public var next: UInt64
    public var more: Bool

    public init(events: [StoredEvent], next: UInt64, more: Bool) {
        self.events = events
        self.next = next
        self.more = more
    }
}

/// Why a world's events could not be stored or read: an errno (ENOSPC, EIO, …) and words for people.
public struct VaultFailure: Error, Equatable, Sendable {
    public var errno: Int32
    public var reason: String
    public init(errno: Int32, reason: String) {
        self.errno = errno
        self.reason = reason
    }
}

/// The vault as a broker peer, sans-IO: it accepts vault streams on its links (one per broker loop), turns
/// append messages into log appends and answers them ACK once durable (FAIL when not stored), and serves reads
/// page by page. It never buffers without a bound: an append stream's credit is given back only as its
/// messages are taken, and not while the world's log holds more than `highWaterBytes` waiting (a vault slower
/// than its producers slows them); a read page is at most `VaultRequest.maxPageBytes` and goes out within the
/// stream's window.
public final class VaultService: PeerLinkDelegate {
    struct StreamState {
        let link: UInt32
        let world: String
        let session: [UInt8]
        let request: VaultRequest
        /// Appends taken and not yet answered.
        var unanswered = 0
        /// Credit consumed by messages taken and not yet given back (withheld while the log is full).
        var owedBytes: UInt32 = 0
        var owedFrames: UInt32 = 0
        var starved = false
        /// Messages to send, the first of them `sentOfFirst` bytes out; END_STREAM after the last with `endAfter`.
        var outbox: [[UInt8]] = []
        var sentOfFirst = 0
        var endAfter = false
    }

    /// Counters for `/metrics`.
    public struct Counters: Equatable, Sendable {
        public var streamsAccepted: UInt64 = 0
        public var streamsRefused: UInt64 = 0
        public var appendsTaken: UInt64 = 0
        public var appendsAcknowledged: UInt64 = 0
        public var appendsFailed: UInt64 = 0
        public var reads: UInt64 = 0
        public var eventsRead: UInt64 = 0
        public var creditStalls: UInt64 = 0
        public init() {}
    }

    public let storage: any VaultStorage
    /// Credit is withheld from a world's producers while its log holds more than this waiting, and given back
    /// once it is under `lowWaterBytes`.
    public let highWaterBytes: Int
    public let lowWaterBytes: Int
    /// The wall clock (Unix ms) the owner sets each turn; events are stamped with it.
    public var unixMilliseconds: UInt64 = 0
    public private(set) var counters = Counters()
    /// The worlds this service stores (a daemon's vault on one loop serves that loop's worlds only; a stream
    /// for another is refused `wrong_loop`, so no world's files are ever written from two places).
    public var servesWorld: (String) -> Bool = { _ in true }
    /// Links by tag (the tag is part of every append's id, so an answer never reaches a later link's stream).
    private var links: [UInt32: PeerLink] = [:]
    private var tags: [ObjectIdentifier: UInt32] = [:]
    private var nextTag: UInt32 = 1
    private var streams: [UInt64: StreamState] = [:]
    private var assemblers: [UInt32: MessageAssembler] = [:]
    private var starved: Set<UInt64> = []

    private var now: UInt64 = 0
    public let maxEventBytes: Int

    public init(storage: any VaultStorage, highWaterBytes: Int = 8 << 20, lowWaterBytes: Int = 4 << 20,
                maxEventBytes: Int = 1 << 20) {
        precondition(lowWaterBytes <= highWaterBytes)
        self.storage = storage
        self.highWaterBytes = highWaterBytes
        self.lowWaterBytes = lowWaterBytes
        self.maxEventBytes = maxEventBytes
    }

    /// Serves `link` (call before its `start()`); its credit is managed here.
    public func add(_ link: PeerLink) {
        let tag = nextTag
        nextTag &+= 1
        links[tag] = link
        tags[ObjectIdentifier(link)] = tag
        assemblers[tag] = MessageAssembler(maxMessageBytes: maxEventBytes)
        link.autoCredit = false
        link.delegate = self
    }

    /// Stops serving `link` (it closed): its streams are forgotten, answers for them are dropped.
    public func remove(_ link: PeerLink) {
        guard let tag = tags.removeValue(forKey: ObjectIdentifier(link)) else { return }
        links[tag] = nil
        assemblers[tag] = nil
        for key in streams.keys where UInt32(key >> 32) == tag {
            streams[key] = nil
            starved.remove(key)
        }
    }

    public var openStreams: Int { streams.count }

    /// Time passed: credit withheld from worlds whose logs drained is given back.
    public func tick(now: UInt64) {
        self.now = now
        releaseStarved()
    }

    // MARK: - Answers from the storage

    /// Appends of `world` made durable, in log order.
    public func durable(_ done: [GroupCommit.Durable]) {
        var i = 0
        while i < done.count {
            let key = done[i].id
            var acks: [VaultMessage.Acknowledged] = []
            while i < done.count && done[i].id == key {
                acks.append(.init(sequence: done[i].sequence, sessionSequence: done[i].sessionSequence))
                i += 1
            }
            counters.appendsAcknowledged &+= UInt64(acks.count)
            guard var st = streams[key] else { continue }
            st.unanswered -= acks.count
            var bytes: [UInt8] = []
            VaultMessage.ack(acks).encode(into: &bytes)
            st.outbox.append(bytes)
            streams[key] = st
            flush(key)
        }
        releaseStarved()
    }

    /// Appends not stored (`errno`), in log order; their producers send them again after `retryAfterMilliseconds`.
    public func failed(_ ids: [UInt64], errno: Int32, retryAfterMilliseconds: UInt32, reason: String) {
        var i = 0
        while i < ids.count {
            let key = ids[i]
            var n = 0
            while i < ids.count && ids[i] == key {
                n += 1
                i += 1
            }
            counters.appendsFailed &+= UInt64(n)
            guard var st = streams[key] else { continue }
            st.unanswered -= n
            var bytes: [UInt8] = []
            VaultMessage.fail(count: UInt32(n), errno: UInt16(clamping: errno), retryAfterMilliseconds: retryAfterMilliseconds,
                              reason: reason).encode(into: &bytes)
            st.outbox.append(bytes)
            streams[key] = st
            flush(key)
        }
    }

    // MARK: - PeerLinkDelegate

    public func linkAccepted(_ link: PeerLink, stream: UInt32, open: Open) {
        guard let tag = tags[ObjectIdentifier(link)] else { return }
        guard let request = VaultRequest(detail: open.detail), !open.world.isEmpty else {
            counters.streamsRefused &+= 1
            link.closeStream(stream, code: .protocolError, reason: "not a vault request: \"\(open.detail)\" (see docs/protocol.md, Vault streams)")
            return
        }
        guard servesWorld(open.world) else {
            counters.streamsRefused &+= 1
            link.closeStream(stream, code: .wrongLoop, reason: "world \(open.world) is stored by another loop's vault")
            return
        }
        counters.streamsAccepted &+= 1
        let key = UInt64(tag) << 32 | UInt64(stream)
        streams[key] = StreamState(link: tag, world: open.world, session: Array(open.session.utf8), request: request)
        if request != .append { startRead(key) }
    }

    public func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard let tag = tags[ObjectIdentifier(link)] else { return }
        let key = UInt64(tag) << 32 | UInt64(stream)
        guard var st = streams[key] else { return }
        guard st.request == .append else {
            if payload.count == 0 { return }  // the opener ending its side
            link.closeStream(stream, code: .protocolError, reason: "a read stream takes no messages")
            forget(key)
            return
        }
        st.owedBytes &+= UInt32(payload.count)
        st.owedFrames &+= 1
        streams[key] = st
        let fits = assemblers[tag]!.feed(stream: stream, payload: payload, flags: flags) { message, _ in
            self.take(key, message)
        }
        guard fits else {
            link.closeStream(stream, code: .frameTooLarge, reason: "an event is at most \(maxEventBytes) bytes")
            forget(key)
            return
        }
        giveCredit(key)
    }

    public func linkWritable(_ link: PeerLink, stream: UInt32) {
        guard let tag = tags[ObjectIdentifier(link)] else { return }
        flush(UInt64(tag) << 32 | UInt64(stream))
    }

    public func linkStreamClosed(_ link: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        guard let tag = tags[ObjectIdentifier(link)] else { return }
        forget(UInt64(tag) << 32 | UInt64(stream))
    }

    public func linkClosed(_ link: PeerLink, code: ErrorCode, reason: String) {
        remove(link)
    }

    // MARK: - Appends

    /// One whole append message: `kind u8` · payload.
    private func take(_ key: UInt64, _ message: UnsafeRawBufferPointer) {
        guard var st = streams[key] else { return }
        guard message.count >= 1 else {
            links[st.link]?.closeStream(UInt32(truncatingIfNeeded: key), code: .protocolError, reason: "an append is kind u8 · payload")
            forget(key)
            return
        }
        let a = GroupCommit.Append(id: key, session: st.session, kind: message[0], unixMilliseconds: unixMilliseconds,
                                   payload: Array(UnsafeRawBufferPointer(rebasing: message[1...])))
        counters.appendsTaken &+= 1
        st.unanswered += 1
        streams[key] = st
        if let failure = storage.append(world: st.world, a, now: now) {
            failed([key], errno: failure.errno, retryAfterMilliseconds: 1_000, reason: failure.reason)
        }
    }

    /// Gives the stream back the credit its taken messages used, unless its world's log is over the high
    /// watermark (then once it is under the low one).
    private func giveCredit(_ key: UInt64) {
        guard var st = streams[key], st.owedFrames > 0 else { return }
        if storage.pendingBytes(world: st.world) > highWaterBytes {
            if !st.starved {
                st.starved = true
                counters.creditStalls &+= 1
                starved.insert(key)
                streams[key] = st
            }
            return
        }
        links[st.link]?.grant(stream: UInt32(truncatingIfNeeded: key), bytes: st.owedBytes, frames: st.owedFrames)
        st.owedBytes = 0
        st.owedFrames = 0
        st.starved = false
        streams[key] = st
    }

    private func releaseStarved() {
        guard !starved.isEmpty else { return }
        for key in starved {
            guard let st = streams[key] else {
                starved.remove(key)
                continue
            }
            guard storage.pendingBytes(world: st.world) <= lowWaterBytes else { continue }
            starved.remove(key)
            streams[key]!.starved = false
            giveCredit(key)
        }
    }

    // MARK: - Reads

    private func startRead(_ key: UInt64) {
        guard let st = streams[key] else { return }
        counters.reads &+= 1
        storage.read(world: st.world, session: st.session, st.request, now: now) { [weak self] result in
            guard let self, var st = self.streams[key] else { return }
            switch result {
            case .success(let page):
                self.counters.eventsRead &+= UInt64(page.events.count)
                for e in page.events {
                    var bytes: [UInt8] = []
                    VaultMessage.record(e).encode(into: &bytes)
                    st.outbox.append(bytes)
                }
                var end: [UInt8] = []
                VaultMessage.end(next: page.next, more: page.more).encode(into: &end)
                st.outbox.append(end)
                st.endAfter = true
                self.streams[key] = st
                self.flush(key)
            case .failure(let f):
                self.links[st.link]?.closeStream(UInt32(truncatingIfNeeded: key), code: .internalError, reason: "vault read failed: \(f.reason)")
                self.forget(key)
            }
        }
    }

    // MARK: - Sending

    /// Sends what the stream's outbox holds, as far as its window goes.
    private func flush(_ key: UInt64) {
        guard var st = streams[key], let link = links[st.link] else { return }
        let stream = UInt32(truncatingIfNeeded: key)
        while let first = st.outbox.first {
            let last = st.outbox.count == 1
            let rest = first.count - st.sentOfFirst
            let sent = first.withUnsafeBytes { raw in
                link.sendPartial(stream: stream, payload: UnsafeRawBufferPointer(rebasing: raw[st.sentOfFirst...]),
                                 end: last && st.endAfter, binary: true)
            }
            guard let sent else { break }
            if sent < rest {
                st.sentOfFirst += sent
                break
            }
            st.outbox.removeFirst()
            st.sentOfFirst = 0
        }
        if st.outbox.isEmpty && st.endAfter {
            // The page is out: a read stream is over once its END went.
            forget(key)
            return
        }
        streams[key] = st
    }

    private func forget(_ key: UInt64) {
        streams[key] = nil
        starved.remove(key)
        assemblers[UInt32(key >> 32)]?.drop(stream: UInt32(truncatingIfNeeded: key))
    }
}
