import ArgumentParser
import Foundation
import Synchronization
import SoulfraLoop
import SoulfraNet
import SoulfraPeer
import SoulfraPeerLink
import SoulfraWire
import SoulfraVault
import SoulfraVaultStore

/// Durable acknowledged appends, `concurrency` producers each with one append outstanding (an acknowledged one
/// is replaced at once): through a daemon's vault (`--broker`: one instance link, one vault stream per
/// producer, acknowledged once written and synced), or to a vault segment on this machine's disk directly
/// (what group commit makes of the disk's fsync latency, without the broker).
struct VaultBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault",
        abstract: "Durable appends/s with N producers: through a daemon's vault (--broker), or to a segment directly.")
    @Option(help: "Directory for the segment, direct mode (a file in it is created and removed).") var dir = NSTemporaryDirectory()
    @Option(help: "Event payload bytes.") var size = 256
    @Option(help: "Producers, one append outstanding each.") var concurrency = 16
    @Option(help: "Seconds to run.") var seconds = 4.0
    @Option(name: .customLong("prepare-ahead"), help: "Direct mode: bytes of zeros kept written ahead of the records (0: none; the vault's default is 1 MiB).")
    var prepareAhead = 1 << 20
    @Option(help: "A daemon's broker (tcp:host:port, host:port or unix:/path): append through its vault.") var broker: String?
    @Option(help: "World the producing instance belongs to (broker mode).") var world = "bench"
    @Option(name: .customLong("instance-token")) var instanceToken = "dev-instance-token-bench"
    @Option(name: .customLong("server-pid"), help: "PID of the daemon, for server CPU per append (/proc).") var serverPID: Int32?

    func run() throws {
        if let broker {
            try throughBroker(try parseAddress(broker)).print()
            return
        }
        let path = "\(dir)/soulfra-vault-bench-\(getpid()).log"
        unlink(path)
        defer { unlink(path) }
        let result = Mutex<(acked: UInt64, latency: Latency, batches: UInt64, largest: Int, commitNanos: UInt64, failed: UInt64)?>(nil)
        let ready = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let o = (size: size, concurrency: concurrency, seconds: seconds, prepareAhead: prepareAhead)
        let thread = Thread {
            do {
                let loop = try EventLoop()
                let driver = try VaultBenchDriver(loop: loop, path: path, size: o.size, concurrency: o.concurrency, seconds: o.seconds,
                                              prepareAhead: o.prepareAhead)
                loop.delegate = driver
                loop.run()
                result.withLock { $0 = driver.outcome }
            } catch {
                failure.withLock { $0 = "\(error)" }
            }
            ready.signal()
        }
        thread.start()
        ready.wait()
        if let f = failure.withLock({ $0 }) { throw LoadtestError("vault: \(f)") }
        guard let r = result.withLock({ $0 }) else { throw LoadtestError("vault: no result") }
        var report = Report(scenario: "vault-appends", target: "soulfra", seconds: seconds, frames: r.acked,
                            bytes: r.acked * UInt64(size), latency: r.latency, latencyKind: "ack (append → durable)")
        report.extra = [
            ("concurrency", "\(concurrency)"), ("fsyncs", "\(r.batches)"),
            ("appends per fsync", String(format: "%.1f", r.batches > 0 ? Double(r.acked) / Double(r.batches) : 0)),
            ("largest batch", "\(r.largest)"), ("failed", "\(r.failed)"), ("prepare ahead", "\(prepareAhead)"),
            ("mean commit us", String(format: "%.1f", r.batches > 0 ? Double(r.commitNanos) / Double(r.batches) / 1_000 : 0)),
        ]
        report.print()
    }
}

extension VaultBench {
    /// One instance link, `concurrency` append streams (one session each), one append outstanding per stream.
    func throughBroker(_ address: PeerAddress) throws -> Report {
        let conn = PeerConnection(address: address, identity: PeerIdentity(kind: .instance, world: world, instance: "vault-bench",
                                                                             token: instanceToken))
        let producers = VaultProducers(size: max(8, size))
        conn.link.delegate = producers
        try conn.handshake()
        let streams = (0..<concurrency).map { i in
            conn.link.open(Open(target: .vault, world: world, session: "bench-\(getpid())-\(i)", detail: "append"))
        }
        let stats = serverPID.map(ProcessStats.init(pid:))
        let cpu0 = stats?.cpuMicroseconds
        let start = monotonicNanoseconds()
        let end = start + UInt64(seconds * 1e9)
        for s in streams { producers.send(conn.link, s, now: start) }
        while monotonicNanoseconds() < end {
            guard conn.pump(timeoutMilliseconds: 1) else { throw LoadtestError("vault: the link closed: \(conn.link.state)") }
            let now = monotonicNanoseconds()
            for s in producers.takeReady() where now < end { producers.send(conn.link, s, now: now) }
        }
        // The appends in flight are let finish (bounded), so the server's CPU covers what was counted.
        let drain = monotonicNanoseconds() + 2_000_000_000
        while producers.outstanding > 0 && monotonicNanoseconds() < drain { _ = conn.pump(timeoutMilliseconds: 1) }
        let elapsed = Double(monotonicNanoseconds() - start) / 1e9
        let cpu = cpu0.flatMap { c0 in stats?.cpuMicroseconds.map { $0 - c0 } }
        conn.close()
        guard producers.failures == 0 || producers.acked > 0 else { throw LoadtestError("vault: every append failed: \(producers.lastFailure)") }
        var report = Report(scenario: "vault-appends", target: "soulfra", seconds: elapsed, frames: producers.acked,
                            bytes: producers.acked * UInt64(size), latency: producers.latency, latencyKind: "ack (append → durable ACK)")
        report.serverCPUMicros = cpu
        report.extra = [("concurrency", "\(concurrency)"), ("failed", "\(producers.failures)"), ("via", "broker")]
        return report
    }
}

