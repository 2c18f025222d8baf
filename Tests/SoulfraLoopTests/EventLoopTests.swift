import SoulfraLimits
import Foundation
import Synchronization
import Testing
@testable import SoulfraLoop
import SoulfraNet

/// io_uring is usable here (the real-ring tests are skipped, not failed, without it).
let uringUsable: Bool = (try? UringProbe.check()) != nil

/// A delegate that runs a script on the loop's thread and records what the loop reports.
final class ScriptedDelegate: LoopDelegate, @unchecked Sendable {
    let loop: EventLoop
    var conns: [UInt32] = []
    var received: [UInt32: Int] = [:]
    var sent: [UInt32: Int] = [:]
    var closed: [UInt32: LoopCloseReason] = [:]
    /// Runs at the end of every batch until it returns true.
    var step: ((ScriptedDelegate, UInt64) -> Bool)?
    let done = DispatchSemaphore(value: 0)
    var finished = false
    /// Set by the test thread: the loop stops after its next batch.
    let stopRequested = Atomic<Bool>(false)

    init(loop: EventLoop) { self.loop = loop }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool { true }
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) { received[conn, default: 0] += bytes.count }
    func loopSent(conn: UInt32, count: Int, now: UInt64) { sent[conn, default: 0] += count }
    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) { closed[conn] = reason }
    func loopTick(now: UInt64) {}
    func loopMailbox(now: UInt64) {}
    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {}
    func loopFlush(now: UInt64) {
        if let s = step, !finished, s(self, now) {
            finished = true
            done.signal()
        }
        if stopRequested.load(ordering: .acquiring) { loop.stop() }
    }
}

/// A pair of connected unix stream sockets: `loopEnd` goes to the loop, `far` stays with the test.
func socketPair() -> (loopEnd: Int32, far: Int32) {
    guard let (near, far) = unixSocketPair() else { preconditionFailure("socketpair failed") }
    return (near, far)
}

/// Reads from a non-blocking socket until `count` bytes arrived or the bound passed; returns the bytes read.
func drain(_ fd: Int32, count: Int, milliseconds: Int = 5_000) -> Int {
    var got = 0
    var buf = [UInt8](repeating: 0, count: 64 << 10)
    let deadline = Date().addingTimeInterval(Double(milliseconds) / 1000)
    while got < count && Date() < deadline {
        let n = buf.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if n > 0 { got += n } else { usleep(1_000) }
    }
    return got
}

@Suite("Loop: a full submission queue, close reasons", .enabled(if: uringUsable))
struct EventLoopTests {
    /// A loop with a 4-entry submission queue runs a script on its own thread (a ring with SINGLE_ISSUER
    /// belongs to the thread that made it); the test thread plays the far ends.
    func withTinyRing(_ script: @escaping (ScriptedDelegate, UInt64) -> Bool, pairs: Int,
                      farSide: (inout [Int32]) -> Void) throws -> (ScriptedDelegate, LoopCounters) {
        var far: [Int32] = []
        var near: [Int32] = []
        for _ in 0..<pairs {
            let p = socketPair()
            near.append(p.loopEnd)
            far.append(p.far)
        }
        let made = Mutex<(ScriptedDelegate?, String?)>((nil, nil))
        let ready = DispatchSemaphore(value: 0)
        let counters = Mutex(LoopCounters())
        let nearFDs = near
        let scriptBox = UncheckedSendable(script)
        let thread = Thread {
            var limits = LoopLimits()
            limits.ringEntries = 4
            limits.recvBufferCount = 16
            limits.recvBufferBytes = 4096
            guard let loop = try? EventLoop(limits: limits) else {
                made.withLock { $0 = (nil, "no ring") }
                ready.signal()
                return
            }
            let d = ScriptedDelegate(loop: loop)
            loop.delegate = d
            for fd in nearFDs {
                guard let conn = loop.adopt(fd: fd) else { continue }
                d.conns.append(conn)
            }
            d.step = scriptBox.value
            made.withLock { $0 = (d, nil) }
            ready.signal()
            loop.run()
            counters.withLock { $0 = loop.counters }
        }
        thread.start()
        ready.wait()
        guard let d = made.withLock({ $0.0 }) else { throw LoopTestError(made.withLock { $0.1 } ?? "loop not made") }
        farSide(&far)
        _ = d.done.wait(timeout: .now() + 10)
        d.stopRequested.store(true, ordering: .releasing)
        d.loop.mailbox.wake()
        // The loop stops after the batch the wake-up causes.
        for _ in 0..<5_000 where !thread.isFinished { usleep(2_000) }
        // Only what the far side left open: closing a descriptor twice could close another test's socket
        // that was given the same number in between.
        for f in far where f >= 0 { close(f) }
        return (d, counters.withLock { $0 })
    }

