import CURing
import SoulfraNet
import SoulfraLimits
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// What the loop tells the code it drives. Every call happens on the loop's thread.
public protocol LoopDelegate: AnyObject {
    /// A connection was accepted on listener `listener`. Return false to refuse it (it is closed at once).
    func loopAccepted(conn: UInt32, listener: Int, now: UInt64) -> Bool
    /// Bytes arrived. They are valid only during the call.
    func loopReceived(conn: UInt32, bytes: UnsafeRawBufferPointer, now: UInt64)
    /// A send finished: `count` bytes were written (0 on failure; the connection is then closing).
    func loopSent(conn: UInt32, count: Int, now: UInt64)
    /// The connection is closed and its slot will be reused; nothing about it is in flight any more.
    /// `reason` is what ended it first (the delegate's own `close`, the peer, an error).
    func loopClosed(conn: UInt32, reason: LoopCloseReason, now: UInt64)
    /// The periodic timer fired.
    func loopTick(now: UInt64)
    /// Another thread posted to the mailbox.
    func loopMailbox(now: UInt64)
    /// End of a completion batch: queue sends, apply pauses and closes. Submission follows.
    func loopFlush(now: UInt64)
    /// A connection given up with `handOff` is out of this loop: nothing is in flight on it and its slot is
    /// free. The socket `fd` is still open and now belongs to the delegate (to pass to another loop).
    func loopHandedOff(conn: UInt32, fd: Int32, now: UInt64)
    /// A file operation finished (`EventLoop.write(file:…)`, `sync(file:…)`): `result` is the bytes written
    /// (a write may be short), 0 for a sync, or a negative errno — `-ENOSPC`, `-EIO`, and `-ECANCELED` for a
    /// sync linked behind a write that failed or was short. The bytes of a write may be reused from here on.
    func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64)
    /// A path operation finished (`EventLoop.path`): `result` is the new descriptor of an open (now the
    /// delegate's), 0 for the others, or a negative errno.
    func loopPathDone(token: UInt64, operation: PathOperation, result: Int32, now: UInt64)
}

extension LoopDelegate {
    /// Delegates that open no files need not answer for them.
    public func loopFileDone(file: UInt32, operation: FileOperation, result: Int32, now: UInt64) {}
    /// …nor for paths.
    public func loopPathDone(token: UInt64, operation: PathOperation, result: Int32, now: UInt64) {}
}

/// What ended a connection, as the loop saw it. Every errno the loop can meet is classified in
/// `EventLoop.classify`: operating errors become one of these (counted in `LoopCounters.closes`);
/// programmer errors — a bad descriptor, a bad address or argument on the loop's own operations — crash.
public enum LoopCloseReason: Int, CaseIterable, Sendable, CustomStringConvertible {
    /// The delegate closed it (`EventLoop.close`).
    case local = 0
    /// The peer closed its side (EOF).
    case peerClosed
    /// The peer reset the connection (ECONNRESET, EPIPE).
    case reset
    /// The network gave up on it (ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ENETDOWN, ENOTCONN).
    case unreachable
    /// The kernel ran out of something (ENOMEM, ENOBUFS on a send) or another operating error.
    case ioError
    /// Refused on arrival: the slot table was full, or the delegate declined it.
    case refused

    public var description: String {
        switch self {
        case .local: "local"
        case .peerClosed: "peer_closed"
        case .reset: "reset"
        case .unreachable: "unreachable"
        case .ioError: "io_error"
        case .refused: "refused"
        }
    }
}

