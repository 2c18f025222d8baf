import SoulfraGateway
import SoulfraHTTP
import SoulfraKeys
import SoulfraWire

/// One connection to the admin listener, HTTP/1.1 with keep-alive. Sans-IO: request bytes in, response bytes
/// in `output`; what each path answers is the route table's (`AdminRoutes`).
final class AdminConnection {
    private var parser = HTTP1Parser(limits: {
        var l = HTTP1Limits()
        l.maxHeadBytes = 8 << 10
        l.maxBodyBytes = AdminConnection.maxBodyBytes
        return l
    }())
    /// Response bytes for the socket.
    let output = SendQueue()
    /// The peer asked to close, or an error ended the exchange: close once `output` is sent.
    private(set) var closeAfterOutput = false
    let routes: () -> AdminRoutes
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []
    /// Request bodies (deploy specs, inline templates) are small JSON documents.
    static let maxBodyBytes = 256 << 10
    /// A stream's bytes not yet taken by its reader, at most: past it the stream is cut.
    static let maxStreamBacklogBytes = 1 << 20
    /// Hands a call to the admin extension (the Wiring knows it and carries the answer back).
    let handOver: (AdminConnection, AdminRequest, Int) -> Void
    /// A streamed answer (server-sent events) is being written: chunked, closed at its end.
    private(set) var streaming = false
    /// A stream whose reader fell a whole backlog behind: it is cut (its producer is told, the socket closed).
    private(set) var cut = false
    /// The extension's answer is to a HEAD: its head only.
    private var extendedHeadOnly = false
    /// A route answers later: input is not read meanwhile, and the connection closes after that answer (so a
    /// pipelined request never overtakes it).
    private(set) var waiting = false

    /// `routes` is looked up per request: the table may change while the connection is open.
    init(routes: @escaping () -> AdminRoutes, handOver: @escaping (AdminConnection, AdminRequest, Int) -> Void = { _, _, _ in }) {
        self.routes = routes
        self.handOver = handOver
    }

    /// Shutdown: finish what is being answered, then close (a scraper's keep-alive must not hold the daemon).
    func finish() { closeAfterOutput = true }

    func receive(_ bytes: UnsafeRawBufferPointer) {
        guard !closeAfterOutput, !waiting, !streaming else { return }
        parser.feed(bytes, onEvent: { event in
            switch event {
            case .head(let h):
                // A request that will be refused is answered now: its body (up to 256 KiB) is never read or
                // held — an anonymous client cannot make the daemon buffer anything.
                if h.body != .none, case .failure(let refusal) = routes().resolve(h) {
                    closeAfterOutput = true
                    write(refusal.response, headOnly: false)
                    return false
                }
                head = h
            case .body(let b): body.append(contentsOf: b)
            case .end:
                if let h = head {
                    if !h.keepAlive { closeAfterOutput = true }
                    switch routes().answer(h, body: body) {
                    case .now(let r):
                        write(r, headOnly: h.method == "HEAD")
                    case .later(let start):
                        waiting = true
                        let headOnly = h.method == "HEAD"
                        start { [weak self] r in
                            guard let self, self.waiting else { return }
                            self.waiting = false
                            self.closeAfterOutput = true
                            self.write(r, headOnly: headOnly)
                        }
                    case .extended(let request, let route):
                        waiting = true
                        extendedHeadOnly = h.method == "HEAD"
                        handOver(self, request, route)
                    }
                }
                head = nil
                body = []
            }
            return !closeAfterOutput && !waiting
        }, onError: { e in
            closeAfterOutput = true
            write(.error(.badRequest, e.reason, status: e.status), headOnly: false)
        })
    }

    /// An extension's answer, on the loop. Whole responses and stream heads end the wait; a stream's
    /// chunks follow its head, and its end closes the connection once written.
    func deliver(_ reply: AdminReply) {
        guard !cut else { return }
        switch reply {
        case .response(let status, let contentType, let bytes):
            guard waiting else { return }
            waiting = false
            closeAfterOutput = true
            write(AdminResponse(status: status, contentType: contentType, body: String(decoding: bytes, as: UTF8.self)), headOnly: extendedHeadOnly)
        case .streamHead(let status, let contentType):
            guard waiting else { return }
            waiting = false
            streaming = true
            let fields = [("content-type", contentType), ("cache-control", "no-store"), ("x-accel-buffering", "no")]
            HTTP1Response.head(status: status, fields: fields, contentLength: nil, close: true).withUnsafeBytes { output.out.append($0) }
        case .chunk(let bytes):
            guard streaming, !closeAfterOutput, !bytes.isEmpty else { return }
            guard output.count + bytes.count <= Self.maxStreamBacklogBytes else {
                // A follower that does not read: the stream ends rather than grow without bound.
                closeAfterOutput = true
                cut = true
                return
            }
            (Array(String(bytes.count, radix: 16).utf8) + [13, 10] + bytes + [13, 10]).withUnsafeBytes { output.out.append($0) }
        case .end:
            guard streaming, !closeAfterOutput else { return }
            Array("0\r\n\r\n".utf8).withUnsafeBytes { output.out.append($0) }
            closeAfterOutput = true
        }
    }

    private func write(_ r: AdminResponse, headOnly: Bool) {
        let bytes = Array(r.body.utf8)
        let fields = [("content-type", r.contentType), ("cache-control", "no-store")] + r.fields
        HTTP1Response.head(status: r.status, fields: fields, contentLength: bytes.count, close: closeAfterOutput).withUnsafeBytes {
            output.out.append($0)
        }
        if !headOnly { bytes.withUnsafeBytes { output.out.append($0) } }
    }
}

/// The JSON error shape shared with the gateway (design §5).
func errorJSON(_ code: GatewayError.Code, _ message: String) -> String {
    GatewayError(code, message).json(requestID: "admin") + "\n"
}
