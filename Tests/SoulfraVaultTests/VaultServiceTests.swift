import Testing
import SoulfraPeerLink
import SoulfraVault
import SoulfraWire

/// A storage whose backlog the test sets: what the service's credit policy reacts to. Appends are kept; their
/// outcome is reported when the test says.
final class HeldStorage: VaultStorage {
    var waiting = 0
    var appends: [GroupCommit.Append] = []
    func append(world: String, _ append: GroupCommit.Append, now: UInt64) -> VaultFailure? {
        appends.append(append)
        return nil
    }
    func pendingBytes(world: String) -> Int { waiting }
    func read(world: String, session: [UInt8], _ request: VaultRequest, now: UInt64,
              done: @escaping (Result<VaultPage, VaultFailure>) -> Void) {
        done(.success(VaultPage(events: [], next: 0, more: false)))
    }
}

@Suite("The vault service (sans-IO)")
struct VaultServiceTests {
    /// A vault link past WELCOME (window 4 KiB / 64 frames per stream) with one append stream offered.
    func setUp(_ storage: HeldStorage, high: Int = 10_000) -> (VaultService, PeerLink, UInt32) {
        let service = VaultService(storage: storage, highWaterBytes: high, lowWaterBytes: high / 2)
        let link = PeerLink(identity: PeerIdentity(kind: .vault, token: "t"))
        service.add(link)
        link.start()
        var bytes = FrameWriter.encode(.welcome(Welcome(maxFrameBytes: 16_384, heartbeatMilliseconds: 1_000, streamCreditBytes: 4_096,
                                                        streamCreditFrames: 64, linkID: 1, server: "test")))
        bytes += FrameWriter.encode(.open(stream: 2, Open(target: .vault, world: "w", session: "s", detail: "append")))
        bytes.withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
        link.output.removeAll()
        return (service, link, 2)
    }

    func deliver(_ link: PeerLink, _ stream: UInt32, _ text: String) {
        FrameWriter.encode(.data(stream: stream, payload: [1] + Array(text.utf8), end: false))
            .withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
    }

    func credits(_ link: PeerLink) -> (bytes: UInt32, frames: UInt32) {
        var total: (UInt32, UInt32) = (0, 0)
        let d = FrameDecoder(maxPayload: 1 << 20)
        try? d.feed(link.output.readable) { h, p throws(WireError) in
            if case .credit(_, let b, let f, _) = try Frame.parse(h, p) { total = (total.0 + b, total.1 + f) }
            return true
        }
        link.output.removeAll()
        return total
    }

    @Test("credit comes back as events are taken, is withheld while the log is over its high watermark, and returns under the low one")
    func creditFollowsTheBacklog() {
        let storage = HeldStorage()
        let (service, link, s) = setUp(storage)
        deliver(link, s, "one")
        #expect(storage.appends.count == 1 && storage.appends[0].kind == 1 && storage.appends[0].payload == Array("one".utf8))
        #expect(credits(link) == (4, 1), "the event's bytes and frame come back at once")
        storage.waiting = 20_000  // the disk is slow: the log backs up past the high watermark
        deliver(link, s, "two")
        deliver(link, s, "three")
        #expect(storage.appends.count == 3, "what arrived is taken (it was within the window)")
        #expect(credits(link) == (0, 0), "no credit while the log is over the watermark")
        #expect(service.counters.creditStalls == 1)
        #expect(link.receiveWindow(s)?.bytes == Int64(4_096 - 4 - 6), "the producer's window shrinks: it slows down")
        storage.waiting = 7_000  // under high, over low: still withheld
        service.tick(now: 1)
        #expect(credits(link) == (0, 0))
        storage.waiting = 1_000
        service.tick(now: 2)
        #expect(credits(link) == (10, 2), "what was withheld comes back once the log drained")
    }

    @Test("ACKs answer a stream's appends in order; FAIL answers the next ones; answers for a closed stream are dropped")
    func answers() {
        let storage = HeldStorage()
        let (service, link, s) = setUp(storage)
        for t in ["a", "b", "c"] { deliver(link, s, t) }
        _ = credits(link)
        let id = storage.appends[0].id
        service.durable([GroupCommit.Durable(id: id, sequence: 10, sessionSequence: 1), GroupCommit.Durable(id: id, sequence: 11, sessionSequence: 2)])
        service.failed([id], errno: 28, retryAfterMilliseconds: 100, reason: "No space left on device")
        var messages: [VaultMessage] = []
        let d = FrameDecoder(maxPayload: 1 << 20)
        try? d.feed(link.output.readable) { h, p throws(WireError) in
            if case .data(_, let payload, _, _) = try Frame.parse(h, p) {
                if let m = payload.withUnsafeBytes({ VaultMessage.decode($0) }) { messages.append(m) }
            }
            return true
        }
        link.output.removeAll()
        #expect(messages == [.ack([.init(sequence: 10, sessionSequence: 1), .init(sequence: 11, sessionSequence: 2)]),
                             .fail(count: 1, errno: 28, retryAfterMilliseconds: 100, reason: "No space left on device")])
        FrameWriter.encode(.close(stream: s, code: .none, reason: "")).withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
        service.durable([GroupCommit.Durable(id: id, sequence: 12, sessionSequence: 3)])
        #expect(link.output.isEmpty, "an answer for a closed stream goes nowhere")
        #expect(service.openStreams == 0)
    }

    @Test("a stream for another loop's world is refused wrong_loop")
    func refusals() {
        let storage = HeldStorage()
        let (service, link, _) = setUp(storage)
        service.servesWorld = { $0 == "w" }
        FrameWriter.encode(.open(stream: 4, Open(target: .vault, world: "elsewhere", session: "s", detail: "append")))
            .withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
        let closes = { () -> [(UInt32, ErrorCode)] in
            var out: [(UInt32, ErrorCode)] = []
            let d = FrameDecoder(maxPayload: 1 << 20)
            try? d.feed(link.output.readable) { h, p throws(WireError) in
                if case .close(let st, let code, _) = try Frame.parse(h, p) { out.append((st, code)) }
                return true
            }
            link.output.removeAll()
            return out
        }
        #expect(closes().map(\.1) == [.wrongLoop])
        #expect(service.counters.streamsRefused == 1)
    }
}

@Suite("The vault service: malformed appends")
struct VaultServiceMalformedTests {
    @Test("an empty append ends its stream with protocol_error (and nothing else breaks)")
    func emptyAppend() {
        let storage = HeldStorage()
        let (service, link, s) = VaultServiceTests().setUp(storage)
        FrameWriter.encode(.data(stream: s, payload: [], end: false)).withUnsafeBytes { link.receive($0, nowMilliseconds: 0) }
        var code: ErrorCode?
        let d = FrameDecoder(maxPayload: 1 << 20)
        try? d.feed(link.output.readable) { h, p throws(WireError) in
            if case .close(_, let c, _) = try Frame.parse(h, p) { code = c }
            return true
        }
        #expect(code == .protocolError && storage.appends.isEmpty && service.openStreams == 0)
    }
}
