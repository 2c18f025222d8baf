import Testing
import SoulfraPeer
import SoulfraPeerLink
import SoulfraWire

/// Collects what a session reports.
final class Collector: PeerLinkDelegate {
    var data: [(UInt32, [UInt8], FrameFlags)] = []
    var accepted: [(UInt32, Open)] = []
    var writable: [UInt32] = []
    func linkData(_ s: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        data.append((stream, Array(payload), flags))
    }
    func linkAccepted(_ s: PeerLink, stream: UInt32, open: Open) { accepted.append((stream, open)) }
    func linkWritable(_ s: PeerLink, stream: UInt32) { writable.append(stream) }
}

/// A session past its handshake, with a 1 KiB frame size and a 4 KiB / 8-frame window per stream.
func readySession(_ delegate: Collector? = nil) -> PeerLink {
    let s = PeerLink(identity: PeerIdentity(kind: .gateway, token: "t"))
    s.delegate = delegate
    s.start()
    let welcome = FrameWriter.encode(.welcome(Welcome(maxFrameBytes: 1_024, heartbeatMilliseconds: 1_000, streamCreditBytes: 4_096,
                                                      streamCreditFrames: 8, linkID: 1, server: "test")))
    welcome.withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
    s.output.removeAll()
    return s
}

/// The frames a session queued, parsed.
func sent(_ s: PeerLink) -> [Frame] {
    var out: [Frame] = []
    let d = FrameDecoder(maxPayload: 1 << 20)
    try? d.feed(s.output.readable) { h, p throws(WireError) in
        out.append(try Frame.parse(h, p))
        return true
    }
    s.output.removeAll()
    return out
}

@Suite("Peer library: messages of any size")
struct PeerLinkTests {
    @Test("a message over the frame size goes out as several DATA flagged MORE, END and BINARY where they belong")
    func splitsByFrameSize() {
        let s = readySession()
        let id = s.open(Open(target: .instance, world: "w"))
        _ = sent(s)
        let message = [UInt8](repeating: 7, count: 2_500)
        #expect(message.withUnsafeBytes { s.send(stream: id, payload: $0, end: true, binary: true) })
        let frames = sent(s)
        let shapes = frames.compactMap { f -> (Int, Bool, FrameFlags)? in
            if case .data(_, let p, let end, let flags) = f { (p.count, end, flags) } else { nil }
        }
        #expect(shapes.map(\.0) == [1_024, 1_024, 452])
        #expect(shapes.map(\.1) == [false, false, true])
        #expect(shapes.map(\.2) == [[.more, .binary], [.more, .binary], [.binary]])
    }

    @Test("a message over the window goes out in parts as credit arrives; whole-message send refuses it")
    func partialUnderCredit() {
        let c = Collector()
        let s = readySession(c)
        let id = s.open(Open(target: .instance, world: "w"))
        _ = sent(s)
        let message = [UInt8](repeating: 1, count: 10_000)
        #expect(!message.withUnsafeBytes { s.send(stream: id, payload: $0) }, "more than the 4 KiB window: not whole")
        var offset = 0
        var rounds = 0
        while offset < message.count && rounds < 10 {
            let took = message.withUnsafeBytes { s.sendPartial(stream: id, payload: UnsafeRawBufferPointer(rebasing: $0[offset...])) }
            offset += took ?? 0
            // The other side grants what was used.
            FrameWriter.encode(.credit(stream: id, bytes: 4_096, frames: 8)).withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
            rounds += 1
        }
        #expect(offset == message.count)
        let frames = sent(s).compactMap { f -> (Int, FrameFlags)? in if case .data(_, let p, _, let fl) = f { (p.count, fl) } else { nil } }
        #expect(frames.map(\.0).reduce(0, +) == message.count)
        #expect(frames.dropLast().allSatisfy { $0.1.contains(.more) } && !frames.last!.1.contains(.more))
        #expect(frames.allSatisfy { $0.0 <= 1_024 })
    }

    @Test("continues: a part of a message still arriving keeps MORE on its last frame")
    func continues() {
        let s = readySession()
        let id = s.open(Open(target: .instance, world: "w"))
        _ = sent(s)
        _ = [UInt8](repeating: 2, count: 100).withUnsafeBytes { s.sendPartial(stream: id, payload: $0, continues: true) }
        _ = [UInt8](repeating: 3, count: 0).withUnsafeBytes { s.sendPartial(stream: id, payload: $0) }
        let flags = sent(s).compactMap { f -> FrameFlags? in if case .data(_, _, _, let fl) = f { fl } else { nil } }
        #expect(flags == [[.more], []])
    }

    @Test("OPEN's window is what the acceptor may send; the receive window follows DATA and grants")
    func windows() {
        let c = Collector()
        let s = readySession(c)
        let open = FrameWriter.encode(.open(stream: 2, Open(target: .instance, world: "w", window: Window(bytes: 100, frames: 1))))
        open.withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
        #expect(c.accepted.first?.1.window == Window(bytes: 100, frames: 1))
        #expect(!bytesOf(101).withUnsafeBytes { s.send(stream: 2, payload: $0) })
        #expect(bytesOf(100).withUnsafeBytes { s.send(stream: 2, payload: $0) })
        #expect(!bytesOf(1).withUnsafeBytes { s.send(stream: 2, payload: $0) }, "the one frame is used")
        // As opener: the window given in OPEN is what this side expects to receive (credit granted by hand here).
        s.autoCredit = false
        let id = s.open(Open(target: .instance, world: "w", window: Window(bytes: 300, frames: 3)))
        #expect(s.receiveWindow(id)! == (300, 3))
        FrameWriter.encode(.data(stream: id, payload: bytesOf(120), end: false)).withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
        #expect(s.receiveWindow(id)! == (180, 2))
        s.grant(stream: id, bytes: 120, frames: 1)
        #expect(s.receiveWindow(id)! == (300, 3))
    }

    @Test("MessageAssembler: parts flagged MORE come back whole; a single frame is handed on as is; the limit holds")
    func assembler() {
        let a = MessageAssembler(maxMessageBytes: 1_000)
        var got: [([UInt8], FrameFlags)] = []
        func feed(_ stream: UInt32, _ bytes: [UInt8], _ flags: FrameFlags) -> Bool {
            bytes.withUnsafeBytes { a.feed(stream: stream, payload: $0, flags: flags) { got.append((Array($0), $1)) } }
        }
        #expect(feed(1, [1, 2], [.more, .binary]))
        #expect(feed(3, [9], []))  // another stream in between
        #expect(feed(1, [3], [.binary, .endStream]))
        #expect(got.map(\.0) == [[9], [1, 2, 3]])
        #expect(got.last!.1 == [.binary, .endStream])
        #expect(feed(5, [UInt8](repeating: 0, count: 600), [.more]))
        #expect(!feed(5, [UInt8](repeating: 0, count: 600), []), "1,200 bytes are over the 1,000-byte limit")
        #expect(a.bufferedBytes == 0)
    }

    @Test("MORE with END_STREAM from the broker is a protocol error")
    func moreWithEnd() {
        let s = readySession()
        let id = s.open(Open(target: .instance, world: "w"))
        var bad = FrameWriter.encode(.data(stream: id, payload: [1], end: true))
        bad[5] = FrameFlags([.endStream, .more]).rawValue
        bad.withUnsafeBytes { s.receive($0, nowMilliseconds: 0) }
        #expect(s.isClosed)
    }
}

func bytesOf(_ n: Int) -> [UInt8] { [UInt8](repeating: 0x5A, count: n) }