/// Counters of the loop itself.
public struct LoopCounters: Sendable, Equatable {
    public var accepted: UInt64 = 0
    public var refused: UInt64 = 0
    public var acceptErrors: UInt64 = 0
    public var recvCompletions: UInt64 = 0
    public var recvBytes: UInt64 = 0
    /// Multishot recv stopped because every provided buffer was in use (inbound backpressure, not an error).
    public var recvNoBuffers: UInt64 = 0
    public var sendCalls: UInt64 = 0
    public var sendBytes: UInt64 = 0
    public var ioErrors: UInt64 = 0
    public var submits: UInt64 = 0
    public var completions: UInt64 = 0
    /// Operations that found the submission queue full and waited in the loop's backlog.
    public var sqFull: UInt64 = 0
    /// File writes, syncs and reads completed, bytes written and read, and file operations that failed
    /// (ENOSPC, EIO, …).
    public var fileWrites: UInt64 = 0
    public var fileWriteBytes: UInt64 = 0
    public var fileReads: UInt64 = 0
    public var fileReadBytes: UInt64 = 0
    public var fileSyncs: UInt64 = 0
    public var fileErrors: UInt64 = 0
    /// Path operations (open, make directory, unlink) completed, and those that failed.
    public var pathOperations: UInt64 = 0
    public var pathErrors: UInt64 = 0
    /// Connections closed, by `LoopCloseReason`.
    public var closes: [UInt64] = Array(repeating: 0, count: LoopCloseReason.allCases.count)

    public init() {}
}

/// One io_uring loop: a ring, a provided-buffer ring, listeners and connections in slots.
///
/// `user_data` on every SQE is slot index, slot generation and operation, never an object pointer; a
/// completion whose generation no longer matches its slot is stale and dropped (its buffer is still recycled).
/// Nothing here locks; the only cross-thread entry is the mailbox's eventfd.
public final class EventLoop {
    enum Op: UInt64 {
        case accept = 1, recv, send, timer, mailbox, cancel, write, fsync, read, alarm, path
    }

    struct Slot {
        var fd: Int32 = -1
        var generation: UInt32 = 0
        var inUse = false
        var recv = RecvState()
        var sendInFlight = false
        /// The send in flight (kept here so a send waiting in the backlog is one small entry).
        var sendBase: UnsafeRawPointer?
        var sendCount = 0
        var closing = false
        var shut = false
        var handingOff = false
        var closeDeadline: UInt64 = 0
        var closeReason = LoopCloseReason.local
        /// A file (`adoptFile`): written and synced through the ring, never read, closed without shutdown(2).
        var isFile = false
        var writeInFlight = false
        var syncInFlight = false
        /// Where the write in flight goes (its bytes are `sendBase`/`sendCount`), and whether an fdatasync is
        /// linked behind it (the sync's own kind travels with its pending operation).
        var writeOffset: UInt64 = 0
        var syncLinked = false
        /// The read in flight: where the bytes go, how many, from where in the file.
        var readInFlight = false
        var readBase: UnsafeMutableRawPointer?
        var readCount = 0
        var readOffset: UInt64 = 0
    }

    /// An operation to prepare. Waits in `backlog` while the submission queue is full.
    enum Pending {
        case recv(UInt32, UInt32)
        case send(UInt32, UInt32)
        case cancelRecv(UInt32, UInt32)
        case accept(Int)
        case cancelAccept(Int)
        case timer
        case mailbox
        case write(UInt32, UInt32)
        case sync(UInt32, UInt32, dataOnly: Bool)
        case read(UInt32, UInt32)
        case alarm(UInt64)
        case path(UInt32)
    }

    public let limits: LoopLimits
    public internal(set) var counters = LoopCounters()
    public weak var delegate: (any LoopDelegate)?
    private let ring: OpaquePointer
    private let bufRing: OpaquePointer
    private let bufferGroup: UInt16 = 1
    var slots: [Slot]
    var freeSlots: [UInt32]
    private var listeners: [BoundListener] = []
    private var acceptArmed: [Bool] = []
    private var accepting = true
    private var acceptRearmOnTick = false
    private var cqes: UnsafeMutablePointer<sf_cqe>
    private let cqeBatch = 512
    /// Slots whose recv is queued for submission at the end of the batch.
    private var rearm: [UInt32] = []
    /// Operations that did not fit in the submission queue, in order; prepared as soon as there is room.
    private var backlog: [Pending] = []
    /// Path operations in flight, by id: the path as a C string (the kernel reads it until the completion).
    var pathOperations: [UInt32: (operation: PathOperation, path: UnsafeMutablePointer<CChar>, token: UInt64)] = [:]
    var nextPathOperation: UInt32 = 0
    var closingSlots: [UInt32] = []
    private var handoffSlots: [UInt32] = []
    private var stopped = false
    /// The deadline of the alarm in flight (`wake(at:now:)`), if any.
    private var alarmAt: UInt64?
    public let mailbox: LoopMailbox
    /// The eventfd counter is read into here by the kernel: stable memory, not a Swift property.
    private let mailboxValue: UnsafeMutablePointer<UInt64>

