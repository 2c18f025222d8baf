import CNGHTTP2
import SoulfraRate

/// One header field.
public struct H2Header: Sendable, Equatable {
    public var name: String
    public var value: String
    /// Sent as an HPACK literal never added to the dynamic table: for values that change on every response
    /// (counters), which would only churn the table.
    public var neverIndexed: Bool
    public init(_ name: String, _ value: String, neverIndexed: Bool = false) {
        self.name = name
        self.value = value
        self.neverIndexed = neverIndexed
    }
}

/// What a session reports. Collected during `receive`, taken with `takeEvents` (nghttp2 is never re-entered
/// from its own callbacks: actions follow after the events are taken).
public enum H2Event: Sendable, Equatable {
    /// A request's (server) or response's (client) header block.
    case headers(stream: Int32, [H2Header])
    case data(stream: Int32, [UInt8])
    /// The peer half-closed the stream.
    case endStream(stream: Int32)
    /// The stream is gone; `code` is the HTTP/2 error code (0: NO_ERROR).
    case closed(stream: Int32, code: UInt32)
    case goaway(lastStream: Int32, code: UInt32)
    /// A request's header list was over `H2Settings.maxHeaderListBytes` (RFC 9113 §6.5.2 sizes: name + value
    /// + 32 per field); its fields were dropped. Answer 431.
    case headersTooLarge(stream: Int32)
}

/// An event as `H2Connection.drainEvents` reports it: DATA by reference into the session's buffer (valid during
/// the call), so receiving a body allocates nothing per frame.
public enum H2EventRef {
    case headers(stream: Int32, [H2Header])
    case data(stream: Int32, UnsafeRawBufferPointer)
    case endStream(stream: Int32)
    case closed(stream: Int32, code: UInt32)
    case goaway(lastStream: Int32, code: UInt32)
    case headersTooLarge(stream: Int32)
}

/// Why a session ended the connection on its own (the owner counts these).
public enum H2Violation: Sendable, Equatable {
    /// HEADERS on a stream id the client skipped (lower than one it already opened: RFC 9113 §5.1.1);
    /// GOAWAY PROTOCOL_ERROR.
    case streamIDRegression
    /// nghttp2 found the peer broke the protocol and sent GOAWAY with this error code.
    case detected(code: UInt32)
}

/// Settings a session announces.
public struct H2Settings: Sendable, Equatable {
    public var maxConcurrentStreams: UInt32 = 256
    public var initialWindowBytes: UInt32 = 65_535
    /// The connection's receive window (what the peer may send in all before WINDOW_UPDATE); at least 65,535.
    public var connectionWindowBytes: UInt32 = 65_535
    public var maxHeaderListBytes: UInt32 = 16 << 10
    public var maxFrameBytes: UInt32 = 16 << 10
    /// Stream resets (RST_STREAM from the peer) allowed per second, sustained, and as a burst. Past it the
    /// connection is ended with ENHANCE_YOUR_CALM: a client that opens and cancels streams in a loop costs
    /// the server work without ever being limited by MAX_CONCURRENT_STREAMS.
    public var resetsPerSecond: UInt32 = 100
    public var resetBurst: UInt32 = 200
    /// Header names (lowercase, pseudo-headers included) reported in `.headers`; nil reports every field. A
    /// server that reads a handful of fields skips building strings for the rest.
    public var keptHeaders: [String]?
    public init() {}
}

/// An nghttp2 failure (with nghttp2's own message), or a peer the session gave up on.
public struct H2Error: Error, Sendable, Equatable, CustomStringConvertible {
    public let code: Int32
    public let message: String

    public init(code: Int32) {
        self.code = code
        self.message = String(cString: nghttp2_strerror(code))
    }

    init(code: Int32, message: String) {
        self.code = code
        self.message = message
    }

