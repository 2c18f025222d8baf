import SoulfraLimits
import Foundation
import Synchronization
import Testing
@testable import SoulfraLoop
import SoulfraNet

/// A delegate for file tests: runs a script at the end of every batch (on the loop's thread) and records what
/// the loop reports about files.
final class FileDelegate: LoopDelegate, @unchecked Sendable {
    let loop: EventLoop
    var results: [(file: UInt32, operation: FileOperation, result: Int32)] = []
    var step: ((FileDelegate) -> Bool)?
    let done = DispatchSemaphore(value: 0)
    var finished = false
    let stopRequested = Atomic<Bool>(false)

    init(loop: EventLoop) { self.loop = loop }

    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool { false }
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64) {}
    func loopSent(conn: UInt32, count: Int, now: UInt64) {}
    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64) {}
    func loopTick(now: UInt64) {}
    func loopMailbox(now: UInt64) {}
    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64) {}
    func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {
        results.append((file, operation, result))
    }
    var paths: [UInt64: (operation: PathOperation, result: Int32)] = [:]
    func loopPathDone(token: UInt64, operation: PathOperation, result: Int32, now: UInt64) {
        paths[token] = (operation, result)
    }
    func loopFlush(now: UInt64) {
        if let s = step, !finished, s(self) {
            finished = true
            done.signal()
        }
        if stopRequested.load(ordering: .acquiring) { loop.stop() }
    }

    func results(_ file: UInt32, _ op: FileOperation) -> [Int32] {
        results.filter { $0.file == file && $0.operation == op }.map(\.result)
    }
}

/// Runs a loop on its own thread (a SINGLE_ISSUER ring belongs to the thread that made it) with `script` at
/// the end of every batch until it returns true (bounded: 10 s); returns the delegate and the loop's counters.
func withFileLoop(ringEntries: UInt32 = 64, _ script: @escaping (FileDelegate) -> Bool) throws -> (FileDelegate, LoopCounters) {
    let made = Mutex<FileDelegate?>(nil)
    let ready = DispatchSemaphore(value: 0)
    let counters = Mutex(LoopCounters())
    let scriptBox = UncheckedSendable(script)
    let thread = Thread {
        var limits = LoopLimits()
        limits.ringEntries = ringEntries
        limits.recvBufferCount = 16
        limits.recvBufferBytes = 4096
        guard let loop = try? EventLoop(limits: limits) else {
            ready.signal()
            return
        }
        let d = FileDelegate(loop: loop)
        loop.delegate = d
        d.step = scriptBox.value
        made.withLock { $0 = d }
        ready.signal()
        loop.run()
        counters.withLock { $0 = loop.counters }
    }
    thread.start()
    ready.wait()
    guard let d = made.withLock({ $0 }) else { throw LoopTestError("loop not made") }
    _ = d.done.wait(timeout: .now() + 10)
    d.stopRequested.store(true, ordering: .releasing)
    d.loop.mailbox.wake()
    for _ in 0..<500 where !thread.isFinished { usleep(2_000) }
    return (d, counters.withLock { $0 })
}

/// A fresh file under the temporary directory, open for writing; returns its descriptor and path.
func scratchFile() throws -> (fd: Int32, path: String) {
    var template = Array("\(NSTemporaryDirectory())soulfra-file-XXXXXX".utf8CString)
    let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
    guard fd >= 0 else { throw LoopTestError("mkstemp: \(describe(errno: errno))") }
    return (fd, String(decoding: template.dropLast().map { UInt8(bitPattern: $0) }, as: UTF8.self))
}

