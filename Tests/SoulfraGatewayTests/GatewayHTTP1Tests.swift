import SoulfraLimits
import Testing
import SoulfraHTTP2
import SoulfraWire
@testable import SoulfraGateway

/// A world that answers each unary request, once its body is in, with `{"bytes":<body length>}`.
func unaryWorld() -> (GatewayHarness, UInt32) -> Void {
    { h, id in
        guard let st = h.streams[id], st.requestEnded, st.sentFrames == 0 else { return }
        h.worldSend(id, Array(#"{"bytes":\#(st.request.count)}"#.utf8), flags: .endStream)
    }
}

/// HTTP/1.1 request handling, and the timeouts of both protocols, without sockets: a manual clock decides
/// when deadlines pass, so nothing here depends on how fast the machine is.
@Suite("Gateway: HTTP/1.1 and timeouts (sans-IO, manual clock)")
struct GatewayHTTP1Tests {
    func text(_ h: GatewayHarness, _ conn: UInt32) -> String { String(decoding: h.transport.received[conn] ?? [], as: UTF8.self) }

    /// Advances the clock in ticks of 100 ms.
    func wait(_ h: GatewayHarness, milliseconds: Int) {
        for _ in 0..<(milliseconds / 100) {
            h.now += 100_000_000
            h.gateway.tick(now: h.now)
            h.settle()
        }
    }

    @Test("malformed HTTP/1.1 gets a JSON 400 (505 for an unknown version) and a close", arguments: [
        "GET / HTTP/1.1\r\nHost t\r\n\r\n", "GET /x HTTP/1.1\nHost: t\n\n",
        "POST /v1/worlds/playground/messages HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
        "GET / HTTP/9.9\r\n\r\n",
    ])
    func malformed(request: String) {
        let h = GatewayHarness()
        h.connectRaw(1)
        h.rawSend(1, Array(request.utf8))
        h.settle()
        let out = text(h, 1)
        #expect(out.hasPrefix("HTTP/1.1 400") || out.hasPrefix("HTTP/1.1 505"), "\(request.debugDescription) → \(out)")
        #expect(out.contains(#""error":{"code":"#), "JSON error body")
        #expect(h.transport.closed.contains(1))
        #expect(h.gateway.counters.closes[CloseReason.protocolError.rawValue] == 1)
    }

    @Test("pipelining: three requests in one write are answered in order; Connection: close is honoured")
    func pipelining() {
        let h = GatewayHarness()
        h.world = unaryWorld()
        h.connectRaw(1)
        let auth = "Authorization: Bearer \(h.key)\r\n"
        h.rawSend(1, Array(("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\n\(auth)Content-Length: 9\r\n\r\n{\"n\":\"1\"}"
            + "GET /v1/worlds/playground/nothing HTTP/1.1\r\nHost: t\r\n\(auth)\r\n"
            + "POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\n\(auth)Content-Length: 11\r\nConnection: close\r\n\r\n{\"n\":\"333\"}").utf8))
        h.settle()
        let out = text(h, 1)
        let statuses = out.split(separator: "HTTP/1.1 ", omittingEmptySubsequences: true).map { String($0.prefix { $0 != "\r\n" }) }
        #expect(statuses == ["200 OK", "404 Not Found", "200 OK"], "\(out)")
        let first = out.range(of: #""bytes":9}"#), last = out.range(of: #""bytes":11}"#)
        #expect(first != nil && last != nil && first!.lowerBound < last!.lowerBound, "answers in request order")
        #expect(h.transport.closed.contains(1), "Connection: close honoured")
    }

    @Test("Expect: 100-continue is answered once the request is admitted; a refused one gets its status and a close")
    func expectContinue() {
        let h = GatewayHarness()
        h.world = unaryWorld()
        h.connectRaw(1)
        h.rawSend(1, Array("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(h.key)\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n".utf8))
        h.settle()
        #expect(text(h, 1) == "HTTP/1.1 100 Continue\r\n\r\n")
        h.rawSend(1, Array("{}".utf8))
        h.settle()
        #expect(text(h, 1).dropFirst("HTTP/1.1 100 Continue\r\n\r\n".count).hasPrefix("HTTP/1.1 200 OK"), "\(text(h, 1))")
        h.connectRaw(2)
        h.rawSend(2, Array("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n".utf8))
        h.settle()
        #expect(text(h, 2).hasPrefix("HTTP/1.1 401") && h.transport.closed.contains(2), "\(text(h, 2))")
    }

    @Test("an HTTP/1.1 request head over the limit gets 431 and a close")
    func oversizeHead() {
        let h = GatewayHarness()
        h.connectRaw(1)
        h.rawSend(1, Array(("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nX-Filler: " + String(repeating: "a", count: 40_000) + "\r\n\r\n").utf8))
        h.settle()
        #expect(text(h, 1).hasPrefix("HTTP/1.1 431") && text(h, 1).contains("headers_too_large"), "\(text(h, 1).prefix(80))")
        #expect(h.transport.closed.contains(1))
    }

    @Test("slowloris: a head that never completes and a body that stalls get 408 and a close; a silent connection is closed")
    func slowloris() {
        var limits = GatewayLimits()
        limits.headerTimeoutMilliseconds = 300
        limits.bodyTimeoutMilliseconds = 300
        limits.idleTimeoutMilliseconds = 1_000
        let h = GatewayHarness(limits: limits)
        h.connectRaw(1)
        h.rawSend(1, Array("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\n".utf8))
        h.connectRaw(2)
        h.rawSend(2, Array("POST /v1/worlds/playground/messages HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer \(h.key)\r\nContent-Length: 100\r\n\r\n{\"x\":".utf8))
        h.connectRaw(3)
        h.settle()
        for _ in 0..<2 {
            h.rawSend(1, Array("X-Slow: 1\r\n".utf8))  // a header now and then does not reset the deadline
            wait(h, milliseconds: 100)
        }
        #expect(!h.transport.closed.contains(1), "closed before the header timeout")
        wait(h, milliseconds: 300)
        #expect(text(h, 1).hasPrefix("HTTP/1.1 408") && h.transport.closed.contains(1), "\(text(h, 1))")
        #expect(text(h, 2).hasPrefix("HTTP/1.1 408") && text(h, 2).contains("body stopped arriving") && h.transport.closed.contains(2))
        #expect(h.transport.closed.contains(3), "a connection that never sends a request is closed too")
        #expect(h.gateway.counters.headerTimeouts == 2, "the slow head and the silent connection")
        #expect(h.gateway.counters.closes[CloseReason.headerTimeout.rawValue] == 2)
        #expect(h.gateway.counters.closes[CloseReason.bodyTimeout.rawValue] == 1)
    }

    @Test("an HTTP/2 connection past its preface with no request lasts until the idle timeout, not the header timeout")
    func warmHTTP2Pool() throws {
        var limits = GatewayLimits()
        limits.headerTimeoutMilliseconds = 300
        limits.idleTimeoutMilliseconds = 1_000
        let h = GatewayHarness(limits: limits)
        let c = try h.connect(1)
        h.settle()  // preface and SETTINGS both ways
        wait(h, milliseconds: 800)
        #expect(!h.transport.closed.contains(1), "a pre-warmed connection was cut at the header timeout")
        wait(h, milliseconds: 400)
        #expect(h.transport.closed.contains(1))
        #expect(c.events.contains { if case .goaway = $0 { true } else { false } }, "no GOAWAY before the close")
        #expect(h.gateway.counters.idleTimeouts == 1 && h.gateway.counters.headerTimeouts == 0)
    }
}
