import CURing
import SoulfraNet
#if canImport(Glibc)
import Glibc
#endif

/// A file operation of the loop, as `LoopDelegate.loopFileDone` reports it.
public enum FileOperation: Sendable, Equatable {
    case write
    case sync
    case read
}

/// An operation on a path, through the ring (`EventLoop.path`).
public enum PathOperation: Sendable, Equatable {
    /// openat(2) with these flags and mode: the result is the descriptor.
    case open(flags: Int32, mode: UInt32)
    /// mkdirat(2).
    case makeDirectory(mode: UInt32)
    /// unlinkat(2) of a file.
    case unlink
}

/// Files on the ring: reads, writes and `fdatasync`/`fsync` as io_uring operations (`IORING_OP_READ`,
/// `IORING_OP_WRITE`, `IORING_OP_FSYNC`), so a loop thread never blocks on the disk. A file is owned by a slot
/// like a socket: its operations carry the slot's generation, at most one read, one write and one sync are in
/// flight, and it is closed only once none is. The caller opens the file (with the flags it needs) and hands the descriptor over.
extension EventLoop {
    /// Takes `fd` into a slot for ring writes and syncs; it now belongs to the loop (`closeFile` closes it).
    /// Nil when the slot table is full (the descriptor is then closed).
    public func adoptFile(fd: Int32) -> UInt32? {
        guard let file = allocateSlot(fd: fd) else {
            Glibc.close(fd)
            return nil
        }
        slots[Int(file)].isFile = true
        openFiles += 1
        return file
    }

    /// Whether `file` can take a write now (none in flight, not closing); with `sync`, a write with a linked
    /// sync (no sync in flight either).
    public func canWrite(file: UInt32, sync: Bool = false) -> Bool {
        let s = slots[Int(file)]
        return s.inUse && s.isFile && !s.writeInFlight && !s.closing && !(s.syncInFlight && (sync || s.syncLinked))
    }

    /// Whether `file` can take a sync now (none in flight, not closing).
    public func canSync(file: UInt32) -> Bool {
        let s = slots[Int(file)]
        return s.inUse && s.isFile && !s.syncInFlight && !s.closing
    }

    /// Writes `bytes` at `offset` (pwrite semantics; the bytes must stay valid until `loopFileDone`). With
    /// `sync`, an fdatasync is linked behind it (IOSQE_IO_LINK): it runs only once the whole write is done, so
    /// its success means these bytes are durable; it completes with `-ECANCELED` after a failed or short write.
    /// (For metadata too — a file that grew into a new segment — follow with `sync(file:dataOnly: false)`.)
    public func write(file: UInt32, bytes: UnsafeRawBufferPointer, offset: UInt64, sync: Bool) {
        let i = Int(file)
        precondition(canWrite(file: file, sync: sync), "write on a busy, closing or non-file slot")
        precondition(bytes.count <= Int(UInt32.max), "one write is at most 4 GiB")
        slots[i].writeInFlight = true
        slots[i].sendBase = bytes.baseAddress
        slots[i].sendCount = bytes.count
        slots[i].writeOffset = offset
        slots[i].syncLinked = sync
        if sync { slots[i].syncInFlight = true }
        submit(.write(file, slots[i].generation))
    }

    /// Whether `file` can take a read now (none in flight, not closing).
    public func canRead(file: UInt32) -> Bool {
        let s = slots[Int(file)]
        return s.inUse && s.isFile && !s.readInFlight && !s.closing
    }

    /// Reads up to `into.count` bytes at `offset` (pread semantics; the buffer must stay valid until
    /// `loopFileDone`, whose result is the byte count, 0 at the end of the file, or a negative errno).
    public func read(file: UInt32, into buffer: UnsafeMutableRawBufferPointer, offset: UInt64) {
        let i = Int(file)
        precondition(canRead(file: file), "read on a busy, closing or non-file slot")
        precondition(buffer.count <= Int(UInt32.max), "one read is at most 4 GiB")
        slots[i].readInFlight = true
        slots[i].readBase = buffer.baseAddress
        slots[i].readCount = buffer.count
        slots[i].readOffset = offset
        submit(.read(file, slots[i].generation))
    }

    /// Makes what was written to `file` durable: fdatasync, or fsync with `dataOnly: false` (metadata too, as
    /// after the file grew into a new segment). One at a time; writes may go on meanwhile.
    public func sync(file: UInt32, dataOnly: Bool = true) {
        let i = Int(file)
        precondition(canSync(file: file), "sync on a busy, closing or non-file slot")
        slots[i].syncInFlight = true
        submit(.sync(file, slots[i].generation, dataOnly: dataOnly))
    }

