import SoulfraWire

/// A world instance for tests and benchmarks, answering the gateway's streams the way a world does (the
/// OPEN detail says how, see docs/protocol.md "Gateway streams"):
///
/// - `message`: reads the request to END, answers one JSON object and END.
/// - `message.stream`: reads the request to END, answers `tokens` frames `{"token":"…","index":i}`, then END.
/// - `stream`, `websocket`: echoes every frame as `{"echo":<frame>,"instance":"…"}` (full duplex) and ends
///   when the client does.
public final class EchoInstance: PeerSessionDelegate {
    struct StreamState {
        var detail: String
        var session: String
        var requestBytes = 0
        /// Frames waiting for credit, and whether END follows them.
        var pending: [[UInt8]] = []
        var endAfter = false
    }

    public let name: String
    /// Frames in a streamed (`message.stream`) reply.
    public var tokens: Int
    var streams: [UInt32: StreamState] = [:]
    /// Requests answered (unary and streamed).
    public private(set) var answered: UInt64 = 0
    /// Streams accepted, in total.
    public private(set) var accepted: UInt64 = 0
    /// Sessions seen (for affinity checks).
    public private(set) var sessions: Set<String> = []
    let unaryReplyPrefix: [UInt8]

    public init(name: String, tokens: Int = 8) {
        self.name = name
        self.tokens = tokens
        unaryReplyPrefix = Array(#"{"agent":"echo","instance":"\#(name)","reply":"hello!","bytes":"#.utf8)
    }

    public var openStreams: Int { streams.count }

    public func sessionAccepted(_ s: PeerSession, stream: UInt32, open: Open) {
        accepted &+= 1
        if !open.session.isEmpty { sessions.insert(open.session) }
        streams[stream] = StreamState(detail: open.detail, session: open.session)
    }

    public func sessionData(_ s: PeerSession, stream: UInt32, payload: UnsafeRawBufferPointer, end: Bool) {
        guard var st = streams[stream] else { return }
        st.requestBytes += payload.count
        switch st.detail {
        case "stream", "websocket":
            var frame = Array(#"{"instance":"\#(name)","echo":"#.utf8)
            if payload.first == UInt8(ascii: "{") || payload.first == UInt8(ascii: "[") {
                frame.append(contentsOf: payload)
            } else {
                frame.append(UInt8(ascii: "\""))
                for b in payload where b != UInt8(ascii: "\"") && b != UInt8(ascii: "\\") && b >= 0x20 { frame.append(b) }
                frame.append(UInt8(ascii: "\""))
            }
            frame.append(UInt8(ascii: "}"))
            if payload.count > 0 { st.pending.append(frame) }
            if end { st.endAfter = true }
        case "message.stream":
            guard end else { break }
            for i in 0..<tokens {
                st.pending.append(Array(#"{"token":"t\#(i) ","index":\#(i),"instance":"\#(name)"}"#.utf8))
            }
            st.endAfter = true
        default:
            guard end else { break }
            st.pending.append(unaryReplyPrefix + Array("\(st.requestBytes)}".utf8))
            st.endAfter = true
        }
        streams[stream] = st
        drain(s, stream)
    }

    public func sessionWritable(_ s: PeerSession, stream: UInt32) { drain(s, stream) }

    func drain(_ s: PeerSession, _ stream: UInt32) {
        guard var st = streams[stream] else { return }
        var sent = 0
        for (i, frame) in st.pending.enumerated() {
            let last = st.endAfter && i == st.pending.count - 1
            guard frame.withUnsafeBytes({ s.send(stream: stream, payload: $0, end: last) }) else { break }
            sent += 1
        }
        st.pending.removeFirst(sent)
        if st.pending.isEmpty && st.endAfter {
            if sent == 0 { _ = s.send(stream: stream, payload: UnsafeRawBufferPointer(start: nil, count: 0), end: true) }
            if st.detail != "stream" && st.detail != "websocket" { answered &+= 1 }
            streams[stream] = nil
            return
        }
        streams[stream] = st
    }

    public func sessionStreamClosed(_ s: PeerSession, stream: UInt32, code: ErrorCode, reason: String) {
        streams[stream] = nil
    }
}
