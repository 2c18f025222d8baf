import SoulfraLimits
import SoulfraHTTP
import SoulfraHTTP2
import SoulfraWire

/// What a request becomes at the gateway.
public enum ExchangeKind: String, CaseIterable, Sendable {
    /// `POST …/messages`: one JSON reply.
    case message
    /// `POST …/messages` with `"stream": true` or `Accept: text/event-stream`: the reply as SSE.
    case messageStream = "message_stream"
    /// `POST …/streams`: NDJSON both ways, full duplex.
    case stream
    /// `GET …/ws`: the same conversation over WebSocket.
    case webSocket = "websocket"
    /// `GET …/rooms/{room}`: a room's publishes as SSE (or NDJSON).
    case roomSubscribe = "room_subscribe"
    /// `POST …/rooms/{room}`: one publish.
    case roomPublish = "room_publish"
    /// `GET …/sessions/{s}`: one page of the session's history from the vault, as JSON.
    case history

    /// The kind's position in `allCases` (a switch: `allCases` is built anew on every use).
    var index: Int {
        switch self {
        case .message: 0
        case .messageStream: 1
        case .stream: 2
        case .webSocket: 3
        case .roomSubscribe: 4
        case .roomPublish: 5
        case .history: 6
        }
    }

    /// A full-duplex conversation: each message from the client is an interaction.
    var isConversation: Bool { self == .stream || self == .webSocket }

    /// The OPEN detail the instance sees: how it should answer.
    var detail: String {
        switch self {
        case .message: "message"
        case .messageStream: "message.stream"
        case .stream: "stream"
        case .webSocket: "websocket"
        case .roomSubscribe, .roomPublish: "room"
        case .history: "history"
        }
    }

    /// Whether the reply goes out as it is produced (headers first, then events).
    var streamsReply: Bool { self != .message && self != .roomPublish && self != .history }

    /// Whether the reply rides on a broker stream under credit the gateway grants (rooms have none).
    var usesCredit: Bool { self == .message || self == .messageStream || self == .stream || self == .webSocket }
}

/// The parts of a request head the gateway acts on, from HTTP/1.1 or HTTP/2.
struct RequestHead {
    var method = ""
    var path = ""
    var authorization: String?
    var accept = ""
    var session = ""
    /// `Last-Event-ID` (SSE reconnects): the last event the client saw.
    var lastEventID = ""
    /// HTTP/1.1 `Upgrade: websocket` with the handshake headers (the full head, for `WebSocket.accept`).
    var webSocketAccept: String?
    var keepAlive = true
    /// HTTP/1.1 `Expect: 100-continue` with a body to come: answered `100 Continue` once admitted.
    var expectContinue = false
    /// `Origin`, from browsers.
    var origin = ""
}

/// A message (or part of one) waiting for broker credit, with the client bytes it stands for (its HTTP/2
/// window cost, handed back once the broker took it).
struct OutboundMessage {
    var bytes: [UInt8]
    var sent = 0
    var cost: Int
    /// The message goes on after these bytes (a WebSocket message still arriving).
    var continues: Bool
    var binary: Bool
}

/// Where an exchange's reply is. It only moves forward (`Exchange.advance`).
enum ReplyState: Int, Comparable {
    /// Nothing sent to the client yet.
    case waiting
    /// Response headers are out; the body may be streaming.
    case started
    /// Complete, failed, or cancelled: nothing more goes to the client.
    case ended
    /// Forgotten: credit and buffers given back. Only after `ended`.
    case retired

    static func < (a: ReplyState, b: ReplyState) -> Bool { a.rawValue < b.rawValue }
}

/// Where an exchange's request is. Forward only, except that a retry sends it again (`Exchange.resend`).
enum RequestState: Int, Comparable {
    /// The client is still sending it.
    case receiving
    /// The client sent all of it.
    case received
    /// All of it, END included, went to the broker.
    case forwarded

    static func < (a: RequestState, b: RequestState) -> Bool { a.rawValue < b.rawValue }
}

