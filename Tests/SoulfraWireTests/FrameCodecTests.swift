import Foundation
import Testing
import SoulfraTestSupport
@testable import SoulfraWire

/// Decodes everything `feed` produces into frames, failing the test on a decode error.
func decodeAll(_ chunks: [[UInt8]], maxPayload: UInt32 = 1 << 20) throws -> [Frame] {
    let d = FrameDecoder(maxPayload: maxPayload)
    var frames: [Frame] = []
    for chunk in chunks {
        try chunk.withUnsafeBytes { raw in
            try d.feed(raw) { h, p throws(WireError) in
                frames.append(try Frame.parse(h, p))
                return true
            }
        }
    }
    return frames
}

let sampleFrames: [Frame] = [
    .hello(Hello(kind: .instance, maxFrameBytes: 65_536, heartbeatMilliseconds: 250, world: "playground", instance: "i-1", token: "secret-token-123456")),
    .welcome(Welcome(maxFrameBytes: 65_536, heartbeatMilliseconds: 1_000, streamCreditBytes: 262_144, streamCreditFrames: 1_024, linkID: 7, server: "soulfra")),
    .open(stream: 1, Open(target: .instance, keyID: 42, world: "playground", session: "s-1", detail: "cal")),
    .data(stream: 1, payload: Array("hello, world".utf8), end: false),
    .data(stream: 3, payload: [], end: true),
    .credit(stream: 1, bytes: 65_536, frames: 64),
    .credit(stream: 3, bytes: 0, frames: 0, paced: true),
    .close(stream: 1, code: .none, reason: "done"),
    .error(stream: 0, code: .authFailed, reason: "token not valid"),
    .error(stream: 5, code: .noRoute, reason: "no instance"),
    .ping(0xDEAD_BEEF_CAFE_F00D),
    .pong(1),
    .subscribe(stream: 9, Subscribe(mode: .dropOldest, world: "arena", room: "final")),
    .unsubscribe(stream: 9),
    .publish(world: "arena", room: "final", payload: Array(repeating: 0xAB, count: 300)),
    .goaway(lastStream: 11, code: .shutdown, reason: "bye"),
    .dropped(stream: 9, count: 17),
    .data(stream: 1, payload: Array("ünïcödé ✓".utf8), end: false),
]

@Suite("Frame codec")
struct FrameCodecTests {
    @Test("every frame type round-trips")
    func roundTrip() throws {
        for f in sampleFrames {
            #expect(try decodeAll([FrameWriter.encode(f)]) == [f])
        }
    }

    @Test("the same frames whether input arrives whole, byte by byte, or split at every position")
    func everySplit() throws {
        let stream = sampleFrames.flatMap { FrameWriter.encode($0) }
        #expect(try decodeAll([stream]) == sampleFrames)
        #expect(try decodeAll(stream.map { [$0] }) == sampleFrames)
        for cut in 0...stream.count {
            #expect(try decodeAll([Array(stream[..<cut]), Array(stream[cut...])]) == sampleFrames, "split at \(cut)")
        }
        // Three pieces, at a stride, to catch frames straddling two boundaries.
        for a in stride(from: 0, to: stream.count, by: 7) {
            for b in stride(from: a, to: stream.count, by: 13) {
                let parts = [Array(stream[..<a]), Array(stream[a..<b]), Array(stream[b...])]
                #expect(try decodeAll(parts) == sampleFrames, "split at \(a), \(b)")
            }
        }
    }

    @Test("truncated input yields nothing until the rest arrives")
    func truncated() throws {
        let bytes = FrameWriter.encode(sampleFrames[2])
        for n in 0..<bytes.count {
            #expect(try decodeAll([Array(bytes[..<n])]).isEmpty)
        }
    }