    /// The peer reset streams faster than `H2Settings.resetsPerSecond` allows (CVE-2023-44487, "rapid
    /// reset"): the session sent GOAWAY ENHANCE_YOUR_CALM; drain output and close.
    public static let rapidReset = H2Error(code: -100_001, message: "peer reset streams too fast (rapid reset); GOAWAY ENHANCE_YOUR_CALM sent")
    /// HEADERS on a skipped, lower stream id: GOAWAY PROTOCOL_ERROR sent.
    public static let streamIDRegression = H2Error(code: -100_003, message: "HEADERS on a stream id lower than one already opened; GOAWAY PROTOCOL_ERROR sent")

    public var description: String { "\(message) (\(code))" }
}

/// An HTTP/2 session over libnghttp2, sans-IO: bytes in with `receive` (nghttp2_session_mem_recv), bytes out
/// with `drainOutput` (nghttp2_session_mem_send). Automatic WINDOW_UPDATE is off: the owner calls `consume`
/// once it has handed a stream's DATA on, so a slow consumer slows the client through HTTP/2 flow control.
/// Response and request bodies are pulled from per-stream queues; an empty queue defers the stream until
/// `send` adds more.
public final class H2Connection {
    public enum Role { case server, client }

    /// An event kept until `drainEvents`/`takeEvents`; DATA is a range of `dataBuffer`.
    enum Stored {
        case event(H2Event)
        case data(stream: Int32, start: Int, count: Int)
    }

    /// A stream's body waiting for nghttp2 to pull it (a class: mutated in place through the dictionary), in
    /// chunks of at most `chunkBytes`: what a queue holds is what waits, give or take one chunk — a queue that
    /// grew never keeps twice its bytes, and bytes already pulled are not kept at all.
    final class Outbound {
        var chunks: [[UInt8]] = []
        /// Read offset in `chunks[0]`.
        var head = 0
        var available = 0
        var ended = false
    }

    static let chunkBytes = 4_096
    /// Emptied chunks, reused by the next appends (trimmed by `trim` when the session is idle).
    var spareChunks: [[UInt8]] = []

