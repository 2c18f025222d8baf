import Testing
@testable import SoulfraHTTP
import SoulfraKeys

func decode(_ chunks: [[UInt8]], max: Int = 1 << 20) -> (events: [WebSocketEvent], failure: WebSocket.CloseCode?) {
    var d = WebSocketDecoder(maxMessageBytes: max)
    var events: [WebSocketEvent] = []
    var failure: WebSocket.CloseCode?
    for c in chunks {
        c.withUnsafeBytes { if let f = d.feed($0, { events.append($0) }) { failure = f } }
    }
    return (events, failure)
}

func clientFrame(_ op: WebSocket.Opcode, _ payload: [UInt8], fin: Bool = true) -> [UInt8] {
    var out: [UInt8] = []
    WebSocket.encodeFrame(op, payload: payload, fin: fin, mask: (0x37, 0xFA, 0x21, 0x3D), into: &out)
    return out
}

@Suite("WebSocket")
struct WebSocketTests {
    @Test("the handshake's accept value matches RFC 6455 §1.3")
    func acceptValue() throws {
        let head = HTTPRequestHead(method: "GET", target: "/v1/worlds/playground/ws", minorVersion: 1, headers: [
            ("Host", "localhost"), ("Upgrade", "websocket"), ("Connection", "keep-alive, Upgrade"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="), ("Sec-WebSocket-Version", "13"),
        ], body: .none, keepAlive: true)
        #expect(try WebSocket.accept(head, sha1: sha1).get() == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        var old = head
        old.headers[4] = ("Sec-WebSocket-Version", "8")
        guard case .failure(let e) = WebSocket.accept(old, sha1: sha1) else { Issue.record("accepted version 8"); return }
        #expect(e.status == 426)
        var badKey = head
        badKey.headers[3] = ("Sec-WebSocket-Key", "short")
        #expect((try? WebSocket.accept(badKey, sha1: sha1).get()) == nil)
    }

    @Test("RFC 6455 §5.7 examples: a masked \"Hello\", and a fragmented one")
    func rfcExamples() {
        let masked: [UInt8] = [0x81, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]
        #expect(decode([masked]).events == [.text(Array("Hello".utf8))])
        let fragmented = clientFrame(.text, Array("Hel".utf8), fin: false) + clientFrame(.ping, Array("p".utf8))
            + clientFrame(.continuation, Array("lo".utf8))
        #expect(decode([fragmented]).events == [.ping(Array("p".utf8)), .text(Array("Hello".utf8))], "control frames may interleave")
    }

    @Test("the same events at every byte split, with 16- and 64-bit lengths")
    func everySplit() {
        let big = [UInt8](repeating: 0x62, count: 70_000)
        let stream = clientFrame(.text, Array(#"{"text":"hi"}"#.utf8)) + clientFrame(.binary, [UInt8](repeating: 7, count: 300))
            + clientFrame(.binary, big) + clientFrame(.close, WebSocket.closePayload(.normal, "bye"))
        let expected: [WebSocketEvent] = [.text(Array(#"{"text":"hi"}"#.utf8)), .binary([UInt8](repeating: 7, count: 300)),
                                          .binary(big), .close(code: 1000, reason: Array("bye".utf8))]
        #expect(decode([stream]).events == expected)
        for cut in stride(from: 0, through: stream.count, by: 97) {
            #expect(decode([Array(stream[..<cut]), Array(stream[cut...])]).events == expected, "split at \(cut)")
        }
    }

    @Test("violations give the right close code", arguments: [
        ([0x81, 0x05] + Array("Hello".utf8), WebSocket.CloseCode.protocolError),              // unmasked client frame
        ([0xC1, 0x80, 0, 0, 0, 0], .protocolError),                                              // RSV1 without an extension
        ([0x83, 0x80, 0, 0, 0, 0], .protocolError),                                              // reserved opcode
        ([0x09, 0x80, 0, 0, 0, 0], .protocolError),                                              // fragmented ping
        ([0x80, 0x80, 0, 0, 0, 0], .protocolError),                                              // continuation with nothing to continue
        ([0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], .protocolError),                               // 64-bit length with the top bit set
        ([0x82, 0xFF, 0, 0, 0, 1, 0, 0, 0, 0], .messageTooBig),                                  // 4 GiB declared
    ])
    func violations(_ bytes: [UInt8], _ code: WebSocket.CloseCode) {
        #expect(decode([bytes]).failure == code)
    }

    @Test("invalid UTF-8 in a text message closes with 1007; oversize messages with 1009")
    func payloadChecks() {
        #expect(decode([clientFrame(.text, [0xC3, 0x28])]).failure == .invalidPayload)
        #expect(decode([clientFrame(.binary, [UInt8](repeating: 0, count: 2_000))], max: 1_000).failure == .messageTooBig)
        let parts = clientFrame(.binary, [UInt8](repeating: 0, count: 600), fin: false) + clientFrame(.continuation, [UInt8](repeating: 0, count: 600))
        #expect(decode([parts], max: 1_000).failure == .messageTooBig, "the limit holds across fragments")
    }

    @Test("base64 round-trips and rejects garbage")
    func base64() {
        for n in 0..<20 {
            let bytes = (0..<n).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
            #expect(Base64.decode(Base64.encode(bytes)) == bytes)
        }
        #expect(Base64.encode(Array("foobar".utf8)) == "Zm9vYmFy")
        #expect(Base64.decode("Zm9vYg==") == Array("foob".utf8))
        #expect(Base64.decode("Zm9v!mFy") == nil && Base64.decode("Zm9") == nil && Base64.decode("Z===") == nil)
    }
}
