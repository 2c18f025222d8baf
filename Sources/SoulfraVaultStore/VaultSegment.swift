#if canImport(Glibc)
import Glibc
#endif
import SoulfraLoop
import SoulfraNet
import SoulfraVault

/// One vault log segment on one loop: the file written and synced through the ring (`EventLoop.write(file:…)`
/// with an fdatasync linked behind each write), driven by the group-commit policy. Opening it recovers it: the
/// file is scanned, a torn or corrupt tail is cut off, and appends go on from the last good record.
public final class VaultSegment {
    public let path: String
    unowned let loop: EventLoop
    /// The loop's slot for the file (`LoopDelegate.loopFileDone` reports it).
    public let file: UInt32
    public private(set) var policy: GroupCommit
    /// Appends made durable, in log order; appends that failed, with the errno.
    public var onDurable: ([GroupCommit.Durable]) -> Void = { _ in }
    public var onFailed: ([UInt64], Int32) -> Void = { _, _ in }
    /// The next batch is gathering until the given time: `tick` the segment then (or on any loop turn before).
    public var onWake: (UInt64) -> Void = { _ in }
    /// What recovery found: good records, bytes cut off the end, and why.
    public let recoveredRecords: Int
    public let cutBytes: Int
    public let recoveredTail: SegmentTail
    /// The bytes of the write in flight: the ring reads them until the write completes, so they live here, out
    /// of reach of Swift's copy-on-write.
    private var writeBuffer: UnsafeMutableRawBufferPointer
    /// The write's result, kept until the sync linked behind it completes.
    private var writeResult: Int32?

    /// The largest segment opened: a file past it is not a segment (recovery reads it whole).
    public static let maxSegmentBytes = 1 << 30

