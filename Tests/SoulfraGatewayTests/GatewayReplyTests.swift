import SoulfraLimits
import Testing
import SoulfraHTTP2
import SoulfraWire
@testable import SoulfraGateway

/// Replies that arrive in parts, and replies cut short: the client always sees whole framing, never a
/// truncated body passed off as complete.
@Suite("Gateway: replies in parts and cut short (sans-IO)")
struct GatewayReplyTests {
    var body: (H2TestClient, Int32) -> String = { c, id in String(decoding: c.body(id), as: UTF8.self) }

    @Test("a unary reply over max_reply_bytes before anything went out: 502 reply_too_large, the world's stream cancelled")
    func replyTooLargeAtOnce() throws {
        var limits = GatewayLimits()
        limits.maxReplyBytes = 1_000
        let h = GatewayHarness(limits: limits)
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            h.worldSend(sid, [UInt8](repeating: 0x61, count: 1_500), flags: .endStream)
        }
        h.settle()
        #expect(c.status(id) == "502")
        #expect(body(c, id).contains("reply_too_large"))
        #expect(h.gateway.counters.errors(.replyTooLarge) == 1)
        #expect(h.streams.values.first?.closeCode == .cancelled)
    }

    @Test("a unary reply that passes max_reply_bytes while streaming is cut off with RST_STREAM, not ended as if whole")
    func replyTooLargeMidway() throws {
        var limits = GatewayLimits()
        limits.maxReplyBytes = 1_000
        let h = GatewayHarness(limits: limits)
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            h.worldSend(sid, [UInt8](repeating: 0x61, count: 600))
        }
        h.settle()
        #expect(c.body(id).count == 600, "the first part reached the client")
        // Then more than the limit allows.
        let sid = try #require(h.streams.keys.first)
        h.worldSend(sid, [UInt8](repeating: 0x62, count: 600), flags: .endStream)
        h.settle()
        #expect(c.status(id) == "200", "the first part went out as it came")
        #expect(c.body(id).count == 600)
        #expect(c.events.contains(.closed(stream: id, code: 2)), "reset with INTERNAL_ERROR: \(c.events)")
        #expect(!c.events.contains(.endStream(stream: id)), "a cut-off body must not end cleanly")
        #expect(h.gateway.counters.errors(.replyTooLarge) == 1)
        #expect(h.streams.values.first?.closeCode == .cancelled)
    }

    @Test("an in-band event that arrives in the middle of a message waits for the message's end")
    func eventHeldMidMessage() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: sseBody, headers: [("accept", "text/event-stream")])
        var step = 0
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded else { return }
            switch step {
            case 0:
                h.worldSend(sid, Array("hel".utf8), flags: .more)
                // The broker starts pacing the key between the message's two parts.
                FrameWriter.credit(h.worldOut, stream: sid, bytes: 0, frames: 0, paced: true)
            case 1:
                h.worldSend(sid, Array("lo".utf8))
                h.worldSend(sid, [], flags: .endStream)
            default:
                return
            }
            step += 1
        }
        h.settle()
        let text = body(c, id)
        #expect(text.hasPrefix("data: hello\n\nevent: rate_limits\ndata: {"), "\(text)")
        #expect(!text.contains("data: hel\n"), "the message was not split by the event")
    }

    @Test("a stream that fails in the middle of a message closes the message before its error event")
    func errorMidMessage() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: sseBody, headers: [("accept", "text/event-stream")])
        var sent = false
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, !sent else { return }
            sent = true
            h.worldSend(sid, Array("par".utf8), flags: .more)
            FrameWriter.write(.error(stream: sid, code: .internalError, reason: "boom"), to: h.worldOut)
        }
        h.settle()
        let text = body(c, id)
        #expect(text.hasPrefix("data: par\n\nevent: error\ndata: {"), "\(text)")
        #expect(c.events.contains(.endStream(stream: id)))
    }

    @Test("a connection quiet for a second gives back its buffers")
    func idleTrim() throws {
        let h = GatewayHarness()
        let c = try h.connect(1)
        let id = try h.post(1, ssePath, body: #"{"text":"hi"}"#)
        h.world = { h, sid in
            guard let st = h.streams[sid], st.requestEnded, st.sentFrames == 0 else { return }
            h.worldSend(sid, Array(#"{"reply":"ok"}"#.utf8), flags: .endStream)
        }
        h.settle()
        #expect(c.status(id) == "200")
        let conn = try #require(h.connection(1))
        #expect(conn.output.out.capacity + conn.output.sending.capacity > 0, "buffers in use after the exchange")
        h.now += 1_200_000_000
        h.gateway.tick(now: h.now)
        #expect(conn.trimmed)
        #expect(conn.output.out.capacity == 0 && conn.output.sending.capacity == 0 && conn.plainOut.capacity == 0)
    }
}