    func append(_ o: Outbound, _ bytes: UnsafeRawBufferPointer) {
        var at = 0
        while at < bytes.count {
            if o.chunks.isEmpty || o.chunks[o.chunks.count - 1].count >= Self.chunkBytes {
                // A fresh chunk is sized to what is appended (it grows to `chunkBytes` as more comes): many
                // streams with one small event queued each do not hold 4 KiB apiece.
                var c = spareChunks.popLast() ?? []
                c.reserveCapacity(min(Self.chunkBytes, bytes.count - at))
                o.chunks.append(c)
            }
            let last = o.chunks.count - 1
            let n = min(Self.chunkBytes - o.chunks[last].count, bytes.count - at)
            o.chunks[last].append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)]))
            at += n
        }
        o.available += bytes.count
        queuedBytesTotal += bytes.count
    }

    /// Copies up to `length` queued bytes of `o` to `buf`; returns how many.
    func read(_ o: Outbound, into buf: UnsafeMutableRawPointer, _ length: Int) -> Int {
        var copied = 0
        while copied < length && !o.chunks.isEmpty {
            let n = min(length - copied, o.chunks[0].count - o.head)
            o.chunks[0].withUnsafeBytes { src in (buf + copied).copyMemory(from: src.baseAddress! + o.head, byteCount: n) }
            copied += n
            o.head += n
            if o.head == o.chunks[0].count {
                var done = o.chunks.removeFirst()
                o.head = 0
                if spareChunks.count < 4 {
                    done.removeAll(keepingCapacity: true)
                    spareChunks.append(done)
                }
            }
        }
        o.available -= copied
        queuedBytesTotal -= copied
        precondition(o.available >= 0 && queuedBytesTotal >= 0, "a stream's queue gave more than it held")
        return copied
    }

    /// Gives back buffers kept for reuse (call when the connection has been idle a while).
    public func trim() {
        spareChunks = []
        spareOutbound = []
        dataSpare = []
        dataBuffer = []
        eventsSpare = []
    }

    let session: OpaquePointer
    public let role: Role
    var events: [Stored] = []
    var eventsSpare: [Stored] = []
    /// DATA received since the last drain, back to back (given back when it grew large: idle sessions keep
    /// no buffer).
    var dataBuffer: [UInt8] = []
    var dataSpare: [UInt8] = []
    /// Bytes queued on every stream and not yet framed (kept as a running total).
    public internal(set) var queuedBytesTotal = 0
    /// Header fields handed to the session in total, and header blocks whose decoding it cut short (the work
    /// an HPACK bomb can cost is bounded: see `onHeader`).
    public internal(set) var headerFieldsDecoded: UInt64 = 0
    public internal(set) var headerFloods: UInt64 = 0
    /// Client-initiated stream ids: the highest seen, and ranges the client skipped (bounded; oldest dropped).
    var highestPeerStream: Int32 = 0
    var skippedStreams: [ClosedRange<Int32>] = []
    /// Why the session ended the connection, if it did (taken once by the owner).
    var violation: H2Violation?
    var ownGoaway = false
    /// The header block being received. HTTP/2 never interleaves header blocks (CONTINUATION must follow its
    /// HEADERS at once), so one is enough.
    var block: [H2Header] = []
    var blockStream: Int32 = 0
    var blockBytes = 0
    var blockOversized = false
    /// Per kept header name: the last value's bytes and its string, reused when a value repeats (the same
    /// path and key on every request of a connection) so no string is built.
    var keptValues: [(bytes: [UInt8], string: String)] = []
    var outbound: [Int32: Outbound] = [:]
    /// Body holders of closed streams, kept with their capacity for the next ones.
    var spareOutbound: [Outbound] = []

    func makeOutbound() -> Outbound {
        guard let o = spareOutbound.popLast() else { return Outbound() }
        o.head = 0
        o.available = 0
        o.ended = false
        return o
    }

    func recycle(_ o: Outbound) {
        queuedBytesTotal -= o.available
        precondition(queuedBytesTotal >= 0, "the connection's stream queues gave more than they held")
        for var c in o.chunks where spareChunks.count < 4 {
            c.removeAll(keepingCapacity: true)
            spareChunks.append(c)
        }
        o.chunks.removeAll(keepingCapacity: true)
        guard spareOutbound.count < 64 else { return }
        spareOutbound.append(o)
    }
    let settings: H2Settings
    /// `settings.keptHeaders` as bytes, for matching in the header callback without making strings.
    let kept: [[UInt8]]?
    /// Rapid-reset budget (`resetsPerSecond`, `resetBurst`), charged at the `now` of the current `receive`.
    var resetBudget: TokenBucket
    var now: UInt64 = 0
    var calm = false
    /// RST_STREAM frames received, in total.
    public private(set) var resetsReceived: UInt64 = 0

    public init(role: Role, settings: H2Settings = H2Settings()) throws(H2Error) {
        self.role = role
        self.settings = settings
        self.resetBudget = TokenBucket(ratePerSecond: Double(settings.resetsPerSecond), capacity: Double(settings.resetBurst), now: 0)
        self.kept = settings.keptHeaders.map { $0.map { Array($0.utf8) } }
        self.keptValues = Array(repeating: ([], ""), count: settings.keptHeaders?.count ?? 0)
        var callbacks: OpaquePointer?
        nghttp2_session_callbacks_new(&callbacks)
        defer { nghttp2_session_callbacks_del(callbacks) }
        nghttp2_session_callbacks_set_on_begin_headers_callback(callbacks, onBeginHeaders)
        nghttp2_session_callbacks_set_on_header_callback(callbacks, onHeader)
        nghttp2_session_callbacks_set_on_frame_recv_callback(callbacks, onFrameRecv)
        nghttp2_session_callbacks_set_on_data_chunk_recv_callback(callbacks, onDataChunk)
        nghttp2_session_callbacks_set_on_stream_close_callback(callbacks, onStreamClose)
        nghttp2_session_callbacks_set_on_begin_frame_callback(callbacks, onBeginFrame)
        nghttp2_session_callbacks_set_on_frame_send_callback(callbacks, onFrameSend)
        var s: OpaquePointer?
        // No callback runs during creation; user_data is set once `self` is complete. It is unretained: the
        // session never outlives this object (deinit deletes it).
        let rc = sf_h2_session_new(&s, callbacks, nil, role == .server ? 1 : 0, settings.maxHeaderListBytes)
        guard rc == 0, let s else { throw H2Error(code: rc) }
        session = s
        nghttp2_session_set_user_data(session, Unmanaged.passUnretained(self).toOpaque())
        var iv = [
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS.rawValue), value: settings.maxConcurrentStreams),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE.rawValue), value: settings.initialWindowBytes),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE.rawValue), value: settings.maxHeaderListBytes),
            nghttp2_settings_entry(settings_id: Int32(NGHTTP2_SETTINGS_MAX_FRAME_SIZE.rawValue), value: settings.maxFrameBytes),
        ]
        let src = nghttp2_submit_settings(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), &iv, iv.count)
        guard src == 0 else { throw H2Error(code: src) }
        if settings.connectionWindowBytes > 65_535 {
            let wrc = nghttp2_session_set_local_window_size(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), 0, Int32(clamping: settings.connectionWindowBytes))
            guard wrc == 0 else { throw H2Error(code: wrc) }
        }
    }

    deinit { nghttp2_session_del(session) }

    /// Feeds bytes from the peer; `now` is monotonic nanoseconds (for the reset budget). A thrown error means
    /// the connection is over: drain output (nghttp2 has queued GOAWAY when it can) and close.
    public func receive(_ bytes: UnsafeRawBufferPointer, now: UInt64) throws(H2Error) {
        guard bytes.count > 0, !calm, violation == nil else { return }
        self.now = now
        let n = sf_h2_mem_recv(session, bytes.baseAddress!.assumingMemoryBound(to: UInt8.self), bytes.count)
        if calm {
            terminate(NGHTTP2_ENHANCE_YOUR_CALM)
            throw H2Error.rapidReset
        }
        switch violation {
        case .streamIDRegression?:
            terminate(NGHTTP2_PROTOCOL_ERROR)
            throw H2Error.streamIDRegression
        case .detected?, nil:
            break
        }
        if n < 0 { throw H2Error(code: Int32(n)) }
    }

    /// GOAWAY with `code`, sent by this side's decision (not counted as a protocol error nghttp2 detected).
    func terminate(_ code: nghttp2_error_code) {
        ownGoaway = true
        nghttp2_session_terminate_session(session, code.rawValue)
    }

    /// Why the session ended the connection on its own since the last call (a violation it found, or one
    /// nghttp2 found and answered with GOAWAY): for the owner's counters.
    public func takeViolation() -> H2Violation? {
        defer { violation = nil }
        return violation
    }

    /// Records a client stream id: true if it is acceptable for new HEADERS (RFC 9113 §5.1.1: a new stream's
    /// id is above every id the client used; a skipped id is closed for good).
    func acceptHeaders(stream id: Int32) -> Bool {
        if id > highestPeerStream {
            if highestPeerStream > 0 && id > highestPeerStream + 2 || highestPeerStream == 0 && id > 1 {
                let from = highestPeerStream == 0 ? 1 : highestPeerStream + 2
                skippedStreams.append(from...(id - 2))
                if skippedStreams.count > 32 { skippedStreams.removeFirst() }
            }
            highestPeerStream = id
            return true
        }
        // Lower than the highest: an open or closed stream (nghttp2 decides), or one the client skipped.
        return !skippedStreams.contains { $0.contains(id) }
    }

    /// Charges one peer reset against the budget; false once it is spent.
    func chargeReset() -> Bool {
        resetsReceived += 1
        resetBudget.refill(now: now)
        return resetBudget.take(1)
    }

    /// Whether events are waiting (streams also close while output is drained).
    public var hasEvents: Bool { !events.isEmpty }

    /// Events since the last call, DATA copied out (clients, tests).
    public func takeEvents() -> [H2Event] {
        var out: [H2Event] = []
        drainEvents { e in
            switch e {
            case .headers(let s, let h): out.append(.headers(stream: s, h))
            case .data(let s, let b): out.append(.data(stream: s, Array(b)))
            case .endStream(let s): out.append(.endStream(stream: s))
            case .closed(let s, let c): out.append(.closed(stream: s, code: c))
            case .goaway(let l, let c): out.append(.goaway(lastStream: l, code: c))
            case .headersTooLarge(let s): out.append(.headersTooLarge(stream: s))
            }
        }
        return out
    }

    /// Hands each event since the last call to `body`, DATA by reference (no copy). Events that arise while
    /// `body` runs (it may call back into the session) wait for the next call.
    public func drainEvents(_ body: (H2EventRef) -> Void) {
        guard !events.isEmpty else { return }
        swap(&events, &eventsSpare)
        swap(&dataBuffer, &dataSpare)
        defer {
            eventsSpare.removeAll(keepingCapacity: true)
            // A large buffer (a big upload arrived) is given back rather than kept by an idle connection.
            dataSpare.removeAll(keepingCapacity: dataSpare.capacity <= 4_096)
        }
        dataSpare.withUnsafeBytes { buf in
            for e in eventsSpare {
                switch e {
                case .data(let s, let start, let count):
                    body(.data(stream: s, UnsafeRawBufferPointer(rebasing: buf[start..<(start + count)])))
                case .event(let ev):
                    switch ev {
                    case .headers(let s, let h): body(.headers(stream: s, h))
                    case .data: break
                    case .endStream(let s): body(.endStream(stream: s))
                    case .closed(let s, let c): body(.closed(stream: s, code: c))
                    case .goaway(let l, let c): body(.goaway(lastStream: l, code: c))
                    case .headersTooLarge(let s): body(.headersTooLarge(stream: s))
                    }
                }
            }
        }
    }

    /// Hands every byte nghttp2 wants to send to `body`, in order (each buffer is valid only during the call),
    /// or stops once `limit` bytes were handed over (the rest stays queued in the session, unserialized: a
    /// client that is not reading is not given more than its owner will hold).
    public func drainOutput(limit: Int = .max, _ body: (UnsafeRawBufferPointer) -> Void) throws(H2Error) {
        var handed = 0
        while handed < limit {
            var data: UnsafePointer<UInt8>?
            let n = sf_h2_mem_send(session, &data)
            if n < 0 { throw H2Error(code: Int32(n)) }
            if n == 0 { return }
            body(UnsafeRawBufferPointer(start: data, count: Int(n)))
            handed += Int(n)
        }
    }

    /// Server: answers `stream` with `status` and `headers`; with `endStream` the response has no body,
    /// otherwise its body is what `send` queues, until `send(…, end: true)`.
    public func respond(stream: Int32, status: Int, headers: [H2Header] = [], endStream: Bool = false) throws(H2Error) {
        // A stream that closed in the same read as its request (RST_STREAM right behind the HEADERS) takes no
        // response: nothing may be queued for it, or its bytes would stay counted for ever.
        guard isOpen(stream: stream) else { return }
        if !endStream { outbound[stream] = makeOutbound() }
        let rc = withNV(headers, status: status) { nva, n in sf_h2_submit_response(session, stream, nva, n, endStream ? nil : readBody) }
        guard rc == 0 else {
            if let o = outbound.removeValue(forKey: stream) { recycle(o) }
            throw H2Error(code: rc)
        }
    }

    /// Client: starts a request; its body (unless `endStream`) is what `send` queues. Returns the stream id.
    public func request(headers: [H2Header], endStream: Bool = false) throws(H2Error) -> Int32 {
        let id = withNV(headers) { nva, n in sf_h2_submit_request(session, nva, n, endStream ? nil : readBody) }
        guard id > 0 else { throw H2Error(code: id) }
        if !endStream { outbound[id] = makeOutbound() }
        return id
    }

    /// Queues body bytes for a stream opened by `respond` or `request` (and resumes it if it was waiting).
    public func send(stream: Int32, _ bytes: UnsafeRawBufferPointer, end: Bool = false) {
        guard let out = outbound[stream] else { return }
        append(out, bytes)
        if end { out.ended = true }
        nghttp2_session_resume_data(session, stream)
    }

    /// Bytes queued for a stream and not yet framed by nghttp2 (the gateway bounds this).
    public func queuedBytes(stream: Int32) -> Int { outbound[stream]?.available ?? 0 }

    /// Whether `stream` is open in nghttp2 (nghttp2 keeps closed streams a while for priorities: those are not).
    public func isOpen(stream: Int32) -> Bool {
        guard let st = nghttp2_session_find_stream(session, stream) else { return false }
        return nghttp2_stream_get_state(st) != NGHTTP2_STREAM_STATE_CLOSED
    }

    /// Reopens `bytes` of flow-control window for `stream` (and the connection) after its DATA was handed on.
    public func consume(stream: Int32, bytes: Int) {
        guard bytes > 0 else { return }
        nghttp2_session_consume(session, stream, bytes)
    }

    /// Resets one stream (RST_STREAM with `code`).
    public func reset(stream: Int32, code: UInt32) {
        nghttp2_submit_rst_stream(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), stream, code)
    }

    /// Graceful GOAWAY: no new streams; open ones finish.
    public func goaway(code: UInt32 = 0) {
        ownGoaway = true
        nghttp2_submit_goaway(session, UInt8(NGHTTP2_FLAG_NONE.rawValue), nghttp2_session_get_last_proc_stream_id(session), code, nil, 0)
    }

    /// Ends the connection at once with GOAWAY ENHANCE_YOUR_CALM (the owner's budgets, e.g. resets per
    /// client address): drain output and close.
    public func calmDown() {
        guard !calm else { return }
        calm = true
        terminate(NGHTTP2_ENHANCE_YOUR_CALM)
    }

    /// Whether nghttp2 has frames to send.
    public var wantsWrite: Bool { nghttp2_session_want_write(session) != 0 }

    /// False once nghttp2 has nothing more to read or write: the connection can be closed.
    public var isActive: Bool { nghttp2_session_want_read(session) != 0 || nghttp2_session_want_write(session) != 0 }


    /// The name/value table for `headers` (after `:status` when given), in one temporary buffer.
    func withNV<R>(_ headers: [H2Header], status: Int? = nil, _ body: (UnsafePointer<nghttp2_nv>, Int) -> R) -> R {
        // nghttp2 copies names and values during submit, so the bytes need to live only for this call.
        var total = status == nil ? 0 : 10
        for h in headers { total += h.name.utf8.count + h.value.utf8.count }
        let count = headers.count + (status == nil ? 0 : 1)
        return withUnsafeTemporaryAllocation(of: UInt8.self, capacity: max(total, 1)) { buf in
            withUnsafeTemporaryAllocation(of: nghttp2_nv.self, capacity: max(count, 1)) { nva in
                var off = 0
                var i = 0
                let none = UInt8(NGHTTP2_NV_FLAG_NONE.rawValue)
                if let status {
                    let name = buf.baseAddress!
                    off += copyUTF8(":status", to: name)
                    let value = buf.baseAddress! + off
                    var v = status
                    for k in stride(from: 2, through: 0, by: -1) { value[k] = UInt8(0x30 + v % 10); v /= 10 }
                    off += 3
                    nva[0] = nghttp2_nv(name: name, value: value, namelen: 7, valuelen: 3, flags: none)
                    i = 1
                }
                for h in headers {
                    let name = buf.baseAddress! + off
                    off += copyUTF8(h.name, to: buf.baseAddress! + off)
                    let value = buf.baseAddress! + off
                    off += copyUTF8(h.value, to: buf.baseAddress! + off)
                    nva[i] = nghttp2_nv(name: name, value: value, namelen: value - name, valuelen: buf.baseAddress! + off - value,
                                        flags: h.neverIndexed ? UInt8(NGHTTP2_NV_FLAG_NO_INDEX.rawValue) : none)
                    i += 1
                }
                return body(UnsafePointer(nva.baseAddress!), count)
            }
        }
    }

    @inline(__always) func copyUTF8(_ s: String, to p: UnsafeMutablePointer<UInt8>) -> Int {
        var s = s
        return s.withUTF8 { u in
            if u.count > 0 { p.update(from: u.baseAddress!, count: u.count) }
            return u.count
        }
    }

    nonisolated(unsafe) static let empty: UnsafePointer<UInt8> = {
        let p = UnsafeMutablePointer<UInt8>.allocate(capacity: 1)
        p.pointee = 0
        return UnsafePointer(p)
    }()

    static func from(_ userData: UnsafeMutableRawPointer?) -> H2Connection {
        Unmanaged<H2Connection>.fromOpaque(userData!).takeUnretainedValue()
    }
}