    /// Closes `file` once its read, write and sync in flight completed (their `loopFileDone` still arrives).
    public func closeFile(_ file: UInt32) {
        let i = Int(file)
        guard slots[i].inUse, slots[i].isFile, !slots[i].closing else { return }
        slots[i].closing = true
        closingSlots.append(file)
    }

    /// A write or sync on a file slot completed: the slot's state moves on, failures are counted, the owner
    /// hears the result. A completion for a slot reused since (generation changed) is dropped.
    func onFileDone(_ file: UInt32, _ gen: UInt32, _ cqe: sf_cqe, _ operation: FileOperation, now: UInt64) {
        let i = Int(file)
        guard i < slots.count, slots[i].inUse, slots[i].generation == gen, slots[i].isFile else { return }
        switch operation {
        case .write:
            precondition(slots[i].writeInFlight, "a write completed on file slot \(file) with none in flight")
            slots[i].writeInFlight = false
            slots[i].sendBase = nil
            if cqe.res >= 0 {
                counters.fileWrites &+= 1
                counters.fileWriteBytes &+= UInt64(cqe.res)
            }
        case .sync:
            precondition(slots[i].syncInFlight, "a sync completed on file slot \(file) with none in flight")
            slots[i].syncInFlight = false
            slots[i].syncLinked = false
            if cqe.res >= 0 { counters.fileSyncs &+= 1 }
        case .read:
            precondition(slots[i].readInFlight, "a read completed on file slot \(file) with none in flight")
            slots[i].readInFlight = false
            slots[i].readBase = nil
            if cqe.res >= 0 {
                counters.fileReads &+= 1
                counters.fileReadBytes &+= UInt64(cqe.res)
            }
        }
        // A sync linked behind a failed or short write is cancelled by the kernel: not a failure of its own.
        if cqe.res < 0 && !(operation == .sync && cqe.res == -ECANCELED) {
            classifyFile(errno: -cqe.res, operation: "\(operation)", file: file)
        }
        delegate?.loopFileDone(file: file, operation: operation, result: cqe.res, now: now)
    }

    /// A file operation's errno: the disk's own failures (ENOSPC, EDQUOT, EIO, EFBIG, …) are the owner's to
    /// handle and are counted; a bad descriptor or buffer is the loop's own bug and crashes here.
    func classifyFile(errno code: Int32, operation: String, file: UInt32) {
        switch code {
        case EBADF, EFAULT:
            fatalError("io_uring \(operation) on file slot \(file) failed with \(describe(errno: code)): the loop misused its own descriptor")
        default:
            counters.fileErrors &+= 1
        }
    }

    /// Opens, makes or removes `path` through the ring (`IORING_OP_OPENAT`, `MKDIRAT`, `UNLINKAT`), so that a
    /// loop thread never waits on a directory lookup or a metadata write; `loopPathDone` reports it with
    /// `token`. Any number may be in flight; they complete in any order.
    public func path(_ operation: PathOperation, _ path: String, token: UInt64) {
        var id = nextPathOperation
        while pathOperations[id] != nil { id &+= 1 }
        nextPathOperation = id &+ 1
        pathOperations[id] = (operation, strdup(path)!, token)
        submit(.path(id))
    }

    func onPathDone(_ id: UInt32, _ cqe: sf_cqe, now: UInt64) {
        guard let p = pathOperations.removeValue(forKey: id) else { return }
        free(p.path)
        counters.pathOperations &+= 1
        if cqe.res < 0 {
            if cqe.res == -EBADF || cqe.res == -EFAULT {
                fatalError("io_uring path operation failed with \(describe(errno: -cqe.res)): the loop misused it")
            }
            counters.pathErrors &+= 1
        }
        delegate?.loopPathDone(token: p.token, operation: p.operation, result: cqe.res, now: now)
    }

    func releaseFile(_ file: UInt32) {
        let i = Int(file)
        precondition(!slots[i].writeInFlight && !slots[i].syncInFlight && !slots[i].readInFlight, "file slot \(file) released with an operation in flight")
        Glibc.close(slots[i].fd)
        slots[i] = Slot(generation: (slots[i].generation &+ 1) & 0xFF_FFFF)
        freeSlots.append(file)
        openFiles -= 1
    }
}
