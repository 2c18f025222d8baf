import Foundation
import Synchronization
import Testing
import SoulfraLoop
import SoulfraVault
@testable import SoulfraVaultStore

let ringUsable: Bool = (try? UringProbe.check()) != nil

/// A loop on its own thread whose delegate hands file completions to a vault segment and runs `step` at the
/// end of every batch until it returns true (bounded: 10 s).
final class SegmentDriver: LoopThreadDriver, @unchecked Sendable {
    let loop: EventLoop
    var segment: VaultSegment?
    var step: (SegmentDriver, UInt64) -> Bool = { _, _ in true }
    let done = DispatchSemaphore(value: 0)
    var finished = false
    let stopRequested = Atomic<Bool>(false)

    init(loop: EventLoop) { self.loop = loop }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool { false }
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {}
    func loopSent(conn: UInt32, count: Int, now: UInt64) {}
    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) {}
    func loopTick(now: UInt64) { segment?.tick(now: now) }
    func loopMailbox(now: UInt64) {}
    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {}
    func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        if let s = segment, s.files.contains(file) { s.fileDone(file: file, operation, result: result, now: now) }
    }
    func loopFlush(now: UInt64) {
        if !finished, step(self, now) {
            finished = true
            done.signal()
        }
        if stopRequested.load(ordering: .acquiring) { loop.stop() }
    }

    /// Runs `setup` then `step` on a fresh loop thread.
    static func run(_ setup: @escaping @Sendable (SegmentDriver) throws -> Void,
                    _ step: @escaping (SegmentDriver, UInt64) -> Bool) throws -> SegmentDriver {
        let stepBox = UncheckedBox(step)
        return try runOnLoopThread { loop in
            let d = SegmentDriver(loop: loop)
            loop.delegate = d
            try setup(d)
            d.step = stepBox.value
            return d
        }
    }
}

/// A delegate driven on a loop thread of its own by `runOnLoopThread`.
protocol LoopThreadDriver: LoopDelegate, AnyObject, Sendable {
    var loop: EventLoop { get }
    /// Signalled once the driver's script is done.
    var done: DispatchSemaphore { get }
    /// Set by `runOnLoopThread` when it is time to stop; the driver stops its loop at its next flush.
    var stopRequested: Atomic<Bool> { get }
}

/// Makes a loop on a fresh thread and, there, its driver (`make` may do the driver's first work), runs the loop
/// until the driver is done (10 s at most), then stops it and waits for the thread.
func runOnLoopThread<D: LoopThreadDriver>(_ make: @escaping (EventLoop) throws -> D) throws -> D {
    let made = Mutex<UncheckedBox<D>?>(nil)
    let failure = Mutex<String?>(nil)
    let ready = DispatchSemaphore(value: 0)
    let makeBox = UncheckedBox(make)
    let thread = Thread {
        do {
            guard let loop = try? EventLoop() else { throw DriverError("no ring") }
            let d = try makeBox.value(loop)
            made.withLock { $0 = UncheckedBox(d) }
            ready.signal()
            loop.run()
        } catch {
            failure.withLock { $0 = "\(error)" }
            ready.signal()
        }
    }
    thread.start()
    ready.wait()
    guard let d = made.withLock({ $0 })?.value else { throw DriverError(failure.withLock { $0 } ?? "no driver") }
    _ = d.done.wait(timeout: .now() + 10)
    d.stopRequested.store(true, ordering: .releasing)
    d.loop.mailbox.wake()
    for _ in 0..<5_000 where !thread.isFinished { usleep(2_000) }
    return d
}

struct UncheckedBox<T>: @unchecked Sendable {
    let value: T
    init(_ value: T) { self.value = value }
}

struct DriverError: Error, CustomStringConvertible {
    let description: String
    init(_ d: String) { description = d }
}


func scratchPath() -> String { "\(NSTemporaryDirectory())soulfra-vault-\(getpid())-\(UInt64.random(in: 0...UInt64.max)).log" }

func fileRecords(_ path: String) throws -> (records: [VaultRecord], tail: SegmentTail) {
    let bytes = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
    let r = records(bytes)
    return (r.records, r.tail)
}

