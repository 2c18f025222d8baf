import Testing
import SoulfraWire

@Suite("Send queues")
struct SendQueueTests {
    func append(_ q: SendQueue, _ s: String) { Array(s.utf8).withUnsafeBytes { q.out.append($0) } }
    func text(_ b: UnsafeRawBufferPointer?) -> String? { b.map { String(decoding: $0, as: UTF8.self) } }

    @Test("one send at a time; a short send's rest goes first, before anything appended meanwhile")
    func order() {
        let q = SendQueue()
        #expect(q.take() == nil, "nothing to send")
        append(q, "hello ")
        let first = text(q.take())
        #expect(first == "hello ")
        append(q, "world")  // appended while the send is in flight: never moves the bytes being sent
        #expect(q.take() == nil, "a send is in flight")
        #expect(q.count == 11)
        q.sent(2)  // short
        let rest = text(q.take())
        #expect(rest == "llo ", "the rest of the short send, alone, first")
        q.sent(4)
        let next = text(q.take())
        #expect(next == "world")
        q.sent(5)
        #expect(q.isEmpty && !q.inFlight)
    }

    @Test("a failed send keeps its bytes; an empty hand-off reported as sent changes nothing; idle queues give memory back")
    func failureAndIdle() {
        let q = SendQueue()
        append(q, "abc")
        _ = q.take()
        q.sent(0)
        let again = text(q.take())
        #expect(again == "abc")
        q.sent(3)
        q.sent(0)  // nothing in flight: ignored
        #expect(q.out.capacity + q.sending.capacity > 0)
        q.shrinkIfIdle()
        #expect(q.out.capacity == 0 && q.sending.capacity == 0)
    }
}