// MARK: - nghttp2 callbacks (record only; never call back into nghttp2)

private let onBeginHeaders: nghttp2_on_begin_headers_callback = { _, frame, userData in
    let s = H2Connection.from(userData)
    s.block = []
    s.block.reserveCapacity(s.kept?.count ?? 8)
    s.blockStream = frame!.pointee.hd.stream_id
    s.blockBytes = 0
    s.blockOversized = false
    return 0
}

/// Sees every frame header before nghttp2 acts on it: the one place to catch HEADERS on a skipped stream id,
/// which nghttp2 1.52 would silently ignore.
private let onBeginFrame: nghttp2_on_begin_frame_callback = { _, hd, userData in
    let s = H2Connection.from(userData)
    let h = hd!.pointee
    if s.role == .server && UInt32(h.type) == NGHTTP2_HEADERS.rawValue && h.stream_id & 1 == 1 && !s.acceptHeaders(stream: h.stream_id) {
        s.violation = .streamIDRegression
        return Int32(NGHTTP2_ERR_CALLBACK_FAILURE.rawValue)
    }
    return 0
}

/// Notes a GOAWAY with an error code that nghttp2 sent on its own (it found the peer broke the protocol).
private let onFrameSend: nghttp2_on_frame_send_callback = { _, frame, userData in
    let s = H2Connection.from(userData)
    let f = frame!.pointee
    if UInt32(f.hd.type) == NGHTTP2_GOAWAY.rawValue && f.goaway.error_code != 0 && !s.ownGoaway && s.violation == nil {
        s.violation = .detected(code: f.goaway.error_code)
    }
    return 0
}