    /// Creates the ring and buffer ring. Run `UringProbe.check()` first for a readable error.
    public init(limits: LoopLimits = LoopLimits()) throws(UringUnavailable) {
        self.limits = limits
        var err: Int32 = 0
        guard let r = sf_ring_create(limits.ringEntries, &err) else {
            throw UringUnavailable(description: UringProbe.explainSetupFailure(errno: -err, kernel: UringProbe.kernelRelease()))
        }
        guard let b = sf_buf_ring_create(r, limits.recvBufferCount, limits.recvBufferBytes, 1, &err) else {
            sf_ring_destroy(r)
            throw UringUnavailable(description: "registering the provided buffer ring failed: \(describe(errno: -err))")
        }
        ring = r
        bufRing = b
        slots = []
        freeSlots = []
        cqes = .allocate(capacity: cqeBatch)
        mailbox = LoopMailbox()
        mailboxValue = .allocate(capacity: 1)
        slots.reserveCapacity(min(limits.maxConnections, 4096))
    }

    deinit {
        for s in slots where s.inUse && s.fd >= 0 { Glibc.close(s.fd) }
        for p in pathOperations.values { free(p.path) }
        for l in listeners { Glibc.close(l.fd) }
        sf_buf_ring_destroy(ring, bufRing)
        sf_ring_destroy(ring)
        cqes.deallocate()
        mailboxValue.deallocate()
    }

    @inline(__always) func ud(_ slot: UInt32, _ gen: UInt32, _ op: Op) -> UInt64 {
        UInt64(slot) << 32 | UInt64(gen & 0xFF_FFFF) << 8 | op.rawValue
    }

    /// Adds a listener; accepting starts when `run` does.
    public func add(listener: BoundListener) {
        listeners.append(listener)
        acceptArmed.append(false)
    }

    /// Stops accepting new connections (existing ones continue).
    public func stopAccepting() {
        guard accepting else { return }
        accepting = false
        for (i, l) in listeners.enumerated() {
            if acceptArmed[i] { submit(.cancelAccept(i)) }
            shutdown(l.fd, Int32(SHUT_RDWR))
        }
    }

    /// Ends `run` after the current batch.
    public func stop() { stopped = true }

    /// Makes the loop turn (and call `loopFlush`) by `deadline` (monotonic ns) even if nothing else happens, for
    /// waits finer than the tick. One alarm is in flight at a time: while one is armed a later or earlier
    /// request is served by it (the asker looks again when it fires and asks anew).
    public func wake(at deadline: UInt64, now: UInt64) {
        guard alarmAt == nil, !stopped else { return }
        alarmAt = deadline
        submit(.alarm(deadline > now ? max(deadline - now, 1_000) : 1_000))
    }

    // MARK: - Operations for the delegate

    /// Sends `bytes` (which must stay valid until `loopSent`). One send per connection at a time.
    @inline(__always)
    public func send(conn: UInt32, bytes: UnsafeRawBufferPointer) {
        let i = Int(conn)
        precondition(slots[i].inUse && !slots[i].sendInFlight, "send on a busy or free slot")
        slots[i].sendInFlight = true
        slots[i].sendBase = bytes.baseAddress
        slots[i].sendCount = bytes.count
        counters.sendCalls &+= 1
        submit(.send(conn, slots[i].generation))
    }

    /// Stops reading (cancels the multishot recv); data already received is still delivered.
    public func pauseRead(conn: UInt32) {
        let i = Int(conn)
        guard slots[i].inUse, !slots[i].recv.paused else { return }
        if slots[i].recv.pause() == .cancel { submit(.cancelRecv(conn, slots[i].generation)) }
    }