@Suite("Loop: file writes and syncs on the ring", .enabled(if: uringUsable))
struct FileTests {
    @Test("paths through the ring: a directory made, a file opened in it (the descriptor written through the ring), removed; errors come back as errnos")
    func pathOperations() throws {
        let dir = "\(NSTemporaryDirectory())soulfra-paths-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        defer { rmdir(dir) }
        var stage = 0
        var file: UInt32 = 0
        let (d, counters) = try withFileLoop { d in
            switch stage {
            case 0:
                d.loop.path(.makeDirectory(mode: 0o700), dir, token: 1)
                d.loop.path(.open(flags: O_RDONLY, mode: 0), dir + "/missing", token: 2)
                d.loop.path(.makeDirectory(mode: 0o700), "/proc/no-such-place/x", token: 3)
                stage = 1
            case 1:
                guard d.paths[1] != nil, d.paths[2] != nil, d.paths[3] != nil else { return false }
                d.loop.path(.open(flags: O_RDWR | O_CREAT | O_CLOEXEC, mode: 0o600), dir + "/seg", token: 4)
                stage = 2
            case 2:
                guard let opened = d.paths[4] else { return false }
                guard opened.result >= 0, let f = d.loop.adoptFile(fd: opened.result) else { return true }
                file = f
                Array("through the ring".utf8).withUnsafeBytes { d.loop.write(file: f, bytes: $0, offset: 0, sync: true) }
                stage = 3
            case 3:
                guard d.results(file, .sync).count == 1 else { return false }
                d.loop.closeFile(file)
                d.loop.path(.unlink, dir + "/seg", token: 5)
                d.loop.path(.unlink, dir + "/seg-never-made", token: 6)
                stage = 4
            default:
                return d.paths[5] != nil && d.paths[6] != nil && d.loop.openFiles == 0
            }
            return false
        }
        #expect(d.finished)
        #expect(d.paths[1]?.result == 0 && d.paths[1]?.operation == .makeDirectory(mode: 0o700))
        #expect(d.paths[2]?.result == -ENOENT)
        #expect(d.paths[3]?.result == -ENOENT)
        #expect((d.paths[4]?.result ?? -1) >= 0)
        #expect(d.results(file, .write) == [16] && d.results(file, .sync) == [0])
        #expect(d.paths[5]?.result == 0 && d.paths[6]?.result == -ENOENT)
        #expect(access(dir + "/seg", F_OK) != 0, "removed")
        #expect(counters.pathOperations == 6 && counters.pathErrors == 3)
    }

    @Test("records written at their offsets, some with a linked fdatasync, are on disk whole and in order")
    func writesAndSyncs() throws {
        let (fd, path) = try scratchFile()
        defer { unlink(path) }
        // 100 records of different sizes and contents; every tenth write carries a linked sync.
        let records: [[UInt8]] = (0..<100).map { i in [UInt8](repeating: UInt8(truncatingIfNeeded: i), count: 1 + (i * 37) % 5_000) }
        var file: UInt32 = 0
        var next = 0
        var offset: UInt64 = 0
        var inFlight = false
        var syncs = 0
        let (d, counters) = try withFileLoop { d in
            if next == 0 && !inFlight {
                guard let f = d.loop.adoptFile(fd: fd) else { return true }
                file = f
            }
            if inFlight {
                // Wait for this record's write (and its sync, if linked) before the next.
                guard d.results(file, .write).count == next, d.results(file, .sync).count == syncs else { return false }
                inFlight = false
            }
            guard next < records.count else {
                d.loop.closeFile(file)
                return d.loop.openFiles == 0
            }
            let sync = next % 10 == 0
            records[next].withUnsafeBytes { d.loop.write(file: file, bytes: $0, offset: offset, sync: sync) }
            if sync { syncs += 1 }
            offset += UInt64(records[next].count)
            next += 1
            inFlight = true
            return false
        }
        #expect(d.finished, "\(d.results.count) file results")
        #expect(d.results(file, .write) == records.map { Int32($0.count) })
        #expect(d.results(file, .sync) == Array(repeating: 0, count: 10))
        #expect(counters.fileWrites == 100 && counters.fileSyncs == 10 && counters.fileErrors == 0)
        #expect(counters.fileWriteBytes == UInt64(records.reduce(0) { $0 + $1.count }))
        let onDisk = try [UInt8](Data(contentsOf: URL(fileURLWithPath: path)))
        #expect(onDisk == records.flatMap { $0 }, "the file holds \(onDisk.count) bytes")
    }