private let onHeader: nghttp2_on_header_callback = { _, frame, name, namelen, value, valuelen, _, userData in
    let s = H2Connection.from(userData)
    s.blockBytes += namelen + valuelen + 32
    s.headerFieldsDecoded &+= 1
    if s.blockBytes > Int(s.settings.maxHeaderListBytes) {
        s.blockOversized = true
        s.block.removeAll()
        // A list somewhat over the limit gets its 431. Past four times the limit it is not a big request but a
        // decompression bomb (a few bytes on the wire naming a large table entry again and again): nghttp2 is
        // told to stop — it resets the stream and runs through the rest of the block without handing out or
        // checking any field, so the work left is proportional to the bytes on the wire, not to what they
        // would decode to.
        if s.blockBytes > 4 * Int(s.settings.maxHeaderListBytes) {
            s.headerFloods &+= 1
            s.blockStream = 0
            return Int32(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue)
        }
        return 0
    }
    guard !s.blockOversized else { return 0 }
    let v = UnsafeBufferPointer(start: value, count: valuelen)
    if let kept = s.kept {
        guard let k = kept.firstIndex(where: { k in
            k.count == namelen && k.withUnsafeBufferPointer { sf_bytes_equal($0.baseAddress!, name!, namelen) != 0 }
        }) else { return 0 }
        let cached = s.keptValues[k]
        if cached.bytes.count == valuelen && (valuelen == 0 || cached.bytes.withUnsafeBufferPointer { sf_bytes_equal($0.baseAddress!, value!, valuelen) != 0 }) {
            s.block.append(H2Header(s.settings.keptHeaders![k], cached.string))
        } else {
            let str = String(decoding: v, as: UTF8.self)
            s.keptValues[k] = (Array(v), str)
            s.block.append(H2Header(s.settings.keptHeaders![k], str))
        }
        return 0
    }
    let n = String(decoding: UnsafeBufferPointer(start: name, count: namelen), as: UTF8.self)
    s.block.append(H2Header(n, String(decoding: v, as: UTF8.self)))
    return 0
}

