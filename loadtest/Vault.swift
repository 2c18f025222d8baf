import ArgumentParser
import Foundation
import Synchronization
import SoulfraLoop
import SoulfraNet
import SoulfraVault
import SoulfraVaultStore

/// Durable acknowledged appends to a vault segment on this machine's disk, through the io_uring loop, with
/// `concurrency` appends outstanding (each acknowledged one is replaced at once): what group commit makes of
/// the disk's fsync latency.
struct VaultBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "vault",
        abstract: "Durable appends/s to a vault segment through the loop, N outstanding (group commit at work).")
    @Option(help: "Directory for the segment (a file in it is created and removed).") var dir = NSTemporaryDirectory()
    @Option(help: "Event payload bytes.") var size = 256
    @Option(help: "Appends outstanding at once (producers).") var concurrency = 16
    @Option(help: "Seconds to run.") var seconds = 4.0

    func run() throws {
        let path = "\(dir)/soulfra-vault-bench-\(getpid()).log"
        unlink(path)
        defer { unlink(path) }
        let result = Mutex<(acked: UInt64, latency: Latency, batches: UInt64, largest: Int, commitNanos: UInt64, failed: UInt64)?>(nil)
        let ready = DispatchSemaphore(value: 0)
        let failure = Mutex<String?>(nil)
        let o = (size: size, concurrency: concurrency, seconds: seconds)
        let thread = Thread {
            do {
                let loop = try EventLoop()
                let driver = try VaultBenchDriver(loop: loop, path: path, size: o.size, concurrency: o.concurrency, seconds: o.seconds)
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
            ("largest batch", "\(r.largest)"), ("failed", "\(r.failed)"),
            ("mean commit us", String(format: "%.1f", r.batches > 0 ? Double(r.commitNanos) / Double(r.batches) / 1_000 : 0)),
        ]
        report.print()
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

    init(loop: EventLoop, path: String, size: Int, concurrency: Int, seconds: Double) throws {
        self.loop = loop
        self.segment = try VaultSegment(path: path, loop: loop)
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
        segment.fileDone(operation, result: result, now: now)
    }
    func loopFlush(now: UInt64) {
        fill(now: now)
        if stopping && started.isEmpty {
            segment.close()
            loop.stop()
        }
    }
}
