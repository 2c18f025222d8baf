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
    /// The loop's slot for the file (`LoopDelegate.loopFileDone` reports it): records are written and read
    /// through it.
    public let file: UInt32
    /// A second slot on the same file for zeros written ahead of the records (`GroupCommit`'s preparation),
    /// so that they never wait for a batch nor a batch for them; nil when the segment prepares none.
    public private(set) var prepareFile: UInt32?
    /// The slots the segment's completions come on.
    public var files: [UInt32] { prepareFile.map { [file, $0] } ?? [file] }
    public private(set) var policy: GroupCommit
    /// Appends made durable, in log order; appends that failed, with the errno.
    public var onDurable: ([GroupCommit.Durable]) -> Void = { _ in }
    public var onFailed: ([UInt64], Int32) -> Void = { _, _ in }
    /// The next batch is gathering until the given time: `tick` the segment then (or on any loop turn before).
    public var onWake: (UInt64) -> Void = { _ in }
    /// A chunk of zeros was written ahead (`true`), or failed to be (a full disk: retried later).
    public var onPrepared: (Bool) -> Void = { _ in }
    /// What recovery found: good records, bytes cut off the end, and why.
    public let recoveredRecords: Int
    public let cutBytes: Int
    public let recoveredTail: SegmentTail
    private let prepareAhead: Int
    private let capacity: UInt64
    /// The bytes of the write in flight: the ring reads them until the write completes, so they live here, out
    /// of reach of Swift's copy-on-write.
    private var writeBuffer: UnsafeMutableRawBufferPointer
    /// The write's result, kept until the sync linked behind it completes (records, and zeros).
    private var writeResult: Int32?
    private var prepareWriteResult: Int32?
    /// Zeros for preparation, shared by every segment (the ring only reads them).
    nonisolated(unsafe) static let zeros: UnsafeRawBufferPointer = {
        let b = UnsafeMutableRawBufferPointer.allocate(byteCount: zeroChunkBytes, alignment: 4_096)
        b.initializeMemory(as: UInt8.self, repeating: 0)
        return UnsafeRawBufferPointer(b)
    }()
    /// The chunk of zeros written ahead at a time.
    public static let zeroChunkBytes = 256 << 10

    /// The largest segment opened: a file past it is not a segment (recovery reads it whole).
    public static let maxSegmentBytes = 1 << 30

    /// A segment file opened and recovered but not yet on a loop: the blocking half of opening, which any
    /// thread may do (start-up, or the vault's opener thread), so that a loop thread never waits on the disk.
    public struct Opened: @unchecked Sendable {
        public let path: String
        let fd: Int32
        /// A second descriptor for the zeros written ahead (-1: none).
        let prepareFD: Int32
        public let recoveredRecords: Int
        public let cutBytes: Int
        public let tail: SegmentTail
        let valid: UInt64
        let last: UInt64
        let sessions: [[UInt8]: UInt64]
        let preparedBytes: UInt64

        /// Closes the descriptors (an open that goes no further).
        public func discard() {
            Glibc.close(fd)
            if prepareFD >= 0 { Glibc.close(prepareFD) }
        }
    }

    /// Opens (or creates) the segment at `path` and recovers it, with blocking calls (never on a loop thread
    /// that serves). A segment after others goes on from their numbers: `after` is the log's last sequence
    /// before it, `sessions` each session's last sequence. `found` sees each good record and its offset. With
    /// `repair` (the log's last segment) a torn or corrupt tail is cut off; without (a sealed segment, never
    /// written again) it is left where it is and reading stops before it. Either way, a segment whose first
    /// record does not follow on from `after` is not opened: records are missing, and nothing is cut. With
    /// `prepareAhead` a second descriptor is opened for the zeros written ahead.
    public static func open(path: String, after: UInt64 = 0, anyFirst: Bool = false, sessions before: [[UInt8]: UInt64] = [:],
                            repair: Bool = true, prepareAhead: Bool = false,
                            found: (VaultRecord, Int) -> Void = { _, _ in }) throws(SocketError) -> Opened {
        let fd = Glibc.open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw SocketError(call: "open", errno: errno, address: path) }
        var st = stat()
        guard fstat(fd, &st) == 0, (st.st_mode & S_IFMT) == S_IFREG, Int(st.st_size) <= Self.maxSegmentBytes else {
            Glibc.close(fd)
            throw SocketError(call: "open", errno: EINVAL, address: "\(path) (not a regular file of at most \(Self.maxSegmentBytes) bytes)")
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(Int(st.st_size))
        var chunk = [UInt8](repeating: 0, count: 1 << 16)
        while st.st_size > 0 {
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
            SegmentScan.scan(raw, after: after, anyFirst: anyFirst) { record, offset in
                sessions[record.session] = record.sessionSequence
                count += 1
                found(record, offset)
            }
        }
        if scan.valid == 0, case .corrupt(_, let reason) = scan.tail, reason.hasPrefix("sequence") {
            Glibc.close(fd)
            throw SocketError(call: "open", errno: EIO, address: "\(path) (its first record does not follow record \(after) of the segment before: \(reason); records are missing, so it is left as it is)")
        }
        if repair && scan.tail != .clean {
            // The tail that did not check out goes: appends continue from the last good record.
            guard ftruncate(fd, off_t(scan.valid)) == 0, fsync(fd) == 0 else {
                let e = errno
                Glibc.close(fd)
                throw SocketError(call: "ftruncate", errno: e, address: path)
            }
        }
        var second: Int32 = -1
        if prepareAhead {
            // Opened again, not dup'ed: a failed writeback is reported to each open file once, so the zeros'
            // sync must not be the one that takes the records' error (the batch's own sync would then succeed).
            // Close-on-exec, as the first: no child process inherits it.
            second = Glibc.open(path, O_RDWR | O_CLOEXEC)
            guard second >= 0 else {
                let e = errno
                Glibc.close(fd)
                throw SocketError(call: "open", errno: e, address: path)
            }
        }
        // Zeros after the records (a clean tail) are prepared space already.
        return Opened(path: path, fd: fd, prepareFD: second, recoveredRecords: count,
                      cutBytes: scan.tail == .clean ? 0 : bytes.count - scan.valid, tail: scan.tail,
                      valid: UInt64(scan.valid), last: scan.last, sessions: sessions,
                      preparedBytes: scan.tail == .clean ? UInt64(bytes.count) : UInt64(scan.valid))
    }

    /// Hands an opened segment's file to `loop` (on the loop's thread). With `prepareAhead` (bytes; the open
    /// made the second descriptor) the file is kept written with zeros that far ahead of its records, up to
    /// `capacity` (the segment's size), which makes each sync cheaper (`GroupCommit`).
    public init(_ o: Opened, loop: EventLoop, prepareAhead: Int = 0, capacity: UInt64 = .max) throws(SocketError) {
        precondition(prepareAhead == 0 || o.prepareFD >= 0, "zeros ahead need the open's second descriptor")
        var prepareSlot: UInt32?
        if o.prepareFD >= 0 {
            guard let slot = loop.adoptFile(fd: o.prepareFD) else {
                Glibc.close(o.fd)
                throw SocketError(call: "adopt", errno: EMFILE, address: o.path)
            }
            prepareSlot = slot
        }
        guard let slot = loop.adoptFile(fd: o.fd) else {
            if let p = prepareSlot { loop.closeFile(p) }
            throw SocketError(call: "adopt", errno: EMFILE, address: o.path)
        }
        self.prepareFile = prepareSlot
        self.prepareAhead = prepareFile == nil ? 0 : prepareAhead
        self.capacity = capacity
        self.path = o.path
        self.loop = loop
        self.file = slot
        self.recoveredRecords = o.recoveredRecords
        self.cutBytes = o.cutBytes
        self.recoveredTail = o.tail
        self.policy = GroupCommit(durableBytes: o.valid, lastSequence: o.last, sessions: o.sessions,
                                  preparedBytes: o.preparedBytes, prepareAheadBytes: self.prepareAhead,
                                  prepareChunkBytes: Self.zeroChunkBytes, prepareLimit: capacity)
        self.writeBuffer = .allocate(byteCount: 4 << 10, alignment: 16)
    }

    /// Opens, recovers and hands to `loop` in one go: blocking (`open`), for start-up and tools.
    public convenience init(path: String, loop: EventLoop, after: UInt64 = 0, sessions before: [[UInt8]: UInt64] = [:],
                            repair: Bool = true, prepareAhead: Int = 0, capacity: UInt64 = .max,
                            found: (VaultRecord, Int) -> Void = { _, _ in }) throws(SocketError) {
        let o = try Self.open(path: path, after: after, sessions: before, repair: repair, prepareAhead: prepareAhead > 0, found: found)
        try self.init(o, loop: loop, prepareAhead: prepareAhead, capacity: capacity)
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
        policy = GroupCommit(durableBytes: 0, lastSequence: lastSequence, sessions: sessions,
                             preparedBytes: policy.preparedBytes, prepareAheadBytes: prepareAhead,
                             prepareChunkBytes: Self.zeroChunkBytes, prepareLimit: capacity)
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

    /// The loop finished a write or sync on one of this segment's slots (`files`).
    public func fileDone(file slot: UInt32, _ operation: FileOperation, result: Int32, now: UInt64) {
        if slot == prepareFile {
            if operation == .write {
                prepareWriteResult = result
            } else if operation == .sync {
                let written = prepareWriteResult ?? -LinuxErrnoValue.io
                prepareWriteResult = nil
                let failures = policy.prepareFailures
                let actions = policy.prepared(written: written, synced: result, now: now)
                onPrepared(policy.prepareFailures == failures)
                run(actions, now: now)
            }
            return
        }
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

    /// Writes no more zeros ahead (a sealed segment): its second slot closes once what is in flight on it
    /// completed.
    public func stopPreparing() {
        guard let p = prepareFile else { return }
        prepareFile = nil
        loop.closeFile(p)
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
        if let p = prepareFile { loop.closeFile(p) }
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
            case .prepare(let offset, let count):
                guard let slot = prepareFile else { preconditionFailure("zeros asked of a segment that prepares none") }
                loop.write(file: slot, bytes: UnsafeRawBufferPointer(rebasing: Self.zeros[..<count]), offset: offset, sync: true)
            }
        }
    }
}

/// The errno the segment reports for a sync without its write's result (cannot happen with linked pairs).
enum LinuxErrnoValue {
    static let io: Int32 = 5
}
