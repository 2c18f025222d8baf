import SoulfraHTTP2
import Testing
@testable import SoulfraGateway

@Suite("Gateway: CORS for browser apps (sans-IO)")
struct CORSTests {
    static let app = "https://app.example.com"

    func harness() -> GatewayHarness {
        let h = GatewayHarness()
        h.gateway.cors = CORSPolicy(origins: ["playground": [Self.app]], everyWorld: ["http://127.0.0.1:7401"])
        return h
    }

    func preflight(_ h: GatewayHarness, _ c: H2TestClient, origin: String?, path: String = "/v1/worlds/playground/messages") throws -> Int32 {
        var hs = [H2Header(":method", "OPTIONS"), H2Header(":scheme", "https"), H2Header(":authority", "t"), H2Header(":path", path),
                  H2Header("access-control-request-method", "POST"), H2Header("access-control-request-headers", "authorization, content-type")]
        if let origin { hs.append(H2Header("origin", origin)) }
        let id = try c.h2.request(headers: hs, endStream: true)
        h.settle()
        return id
    }

    @Test("a preflight from an allowed origin is answered at the gateway (no key, no instance): 204 with methods, headers and max-age")
    func preflightAllowed() throws {
        let h = harness()
        let c = try h.connect(1)
        let id = try preflight(h, c, origin: Self.app)
        #expect(c.status(id) == "204")
        let hs = c.headers(id)
        #expect(hs["access-control-allow-origin"] == Self.app)
        #expect(hs["access-control-allow-methods"]?.contains("POST") == true)
        #expect(hs["access-control-allow-headers"]?.contains("authorization") == true)
        #expect(hs["access-control-max-age"] == "600" && hs["vary"] == "Origin")
        #expect(h.streams.isEmpty, "nothing reached the world")
        // The panel's origin may call any world.
        let panel = try preflight(h, c, origin: "http://127.0.0.1:7401", path: "/v1/worlds/other/streams")
        #expect(c.status(panel) == "204" && c.headers(panel)["access-control-allow-origin"] == "http://127.0.0.1:7401")
    }

    @Test("a preflight from another origin is 403 origin_not_allowed without CORS headers; a plain OPTIONS is 204 with Allow")
    func preflightRefused() throws {
        let h = harness()
        let c = try h.connect(1)
        let id = try preflight(h, c, origin: "https://evil.example")
        #expect(c.status(id) == "403")
        #expect(String(decoding: c.body(id), as: UTF8.self).contains("origin_not_allowed"))
        #expect(c.headers(id)["access-control-allow-origin"] == nil)
        let plain = try preflight(h, c, origin: nil)
        #expect(c.status(plain) == "204" && c.headers(plain)["allow"]?.contains("OPTIONS") == true)
        #expect(h.streams.isEmpty)
    }

    @Test("an allowed origin's answers carry Access-Control-Allow-Origin — replies and errors alike; another origin's carry none")
    func responsesCarryOrigin() throws {
        let h = harness()
        let c = try h.connect(1)
        h.answerEachRequest(#"{"ok":true}"#)
        let ok = try h.post(1, ssePath, body: #"{"text":"hi"}"#, headers: [("origin", Self.app)])
        let bad = try h.post(1, ssePath, body: "not json", headers: [("origin", Self.app)])
        let other = try h.post(1, ssePath, body: #"{"text":"hi"}"#, headers: [("origin", "https://evil.example")])
        h.settle()
        #expect(c.status(ok) == "200" && c.headers(ok)["access-control-allow-origin"] == Self.app)
        #expect(c.headers(ok)["access-control-expose-headers"]?.contains("x-request-id") == true)
        #expect(c.status(bad) == "400" && c.headers(bad)["access-control-allow-origin"] == Self.app, "errors are readable by the page too")
        #expect(c.status(other) == "200" && c.headers(other)["access-control-allow-origin"] == nil)
        // Refused before admission (no key): still readable by an allowed page.
        let id = try c.h2.request(headers: [H2Header(":method", "POST"), H2Header(":scheme", "http"), H2Header(":authority", "t"),
                                            H2Header(":path", ssePath), H2Header("origin", Self.app)], endStream: true)
        h.settle()
        #expect(c.status(id) == "401" && c.headers(id)["access-control-allow-origin"] == Self.app)
    }

    @Test("a world that names its origins refuses a WebSocket from another page (403); one without an Origin passes")
    func webSocketOrigin() throws {
        let h = harness()
        h.connectRaw(1)
        h.rawSend(1, Array(("GET /v1/worlds/playground/ws HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(h.key)\r\nOrigin: https://evil.example\r\n"
            + "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").utf8))
        h.settle()
        let refused = String(decoding: h.transport.received[1] ?? [], as: UTF8.self)
        #expect(refused.hasPrefix("HTTP/1.1 403") && refused.contains("origin_not_allowed"), "\(refused.prefix(200))")
        h.connectRaw(2)
        h.upgrade(2)
        h.settle()
        #expect(String(decoding: h.transport.received[2] ?? [], as: UTF8.self).hasPrefix("HTTP/1.1 101"))
    }

    @Test("an HTTP/1.1 preflight's 204 has no body and no length")
    func http1Preflight() throws {
        let h = harness()
        h.connectRaw(1)
        h.rawSend(1, Array("OPTIONS /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nOrigin: \(Self.app)\r\nAccess-Control-Request-Method: POST\r\n\r\n".utf8))
        h.settle()
        let text = String(decoding: h.transport.received[1] ?? [], as: UTF8.self)
        #expect(text.hasPrefix("HTTP/1.1 204 No Content\r\n"), "\(text)")
        #expect(!text.lowercased().contains("content-length") && !text.lowercased().contains("transfer-encoding"))
        #expect(text.lowercased().contains("access-control-allow-origin: \(Self.app)"))
    }
}