    @Test("a full disk is an error for the owner, not the loop's end: ENOSPC, and the linked sync is cancelled")
    func fullDisk() throws {
        let full = open("/dev/full", O_WRONLY | O_CLOEXEC)
        try #require(full >= 0, "no /dev/full here")
        let (fd, path) = try scratchFile()
        defer { unlink(path) }
        let payload = [UInt8](repeating: 0x5A, count: 4_096)
        var files: [UInt32] = []
        let (d, counters) = try withFileLoop { d in
            if files.isEmpty {
                guard let a = d.loop.adoptFile(fd: full), let b = d.loop.adoptFile(fd: fd) else { return true }
                files = [a, b]
                payload.withUnsafeBytes { d.loop.write(file: a, bytes: $0, offset: 0, sync: true) }
                return false
            }
            let (a, b) = (files[0], files[1])
            if d.results(a, .sync).count == 1 && d.results(b, .write).isEmpty {
                // The loop goes on: a healthy file is written after the failure.
                payload.withUnsafeBytes { d.loop.write(file: b, bytes: $0, offset: 0, sync: true) }
            }
            guard d.results(b, .sync).count == 1 else { return false }
            d.loop.closeFile(a)
            d.loop.closeFile(b)
            return true
        }
        #expect(d.finished)
        #expect(d.results(files[0], .write) == [-ENOSPC])
        #expect(d.results(files[0], .sync) == [-ECANCELED])
        #expect(d.results(files[1], .write) == [4_096])
        #expect(d.results(files[1], .sync) == [0])
        #expect(counters.fileErrors == 1, "ECANCELED is the link's doing, not a second failure")
    }

    @Test("write-and-sync pairs through a 4-entry submission queue: linked pairs are never split, none is lost")
    func linkedPairsThroughBacklog() throws {
        var made: [(fd: Int32, path: String)] = []
        for _ in 0..<8 { made.append(try scratchFile()) }
        defer { for f in made { unlink(f.path) } }
        let payload = [UInt8](repeating: 0x33, count: 1_000)
        var files: [UInt32] = []
        let (d, counters) = try withFileLoop(ringEntries: 4) { d in
            if files.isEmpty {
                for f in made { if let file = d.loop.adoptFile(fd: f.fd) { files.append(file) } }
                for file in files { payload.withUnsafeBytes { d.loop.write(file: file, bytes: $0, offset: 0, sync: true) } }
                return false
            }
            guard files.allSatisfy({ d.results($0, .sync).count == 1 }) else { return false }
            for file in files { d.loop.closeFile(file) }
            return true
        }
        #expect(d.finished, "\(d.results.count) of 16 results")
        for file in files {
            #expect(d.results(file, .write) == [1_000])
            #expect(d.results(file, .sync) == [0])
        }
        #expect(counters.sqFull > 0, "the submission queue never filled: the test did not test the backlog")
        for f in made {
            let onDisk = try [UInt8](Data(contentsOf: URL(fileURLWithPath: f.path)))
            #expect(onDisk == payload)
        }
    }

    @Test("closing a file with a write and a sync in flight waits for both, then frees its slot")
    func closeWaitsForOperations() throws {
        let (fd, path) = try scratchFile()
        defer { unlink(path) }
        let big = [UInt8](repeating: 0x77, count: 4 << 20)
        var file: UInt32?
        let (d, _) = try withFileLoop { d in
            guard let f = file else {
                file = d.loop.adoptFile(fd: fd)
                big.withUnsafeBytes { d.loop.write(file: file!, bytes: $0, offset: 0, sync: true) }
                d.loop.closeFile(file!)  // in the same batch as the write
                return false
            }
            return d.results(f, .sync).count == 1 && d.loop.openFiles == 0
        }
        #expect(d.finished)
        #expect(d.results(file!, .write) == [Int32(big.count)])
        #expect(d.results(file!, .sync) == [0])
    }
}
