import Foundation
import Synchronization
import SoulfraPeer
import SoulfraPeerLink
import SoulfraNet

/// The same pipe pattern through nats-server, driven by the same kind of client code as the Soulfra pipe, so
/// a difference in client speed does not pass for a broker difference. NATS has no flow control, so the
/// producer keeps at most the same window in flight as a Soulfra stream's credit (frames and bytes).
struct NATSConnection {
    let fd: Int32
    var out: [UInt8] = []
    var inbuf: [UInt8] = []
    var inStart = 0

    init(host: String, port: UInt16) throws {
        var sa = sockaddr_in()
        sa.sin_family = sa_family_t(AF_INET)
        sa.sin_port = port.bigEndian
        guard inet_pton(AF_INET, host, &sa.sin_addr) == 1 else { throw LoadtestError("nats: bad host \(host)") }
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        let rc = withUnsafePointer(to: &sa) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard rc == 0 else { throw LoadtestError("nats: connect \(host):\(port): \(String(cString: strerror(errno)))") }
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
        out.reserveCapacity(1 << 20)
        inbuf.reserveCapacity(1 << 20)
        append("CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n")
    }

    mutating func append(_ s: String) { out.append(contentsOf: s.utf8) }

    /// Queues `PUB` (its header line prepared by the caller) with the payload stamped with the send time.
    mutating func publish(_ header: [UInt8], _ payload: inout [UInt8]) {
        let t = monotonicNanoseconds()
        payload.withUnsafeMutableBytes { stamp($0, t) }
        out.append(contentsOf: header)
        out.append(contentsOf: payload)
        out.append(13)
        out.append(10)
    }

    /// Writes what the socket takes.
    mutating func flush() {
        var off = 0
        while off < out.count {
            let n = out.withUnsafeBytes { send(fd, $0.baseAddress! + off, $0.count - off, Int32(MSG_NOSIGNAL)) }
            if n > 0 { off += n; continue }
            if errno == EAGAIN || errno == EINTR {
                var p = pollfd(fd: fd, events: Int16(POLLOUT), revents: 0)
                poll(&p, 1, 1)
                continue
            }
            break
        }
        out.removeAll(keepingCapacity: true)
    }

    /// Reads what is available (waits up to `timeout` ms); returns false on EOF.
    mutating func fill(timeout: Int32) -> Bool {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        if poll(&p, 1, timeout) <= 0 { return true }
        if inStart > 0 && inStart == inbuf.count { inbuf.removeAll(keepingCapacity: true); inStart = 0 }
        if inStart > 1 << 19 { inbuf.removeFirst(inStart); inStart = 0 }
        let old = inbuf.count
        inbuf.append(contentsOf: repeatElement(0, count: 256 << 10))
        let n = inbuf.withUnsafeMutableBytes { recv(fd, $0.baseAddress! + old, 256 << 10, 0) }
        inbuf.removeLast(256 << 10 - max(0, n))
        return n != 0
    }

    /// Parses complete protocol lines and MSG payloads; calls `onMsg` with each payload.
    mutating func parse(_ onMsg: (UnsafeRawBufferPointer) -> Void) {
        while true {
            guard let nl = findCRLF(from: inStart) else { return }
            let lineLen = nl - inStart
            if lineLen >= 3 && inbuf[inStart] == UInt8(ascii: "M") {
                // MSG <subject> <sid> [reply] <#bytes>
                var i = nl - 1
                var size = 0, mul = 1
                while inbuf[i] != UInt8(ascii: " ") { size += Int(inbuf[i] - 48) * mul; mul *= 10; i -= 1 }
                let start = nl + 2
                guard inbuf.count >= start + size + 2 else { return }
                inbuf.withUnsafeBytes { onMsg(UnsafeRawBufferPointer(rebasing: $0[start..<start + size])) }
                inStart = start + size + 2
            } else {
                if lineLen >= 4 && inbuf[inStart] == UInt8(ascii: "P") && inbuf[inStart + 1] == UInt8(ascii: "I") {
                    append("PONG\r\n")
                }
                inStart = nl + 2
            }
        }
    }

    func findCRLF(from: Int) -> Int? {
        var i = from
        while i + 1 < inbuf.count {
            if inbuf[i] == 13 && inbuf[i + 1] == 10 { return i }
            i += 1
        }
        return nil
    }
}

