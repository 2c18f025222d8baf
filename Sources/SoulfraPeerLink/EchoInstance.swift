import SoulfraWire

/// A world instance for tests and benchmarks, answering the gateway's streams the way a world does (the
/// OPEN detail says how, see docs/protocol.md "Gateway streams").
///
/// In `.json` mode (the default):
/// - `message`: reads the request to END, answers one JSON object and END.
/// - `message.stream`: reads the request to END, answers `tokens` frames `{"token":"…","index":i}`, then END.
/// - `stream`, `websocket`: echoes every message as `{"echo":<message>,"instance":"…"}` (full duplex) and ends
///   when the client does.
///
/// In `.exact` mode every message comes back byte for byte, binary as binary: the unary reply and the
/// single streamed event are the request body, and each stream or WebSocket message is returned as it came
/// (for checking WebSocket behaviour end to end with any standard client).
///
/// Messages of any size travel: what arrives split (MORE) is put back together, up to 1 MiB; replies larger
/// than the window go out in pieces as credit arrives.
public final class EchoInstance: PeerLinkDelegate {
    // Stored properties are `@exclusivity(unchecked)` for the reason given at `ByteQueue`.
    public enum Mode: String, Sendable, CaseIterable {
        case json
        case exact
    }

    struct Reply {
        var bytes: [UInt8]
        var binary: Bool
        /// Bytes of it already sent.
        var sent = 0
    }

    struct StreamState {
        var detail: String
        var session: String
        var requestBytes = 0
        var request: [UInt8] = []
        /// Messages waiting for credit, oldest first, and whether END follows them.
        var pending: [Reply] = []
        var endAfter = false
        /// Streamed tokens still to make (made one at a time as credit allows, not all up front).
        var tokensLeft = 0
        var nextToken = 0
    }

    public let name: String
    public let mode: Mode
    /// Frames in a streamed (`message.stream`) reply.
    @exclusivity(unchecked) public var tokens: Int
    @exclusivity(unchecked) var streams: [UInt32: StreamState] = [:]
    let assembler = MessageAssembler()
    /// Requests answered (unary and streamed).
    @exclusivity(unchecked) public private(set) var answered: UInt64 = 0
    /// Streams accepted, in total.
    @exclusivity(unchecked) public private(set) var accepted: UInt64 = 0
    /// Sessions seen (for affinity checks).
    @exclusivity(unchecked) public private(set) var sessions: Set<String> = []
    let unaryReplyPrefix: [UInt8]

    public init(name: String, tokens: Int = 8, mode: Mode = .json) {
        self.name = name
        self.tokens = tokens
        self.mode = mode
        unaryReplyPrefix = Array(#"{"agent":"echo","instance":"\#(name)","reply":"hello!","bytes":"#.utf8)
    }

    public var openStreams: Int { streams.count }

    public func linkAccepted(_ s: PeerLink, stream: UInt32, open: Open) {
        accepted &+= 1
        if !open.session.isEmpty { sessions.insert(open.session) }
        streams[stream] = StreamState(detail: open.detail, session: open.session)
    }

    public func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard streams[stream] != nil else { return }
        let whole = assembler.feed(stream: stream, payload: payload, flags: flags) { message, last in
            self.message(s, stream, message, last)
        }
        if !whole {
            // Over the instance's own message limit: refuse this stream, not the link.
            s.closeStream(stream, code: .frameTooLarge, reason: "message over \(assembler.maxMessageBytes) bytes")
            streams[stream] = nil
            return
        }
        drain(s, stream)
    }

    /// One whole message from the gateway.
    func message(_ s: PeerLink, _ stream: UInt32, _ payload: UnsafeRawBufferPointer, _ flags: FrameFlags) {
        guard var st = streams[stream] else { return }
        let end = flags.contains(.endStream)
        st.requestBytes += payload.count
        switch st.detail {
        case "stream", "websocket":
            // An empty DATA with END closes the client's side; it is not a message.
            if !(end && payload.count == 0) {
                if mode == .exact || flags.contains(.binary) {
                    // Binary messages come back as they are (a JSON wrapper would make them text).
                    st.pending.append(Reply(bytes: Array(payload), binary: flags.contains(.binary)))
                } else {
                    st.pending.append(Reply(bytes: jsonEcho(payload), binary: false))
                }
            }
            if end { st.endAfter = true }
        case "message.stream":
            if mode == .exact { st.request.append(contentsOf: payload) }
            guard end else { break }
            if mode == .exact {
                st.pending.append(Reply(bytes: st.request, binary: false))
            } else {
                st.tokensLeft = tokens
            }
            st.endAfter = true
        default:
            if mode == .exact { st.request.append(contentsOf: payload) }
            guard end else { break }
            let reply = mode == .exact ? st.request : unaryReplyPrefix + Array("\(st.requestBytes)}".utf8)
            st.pending.append(Reply(bytes: reply, binary: false))
            st.endAfter = true
        }
        streams[stream] = st
    }

    func jsonEcho(_ payload: UnsafeRawBufferPointer) -> [UInt8] {
        var frame = Array(#"{"instance":"\#(name)","echo":"#.utf8)
        if payload.first == UInt8(ascii: "{") || payload.first == UInt8(ascii: "[") {
            frame.append(contentsOf: payload)
        } else {
            frame.append(UInt8(ascii: "\""))
            for b in payload where b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") && b >= 0x20 { frame.append(b) }
            frame.append(UInt8(ascii: "\""))
        }
        frame.append(UInt8(ascii: "}"))
        return frame
    }

    public func linkWritable(_ s: PeerLink, stream: UInt32) { drain(s, stream) }

    func drain(_ s: PeerLink, _ stream: UInt32) {
        guard var st = streams[stream] else { return }
        var done = 0
        while true {
            if done == st.pending.count && st.tokensLeft > 0 {
                let i = st.nextToken
                st.pending.append(Reply(bytes: Array(#"{"token":"t\#(i) ","index":\#(i),"instance":"\#(name)"}"#.utf8), binary: false))
                st.nextToken += 1
                st.tokensLeft -= 1
            }
            guard done < st.pending.count else { break }
            let last = st.endAfter && done == st.pending.count - 1 && st.tokensLeft == 0
            let r = st.pending[done]
            let took = r.bytes.withUnsafeBytes { b in
                s.sendPartial(stream: stream, payload: UnsafeRawBufferPointer(rebasing: b[r.sent...]), end: last, binary: r.binary)
            }
            guard let took else { break }
            st.pending[done].sent += took
            guard st.pending[done].sent == r.bytes.count else { break }  // the rest waits for credit
            done += 1
        }
        st.pending.removeFirst(done)
        if st.pending.isEmpty && st.endAfter && st.tokensLeft == 0 {
            // Nothing carried END yet: an empty DATA does (when a frame of window is left; else on the next CREDIT).
            if done == 0 && !s.send(stream: stream, payload: UnsafeRawBufferPointer(start: nil, count: 0), end: true) {
                streams[stream] = st
                return
            }
            if st.detail != "stream" && st.detail != "websocket" { answered &+= 1 }
            streams[stream] = nil
            assembler.drop(stream: stream)
            return
        }
        streams[stream] = st
    }

    public func linkStreamClosed(_ s: PeerLink, stream: UInt32, code: ErrorCode, reason: String) {
        streams[stream] = nil
        assembler.drop(stream: stream)
    }
}