    @Test("64 sends, 64 pauses and 64 resumes in one batch through a 4-entry submission queue: none is lost")
    func fullSubmissionQueue() throws {
        let payload = [UInt8](repeating: 0x61, count: 1_000)
        let pairs = 64
        var phase = 0
        let (d, counters) = try withTinyRing({ d, _ in
            switch phase {
            case 0:
                // One batch: every connection sends, is paused (a cancel each) and resumed.
                for c in d.conns { payload.withUnsafeBytes { d.loop.send(conn: c, bytes: $0) } }
                for c in d.conns { d.loop.pauseRead(conn: c) }
                for c in d.conns { d.loop.resumeRead(conn: c) }
                phase = 1
                return false
            default:
                // Done when every send completed and every far end's reply was read.
                return d.conns.allSatisfy { d.sent[$0] == payload.count && d.received[$0] == 5 }
            }
        }, pairs: pairs) { far in
            for f in far { #expect(drain(f, count: payload.count) == payload.count) }
            for f in far { _ = "hello".withCString { send(f, $0, 5, 0) } }
        }
        #expect(d.finished, "sent \(d.sent.count) received \(d.received.filter { $0.value == 5 }.count) of \(pairs)")
        #expect(counters.sqFull > 0, "the submission queue never filled: the test did not test the backlog")
    }

    @Test("close reasons: the peer's EOF, the peer's reset, and our own close are told apart and counted")
    func closeReasons() throws {
        var phase = 0
        let (d, counters) = try withTinyRing({ d, now in
            switch phase {
            case 0:
                // Unread data in the far end's buffer makes its close a reset (AF_UNIX: ECONNRESET on recv).
                [UInt8](repeating: 1, count: 100).withUnsafeBytes { d.loop.send(conn: d.conns[1], bytes: $0) }
                d.loop.close(conn: d.conns[2], flush: false, now: now)
                phase = 1
                return false
            default:
                return d.closed.count == 3
            }
        }, pairs: 3) { far in
            // Once the loop's 100 bytes are in the far end's buffer (10 s at most), not after a guessed while.
            var unread: Int32 = 0
            for _ in 0..<1_000 where unread < 100 {
                _ = ioctl(far[1], UInt(FIONREAD), &unread)
                if unread < 100 { usleep(10_000) }
            }
            close(far[0])  // EOF
            close(far[1])  // with 100 unread bytes: reset
            far[0] = -1
            far[1] = -1
        }
        #expect(d.closed[d.conns[0]] == .peerClosed)
        #expect(d.closed[d.conns[1]] == .reset)
        #expect(d.closed[d.conns[2]] == .local)
        #expect(counters.closes[LoopCloseReason.peerClosed.rawValue] == 1)
        #expect(counters.closes[LoopCloseReason.reset.rawValue] == 1)
        #expect(counters.closes[LoopCloseReason.local.rawValue] == 1)
    }

    @Test("an operation that fails with EBADF on the loop's own descriptor stops the process loudly; it is not a close")
    func programmerErrorCrashes() async {
        let result = await #expect(processExitsWith: .failure, observing: [\.standardErrorContent]) {
            sendOnDescriptorClosedBehindTheLoop()
        }
        if let result {
            let stderr = String(decoding: result.standardErrorContent, as: UTF8.self)
            #expect(stderr.contains("misused its own descriptor"), "stderr: \(stderr.suffix(400))")
        }
    }
}

/// Runs in a child process: a loop's socket is closed behind its back, then the loop sends on it. The send
/// fails with EBADF, which only a bug in Soulfra can cause: the loop must crash with a message, not treat it
/// as a peer going away. Returns (and so exits 0, failing the test) only if the loop carried on.
func sendOnDescriptorClosedBehindTheLoop() {
    guard let loop = try? EventLoop() else { return }
    let pair = socketPair()
    let nearCopy = dup(pair.loopEnd)  // keeps the socket itself alive: only the loop's descriptor goes
    guard let conn = loop.adopt(fd: pair.loopEnd) else { return }
    let d = ScriptedDelegate(loop: loop)
    loop.delegate = d
    var batches = 0
    d.step = { d, _ in
        batches += 1
        if batches == 1 {
            close(pair.loopEnd)
            [UInt8](repeating: 1, count: 16).withUnsafeBytes { d.loop.send(conn: conn, bytes: $0) }
        } else if batches > 200 {
            d.stopRequested.store(true, ordering: .releasing)
            return true
        }
        return false
    }
    loop.run()
    close(nearCopy)
    close(pair.far)
}

struct LoopTestError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}

struct UncheckedSendable<T>: @unchecked Sendable {
    let value: T
    init(_ v: T) { value = v }
}