    @Test("a payload shorter than its fields is rejected")
    func truncatedPayload() throws {
        var bytes = FrameWriter.encode(.credit(stream: 1, bytes: 1, frames: 1))
        bytes.removeLast(3)
        bytes[3] = 5  // length now matches the shortened payload
        #expect(throws: WireError.truncated(field: "credit.frames")) { try decodeAll([bytes]) }
        var open = FrameWriter.encode(sampleFrames[2])
        open.removeLast(2)
        open[3] -= 2
        #expect(throws: WireError.truncated(field: "open.detail")) { try decodeAll([open]) }
    }

    @Test("oversize frames are rejected from the header alone")
    func oversize() throws {
        let big = FrameWriter.encode(.data(stream: 1, payload: Array(repeating: 1, count: 5_000), end: false))
        #expect(throws: WireError.frameTooLarge(length: 5_000, limit: 4_096)) {
            try decodeAll([Array(big[..<12])], maxPayload: 4_096)
        }
        #expect(WireError.frameTooLarge(length: 5_000, limit: 4_096).code == .frameTooLarge)
    }

    @Test("garbage is rejected: unknown type, reserved bits, bad enums, bad UTF-8, trailing bytes, stream rules")
    func garbage() throws {
        var unknown = FrameWriter.encode(.ping(1)); unknown[4] = 0xEE
        #expect(throws: WireError.unknownType(0xEE)) { try decodeAll([unknown]) }
        var reserved = FrameWriter.encode(.ping(1)); reserved[7] = 1
        #expect(throws: WireError.reservedBitsSet) { try decodeAll([reserved]) }
        var kind = FrameWriter.encode(sampleFrames[0]); kind[14] = 99
        #expect(throws: WireError.invalidValue(field: "hello.kind")) { try decodeAll([kind]) }
        // Invalid UTF-8 in OPEN's world.
        var utf = FrameWriter.encode(.open(stream: 1, Open(target: .instance, world: "ab")))
        utf[12 + 14] = 0xFF
        #expect(throws: WireError.invalidString(field: "open.world")) { try decodeAll([utf]) }
        var trailing = FrameWriter.encode(.ping(1)); trailing.append(0); trailing[3] += 1
        #expect(throws: WireError.trailingBytes(type: .ping)) { try decodeAll([trailing]) }
        var onLink = FrameWriter.encode(.data(stream: 1, payload: [1], end: false)); onLink[11] = 0
        #expect(throws: WireError.streamRequired(type: .data)) { try decodeAll([onLink]) }
        var onStream = FrameWriter.encode(.ping(1)); onStream[11] = 3
        #expect(throws: WireError.streamForbidden(type: .ping)) { try decodeAll([onStream]) }
    }

    @Test("random garbage never crashes or hangs the decoder (seeded)")
    func randomGarbage() throws {
        var rng = SeededRandom(seed: 0x5EED_0001)
        for round in 0..<2_000 {
            let n = Int(rng.next() % 200)
            var bytes = (0..<n).map { _ in UInt8(truncatingIfNeeded: rng.next()) }
            // Make a third of the inputs start with a plausible header so parsing goes deeper.
            if round % 3 == 0 && n >= 12 {
                bytes[0] = 0; bytes[1] = 0; bytes[2] = 0; bytes[3] = UInt8(n - 12)
                bytes[4] = UInt8(1 + rng.next() % 14); bytes[6] = 0; bytes[7] = 0
            }
            let d = FrameDecoder(maxPayload: 1 << 16)
            do {
                try bytes.withUnsafeBytes { raw in
                    try d.feed(raw) { h, p throws(WireError) in _ = try Frame.parse(h, p); return true }
                }
            } catch let error as WireError {
                // Rejection is the expected outcome for most inputs; reaching here without a crash is the test.
                #expect(error.code == .protocolError || error.code == .frameTooLarge, "seed 0x5EED0001 round \(round)")
            } catch {
                Issue.record("unexpected error type \(error), seed 0x5EED0001 round \(round)")
            }
        }
    }

    @Test("the decoder frees its straddle buffer after a large frame")
    func straddleBufferShrinks() throws {
        let big = FrameWriter.encode(.data(stream: 1, payload: Array(repeating: 7, count: 200_000), end: false))
        let d = FrameDecoder(maxPayload: 1 << 20)
        var seen = 0
        for chunk in [Array(big[..<1000]), Array(big[1000...])] {
            try chunk.withUnsafeBytes { raw in
                try d.feed(raw) { _, p throws(WireError) in seen += p.count; return true }
            }
        }
        #expect(seen == 200_000)
        #expect(d.bufferedBytes == 0)
    }

    @Test("over-long strings are cut at a UTF-8 boundary when encoding")
    func longStrings() throws {
        let reason = String(repeating: "é", count: 1_000)  // 2000 bytes
        let frames = try decodeAll([FrameWriter.encode(.error(stream: 0, code: .internalError, reason: reason))])
        guard case .error(_, _, let got) = frames.first else { Issue.record("no frame"); return }
        #expect(got.utf8.count <= Wire.maxStringBytes)
        #expect(got.allSatisfy { $0 == "é" })
    }
}