@Suite("Vault segments on the ring", .enabled(if: ringUsable), .serialized)
struct VaultSegmentTests {
    @Test("bursts of appends are written, synced and acknowledged in order, many per fsync; the file holds them all")
    func appendsThroughTheRing() throws {
        let path = scratchPath()
        defer { unlink(path) }
        let acked = Mutex<[GroupCommit.Durable]>([])
        var sent: UInt64 = 0
        let d = try SegmentDriver.run({ d in
            let s = try VaultSegment(path: path, loop: d.loop)
            s.onDurable = { list in acked.withLock { $0 += list } }
            d.segment = s
        }, { d, now in
            // 20 appends a batch until 400 were made; then wait for them all.
            if sent < 400 {
                for _ in 0..<20 {
                    sent += 1
                    d.segment!.append(event(sent, "s\(sent % 4)", "event \(sent)"), now: now)
                }
                return false
            }
            guard acked.withLock({ $0.count }) == 400 else { return false }
            d.segment!.close()
            return true
        })
        #expect(d.finished)
        let list = acked.withLock { $0 }
        #expect(list.map(\.id) == Array(1...400))
        #expect(list.map(\.sequence) == Array(1...400), "acknowledged in log order")
        let policy = d.segment!.policy
        #expect(policy.batches < 400 && policy.largestBatch > 1, "no appends shared an fsync (\(policy.batches) batches)")
        let onDisk = try fileRecords(path)
        #expect(onDisk.records.count == 400 && onDisk.tail == .clean)
        #expect(onDisk.records.last.map { String(decoding: $0.payload, as: UTF8.self) } == "event 400")
    }

    @Test("zeros are written ahead of the records through a second slot; reopened, the zeros are no tail to cut and appends go on")
    func zerosAhead() throws {
        let path = scratchPath()
        defer { unlink(path) }
        let acked = Mutex<Int>(0)
        var sent: UInt64 = 0
        let first = try SegmentDriver.run({ d in
            let s = try VaultSegment(path: path, loop: d.loop, prepareAhead: 512 << 10, capacity: 4 << 20)
            s.onDurable = { list in acked.withLock { $0 += list.count } }
            d.segment = s
        }, { d, now in
            if sent < 300 {
                for _ in 0..<10 {
                    sent += 1
                    d.segment!.append(event(sent, "s", String(repeating: "z", count: 200)), now: now)
                }
                return false
            }
            guard acked.withLock({ $0 }) == 300, d.segment!.policy.preparing == nil else { return false }
            d.segment!.close()
            return true
        })
        #expect(first.finished)
        let policy = first.segment!.policy
        #expect(policy.preparedChunks >= 1 && policy.prepareFailures == 0)
        #expect(policy.preparedBytes >= policy.durableBytes + (256 << 10), "prepared \(policy.preparedBytes), records \(policy.durableBytes)")
        var st = stat()
        #expect(stat(path, &st) == 0 && UInt64(st.st_size) == policy.preparedBytes, "the file holds the zeros")
        let onDisk = try fileRecords(path)
        #expect(onDisk.records.count == 300 && onDisk.tail == .clean)
        let fileBytes = UInt64(st.st_size)

        // Reopened: nothing cut, the zeros count as prepared, and the next append follows record 300.
        let again = Mutex<[GroupCommit.Durable]>([])
        let second = try SegmentDriver.run({ d in
            let s = try VaultSegment(path: path, loop: d.loop, prepareAhead: 512 << 10, capacity: 4 << 20)
            #expect(s.cutBytes == 0 && s.recoveredRecords == 300 && s.recoveredTail == .clean)
            #expect(s.policy.preparedBytes == fileBytes)
            s.onDurable = { list in again.withLock { $0 += list } }
            d.segment = s
            s.append(event(301, "s", "after"), now: 1)
        }, { d, _ in
            guard again.withLock({ $0.count }) == 1 else { return false }
            d.segment!.close()
            return true
        })
        #expect(second.finished)
        #expect(again.withLock { $0.map(\.sequence) } == [301])
        #expect(try fileRecords(path).records.count == 301)
    }

    @Test("both descriptors of a segment are close-on-exec: a process the daemon starts holds no segment open")
    func descriptorsCloseOnExec() throws {
        let path = scratchPath()
        defer { unlink(path) }
        let o = try VaultSegment.open(path: path, prepareAhead: true)
        defer { o.discard() }
        #expect(o.prepareFD >= 0 && o.prepareFD != o.fd)
        #expect(fcntl(o.fd, F_GETFD) & FD_CLOEXEC != 0)
        #expect(fcntl(o.prepareFD, F_GETFD) & FD_CLOEXEC != 0, "the second descriptor would leak into children (it kept a full-disk test's tmpfs busy)")
    }