    /// Reads again.
    public func resumeRead(conn: UInt32) {
        let i = Int(conn)
        guard slots[i].inUse, slots[i].recv.paused, !slots[i].closing, !slots[i].handingOff else { return }
        if slots[i].recv.resume() == .queue { rearm.append(conn) }
    }

    /// The peer's address as 16 bytes (IPv4 as an IPv4-mapped IPv6 address), high and low halves, big-endian;
    /// nil for unix sockets or when the socket has no peer any more. One getpeername(2).
    public func peerAddress(conn: UInt32) -> (high: UInt64, low: UInt64)? {
        let i = Int(conn)
        guard i < slots.count, slots[i].inUse else { return nil }
        var storage = sockaddr_storage()
        var len = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let rc = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getpeername(slots[i].fd, $0, &len) }
        }
        guard rc == 0 else { return nil }
        /// `count` bytes at `offset` of the address, big-endian.
        func be(_ raw: UnsafeRawBufferPointer, _ offset: Int, _ count: Int) -> UInt64 {
            var v: UInt64 = 0
            for k in offset..<(offset + count) { v = v << 8 | UInt64(raw[k]) }
            return v
        }
        let family = Int32(storage.ss_family)
        return withUnsafeBytes(of: &storage) { raw in
            switch family {
            case AF_INET: (0, 0x0000_FFFF_0000_0000 | be(raw, 4, 4))  // sin_addr, as ::ffff:a.b.c.d
            case AF_INET6: (be(raw, 8, 8), be(raw, 16, 8))           // sin6_addr
            default: nil
            }
        }
    }

    /// Whether the loop reads this connection now (for tests and metrics).
    public func isReading(conn: UInt32) -> Bool {
        let i = Int(conn)
        return i < slots.count && slots[i].inUse && !slots[i].recv.paused
    }

    /// Closes the connection. With `flush`, output the delegate still hands over is sent first (up to the
    /// close deadline); `loopClosed` follows once nothing is in flight.
    public func close(conn: UInt32, flush: Bool, now: UInt64) {
        close(conn, flush: flush, reason: .local, now: now)
    }

    private func close(_ conn: UInt32, flush: Bool, reason: LoopCloseReason, now: UInt64) {
        let i = Int(conn)
        guard slots[i].inUse, !slots[i].closing else { return }
        slots[i].closing = true
        slots[i].closeReason = reason
        slots[i].recv.finish()
        slots[i].closeDeadline = now &+ UInt64(limits.closeFlushMilliseconds) * 1_000_000
        closingSlots.append(conn)
        if !flush { shut(conn) }
    }

    /// Gives the connection up without closing its socket (to move it to another loop): reading stops, and
    /// once nothing is in flight `loopHandedOff` hands the fd over. Bytes that arrive meanwhile are still
    /// delivered through `loopReceived`.
    public func handOff(conn: UInt32) {
        let i = Int(conn)
        guard slots[i].inUse, !slots[i].closing, !slots[i].handingOff else { return }
        slots[i].handingOff = true
        pauseRead(conn: conn)
        handoffSlots.append(conn)
    }

    /// Takes over a connected socket from another loop and starts reading it. Nil when the slot table is full
    /// (the socket is then closed).
    public func adopt(fd: Int32) -> UInt32? {
        guard let conn = allocateSlot(fd: fd) else {
            counters.refused &+= 1
            Glibc.close(fd)
            return nil
        }
        counters.accepted &+= 1
        startReading(conn)
        return conn
    }

    /// Whether the delegate may hand the connection more output.
    @inline(__always) public func canSend(conn: UInt32) -> Bool {
        let i = Int(conn)
        return slots[i].inUse && !slots[i].sendInFlight && !slots[i].shut
    }

    private func shut(_ conn: UInt32) {
        let i = Int(conn)
        guard !slots[i].shut else { return }
        slots[i].shut = true
        // Shutting the socket ends the multishot recv (EOF) and fails a pending send, so every request on
        // the slot completes and the slot can be released.
        shutdown(slots[i].fd, Int32(SHUT_RDWR))
    }

    // MARK: - Running

    /// Runs until `stop()`. Returns after the batch in which it was called.
    public func run() {
        for i in listeners.indices { armAccept(i) }
        armTimer()
        armMailbox()
        while !stopped {
            submitQueued()
            let rc = sf_submit_and_wait(ring, 1)
            counters.submits &+= 1
            if rc < 0 && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && rc != -ETIME {
                fatalError("io_uring_enter failed: \(describe(errno: -rc))")
            }
            var n: UInt32
            repeat {
                n = sf_reap(ring, cqes, UInt32(cqeBatch))
                counters.completions &+= UInt64(n)
                let now = monotonicNanoseconds()
                for k in 0..<Int(n) { dispatch(cqes[k], now: now) }
                sf_buf_ring_publish(bufRing)
                afterBatch(now: now)
            } while n == UInt32(cqeBatch)
        }
    }

    private func afterBatch(now: UInt64) {
        delegate?.loopFlush(now: now)
        submitQueued()
        if !closingSlots.isEmpty { progressClosing(now: now) }
        if !handoffSlots.isEmpty { progressHandoffs(now: now) }
    }

    /// Prepares what waited: the backlog first (order matters: a cancel must follow its recv), then the recv
    /// requests queued in this batch.
    private func submitQueued() {
        if !backlog.isEmpty { drainBacklog() }
        guard !rearm.isEmpty else { return }
        for conn in rearm {
            let i = Int(conn)
            if slots[i].inUse && slots[i].recv.submitting() { submit(.recv(conn, slots[i].generation)) }
        }
        rearm.removeAll(keepingCapacity: true)
    }

    // MARK: - Submission

    /// Prepares `op`, or keeps it in the backlog while the submission queue is full (in order: once anything
    /// waits, everything after it waits too). Every operation goes through here; none is ever dropped because
    /// the queue was full. The backlog is prepared at the end of the batch, submitting as often as it takes.
    @inline(__always)
    func submit(_ op: Pending) {
        if backlog.isEmpty && prepare(op) { return }
        counters.sqFull &+= 1
        backlog.append(op)
    }

    /// Prepares as much of the backlog as fits, submitting to make room; what the kernel will not take yet
    /// waits for the next batch (its completions free room).
    private func drainBacklog() {
        var k = 0
        while k < backlog.count {
            if prepare(backlog[k]) {
                k += 1
                continue
            }
            guard sf_submit(ring) > 0 else { break }
            counters.submits &+= 1
        }
        backlog.removeFirst(k)
    }

    /// Prepares one SQE; false only when the submission queue is full. Operations on a slot that was
    /// released meanwhile (generation changed) are dropped: they have nothing to act on.
    @inline(__always)
    private func prepare(_ op: Pending) -> Bool {
        let rc: Int32
        switch op {
        case .recv(let conn, let gen):
            let i = Int(conn)
            guard slots[i].inUse, slots[i].generation == gen else { return true }
            rc = sf_prep_recv_multishot(ring, slots[i].fd, bufferGroup, ud(conn, gen, .recv))
        case .send(let conn, let gen):
            let i = Int(conn)
            guard slots[i].inUse, slots[i].generation == gen else { return true }
            rc = sf_prep_send(ring, slots[i].fd, slots[i].sendBase, slots[i].sendCount, ud(conn, gen, .send))
        case .cancelRecv(let conn, let gen):
            rc = sf_prep_cancel(ring, ud(conn, gen, .recv), ud(conn, gen, .cancel))
        case .accept(let l):
            rc = sf_prep_multishot_accept(ring, listeners[l].fd, ud(UInt32(l), 0, .accept))
        case .cancelAccept(let l):
            rc = sf_prep_cancel(ring, ud(UInt32(l), 0, .accept), ud(0, 0, .cancel))
        case .timer:
            rc = sf_prep_timeout(ring, UInt64(limits.tickMilliseconds) * 1_000_000, ud(0, 0, .timer))
        case .mailbox:
            rc = sf_prep_read(ring, mailbox.fd, mailboxValue, 8, ud(0, 0, .mailbox))
        case .write(let file, let gen):
            let i = Int(file)
            guard slots[i].inUse, slots[i].generation == gen else { return true }
            let s = slots[i]
            rc = s.syncLinked
                ? sf_prep_write_fsync(ring, s.fd, s.sendBase, UInt32(s.sendCount), s.writeOffset, 1,
                                      ud(file, gen, .write), ud(file, gen, .fsync))
                : sf_prep_write(ring, s.fd, s.sendBase, UInt32(s.sendCount), s.writeOffset, ud(file, gen, .write))
        case .sync(let file, let gen, let dataOnly):
            let i = Int(file)
            guard slots[i].inUse, slots[i].generation == gen else { return true }
            rc = sf_prep_fsync(ring, slots[i].fd, dataOnly ? 1 : 0, ud(file, gen, .fsync))
        case .read(let file, let gen):
            let i = Int(file)
            guard slots[i].inUse, slots[i].generation == gen else { return true }
            let s = slots[i]
            rc = sf_prep_read_at(ring, s.fd, s.readBase, UInt32(s.readCount), s.readOffset, ud(file, gen, .read))
        case .alarm(let nanoseconds):
            rc = sf_prep_alarm(ring, nanoseconds, ud(0, 0, .alarm))
        case .path(let id):
            guard let p = pathOperations[id] else { return true }
            rc = switch p.operation {
            case .open(let flags, let mode): sf_prep_openat(ring, p.path, flags, mode, ud(id, 0, .path))
            case .makeDirectory(let mode): sf_prep_mkdirat(ring, p.path, mode, ud(id, 0, .path))
            case .unlink: sf_prep_unlinkat(ring, p.path, ud(id, 0, .path))
            }
        }
        return rc != -EBUSY
    }

    private func progressHandoffs(now: UInt64) {
        var k = 0
        while k < handoffSlots.count {
            let conn = handoffSlots[k]
            let i = Int(conn)
            if !slots[i].inUse || slots[i].closing {
                // Closed while handing off (peer went away): the close path releases it.
                handoffSlots.swapAt(k, handoffSlots.count - 1)
                handoffSlots.removeLast()
                continue
            }
            if !slots[i].recv.inFlight && !slots[i].sendInFlight {
                let fd = slots[i].fd
                slots[i].fd = -1
                slots[i].inUse = false
                slots[i].generation = (slots[i].generation &+ 1) & 0xFF_FFFF
                freeSlots.append(conn)
                handoffSlots.swapAt(k, handoffSlots.count - 1)
                handoffSlots.removeLast()
                delegate?.loopHandedOff(conn: conn, fd: fd, now: now)
                continue
            }
            k += 1
        }
    }

    private func progressClosing(now: UInt64) {
        var k = 0
        while k < closingSlots.count {
            let conn = closingSlots[k]
            let i = Int(conn)
            if slots[i].isFile {
                if !slots[i].writeInFlight && !slots[i].syncInFlight && !slots[i].readInFlight {
                    releaseFile(conn)
                    closingSlots.swapAt(k, closingSlots.count - 1)
                    closingSlots.removeLast()
                    continue
                }
                k += 1
                continue
            }
            // The delegate had its flush turn just before this: no send in flight means nothing left to send.
            if !slots[i].shut && (!slots[i].sendInFlight || now >= slots[i].closeDeadline) { shut(conn) }
            if slots[i].shut && !slots[i].recv.inFlight && !slots[i].sendInFlight {
                release(conn, now: now)
                closingSlots.swapAt(k, closingSlots.count - 1)
                closingSlots.removeLast()
                continue
            }
            k += 1
        }
    }

    private func release(_ conn: UInt32, now: UInt64) {
        let i = Int(conn)
        // The memory a send points at and the buffer a recv fills belong to the kernel until they complete.
        precondition(slots[i].inUse && !slots[i].recv.inFlight && !slots[i].sendInFlight,
                     "slot \(conn) released with an operation in flight")
        Glibc.close(slots[i].fd)
        slots[i].fd = -1
        slots[i].inUse = false
        slots[i].generation = (slots[i].generation &+ 1) & 0xFF_FFFF
        freeSlots.append(conn)
        counters.closes[slots[i].closeReason.rawValue] &+= 1
        delegate?.loopClosed(conn: conn, reason: slots[i].closeReason, now: now)
    }

    private func armAccept(_ i: Int) {
        guard accepting else { return }
        acceptArmed[i] = true
        submit(.accept(i))
    }

    /// A new slot starts reading at the end of the batch.
    private func startReading(_ conn: UInt32) {
        if slots[Int(conn)].recv.resume() == .queue { rearm.append(conn) }
    }

    private func armTimer() { submit(.timer) }

    private func armMailbox() { submit(.mailbox) }

    @inline(__always)
    private func dispatch(_ cqe: sf_cqe, now: UInt64) {
        let slot = UInt32(truncatingIfNeeded: cqe.user_data >> 32)
        let gen = UInt32(truncatingIfNeeded: (cqe.user_data >> 8) & 0xFF_FFFF)
        guard let op = Op(rawValue: cqe.user_data & 0xFF) else { fatalError("completion with unknown op \(cqe.user_data)") }
        switch op {
        case .recv:
            onRecv(slot, gen, cqe, now: now)
        case .send:
            onSend(slot, gen, cqe, now: now)
        case .accept:
            onAccept(Int(slot), cqe, now: now)
        case .timer:
            delegate?.loopTick(now: now)
            if acceptRearmOnTick && accepting && !stopped {
                acceptRearmOnTick = false
                for i in listeners.indices where !acceptArmed[i] { armAccept(i) }
            }
            if !stopped { armTimer() }
        case .mailbox:
            delegate?.loopMailbox(now: now)
            if !stopped { armMailbox() }
        case .cancel:
            break
        case .write:
            onFileDone(slot, gen, cqe, .write, now: now)
        case .fsync:
            onFileDone(slot, gen, cqe, .sync, now: now)
        case .read:
            onFileDone(slot, gen, cqe, .read, now: now)
        case .alarm:
            alarmAt = nil  // the batch's `loopFlush` follows: whoever asked looks again
        case .path:
            onPathDone(slot, cqe, now: now)
        }
    }

    @inline(__always)
    private func onRecv(_ conn: UInt32, _ gen: UInt32, _ cqe: sf_cqe, now: UInt64) {
        let more = sf_cqe_has_more(cqe.flags) != 0
        let i = Int(conn)
        let current = i < slots.count && slots[i].inUse && slots[i].generation == gen
        if sf_cqe_has_buffer(cqe.flags) != 0 {
            let bid = sf_cqe_buffer_id(cqe.flags)
            if current && cqe.res > 0 {
                counters.recvCompletions &+= 1
                counters.recvBytes &+= UInt64(cqe.res)
                let bytes = UnsafeRawBufferPointer(start: sf_buf_ring_buffer(bufRing, bid), count: Int(cqe.res))
                if !slots[i].closing { delegate?.loopReceived(conn: conn, bytes: bytes, now: now) }
            }
            // Everything the delegate needs was copied out during the call: the buffer goes straight back.
            sf_buf_ring_recycle(bufRing, bid)
        }
        guard current else { return }
        var closeFor: LoopCloseReason?
        if cqe.res == 0 {
            closeFor = .peerClosed
        } else if cqe.res < 0 {
            switch -cqe.res {
            case ENOBUFS:
                // Every provided buffer is in use: inbound backpressure. Buffers were recycled above; re-arm.
                counters.recvNoBuffers &+= 1
            case ECANCELED:
                break  // pauseRead (or a hand-off) cancelled it
            default:
                closeFor = classify(errno: -cqe.res, operation: "recv", conn: conn)
            }
        }
        if slots[i].recv.completed(more: more, again: closeFor == nil) == .queue { rearm.append(conn) }
        if let reason = closeFor, !slots[i].closing { close(conn, flush: false, reason: reason, now: now) }
    }

    /// Sorts an errno from one of the loop's own socket operations. Operating errors name a close reason;
    /// programmer errors (the loop passed a bad descriptor, address or argument) crash here, loudly, with the
    /// operation: carrying on would only hide the bug.
    private func classify(errno code: Int32, operation: String, conn: UInt32) -> LoopCloseReason {
        switch code {
        case ECONNRESET, EPIPE, ECONNABORTED:
            return .reset
        case ETIMEDOUT, EHOSTUNREACH, ENETUNREACH, ENETDOWN, ENOTCONN:
            counters.ioErrors &+= 1
            return .unreachable
        case EBADF, EFAULT, EINVAL, ENOTSOCK, EOPNOTSUPP, EDESTADDRREQ, EISCONN:
            fatalError("io_uring \(operation) on slot \(conn) failed with \(describe(errno: code)): the loop misused its own descriptor")
        default:
            counters.ioErrors &+= 1
            return .ioError
        }
    }

    @inline(__always)
    private func onSend(_ conn: UInt32, _ gen: UInt32, _ cqe: sf_cqe, now: UInt64) {
        let i = Int(conn)
        guard i < slots.count, slots[i].inUse, slots[i].generation == gen else { return }
        slots[i].sendInFlight = false
        slots[i].sendBase = nil
        if cqe.res >= 0 {
            counters.sendBytes &+= UInt64(cqe.res)
            delegate?.loopSent(conn: conn, count: Int(cqe.res), now: now)
        } else {
            // A send failing after our own shutdown(2) is how a closing slot's last send ends: not an error.
            let reason = slots[i].shut ? slots[i].closeReason : classify(errno: -cqe.res, operation: "send", conn: conn)
            delegate?.loopSent(conn: conn, count: 0, now: now)
            if !slots[i].closing { close(conn, flush: false, reason: reason, now: now) }
            shut(conn)
        }
    }

    private func onAccept(_ listener: Int, _ cqe: sf_cqe, now: UInt64) {
        if sf_cqe_has_more(cqe.flags) == 0 {
            acceptArmed[listener] = false
            // After an error (EMFILE, ENFILE, ENOMEM) re-arm on the next tick, not at once: the condition
            // usually persists for a while and an immediate re-arm would spin the loop.
            if accepting && !stopped {
                if cqe.res >= 0 { armAccept(listener) } else { acceptRearmOnTick = true }
            }
        }
        guard cqe.res >= 0 else {
            if cqe.res != -ECANCELED && cqe.res != -EINVAL { counters.acceptErrors &+= 1 }
            return
        }
        let fd = cqe.res
        guard accepting, let conn = allocateSlot(fd: fd) else {
            counters.refused &+= 1
            Glibc.close(fd)
            return
        }
        if case .tcp = listeners[listener].address {
            var one: Int32 = 1
            setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        }
        counters.accepted &+= 1
        guard delegate?.loopAccepted(conn: conn, listener: listener, now: now) == true else {
            counters.refused &+= 1
            slots[Int(conn)].shut = true
            slots[Int(conn)].closeReason = .refused
            release(conn, now: now)
            return
        }
        startReading(conn)
    }

    func allocateSlot(fd: Int32) -> UInt32? {
        let conn: UInt32
        if let free = freeSlots.popLast() {
            conn = free
        } else {
            guard slots.count < limits.maxConnections else { return nil }
            conn = UInt32(slots.count)
            slots.append(Slot())
        }
        let gen = slots[Int(conn)].generation
        slots[Int(conn)] = Slot(fd: fd, generation: gen, inUse: true)
        return conn
    }

    /// Files adopted and not yet closed (they hold slots, but are not connections).
    var openFiles = 0

    /// Connections open now (files excluded).
    public var openConnections: Int { slots.count - freeSlots.count - openFiles }
}

/// Wakes a loop from another thread. Messages themselves live wherever the poster keeps them (a
/// `Mutex`-guarded queue, usually); this only rings the bell, through an eventfd the loop reads via the ring.
public final class LoopMailbox: Sendable {
    public let fd: Int32

    init() {
        fd = sf_eventfd()
        precondition(fd >= 0, "eventfd: \(describe(errno: errno))")
    }

    deinit { Glibc.close(fd) }

    /// Wakes the loop; safe from any thread.
    public func wake() {
        var one: UInt64 = 1
        _ = write(fd, &one, 8)
    }
}