@Suite("Second encoder")
struct SeedCorpusTests {
    /// fuzz/make-seeds.py encodes frames from docs/protocol.md alone; the Swift codec must read them back.
    @Test("frames written by the Python encoder from the spec decode to what the spec says")
    func pythonSeedsDecode() throws {
        let dir = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../fuzz/corpus")
        func seed(_ name: String) throws -> [UInt8] {
            Array(try Data(contentsOf: dir.appendingPathComponent(name)).dropFirst(2))
        }
        let all = try decodeAll([try seed("all-bytewise")], maxPayload: 65_536)
        #expect(all.count == 24)
        #expect(try decodeAll([try seed("open-window")]) == [.open(stream: 11, Open(target: .instance, keyID: 42, world: "playground",
                                                                                     session: "s", detail: "message",
                                                                                     window: Window(bytes: 8_192, frames: 85)))])
        #expect(try decodeAll([try seed("data-more")]) == [.data(stream: 5, payload: Array("part one of a message".utf8), end: false, flags: .more),
                                                           .data(stream: 5, payload: Array(" and its end".utf8), end: false)])
        #expect(try decodeAll([try seed("data-binary")]).map { if case .data(_, _, let e, let f) = $0 { "\(e) \(f.rawValue)" } else { "" } }
                == ["false 6", "true 4"])
        #expect(try decodeAll([try seed("close-timeout")]) == [.close(stream: 11, code: .timeout, reason: "no answer within the request deadline")])
        #expect(throws: WireError.self) { try decodeAll([try seed("data-more-end")]) }
        if case .hello(let h) = try decodeAll([try seed("hello-loop")]).first {
            #expect(h.kind == .runtime && h.loop == 1 && h.instance == "rt-1")
        } else {
            Issue.record("hello-loop seed did not decode to HELLO")
        }
        if case .welcome(let w) = try decodeAll([try seed("welcome-loops")]).first {
            #expect(w.loopIndex == 1 && w.loopCount == 2 && w.linkID == 9)
        } else {
            Issue.record("welcome-loops seed did not decode to WELCOME")
        }
        #expect(try decodeAll([try seed("open")]) == [.open(stream: 1, Open(target: .instance, keyID: 42, world: "playground", session: "session-1", detail: "cal"))])
        #expect(try decodeAll([try seed("credit")]) == [.credit(stream: 1, bytes: 65_536, frames: 64)])
        #expect(try decodeAll([try seed("data-end")]) == [.data(stream: 3, payload: [], end: true)])
        #expect(try decodeAll([try seed("subscribe")]) == [.subscribe(stream: 9, Subscribe(mode: .dropOldest, world: "arena", room: "final"))])
        #expect(try decodeAll([try seed("goaway")]) == [.goaway(lastStream: 11, code: .shutdown, reason: "broker shutting down")])
        if case .hello(let h) = try decodeAll([try seed("hello")]).first {
            #expect(h.kind == .instance && h.world == "playground" && h.maxFrameBytes == 65_536)
            #expect(h.loop == Wire.anyLoop, "a HELLO without the optional loop field means any loop")
        } else {
            Issue.record("hello seed did not decode to HELLO")
        }
    }
}
