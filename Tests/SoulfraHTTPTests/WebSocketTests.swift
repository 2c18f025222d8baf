import Testing
@testable import SoulfraHTTP
import SoulfraKeys
import SoulfraTestSupport

/// What the decoder reported, with message parts put back together (parts are checked separately).
enum Decoded: Equatable {
    case text([UInt8]), binary([UInt8]), ping([UInt8]), pong([UInt8])
    case close(code: UInt16?, reason: [UInt8])
}

func decode(_ chunks: [[UInt8]], max: Int = 1 << 20) -> (events: [Decoded], failure: WebSocket.CloseCode?) {
    var d = WebSocketDecoder(maxMessageBytes: max)
    var events: [Decoded] = []
    var failure: WebSocket.CloseCode?
    var message: [UInt8] = []
    for c in chunks {
        c.withUnsafeBytes {
            let f = d.feed($0) { e in
                switch e {
                case .data(let binary, let part, let first, let last):
                    if first { message = [] }
                    message += part
                    if last { events.append(binary ? .binary(message) : .text(message)) }
                case .ping(let p): events.append(.ping(Array(p)))
                case .pong(let p): events.append(.pong(Array(p)))
                case .close(let code, let reason): events.append(.close(code: code, reason: Array(reason)))
                }
            }
            if let f { failure = f }
        }
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
        let expected: [Decoded] = [.text(Array(#"{"text":"hi"}"#.utf8)), .binary([UInt8](repeating: 7, count: 300)),
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

    @Test("a message's bytes are handed on as they arrive, before its frame is complete")
    func streamsParts() {
        let frame = clientFrame(.binary, [UInt8](repeating: 9, count: 10_000))
        var d = WebSocketDecoder()
        var parts: [(Int, Bool, Bool)] = []
        frame.withUnsafeBytes { b in
            _ = d.feed(UnsafeRawBufferPointer(rebasing: b[0..<4_000])) { e in
                if case .data(_, let p, let first, let last) = e { parts.append((p.count, first, last)) }
            }
            _ = d.feed(UnsafeRawBufferPointer(rebasing: b[4_000...])) { e in
                if case .data(_, let p, let first, let last) = e { parts.append((p.count, first, last)) }
            }
        }
        #expect(parts.count == 2)
        #expect(parts.map(\.0).reduce(0, +) == 10_000)
        #expect(parts.first?.1 == true && parts.first?.2 == false && parts.last?.2 == true)
    }

    @Test("empty messages are messages: an empty text, an empty binary, and one ended by an empty continuation")
    func emptyMessages() {
        let bytes = clientFrame(.text, []) + clientFrame(.binary, []) + clientFrame(.text, Array("ab".utf8), fin: false)
            + clientFrame(.continuation, [])
        #expect(decode([bytes]).events == [.text([]), .binary([]), .text(Array("ab".utf8))])
    }

    @Test("close codes a peer may send are accepted; the rest are a protocol error (RFC 6455 §7.4)", arguments: [
        (UInt16(1000), true), (1001, true), (1003, true), (1007, true), (1011, true), (1012, true), (1014, true),
        (3000, true), (4999, true),
        (0, false), (999, false), (1004, false), (1005, false), (1006, false), (1015, false), (1016, false),
        (1100, false), (2000, false), (2999, false), (5000, false),
    ])
    func closeCodes(_ code: UInt16, _ valid: Bool) {
        let r = decode([clientFrame(.close, [UInt8(code >> 8), UInt8(code & 0xFF)])])
        if valid {
            #expect(r.failure == nil && r.events == [.close(code: code, reason: [])])
        } else {
            #expect(r.failure == .protocolError && r.events.isEmpty)
        }
    }

    @Test("a close with a 1-byte body or a reason that is not UTF-8 is a protocol error; nothing after a close is decoded")
    func closeRules() {
        #expect(decode([clientFrame(.close, [0x03])]).failure == .protocolError)
        #expect(decode([clientFrame(.close, [0x03, 0xE8, 0xC3, 0x28])]).failure == .protocolError)
        let afterClose = clientFrame(.close, []) + clientFrame(.ping, Array("late".utf8)) + clientFrame(.text, Array("x".utf8))
        let r = decode([afterClose])
        #expect(r.failure == nil && r.events == [.close(code: nil, reason: [])], "no pong owed for a ping after close")
    }

    @Test("UTF-8 is checked across fragments and at any split: a character cut between frames is fine, a truncated one is not")
    func utf8AcrossFragments() {
        let euro: [UInt8] = [0xE2, 0x82, 0xAC]
        let split = clientFrame(.text, [euro[0]], fin: false) + clientFrame(.continuation, Array(euro[1...]))
        #expect(decode([split]).events == [.text(euro)])
        let truncated = clientFrame(.text, [euro[0], euro[1]])
        #expect(decode([truncated]).failure == .invalidPayload)
        let surrogate = clientFrame(.text, [0xED, 0xA0, 0x80])
        #expect(decode([surrogate]).failure == .invalidPayload)
        var v = UTF8Validator()
        for b in Array("héllo wörld 🎉".utf8) { #expect([b].withUnsafeBytes { v.feed($0) }) }
        #expect(v.isComplete)
    }

    @Test("unmasking eight bytes at a time equals unmasking byte by byte, at every offset and length")
    func unmaskWords() {
        let key: (UInt8, UInt8, UInt8, UInt8) = (0x37, 0xFA, 0x21, 0x3D)
        let src = (0..<64).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ 11) }
        for offset in 0..<8 {
            for length in 0...src.count {
                let expected = (0..<length).map { WebSocketDecoder.unmask(src[$0], key, at: offset + $0) }
                var got = [UInt8](repeating: 0, count: length)
                src[0..<length].withUnsafeBytes { s in
                    got.withUnsafeMutableBytes { d in
                        if let base = d.baseAddress { WebSocketDecoder.unmask(s, into: base, key, at: offset) }
                    }
                }
                #expect(got == expected, "offset \(offset) length \(length)")
            }
        }
    }

    @Test("the UTF-8 validator agrees with the standard library on random bytes fed in random pieces", arguments: [1, 2, 3, 4])
    func utf8Random(seed: UInt64) {
        var rng = SeededRandom(seed: seed)
        for round in 0..<2_000 {
            // Mostly ASCII runs (the fast path) with multi-byte characters, stray continuation bytes and
            // overlong or surrogate forms mixed in.
            var bytes: [UInt8] = []
            let pieces = Int.random(in: 1...12, using: &rng)
            for _ in 0..<pieces {
                switch Int.random(in: 0..<6, using: &rng) {
                case 0, 1: bytes += (0..<Int.random(in: 1...24, using: &rng)).map { _ in UInt8.random(in: 0x20...0x7E, using: &rng) }
                case 2: bytes += Array(["é", "€", "🎉", "ж", "𝄞"].randomElement(using: &rng)!.utf8)
                case 3: bytes.append(UInt8.random(in: 0x80...0xFF, using: &rng))
                case 4: bytes += [[0xC0, 0x80], [0xED, 0xA0, 0x80], [0xF4, 0x90, 0x80, 0x80], [0xE2, 0x82]].randomElement(using: &rng)!
                default: bytes += (0..<Int.random(in: 1...8, using: &rng)).map { _ in UInt8.random(in: 0...0xFF, using: &rng) }
                }
            }
            let valid = String(validating: bytes, as: UTF8.self) != nil
            var v = UTF8Validator()
            var ok = true
            var at = 0
            while at < bytes.count && ok {
                let n = Int.random(in: 1...max(1, bytes.count - at), using: &rng)
                ok = bytes[at..<(at + n)].withUnsafeBytes { v.feed($0) }
                at += n
            }
            #expect((ok && v.isComplete) == valid, "seed \(seed) round \(round): \(bytes)")
        }
    }
}
