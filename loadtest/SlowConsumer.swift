import Foundation
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet
import SoulfraWire

struct SlowOptions: Sendable {
    var streams = 64
    var size = 16 << 10
    var readSeconds = 1.0
    var stallSeconds = 2.5
}

/// A consumer (instance) reads normally, then stops reading entirely. The producer (gateway) keeps trying at
/// full speed. Shows that the producer is paused (credit and the broker's link watermark stop it) and that the
/// broker's memory stays bounded while the consumer is stalled.
func runSlowConsumer(_ t: Target, _ o: SlowOptions) throws -> Report {
    let server = t.serverPID.map { ProcessStats(pid: $0) }
    let consumer = t.connection(.instance, name: "slow-consumer")
    let sink = Sink(sampleEvery: 1 << 30, shared: Shared())
    consumer.link.delegate = sink
    try consumer.handshake()
    let producer = t.connection(.gateway, name: "eager-producer")
    try producer.handshake()
    var streams: [UInt32] = []
    for _ in 0..<o.streams {
        streams.append(producer.link.open(Open(target: .instance, keyID: t.keyID, world: t.world, detail: "slow")))
    }
    let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: o.size, alignment: 8)
    payload.initializeMemory(as: UInt8.self, repeating: 0x63)
    defer { payload.deallocate() }
    let rssBefore = server?.rssKiB ?? 0
    var sentBytes: UInt64 = 0
    var samples: [(Double, UInt64, Int)] = []  // time, producer bytes sent, broker RSS
    var maxRSS = rssBefore
    var maxRSSAfterStall = 0
    let start = monotonicNanoseconds()
    let stallAt = start + UInt64(o.readSeconds * 1e9)
    let end = stallAt + UInt64(o.stallSeconds * 1e9)
    var nextSample = start
    var sentAtStall: UInt64 = 0
    var dataAtStall: UInt64 = 0
    var rssAtStall = 0
    var lastSendProgress = start
    while true {
        let now = monotonicNanoseconds()
        if now >= end { break }
        if now >= stallAt && !consumer.readingPaused {
            consumer.readingPaused = true
            sentAtStall = producer.bytesWritten
            dataAtStall = sentBytes
            rssAtStall = server?.rssKiB ?? 0
        }
        var progressed = false
        for s in streams {
            var burst = 0
            while burst < 8 && producer.link.send(stream: s, payload: UnsafeRawBufferPointer(payload)) {
                sentBytes += UInt64(o.size)
                burst += 1
            }
            if burst > 0 { progressed = true }
            if producer.link.output.count > 1 << 20 { break }
        }
        _ = producer.pump(timeoutMilliseconds: 0)
        // Progress means DATA accepted within credit (PONGs keep flowing while paused and do not count).
        if progressed { lastSendProgress = now }
        if !consumer.readingPaused { _ = consumer.pump(timeoutMilliseconds: progressed ? 0 : 1) } else { usleep(500) }
        if now >= nextSample {
            nextSample = now + 250_000_000
            let rss = server?.rssKiB ?? 0
            maxRSS = max(maxRSS, rss)
            if consumer.readingPaused { maxRSSAfterStall = max(maxRSSAfterStall, rss) }
            samples.append((Double(now - start) / 1e9, producer.bytesWritten, rss))
        }
        if producer.link.isClosed || consumer.link.isClosed { break }
    }
    let stalledFor = Double(monotonicNanoseconds() - lastSendProgress) / 1e9
    let afterStall = producer.bytesWritten - sentAtStall
    print("time_s  producer_bytes_written  broker_rss_kib")
    for (t, b, r) in samples { print(String(format: "%6.2f  %22llu  %14d", t, b, r)) }
    consumer.close()
    producer.close()
    var report = Report(
        scenario: "slow-consumer", target: "soulfra", seconds: Double(end - start) / 1e9, frames: sink.frames,
        bytes: sink.bytes, latency: Latency(), latencyKind: "n/a", serverRSSKiB: maxRSS, serverCPUMicros: nil)
    report.extra = [
        ("streams", "\(o.streams)"),
        ("producer_bytes_after_stall", "\(afterStall)"),
        ("data_bytes_accepted_after_stall", "\(sentBytes - dataAtStall)"),
        ("credit_bound_bytes", "\(o.streams * 256 * 1024)"),
        ("producer_stalled_s", String(format: "%.2f", stalledFor)),
        ("broker_rss_growth_kib", "\(maxRSS - rssBefore)"),
        ("broker_rss_growth_during_stall_kib", "\(max(0, maxRSSAfterStall - rssAtStall))"),
        ("producer_paused", stalledFor >= o.stallSeconds * 0.5 ? "yes" : "no"),
    ]
    return report
}