private let onFrameRecv: nghttp2_on_frame_recv_callback = { _, frame, userData in
    let s = H2Connection.from(userData)
    let hd = frame!.pointee.hd
    let endStream = hd.flags & UInt8(NGHTTP2_FLAG_END_STREAM.rawValue) != 0
    switch UInt32(hd.type) {
    case NGHTTP2_HEADERS.rawValue:
        if s.blockStream == hd.stream_id {
            s.events.append(.event(s.blockOversized ? .headersTooLarge(stream: hd.stream_id) : .headers(stream: hd.stream_id, s.block)))
            s.block = []
            s.blockStream = 0
        }
        if endStream { s.events.append(.event(.endStream(stream: hd.stream_id))) }
    case NGHTTP2_DATA.rawValue:
        if endStream { s.events.append(.event(.endStream(stream: hd.stream_id))) }
    case NGHTTP2_GOAWAY.rawValue:
        s.events.append(.event(.goaway(lastStream: frame!.pointee.goaway.last_stream_id, code: frame!.pointee.goaway.error_code)))
    case NGHTTP2_RST_STREAM.rawValue:
        if !s.chargeReset() {
            // Stop processing this input at once; `receive` terminates the session after mem_recv returns.
            s.calm = true
            return Int32(NGHTTP2_ERR_PAUSE.rawValue)
        }
    default:
        break
    }
    return 0
}