/// One request in flight: an HTTP/2 stream, an HTTP/1.1 request, or a WebSocket; and the broker stream it
/// rides on.
final class Exchange {
    let id: Int32
    unowned let conn: Connection
    let route: Route
    let key: KeyRecord
    let rate: RateLimitState
    var kind: ExchangeKind
    let requestID: String
    let startedAt: UInt64
    var session: String
    /// SSE or NDJSON framing for streamed replies.
    var ndjson: Bool
    /// Resuming: the last event the client saw (`Last-Event-ID` or `?after=`); the instance replays what
    /// followed from the vault first (its OPEN detail says `after=<n>`).
    var resumeAfter: UInt64?
    /// A request the world's instance answers as a resource (`/users`): its OPEN detail ("users GET <rest>"),
    /// and the reply's `"status"` is the HTTP status.
    var resourceDetail: String?

    /// The broker link (by loop index; -1: none yet) and the stream on it (0 while none is open).
    var link = -1
    var brokerStream: UInt32 = 0
    /// Unary and publish bodies, held whole (bounded by `maxBodyBytes`) so a request can be retried.
    var body: [UInt8] = []
    /// Messages send `body` itself to the broker: how much of it has gone.
    var sendsBody = false
    var bodySent = 0
    /// Where the request is: arriving from the client, complete, or complete and ended on the broker stream.
    private(set) var request = RequestState.receiving
    /// Messages waiting for broker credit (NDJSON lines, WebSocket message parts), oldest first; what they
    /// hold in memory (their bytes plus `entryOverhead` each, so a flood of empty messages counts too); and
    /// whether END follows the last one.
    var outbound: [OutboundMessage] = []
    var outboundHead = 0
    var outboundBytes = 0
    static let entryOverhead = 64
    var outboundEnds = false
    /// Bytes of a partial NDJSON line.
    var partialLine: [UInt8] = []
    /// A history page: what was asked, and the vault's messages as they arrive (each ends at an `historyEnds`
    /// offset), bounded by the page's byte budget.
    var historyAfter: UInt64 = 0
    var historyLimit = 100
    var history: [UInt8] = []
    var historyEnds: [Int] = []
    /// Reply bytes and DATA frames received (unary: bytes bounded by `maxReplyBytes`).
    var replyBytes = 0
    var replyFrames = 0
    /// Where the reply is: nothing sent, headers out (the body may be streaming), complete, or forgotten.
    private(set) var reply = ReplyState.waiting
    /// When a streamed reply's headers go out if nothing else happened first (a refused stream gets a
    /// proper status instead of an error event).
    var headersDue: UInt64 = 0
    /// The one retry on another instance was used.
    var retried = false
    /// When request body bytes last arrived (monotonic ns), for the body timeout.
    var lastBodyAt: UInt64 = 0
    /// Request bytes read and dropped after the exchange was answered.
    var discarded = 0
    /// The instance must answer by then (0: no deadline running): unary, the whole reply; streams, the first
    /// reply frame after the request (or the first client message) went out. It runs only while the instance
    /// has a window to answer in (`Gateway.armDeadline`).
    var deadline: UInt64 = 0
    /// The instance was asked and has not answered yet.
    var awaitingAnswer = false

    /// The instance's send window on the broker stream as granted here (what it may still send), its cost in
    /// client bytes, and the cost this stream is allowed to grow to (see `Gateway.topUp`).
    var windowBytes: Int64 = 0
    var windowFrames: Int64 = 0
    var windowCost = 0
    var targetCost = 0
    /// The stream wanted credit its connection or the loop could not give yet (counted once per wait).
    var waitingCredit = false
    /// On its connection's `creditWanted` list.
    var inCreditList = false
    /// Its last request for credit found the loop's budget spent (not its own connection's).
    var starvedByLoop = false
    /// HTTP/2 request bytes received and not yet handed back to the client's window (NDJSON lines waiting for
    /// the world's credit).
    var inputHeld = 0

    /// Framing state of the reply message in progress (messages may arrive in parts, flagged MORE).
    var replyMidMessage = false
    var replyLastByte: UInt8 = 0
    var replyBinary = false
    var replyUTF8 = UTF8Validator()
    /// In-band events (`rate_limits`, `dropped`) that arrived mid-message; sent when it ends.
    var heldEvents: [(event: String, json: String)] = []

    /// The key's usage on this loop (counted as the exchange goes), and the reply's token counts being read.
    let usage: UsageCell
    let world: WorldCell
    var tokens = TokenScanner()
    /// Whole messages from the client on a stream, and how many of them were charged as interactions.
    var messagesIn: UInt64 = 0
    var messagesCharged: UInt64 = 0
    /// `Access-Control-Allow-Origin` for this request's answers (nil: not a browser's, or not allowed).
    var corsOrigin: String?
    /// For the access log: the request line as sent, and the status answered (0: none yet; 499: the client
    /// went away first).
    var method = ""
    var target = ""
    var status: UInt16 = 0