func runNATSPipe(host: String, port: UInt16, serverPID: Int32?, _ o: PipeOptions, windowFrames: Int, windowBytes: Int) throws -> Report {
    let shared = Shared()
    let sampleEvery: UInt64 = o.rate > 0 ? 1 : 64
    let server = serverPID.map { ProcessStats(pid: $0) }
    let cpuStart = Mutex<UInt64?>(nil)
    let startNanos = Atomic<UInt64>(0)
    let size = max(8, o.size)
    let results = onThreads([
        { @Sendable () -> ConsumerResult in
            var c: NATSConnection
            do { c = try NATSConnection(host: host, port: port) } catch {
                shared.stop.store(true, ordering: .relaxed)
                shared.ready.wrappingAdd(1, ordering: .releasing)
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "\(error)")
            }
            c.append("SUB bench.pipe 1\r\nPING\r\n")
            c.flush()
            // Wait for PONG so the subscription is in place.
            var ok = false
            for _ in 0..<2000 where !ok {
                _ = c.fill(timeout: 1)
                if let s = String(bytes: c.inbuf, encoding: .utf8), s.contains("PONG") { ok = true }
            }
            c.inbuf.removeAll(keepingCapacity: true)
            shared.ready.wrappingAdd(1, ordering: .releasing)
            var latency = Latency()
            var frames: UInt64 = 0
            var lastProgress = monotonicNanoseconds()
            while true {
                guard c.fill(timeout: 1) else { break }
                let before = frames
                c.parse { payload in
                    frames &+= 1
                    if frames % sampleEvery == 0 { latency.record(monotonicNanoseconds() &- readStamp(payload)) }
                }
                if !c.out.isEmpty { c.flush() }
                let now = monotonicNanoseconds()
                if frames != before {
                    lastProgress = now
                    shared.received.store(frames, ordering: .relaxed)
                    shared.lastReceiveNanos.store(now, ordering: .relaxed)
                }
                if shared.stop.load(ordering: .relaxed) {
                    if frames >= shared.sent.load(ordering: .relaxed) || now &- lastProgress > 2_000_000_000 { break }
                }
            }
            shared.ready.wrappingAdd(1, ordering: .releasing)
            close(c.fd)
            return ConsumerResult(frames: frames, bytes: 0, latency: latency, dropped: 0)
        },
        { @Sendable () -> ConsumerResult in
            while shared.ready.load(ordering: .acquiring) < 1 { usleep(1_000) }
            if shared.stop.load(ordering: .relaxed) { return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0) }
            var c: NATSConnection
            do { c = try NATSConnection(host: host, port: port) } catch {
                shared.stop.store(true, ordering: .relaxed)
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "\(error)")
            }
            let header = Array("PUB bench.pipe \(size)\r\n".utf8)
            var payload = [UInt8](repeating: 0x5A, count: size)
            let window = min(windowFrames, max(1, windowBytes / size))
            cpuStart.withLock { $0 = server?.cpuMicroseconds }
            let start = monotonicNanoseconds()
            startNanos.store(start, ordering: .relaxed)
            let end = start + UInt64(o.seconds * 1e9)
            var pacer = Pacer(rate: o.rate, start: start)
            var sent: UInt64 = 0
            var now = start
            while now < end {
                var due = pacer.due(now: now)
                let inFlight = Int(sent &- shared.received.load(ordering: .relaxed))
                var room = max(0, window - inFlight)
                var progressed = false
                while due > 0 && room > 0 {
                    c.publish(header, &payload)
                    sent += 1
                    due -= 1
                    room -= 1
                    progressed = true
                    if c.out.count >= 64 << 10 { c.flush() }
                }
                c.flush()
                pacer.sent = sent
                shared.sent.store(sent, ordering: .relaxed)
                // Drain server PINGs; wait a little when blocked on the window or the rate.
                _ = c.fill(timeout: progressed ? 0 : 1)
                c.parse { _ in }
                now = monotonicNanoseconds()
            }
            shared.sent.store(sent, ordering: .relaxed)
            shared.stop.store(true, ordering: .relaxed)
            while shared.ready.load(ordering: .acquiring) < 2 && monotonicNanoseconds() < end + 5_000_000_000 { usleep(1_000) }
            close(c.fd)
            return ConsumerResult(frames: sent, bytes: 0, latency: Latency(), dropped: 0)
        },
    ])
    return try pipeReport("nats", o, shared: shared, start: startNanos.load(ordering: .relaxed), results: results,
                          server: server, cpuStart: cpuStart.withLock { $0 })
}