    @Test("opening a segment with a torn tail cuts it; appends go on from the last good record, sessions too")
    func recoveryCutsTheTail() throws {
        let path = scratchPath()
        defer { unlink(path) }
        var bytes: [UInt8] = []
        for i in 1...10 {
            VaultRecord(sequence: UInt64(i), sessionSequence: UInt64(i), unixMilliseconds: 1, session: Array("u".utf8),
                        payload: Array("e\(i)".utf8)).encode(into: &bytes)
        }
        let good = bytes.count
        VaultRecord(sequence: 11, sessionSequence: 11, unixMilliseconds: 1, session: Array("u".utf8), payload: Array("torn".utf8))
            .encode(into: &bytes)
        bytes.removeLast(3)  // the crash came mid-write
        try Data(bytes).write(to: URL(fileURLWithPath: path))
        let acked = Mutex<[GroupCommit.Durable]>([])
        var appended = false
        let d = try SegmentDriver.run({ d in
            let s = try VaultSegment(path: path, loop: d.loop)
            s.onDurable = { list in acked.withLock { $0 += list } }
            d.segment = s
        }, { d, now in
            if !appended {
                appended = true
                d.segment!.append(event(99, "u", "after"), now: now)
                return false
            }
            guard acked.withLock({ $0.count }) == 1 else { return false }
            d.segment!.close()
            return true
        })
        #expect(d.segment!.recoveredRecords == 10 && d.segment!.cutBytes == bytes.count - good)
        #expect(d.segment!.recoveredTail == .torn(at: good))
        #expect(acked.withLock { $0 }.map(\.numbers) == [[99, 11, 11]])
        let onDisk = try fileRecords(path)
        #expect(onDisk.records.count == 11 && onDisk.tail == .clean)
        #expect(onDisk.records.last.map { String(decoding: $0.payload, as: UTF8.self) } == "after")
    }

    /// Mounts a tmpfs of `kilobytes` (root only: the test is skipped elsewhere).
    static let canMount: Bool = {
        let dir = "\(NSTemporaryDirectory())soulfra-mount-probe-\(getpid())"
        mkdir(dir, 0o700)
        defer { rmdir(dir) }
        guard mount("tmpfs", dir, "tmpfs", 0, "size=64k") == 0 else { return false }
        umount(dir)
        return true
    }()

    @Test("a full disk fails appends with ENOSPC and loses nothing acknowledged; appends resume once space returns",
          .enabled(if: canMount))
    func fullDisk() throws {
        let dir = "\(NSTemporaryDirectory())soulfra-vault-full-\(getpid())"
        mkdir(dir, 0o700)
        guard mount("tmpfs", dir, "tmpfs", 0, "size=64k") == 0 else { throw DriverError("mount") }
        defer {
            umount(dir)
            rmdir(dir)
        }
        let path = dir + "/world.log"
        let acked = Mutex<[GroupCommit.Durable]>([])
        let failed = Mutex<[(UInt64, Int32)]>([])
        let payload = String(repeating: "p", count: 1_000)
        var sent: UInt64 = 0
        var grown = false
        var afterGrow: UInt64 = 0
        let d = try SegmentDriver.run({ d in
            let s = try VaultSegment(path: path, loop: d.loop)
            s.onDurable = { list in acked.withLock { $0 += list } }
            s.onFailed = { ids, e in failed.withLock { $0 += ids.map { ($0, e) } } }
            d.segment = s
        }, { d, now in
            let failures = failed.withLock { $0.count }
            if failures == 0 {
                // Fill the disk: ten 1 KB events a turn until one fails.
                if d.segment!.policy.pendingBytes == 0 && !d.segment!.policy.writing {
                    for _ in 0..<10 {
                        sent += 1
                        d.segment!.append(event(sent, "s", payload), now: now)
                    }
                }
                return false
            }
            if !grown {
                // Space returns; what waits (and what comes now) goes out after the retry delay.
                grown = true
                mount("tmpfs", dir, "tmpfs", UInt(MS_REMOUNT), "size=1m")
                afterGrow = sent + 1
                for _ in 0..<5 {
                    sent += 1
                    d.segment!.append(event(sent, "s", payload), now: now)
                }
                return false
            }
            guard acked.withLock({ $0.contains { $0.id == sent } }) else { return false }
            d.segment!.close()
            return true
        })
        #expect(d.finished, "appends never resumed after space returned")
        let fails = failed.withLock { $0 }
        #expect(!fails.isEmpty && fails.allSatisfy { $0.1 == ENOSPC }, "\(fails)")
        let durable = acked.withLock { $0 }
        #expect(durable.contains { $0.id >= afterGrow }, "nothing acknowledged after the space came back")
        let onDisk = try fileRecords(path)
        #expect(onDisk.tail == .clean || { if case .corrupt = onDisk.tail { return true } else { return false } }())
        #expect(onDisk.records.map(\.sequence) == (0..<onDisk.records.count).map { UInt64($0 + 1) }, "a gap in the log")
        let ids = Set(onDisk.records.map { String(decoding: $0.payload, as: UTF8.self) }.indices)
        #expect(ids.count == onDisk.records.count)
        // Every acknowledged event is on disk, once; no failed one is.
        #expect(onDisk.records.count == durable.count, "\(onDisk.records.count) records on disk, \(durable.count) acknowledged")
        #expect(durable.map(\.sequence) == onDisk.records.map(\.sequence))
    }
}
