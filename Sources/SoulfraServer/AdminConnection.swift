import SoulfraGateway
import SoulfraHTTP
import SoulfraKeys
import SoulfraWire

/// One connection to the admin listener: `/healthz`, `/readyz` and `/metrics` over HTTP/1.1. Sans-IO:
/// request bytes in, response bytes in `output`. `/metrics` needs the admin token (Bearer); the health
/// endpoints do not, so orchestrators can probe without it.
final class AdminConnection {
    private var parser = HTTP1Parser(limits: {
        var l = HTTP1Limits()
        l.maxHeadBytes = 8 << 10
        l.maxBodyBytes = 0
        return l
    }())
    /// Response bytes waiting for the socket.
    /// Response bytes for the socket.
    let output = SendQueue()
    /// The peer asked to close, or an error ended the exchange: close once `output` is sent.
    private(set) var closeAfterOutput = false
    let adminToken: SecretDigest?
    let metrics: () -> String
    let ready: () -> Bool
    private var head: HTTPRequestHead?

    init(adminToken: SecretDigest?, metrics: @escaping () -> String, ready: @escaping () -> Bool) {
        self.adminToken = adminToken
        self.metrics = metrics
        self.ready = ready
    }

    /// Shutdown: finish what is being answered, then close (a scraper's keep-alive must not hold the daemon).
    func finish() { closeAfterOutput = true }

    func receive(_ bytes: UnsafeRawBufferPointer) {
        guard !closeAfterOutput else { return }
        parser.feed(bytes, onEvent: { event in
            switch event {
            case .head(let h): head = h
            case .body: break
            case .end:
                if let h = head { respond(to: h) }
                head = nil
            }
            return !closeAfterOutput
        }, onError: { e in
            closeAfterOutput = true
            write(status: e.status, contentType: "application/json", body: errorJSON(.badRequest, e.reason))
        })
    }

    private func respond(to h: HTTPRequestHead) {
        let path = h.target.split(separator: "?", maxSplits: 1).first.map(String.init) ?? h.target
        if !h.keepAlive { closeAfterOutput = true }
        guard h.method == "GET" || h.method == "HEAD" else {
            write(status: 405, contentType: "application/json", body: errorJSON(.methodNotAllowed, "\(h.method) is not allowed here"),
                  extra: [("Allow", "GET, HEAD")], headOnly: false)
            return
        }
        let headOnly = h.method == "HEAD"
        switch path {
        case "/healthz":
            write(status: 200, contentType: "text/plain; charset=utf-8", body: "ok\n", headOnly: headOnly)
        case "/readyz":
            if ready() {
                write(status: 200, contentType: "text/plain; charset=utf-8", body: "ready\n", headOnly: headOnly)
            } else {
                write(status: 503, contentType: "text/plain; charset=utf-8", body: "shutting down\n", extra: [("Retry-After", "1")], headOnly: headOnly)
            }
        case "/metrics":
            guard authorized(h) else {
                write(status: 401, contentType: "application/json",
                      body: errorJSON(.unauthorized, "the admin token is required (Authorization: Bearer …)"),
                      extra: [("WWW-Authenticate", #"Bearer realm="soulfra-admin""#)], headOnly: headOnly)
                return
            }
            write(status: 200, contentType: "text/plain; version=0.0.4; charset=utf-8", body: metrics(), headOnly: headOnly)
        default:
            write(status: 404, contentType: "application/json", body: errorJSON(.notFound, "no route for \(path)"),
                  headOnly: headOnly)
        }
    }

    private func authorized(_ h: HTTPRequestHead) -> Bool {
        guard let expected = adminToken else { return false }  // no admin token configured: /metrics is closed
        guard let auth = h.header("authorization"), let token = bearerToken(auth) else { return false }
        return expected.matches(SecretDigest(of: String(token)))
    }

    private func write(status: Int, contentType: String, body: String, extra: [(String, String)] = [], headOnly: Bool = false) {
        let bytes = Array(body.utf8)
        let fields = [("content-type", contentType), ("cache-control", "no-store")] + extra.map { ($0.0.lowercased(), $0.1) }
        HTTP1Response.head(status: status, fields: fields, contentLength: bytes.count, close: closeAfterOutput).withUnsafeBytes {
            output.out.append($0)
        }
        if !headOnly { bytes.withUnsafeBytes { output.out.append($0) } }
    }
}

/// The JSON error shape shared with the gateway (design §5).
func errorJSON(_ code: GatewayError.Code, _ message: String) -> String {
    GatewayError(code, message).json(requestID: "admin") + "\n"
}
