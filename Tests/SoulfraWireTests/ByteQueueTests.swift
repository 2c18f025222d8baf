import Testing
@testable import SoulfraWire

@Suite("Byte queue")
struct ByteQueueTests {
    func fill(_ q: ByteQueue, _ n: Int, from start: Int = 0) {
        let bytes = (0..<n).map { UInt8(truncatingIfNeeded: start + $0) }
        bytes.withUnsafeBytes { q.append($0) }
    }

    @Test("small queues start at 1 KiB, tight or not: an idle connection keeps no more")
    func smallStart() {
        for tight in [false, true] {
            let q = ByteQueue(tight: tight)
            fill(q, 90)  // an HTTP/2 server preface and SETTINGS
            #expect(q.capacity == 1024)
            fill(q, 1000)
            #expect(q.capacity == 2048)
        }
    }

    @Test("past 4 KiB a tight queue keeps at most a quarter more than waits; a default one doubles")
    func tightGrowth() {
        let tight = ByteQueue(tight: true)
        let loose = ByteQueue()
        var written = 0
        var growths = 0
        while written < 300_000 {
            // Small appends, as pongs or SSE events arrive: growth must not copy the queue every few KiB.
            let before = tight.capacity
            fill(tight, 131, from: written)
            fill(loose, 131, from: written)
            written += 131
            if tight.capacity != before { growths += 1 }
            #expect(tight.capacity >= tight.count)
            #expect(tight.capacity - tight.count <= max(4_096, tight.count / 4 + 4_096),
                    "tight capacity \(tight.capacity) for \(tight.count)")
        }
        #expect(growths <= 24, "\(growths) reallocations to reach 300 KB")
        #expect(loose.capacity == 524_288)
        // Everything comes back in order, whatever the growth.
        var expected = 0
        var mismatches = 0
        while !tight.isEmpty {
            let r = tight.readable
            for (i, b) in r.enumerated() where b != UInt8(truncatingIfNeeded: expected + i) { mismatches += 1 }
            expected += r.count
            tight.consume(r.count)
        }
        #expect(mismatches == 0)
        #expect(expected == written)
    }
}