private let onDataChunk: nghttp2_on_data_chunk_recv_callback = { _, _, streamID, data, len, userData in
    let s = H2Connection.from(userData)
    let start = s.dataBuffer.count
    s.dataBuffer.append(contentsOf: UnsafeBufferPointer(start: data, count: len))
    s.events.append(.data(stream: streamID, start: start, count: len))
    return 0
}

private let onStreamClose: nghttp2_on_stream_close_callback = { _, streamID, code, userData in
    let s = H2Connection.from(userData)
    if let o = s.outbound.removeValue(forKey: streamID) { s.recycle(o) }
    if s.blockStream == streamID {
        s.block = []
        s.blockStream = 0
    }
    s.events.append(.event(.closed(stream: streamID, code: code)))
    return 0
}

/// Pulls a stream's queued body into nghttp2's frame buffer; defers when the queue is empty and not ended.
private let readBody: sf_h2_read_fn = { _, streamID, buf, length, flags, userData in
    let s = H2Connection.from(userData)
    guard let out = s.outbound[streamID] else { return Int64(NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE.rawValue) }
    let n = s.read(out, into: UnsafeMutableRawPointer(buf!), length)
    if out.available == 0 && out.ended {
        flags!.pointee |= NGHTTP2_DATA_FLAG_EOF.rawValue
    } else if n == 0 {
        return Int64(NGHTTP2_ERR_DEFERRED.rawValue)
    }
    return Int64(n)
}