    init(id: Int32, conn: Connection, route: Route, key: KeyRecord, rate: RateLimitState, kind: ExchangeKind,
         requestID: String, startedAt: UInt64, session: String, ndjson: Bool, usage: UsageCell, world: WorldCell) {
        self.id = id
        self.usage = usage
        self.world = world
        usage.usage.requests &+= 1
        self.conn = conn
        self.route = route
        self.key = key
        self.rate = rate
        self.kind = kind
        self.requestID = requestID
        self.startedAt = startedAt
        self.session = session
        self.ndjson = ndjson
    }

    var pendingFrames: Int { outbound.count - outboundHead }

    // MARK: - Lifecycle

    /// Response headers are out; the body may still be streaming.
    var responded: Bool { reply >= .started }
    /// The response is complete (or failed, or the client went away): nothing more is sent for it.
    var responseEnded: Bool { reply >= .ended }
    /// Forgotten: its credit and buffers are given back.
    var retired: Bool { reply == .retired }
    /// The client sent all of the request.
    var requestEnded: Bool { request >= .received }
    /// END went to the broker on the request's stream.
    var sentEnd: Bool { request == .forwarded }

    /// Moves the reply on. It never moves back: asking for a state it has passed changes nothing.
    @inline(__always) func advance(reply to: ReplyState) {
        precondition(to != .retired || reply >= .ended, "an exchange retired before its reply ended")
        if to > reply { reply = to }
    }

    /// Moves the request on (only forward).
    @inline(__always) func advance(request to: RequestState) {
        if to > request { request = to }
    }

    /// A retry on another instance sends the request again: END has not gone on the new stream. Only a
    /// request whose reply has not started is retried.
    func resend() {
        precondition(reply == .waiting && request == .forwarded || request < .forwarded, "a retry after the reply started")
        if request == .forwarded { request = .received }
    }

    /// Response headers every reply carries, plus `content-length` for a complete reply of that size.
    func replyHeaders(contentType: String, contentLength: Int?) -> [H2Header] {
        var h: [H2Header] = []
        h.reserveCapacity(rate.limit > 0 ? 8 : 3)
        h.append(H2Header("content-type", contentType))
        h.append(H2Header("x-request-id", requestID))
        if rate.limit > 0 { rate.appendHeaders(to: &h) }
        if let contentLength { h.append(H2Header("content-length", String(contentLength))) }
        if let corsOrigin { for (n, v) in CORSPolicy.headers(corsOrigin) { h.append(H2Header(n, v)) } }
        return h
    }

    /// Queues a message (or a part of one) for the broker.
    func queue(_ bytes: [UInt8], cost: Int, continues: Bool = false, binary: Bool = false) {
        if outboundHead > 64 && outboundHead * 2 > outbound.count {
            outbound.removeFirst(outboundHead)
            outboundHead = 0
        }
        outbound.append(OutboundMessage(bytes: bytes, cost: cost, continues: continues, binary: binary))
        outboundBytes += bytes.count + Self.entryOverhead
    }

    /// Splits NDJSON request bytes into frames, one per non-empty line. False if a line is over `maxLine`.
    func splitLines(_ bytes: UnsafeRawBufferPointer, maxLine: Int) -> Bool {
        var start = 0
        for i in 0..<bytes.count where bytes[i] == 0x0A {
            partialLine.append(contentsOf: bytes[start..<i])
            lineCost += i + 1 - start
            start = i + 1
            if partialLine.last == 0x0D { partialLine.removeLast() }
            if partialLine.count > maxLine { return false }
            // Blank lines carry no frame; their bytes are charged to the next one.
            if !partialLine.isEmpty {
                queue(partialLine, cost: lineCost)
                messagesIn &+= 1
                lineCost = 0
            }
            partialLine.removeAll(keepingCapacity: true)
        }
        partialLine.append(contentsOf: bytes[start...])
        lineCost += bytes.count - start
        return partialLine.count <= maxLine
    }

    /// Client bytes behind `partialLine` and blank lines not yet charged to a frame.
    var lineCost = 0
}
