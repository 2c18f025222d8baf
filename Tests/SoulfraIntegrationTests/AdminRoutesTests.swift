import Testing
import SoulfraHTTP
import SoulfraKeys
@testable import SoulfraServer

@Suite("Admin routes (sans-IO)")
struct AdminRoutesTests {
    /// The head of `request` as the admin listener's parser reads it.
    func head(_ request: String) -> HTTPRequestHead {
        var parser = HTTP1Parser()
        var head: HTTPRequestHead?
        Array(request.utf8).withUnsafeBytes { bytes in
            _ = parser.feed(bytes, onEvent: { e in
                if case .head(let h) = e { head = h }
                return true
            }, onError: { _ in })
        }
        return head!
    }

    func routes() -> AdminRoutes {
        var r = AdminRoutes(adminToken: SecretDigest(of: "admin-token-0123456789"))
        r.add(AdminRoute("GET", "/healthz", needsToken: false) { _ in .text(200, "ok\n") })
        r.add(AdminRoute("GET", "/v1/worlds/{world}", needsToken: true) { req in .text(200, "world \(req.parameters["world"]!)\n") })
        r.add(AdminRoute("DELETE", "/v1/worlds/{world}", needsToken: true) { req in .text(200, "deleted \(req.parameters["world"]!)\n") })
        return r
    }

    @Test("paths match literally or by {name} segments; the method picks among routes of one path")
    func matching() {
        let r = routes()
        #expect(r.answerNow(head("GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")).body == "ok\n")
        let auth = "Authorization: Bearer admin-token-0123456789\r\n"
        #expect(r.answerNow(head("GET /v1/worlds/arena?x=1 HTTP/1.1\r\nHost: a\r\n\(auth)\r\n")).body == "world arena\n")
        #expect(r.answerNow(head("DELETE /v1/worlds/arena HTTP/1.1\r\nHost: a\r\n\(auth)\r\n")).body == "deleted arena\n")
        #expect(r.answerNow(head("HEAD /healthz HTTP/1.1\r\nHost: a\r\n\r\n")).status == 200, "GET routes answer HEAD")
    }

    @Test("404 for no path, 405 with Allow for another method, 401 without the token, an empty segment is no match")
    func refusals() {
        let r = routes()
        #expect(r.answerNow(head("GET /nothing HTTP/1.1\r\nHost: a\r\n\r\n")).status == 404)
        let wrong = r.answerNow(head("POST /v1/worlds/arena HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n"))
        #expect(wrong.status == 405)
        #expect(wrong.fields.first { $0.0 == "allow" }?.1 == "GET, DELETE, HEAD")
        let anonymous = r.answerNow(head("GET /v1/worlds/arena HTTP/1.1\r\nHost: a\r\n\r\n"))
        #expect(anonymous.status == 401 && anonymous.body.contains("\"unauthorized\""))
        let badToken = r.answerNow(head("GET /v1/worlds/arena HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer nope\r\n\r\n"))
        #expect(badToken.status == 401)
        #expect(r.answerNow(head("GET /v1/worlds/ HTTP/1.1\r\nHost: a\r\n\r\n")).status == 404)
        var closed = AdminRoutes(adminToken: nil)
        closed.add(AdminRoute("GET", "/metrics", needsToken: true) { _ in .text(200, "secret") })
        #expect(closed.answerNow(head("GET /metrics HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer anything-at-all-12345\r\n\r\n")).status == 401,
                "no admin token configured: token routes are closed")
    }
}

extension AdminRoutes {
    /// The answer of a route that answers at once.
    func answerNow(_ h: HTTPRequestHead) -> AdminResponse {
        guard case .now(let r) = answer(h) else { return AdminResponse.text(599, "answered later") }
        return r
    }
}
