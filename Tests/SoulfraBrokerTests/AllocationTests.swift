import CAllocCounter
import Testing
@testable import SoulfraBroker
import SoulfraWire

/// The broker's data path allocates nothing per message: once queues have grown to their working size, DATA,
/// CREDIT and PUBLISH move through `receive`, `drainReady`, `takeOutput` and `sent` without a heap
/// allocation. Counted on this thread only (the broker is sans-IO and runs here).
@Suite("Broker hot path allocations")
struct AllocationTests {
    /// Moves every queued byte out of the broker, as the loop does after a batch of completions.
    func flush(_ h: Harness) {
        h.broker.drainReady { id in
            let out = h.broker.takeOutput(link: id)
            if out.count > 0 { h.broker.sent(link: id, count: out.count, now: h.now) }
        }
    }

    func feed(_ h: Harness, _ link: UInt32, _ bytes: [UInt8]) {
        bytes.withUnsafeBytes { h.broker.receive(link: link, bytes: $0, now: h.now) }
    }

    @Test("a stream's DATA and the CREDIT that answers it: no allocation per frame")
    func pipe() {
        let h = Harness()
        let inst = h.connect(.instance, world: "playground")
        let gw = h.connect(.gateway)
        gw.send(.open(stream: 1, Open(target: .instance, keyID: 1, world: "playground")))
        let s = inst.opened()[0].0
        // A window's worth each round (64 frames of 256 B), both directions, and the credit that reopens it.
        let payload = [UInt8](repeating: 7, count: 256)
        var request: [UInt8] = []
        var reply: [UInt8] = []
        for _ in 0..<64 {
            request += FrameWriter.encode(.data(stream: 1, payload: payload, end: false))
            reply += FrameWriter.encode(.data(stream: s, payload: payload, end: false))
        }
        let instCredit = FrameWriter.encode(.credit(stream: s, bytes: 64 * 256, frames: 64))
        let gwCredit = FrameWriter.encode(.credit(stream: 1, bytes: 64 * 256, frames: 64))
        func round() {
            feed(h, gw.id, request)
            flush(h)
            feed(h, inst.id, instCredit)
            feed(h, inst.id, reply)
            flush(h)
            feed(h, gw.id, gwCredit)
            flush(h)
            h.now += 10_000
        }
        for _ in 0..<4 { round() }  // queues and tables reach their working size
        alloc_counter_start()
        for _ in 0..<200 { round() }
        let allocations = alloc_counter_stop()
        #expect(allocations == 0, "\(allocations) allocations for 25,600 DATA frames and 400 CREDIT")
        let snap = h.broker.snapshot()
        #expect(snap.streamsOpen == 1, "the stream is still open: every frame was inside its window")
    }

    @Test("PUBLISH fanned out to eight subscribers: no allocation per delivery")
    func rooms() {
        let h = Harness()
        let pub = h.connect(.instance, world: "arena")
        let viewers = (0..<8).map { _ in h.connect(.gateway) }
        for v in viewers { v.send(.subscribe(stream: 1, Subscribe(world: "arena", room: "final"))) }
        var batch: [UInt8] = []
        for i in 0..<32 { batch += FrameWriter.encode(.publish(world: "arena", room: "final", payload: [UInt8](repeating: UInt8(i), count: 256))) }
        func round() {
            feed(h, pub.id, batch)
            flush(h)
            h.now += 10_000
        }
        for _ in 0..<4 { round() }
        let before = h.broker.snapshot().roomFramesDelivered
        alloc_counter_start()
        for _ in 0..<200 { round() }
        let allocations = alloc_counter_stop()
        #expect(h.broker.snapshot().roomFramesDelivered - before == 200 * 32 * 8)
        #expect(allocations == 0, "\(allocations) allocations for 51,200 deliveries")
    }
}