    /// Opens (or creates) the segment at `path` and recovers it, then hands the file to `loop`. Reads the file
    /// with blocking calls: open a segment before the loop serves its world (at start-up, or off the loop).
    /// A segment after others goes on from their numbers: `after` is the log's last sequence before it,
    /// `sessions` each session's last sequence. `found` sees each good record and its offset. With `repair`
    /// (the log's last segment) a torn or corrupt tail is cut off; without (a sealed segment, never written
    /// again) it is left where it is and reading stops before it. Either way, a segment whose first record does
    /// not follow on from `after` is not opened: records are missing, and nothing is cut.
    public init(path: String, loop: EventLoop, after: UInt64 = 0, sessions before: [[UInt8]: UInt64] = [:],
                repair: Bool = true, found: (VaultRecord, Int) -> Void = { _, _ in }) throws(SocketError) {
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SocketError(call: "open", errno: errno, address: path) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) <= Self.maxSegmentBytes else {
            Glibc.close(fd)
            throw SocketError(call: "open", errno: EINVAL, address: "\(path) (not a regular file of at most \(Self.maxSegmentBytes) bytes)")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            guard n >= 0 else {
                let e = errno
                Glibc.close(fd)
                throw SocketError(call: "read", errno: e, address: path)
            }
            if n == 0 || bytes.count >= Self.maxSegmentBytes { break }
            bytes += chunk[..<n]
        }
        var sessions = before
        var count = 0
        let scan = bytes.withUnsafeBytes { raw in
            SegmentScan.scan(raw, after: after) { record, offset in
                sessions[record.session] = record.sessionSequence
                count += 1
                found(record, offset)
            }
        }
        if scan.valid == 0, case .corrupt(_, let reason) = scan.tail, reason.hasPrefix("sequence") {
            Glibc.close(fd)
            throw SocketError(call: "open", errno: EIO, address: "\(path) (its first record does not follow record \(after) of the segment before: \(reason); records are missing, so it is left as it is)")
        }
        if repair && scan.valid < bytes.count {
            // The tail that did not check out goes: appends continue from the last good record.
            guard ftruncate(fd, off_t(scan.valid)) == 0, fsync(fd) == 0 else {
                let e = errno
                Glibc.close(fd)
                throw SocketError(call: "ftruncate", errno: e, address: path)
            }
        }
        guard let slot = loop.adoptFile(fd: fd) else { throw SocketError(call: "adopt", errno: EMFILE, address: path) }
        self.path = path
        self.loop = loop
        self.file = slot
        self.recoveredRecords = count
        self.cutBytes = bytes.count - scan.valid
        self.recoveredTail = scan.tail
        self.policy = GroupCommit(durableBytes: UInt64(scan.valid), lastSequence: scan.last, sessions: sessions)
        self.writeBuffer = .allocate(byteCount: 4 << 10, alignment: 16)
    }

    deinit {
        writeBuffer.deallocate()
        for r in reads { r.buffer.deallocate() }
    }

    /// Bytes of the segment known durable (where the next batch goes).
    public var durableBytes: UInt64 { policy.durableBytes }

    /// No batch in flight and none waiting.
    public var idle: Bool { !policy.writing && policy.pendingBytes == 0 }

    /// Starts no more batches (`false`: again): the log moves on to the next segment (`takePending` once
    /// `policy.writing` is false).
    public func seal(_ on: Bool = true) { policy.seal(on) }

    /// An empty segment made ahead goes on from the log's numbers when it becomes the active one.
    public func continueFrom(lastSequence: UInt64, sessions: [[UInt8]: UInt64]) {
        precondition(policy.durableBytes == 0 && !policy.writing, "only an empty segment goes on from another")
        policy = GroupCommit(durableBytes: 0, lastSequence: lastSequence, sessions: sessions)
    }

    /// The appends that waited here, for the next segment, with the numbers it goes on from.
    public func takePending() -> (appends: [GroupCommit.Append], lastSequence: UInt64, sessions: [[UInt8]: UInt64]) {
        policy.takePending()
    }

    // MARK: - Reads

    struct Read {
        let offset: UInt64
        let buffer: UnsafeMutableRawBufferPointer
        var got = 0
        let done: (Result<UnsafeRawBufferPointer, SocketError>) -> Void
    }

    /// Reads waiting, the first in flight.
    private var reads: [Read] = []

    /// Reads `count` bytes at `offset` through the ring; `done` gets them (valid only during the call), or the
    /// error. One read is in flight at a time per segment; the others wait their turn.
    public func read(offset: UInt64, count: Int, done: @escaping (Result<UnsafeRawBufferPointer, SocketError>) -> Void) {
        precondition(count > 0, "a read of nothing")
        reads.append(Read(offset: offset, buffer: .allocate(byteCount: count, alignment: 16), done: done))
        if reads.count == 1 { startRead() }
    }

    private func startRead() {
        guard let r = reads.first else { return }
        if r.got == r.buffer.count {
            finishRead(.success(UnsafeRawBufferPointer(r.buffer)))
            return
        }
        loop.read(file: file, into: UnsafeMutableRawBufferPointer(rebasing: r.buffer[r.got...]), offset: r.offset + UInt64(r.got))
    }

    private func readDone(result: Int32) {
        guard !reads.isEmpty else { return }
        if result < 0 {
            finishRead(.failure(SocketError(call: "read", errno: -result, address: path)))
        } else if result == 0 {
            finishRead(.failure(SocketError(call: "read", errno: EIO, address: "\(path) (ends before the record)")))
        } else {
            reads[0].got += Int(result)
            startRead()
        }
    }

    private func finishRead(_ result: Result<UnsafeRawBufferPointer, SocketError>) {
        let r = reads.removeFirst()
        r.done(result)
        r.buffer.deallocate()
        startRead()
    }

    /// Stores an event: it is acknowledged (`onDurable`) once on disk and synced.
    public func append(_ a: GroupCommit.Append, now: UInt64) {
        run(policy.append(a, now: now), now: now)
    }

    /// Retries after a failure once its delay is over; call from the loop's tick.
    public func tick(now: UInt64) {
        run(policy.tick(now: now), now: now)
    }

    /// The loop finished a write or sync on this segment's file.
    public func fileDone(_ operation: FileOperation, result: Int32, now: UInt64) {
        switch operation {
        case .read:
            readDone(result: result)
        case .write:
            writeResult = result
        case .sync:
            // Every write goes with a linked sync, whose completion comes after the write's.
            let written = writeResult ?? -LinuxErrnoValue.io
            writeResult = nil
            run(policy.completed(written: written, synced: result, now: now), now: now)
        }
    }

    /// Closes the file once what is in flight completed (reads waiting fail).
    public func close() {
        let waiting = reads.dropFirst()
        reads.removeLast(waiting.count)
        for r in waiting {
            r.done(.failure(SocketError(call: "read", errno: ECANCELED, address: path)))
            r.buffer.deallocate()
        }
        loop.closeFile(file)
    }

    private func run(_ actions: [GroupCommit.Action], now: UInt64) {
        for action in actions {
            switch action {
            case .writeAndSync(let offset, let from, let count):
                if writeBuffer.count < count {
                    writeBuffer.deallocate()
                    writeBuffer = .allocate(byteCount: max(count, writeBuffer.count * 2), alignment: 16)
                }
                policy.staged.withUnsafeBytes { staged in
                    writeBuffer.copyMemory(from: UnsafeRawBufferPointer(rebasing: staged[from..<(from + count)]))
                }
                loop.write(file: file, bytes: UnsafeRawBufferPointer(rebasing: writeBuffer[..<count]), offset: offset, sync: true)
            case .acknowledge(let durable):
                onDurable(durable)
            case .fail(let ids, let errno):
                onFailed(ids, errno)
            case .wake(let at):
                loop.wake(at: at, now: now)
                onWake(at)
            }
        }
    }
}

/// The errno the segment reports for a sync without its write's result (cannot happen with linked pairs).
enum LinuxErrnoValue {
    static let io: Int32 = 5
}
