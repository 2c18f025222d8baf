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
        l.maxBodyBytes = 0
        return l
    }())
    /// Response bytes for the socket.
    let output = SendQueue()
    /// The peer asked to close, or an error ended the exchange: close once `output` is sent.
    private(set) var closeAfterOutput = false
    let routes: () -> AdminRoutes
    private var head: HTTPRequestHead?
    /// A route answers later: input is not read meanwhile, and the connection closes after that answer (so a
    /// pipelined request never overtakes it).
    private(set) var waiting = false

    /// `routes` is looked up per request: the table may change while the connection is open.
    init(routes: @escaping () -> AdminRoutes) { self.routes = routes }

    /// Shutdown: finish what is being answered, then close (a scraper's keep-alive must not hold the daemon).
    func finish() { closeAfterOutput = true }

    func receive(_ bytes: UnsafeRawBufferPointer) {
        guard !closeAfterOutput, !waiting else { return }
        parser.feed(bytes, onEvent: { event in
            switch event {
            case .head(let h): head = h
            case .body: break
            case .end:
                if let h = head {
                    if !h.keepAlive { closeAfterOutput = true }
                    switch routes().answer(h) {
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
                    }
                }
                head = nil
            }
            return !closeAfterOutput && !waiting
        }, onError: { e in
            closeAfterOutput = true
            write(.error(.badRequest, e.reason, status: e.status), headOnly: false)
        })
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