/// The producers' side of the vault streams: one append outstanding per stream, its send time kept.
final class VaultProducers: PeerLinkDelegate {
    let payload: UnsafeMutableRawBufferPointer
    var sentAt: [UInt32: UInt64] = [:]
    var ready: [UInt32] = []
    var latency = Latency()
    var acked: UInt64 = 0
    var failures: UInt64 = 0
    var lastFailure = ""
    var outstanding: Int { sentAt.count }

    init(size: Int) {
        payload = .allocate(byteCount: size, alignment: 8)
        payload.initializeMemory(as: UInt8.self, repeating: 0x76)
        payload[0] = 1  // the event's kind
    }

    deinit { payload.deallocate() }

    func send(_ link: PeerLink, _ s: UInt32, now: UInt64) {
        guard link.send(stream: s, payload: UnsafeRawBufferPointer(payload)) else { return }
        sentAt[s] = now
    }

    func takeReady() -> [UInt32] {
        defer { ready.removeAll(keepingCapacity: true) }
        return ready
    }

    func linkData(_ link: PeerLink, stream: UInt32, payload: UnsafeRawBufferPointer, flags: FrameFlags) {
        guard let t = sentAt.removeValue(forKey: stream) else { return }
        switch VaultMessage.decode(payload) {
        case .ack(let a)?:
            acked &+= UInt64(a.count)
            latency.record(monotonicNanoseconds() &- t)
        case .fail(let n, let errno, _, let reason)?:
            failures &+= UInt64(n)
            lastFailure = "errno \(errno): \(reason)"
        default:
            failures &+= 1
        }
        ready.append(stream)
    }
}

/// Runs on the loop's thread: keeps `concurrency` appends outstanding until the time is up.
final class VaultBenchDriver: LoopDelegate {
    let loop: EventLoop
    let segment: VaultSegment
    let payload: [UInt8]
    let concurrency: Int
    let end: UInt64
    var started: [UInt64: UInt64] = [:]
    var nextID: UInt64 = 0
    var latency = Latency()
    var acked: UInt64 = 0
    var failed: UInt64 = 0
    var commitNanos: UInt64 = 0
    var stopping = false

    init(loop: EventLoop, path: String, size: Int, concurrency: Int, seconds: Double, prepareAhead: Int) throws {
        self.loop = loop
        self.segment = try VaultSegment(path: path, loop: loop, prepareAhead: prepareAhead, capacity: 1 << 30)
        self.payload = [UInt8](repeating: 0x76, count: size)
        self.concurrency = concurrency
        self.end = monotonicNanoseconds() + UInt64(seconds * 1e9)
        segment.onDurable = { [unowned self] list in
            let now = monotonicNanoseconds()
            for d in list {
                if let t = started.removeValue(forKey: d.id) { latency.record(now &- t) }
            }
            acked &+= UInt64(list.count)
            commitNanos &+= segment.policy.lastCommitNanoseconds
        }
        segment.onFailed = { [unowned self] ids, _ in
            failed &+= UInt64(ids.count)
            for id in ids { started.removeValue(forKey: id) }
        }
    }

    var outcome: (acked: UInt64, latency: Latency, batches: UInt64, largest: Int, commitNanos: UInt64, failed: UInt64) {
        (acked, latency, segment.policy.batches, segment.policy.largestBatch, commitNanos, failed)
    }

    func fill(now: UInt64) {
        guard !stopping else { return }
        if now >= end {
            stopping = true
            return
        }
        while started.count < concurrency {
            nextID += 1
            started[nextID] = now
            segment.append(GroupCommit.Append(id: nextID, session: Array("s\(nextID % 64)".utf8),
                                              unixMilliseconds: now / 1_000_000, payload: payload), now: now)
        }
    }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool { false }
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {}
    func loopSent(conn: UInt32, count: Int, now: UInt64) {}
    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) {}
    func loopTick(now: UInt64) { segment.tick(now: now) }
    func loopMailbox(now: UInt64) {}
    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {}
    func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        segment.fileDone(file: file, operation, result: result, now: now)
    }
    func loopFlush(now: UInt64) {
        if segment.policy.gatherUntil != nil { segment.tick(now: now) }
        fill(now: now)
        if stopping && started.isEmpty {
            segment.close()
            loop.stop()
        }
    }
}