/// Fan-out through nats-server: 1 publisher → N subscribers on one subject, same pacing and latency sampling
/// as the Soulfra rooms scenario.
func runNATSRooms(host: String, port: UInt16, serverPID: Int32?, _ o: RoomsOptions) throws -> Report {
    let shared = Shared()
    let server = serverPID.map { ProcessStats(pid: $0) }
    let cpuStart = Mutex<UInt64?>(nil)
    let results = onThreads([
        { @Sendable () -> ConsumerResult in
            var subs: [NATSConnection] = []
            do {
                for i in 0..<o.subscribers {
                    var c = try NATSConnection(host: host, port: port)
                    c.append("SUB bench.room \(i + 1)\r\nPING\r\n")
                    c.flush()
                    subs.append(c)
                }
            } catch {
                shared.stop.store(true, ordering: .relaxed)
                shared.ready.wrappingAdd(1, ordering: .releasing)
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "nats viewers: \(error)")
            }
            for i in subs.indices { for _ in 0..<200 { _ = subs[i].fill(timeout: 1); if String(decoding: subs[i].inbuf, as: UTF8.self).contains("PONG") { break } }
                subs[i].inbuf.removeAll(keepingCapacity: true); subs[i].inStart = 0 }
            shared.ready.wrappingAdd(1, ordering: .releasing)
            var latency = Latency()
            var frames: UInt64 = 0
            var fds = subs.map { pollfd(fd: $0.fd, events: Int16(POLLIN), revents: 0) }
            var lastProgress = monotonicNanoseconds()
            while true {
                let n = fds.withUnsafeMutableBufferPointer { poll($0.baseAddress, nfds_t($0.count), 1) }
                let before = frames
                if n > 0 {
                    for i in fds.indices where fds[i].revents != 0 {
                        _ = subs[i].fill(timeout: 0)
                        subs[i].parse { payload in
                            frames &+= 1
                            if frames % 16 == 0 { latency.record(monotonicNanoseconds() &- readStamp(payload)) }
                        }
                        if !subs[i].out.isEmpty { subs[i].flush() }
                    }
                }
                let now = monotonicNanoseconds()
                if frames != before { lastProgress = now; shared.received.store(frames, ordering: .relaxed) }
                if shared.stop.load(ordering: .relaxed) {
                    let expected = shared.sent.load(ordering: .relaxed) * UInt64(o.subscribers)
                    if frames >= expected || now &- lastProgress > 1_000_000_000 { break }
                }
            }
            for c in subs { close(c.fd) }
            return ConsumerResult(frames: 0, bytes: 0, latency: latency, dropped: 0)
        },
        { @Sendable () -> ConsumerResult in
            while shared.ready.load(ordering: .acquiring) < 1 { usleep(1_000) }
            if shared.stop.load(ordering: .relaxed) { return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0) }
            var c: NATSConnection
            do { c = try NATSConnection(host: host, port: port) } catch {
                return ConsumerResult(frames: 0, bytes: 0, latency: Latency(), dropped: 0, error: "\(error)")
            }
            let size = max(8, o.size)
            let header = Array("PUB bench.room \(size)\r\n".utf8)
            var payload = [UInt8](repeating: 0x62, count: size)
            cpuStart.withLock { $0 = server?.cpuMicroseconds }
            let sent = publishPaced(rate: o.rate, seconds: o.seconds, shared: shared, publish: { c.publish(header, &payload) }, service: {
                c.flush()
                _ = c.fill(timeout: o.rate > 0 ? 1 : 0)
                c.parse { _ in }
            })
            close(c.fd)
            return ConsumerResult(frames: sent, bytes: 0, latency: Latency(), dropped: 0)
        },
    ])
    if let e = results.compactMap(\.error).first { throw LoadtestError(e) }
    let cpuEnd = server?.cpuMicroseconds
    let delivered = shared.received.load(ordering: .relaxed)
    var report = Report(
        scenario: "rooms", target: "nats", seconds: o.seconds, frames: delivered, bytes: delivered * UInt64(o.size),
        latency: results[0].latency, latencyKind: o.rate > 0 ? "rate_\(o.rate)x\(o.subscribers)" : "saturation",
        serverRSSKiB: server?.rssKiB, serverCPUMicros: cpuStart.withLock { s in cpuEnd.flatMap { e in s.map { e - $0 } } })
    report.extra = [("subscribers", "\(o.subscribers)"), ("published", "\(results[1].frames)"),
                    ("dropped", "0"), ("viewers_closed", "0")]
    return report
}
