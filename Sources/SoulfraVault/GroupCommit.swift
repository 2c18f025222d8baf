/// The vault's commit policy for one log, sans-IO: it takes appends, completions and `now`, and says what to
/// write, when to sync, and which appends are durable (acknowledged) or failed.
///
/// **Group commit.** One write with an fdatasync linked behind it is in flight at a time; appends that arrive
/// meanwhile wait and go together in the next one, so under load every fsync carries many appends. An append
/// is acknowledged only once the fsync after its bytes completed. Sequence numbers (in the log and per
/// session) are given when a batch is formed, and given back if the batch fails, so the log never has a gap.
///
/// **Gathering.** When a batch completes, its producers get their answers and usually send again within a
/// round trip; a batch started at once would hold only the few appends that came during the fsync, and the
/// producers would split into groups that take turns (half the appends per fsync). So the next batch waits
/// until as many appends are pending as the system held a moment ago (the batch just completed plus those that
/// waited), or for at most one commit time (`maxGatherNanoseconds` at most), whichever comes first; the owner
/// is told when to look again (`wake`). One producer is never held: its append is all there is. Nor are many
/// (more than `maxGatherAppends` outstanding): their batches are large already, the fsync is a small part of
/// each append's cost, and waiting would only idle a busy loop.
///
/// **Preparation.** A sync after a write that grows the file (or fills a hole) must also commit the file's
/// new size and block allocation to the filesystem's journal, which costs as much again as the data; a sync
/// of bytes written over blocks already written and synced does not. So, with `prepareAheadBytes`, the policy
/// keeps the file written with zeros (and synced) ahead of its records, in chunks of `prepareChunkBytes`, up
/// to `prepareLimit` (the segment's size): `.prepare` asks the owner to write a chunk. A batch never overlaps
/// a chunk in flight (it waits for it); a failed chunk is retried after `retry` and fails no append. Recovery
/// reads an all-zero tail as the clean end of the records (`SegmentScan`).
///
/// **Failures.** A short write continues where it stopped (its linked sync was cancelled by the kernel). A
/// failed write or sync (a full disk, an I/O error) fails the batch's appends with the errno — none of them is
/// acknowledged, and the next batch is written over the same region — then waits `retry` before trying the
/// appends that came meanwhile, doubling up to `maxRetry`: appends resume by themselves once space returns.
public struct GroupCommit {
    /// One event to store. `id` is the caller's, to match the outcome to the producer.
    public struct Append: Sendable {
        public var id: UInt64
        public var session: [UInt8]
        public var kind: UInt8
        public var flags: UInt8
        public var unixMilliseconds: UInt64
        public var payload: [UInt8]

        public init(id: UInt64, session: [UInt8], kind: UInt8 = 0, flags: UInt8 = 0, unixMilliseconds: UInt64, payload: [UInt8]) {
            self.id = id
            self.session = session
            self.kind = kind
            self.flags = flags
            self.unixMilliseconds = unixMilliseconds
            self.payload = payload
        }

        /// The size of its record in the log.
        public var recordBytes: Int { VaultRecord.headerBytes + session.count + payload.count }
    }

    /// An append made durable: its place in the log and in its session, and where its record is in the file.
    public struct Durable: Equatable, Sendable {
        public let id: UInt64
        public let sequence: UInt64
        public let sessionSequence: UInt64
        public let offset: UInt64
        public let length: UInt32
        public let unixMilliseconds: UInt64
        public let session: [UInt8]

        public init(id: UInt64, sequence: UInt64, sessionSequence: UInt64, offset: UInt64 = 0, length: UInt32 = 0,
                    unixMilliseconds: UInt64 = 0, session: [UInt8] = []) {
            self.session = session
            self.id = id
            self.sequence = sequence
            self.sessionSequence = sessionSequence
            self.offset = offset
            self.length = length
            self.unixMilliseconds = unixMilliseconds
        }

        /// Its place in the log and session, without where the record is (for comparing outcomes).
        public var numbers: [UInt64] { [id, sequence, sessionSequence] }
    }

    public enum Action: Equatable, Sendable {
        /// Write `count` bytes of `staged` (from `from`) at `offset` in the log, with an fdatasync linked behind.
        case writeAndSync(offset: UInt64, from: Int, count: Int)
        /// These appends are on disk and synced, in log order.
        case acknowledge([Durable])
        /// These appends are not stored (`errno`: ENOSPC, EIO, …); the producers should be told to retry.
        case fail([UInt64], errno: Int32)
        /// Call `tick` at (or after) this time: the next batch is gathering.
        case wake(at: UInt64)
        /// Write `count` zero bytes at `offset`, with an fdatasync linked behind; report it with `prepared`.
        case prepare(offset: UInt64, count: Int)
    }

    /// Bytes of the log known to be on disk and synced: where the next batch is written.
    public private(set) var durableBytes: UInt64
    /// The sequence number of the last durable record.
    public private(set) var lastSequence: UInt64
    /// The bytes of the batch in flight (stable until its completion: the write points into them).
    public private(set) var staged: [UInt8] = []
    /// How much of `staged` is written so far (a short write leaves the rest to write).
    private var writtenOfStaged = 0
    /// Of `staged`, the records' bytes (the rest is zeros over what a failed batch left beyond them).
    private var stagedRecordBytes = 0
    /// How far writes have reached in the file, failed ones included: bytes past `durableBytes` up to here may
    /// hold records that were reported failed, and are zeroed by the next batch so that no recovery can read
    /// them as records (a failed batch's record could otherwise follow on, checksum and all, from a retry of
    /// the same length).
    public private(set) var writtenUntil: UInt64
    private var batch: [Durable] = []
    /// Session sequence numbers before the batch in flight took its own (restored if it fails).
    private var sessionsBefore: [[UInt8]: UInt64] = [:]
    private var sessionSequences: [[UInt8]: UInt64]
    private var pending: [Append] = []
    public private(set) var pendingBytes = 0
    private var batchStartedAt: UInt64 = 0
    /// After a failure: when the next attempt may start.
    public private(set) var retryAt: UInt64?
    private var retryDelay: UInt64

    public let maxBatchBytes: Int
    /// The longest the next batch waits for the producers just answered (0: never), and the most outstanding
    /// appends it waits for.
    public let maxGatherNanoseconds: UInt64
    public let maxGatherAppends: Int
    /// While gathering: the pending appends to wait for, and until when.
    public private(set) var gatherTarget = 0
    public private(set) var gatherUntil: UInt64?
    /// Batches that waited to gather, and how many of them waited the full time.
    public private(set) var gathers: UInt64 = 0
    public private(set) var gatherTimeouts: UInt64 = 0
    public let retryNanoseconds: UInt64
    public let maxRetryNanoseconds: UInt64

    /// How far ahead of the records the file is kept written with zeros (0: not), in chunks of how many
    /// bytes, and up to where (the segment's size: no further).
    public let prepareAheadBytes: Int
    public let prepareChunkBytes: Int
    public let prepareLimit: UInt64
    /// The file is written with zeros and synced up to here (what recovery found past the records counts).
    public private(set) var preparedBytes: UInt64
    /// The chunk of zeros in flight.
    public private(set) var preparing: (offset: UInt64, count: Int)?
    private var prepareRetryAt: UInt64?
    /// Chunks prepared, and chunks that failed (a full disk: appends go on into what is prepared, then fail).
    public private(set) var preparedChunks: UInt64 = 0
    public private(set) var prepareFailures: UInt64 = 0

    /// What the policy did, for metrics.
    public private(set) var batches: UInt64 = 0
    public private(set) var appendsDurable: UInt64 = 0
    public private(set) var appendsFailed: UInt64 = 0
    public private(set) var largestBatch = 0
    /// The time from forming the last durable batch to its sync completing (nanoseconds).
    public private(set) var lastCommitNanoseconds: UInt64 = 0

    /// A log whose first `durableBytes` are good (a recovery scan's `valid`), ending at `lastSequence`, with the
    /// last sequence number of each session seen.
    public init(durableBytes: UInt64 = 0, lastSequence: UInt64 = 0, sessions: [[UInt8]: UInt64] = [:],
                maxBatchBytes: Int = 1 << 20, maxGatherNanoseconds: UInt64 = 2_000_000, maxGatherAppends: Int = 64,
                retryNanoseconds: UInt64 = 100_000_000, maxRetryNanoseconds: UInt64 = 2_000_000_000,
                preparedBytes: UInt64 = 0, prepareAheadBytes: Int = 0, prepareChunkBytes: Int = 256 << 10,
                prepareLimit: UInt64 = .max) {
        precondition(prepareAheadBytes == 0 || prepareChunkBytes > 0, "zeros prepared in chunks of nothing")
        self.preparedBytes = max(preparedBytes, durableBytes)
        self.prepareAheadBytes = prepareAheadBytes
        self.prepareChunkBytes = prepareChunkBytes
        self.prepareLimit = prepareLimit
        self.maxGatherNanoseconds = maxGatherNanoseconds
        self.maxGatherAppends = maxGatherAppends
        self.durableBytes = durableBytes
        self.writtenUntil = durableBytes
        self.lastSequence = lastSequence
        self.sessionSequences = sessions
        self.maxBatchBytes = maxBatchBytes
        self.retryNanoseconds = retryNanoseconds
        self.maxRetryNanoseconds = maxRetryNanoseconds
        self.retryDelay = retryNanoseconds
    }

    /// Whether a write is in flight.
    public var writing: Bool { !batch.isEmpty }

    /// Sealed: no new batch starts (the log moves to a new segment once the write in flight is done; the appends
    /// waiting here go there, `takePending`).
    public private(set) var sealed = false

    /// Starts no more batches here (`false`: starts them again).
    public mutating func seal(_ on: Bool = true) {
        sealed = on
        if on { gatherUntil = nil }
    }

    /// The appends waiting (not yet in a batch), taken out to go to the next segment; and the sequence numbers
    /// the next segment goes on from.
    public mutating func takePending() -> (appends: [Append], lastSequence: UInt64, sessions: [[UInt8]: UInt64]) {
        precondition(!writing, "appends taken while a batch is in flight")
        defer {
            pending = []
            pendingBytes = 0
        }
        return (pending, lastSequence, sessionSequences)
    }

    /// An append arrived.
    public mutating func append(_ a: Append, now: UInt64) -> [Action] {
        pending.append(a)
        pendingBytes += a.recordBytes
        return startBatch(now: now)
    }

    /// Time passed: after a failure, try again once the delay is over.
    public mutating func tick(now: UInt64) -> [Action] {
        startBatch(now: now)
    }

    /// The write in flight and the sync linked behind it completed: `written` is the write's result (bytes, or
    /// a negative errno), `synced` the sync's (0, `-ECANCELED` after a short or failed write, or a negative
    /// errno).
    public mutating func completed(written: Int32, synced: Int32, now: UInt64) -> [Action] {
        precondition(writing, "a completion with no write in flight")
        let remaining = staged.count - writtenOfStaged
        if written > 0 { writtenUntil = max(writtenUntil, durableBytes + UInt64(writtenOfStaged) + UInt64(written)) }
        if written >= 0 && Int(written) < remaining && synced == -LinuxErrno.canceled {
            // Short: write the rest (the sync comes with it).
            writtenOfStaged += Int(written)
            return [.writeAndSync(offset: durableBytes + UInt64(writtenOfStaged), from: writtenOfStaged, count: staged.count - writtenOfStaged)]
        }
        guard written >= 0 && Int(written) == remaining && synced == 0 else {
            let errno = written < 0 ? -written : (synced < 0 ? -synced : LinuxErrno.io)
            return failBatch(errno: errno, now: now)
        }
        durableBytes += UInt64(stagedRecordBytes)
        lastSequence = batch.last!.sequence
        let done = batch
        batch = []
        sessionsBefore = [:]
        staged.removeAll(keepingCapacity: true)
        writtenOfStaged = 0
        batches &+= 1
        appendsDurable &+= UInt64(done.count)
        largestBatch = max(largestBatch, done.count)
        lastCommitNanoseconds = now &- batchStartedAt
        retryDelay = retryNanoseconds
        let outstanding = done.count + pending.count
        if done.count > 1 && outstanding <= maxGatherAppends && maxGatherNanoseconds > 0 && !sealed {
            gatherTarget = outstanding
            let until = now &+ min(lastCommitNanoseconds, maxGatherNanoseconds)
            gatherUntil = until
            gathers &+= 1
            return [.acknowledge(done), .wake(at: until)] + prepare(now: now)
        }
        return [.acknowledge(done)] + startBatch(now: now)
    }

    /// The chunk of zeros in flight and the sync linked behind it completed (results as for `completed`).
    public mutating func prepared(written: Int32, synced: Int32, now: UInt64) -> [Action] {
        guard let chunk = preparing else { preconditionFailure("a prepared chunk with none in flight") }
        preparing = nil
        if written >= 0 && Int(written) == chunk.count && synced == 0 {
            preparedBytes = max(preparedBytes, chunk.offset + UInt64(chunk.count))
            preparedChunks &+= 1
        } else {
            // Zeros written in part are harmless: they lie past every record. Try again later.
            prepareFailures &+= 1
            prepareRetryAt = now &+ retryNanoseconds
        }
        return startBatch(now: now)
    }

    /// What the first chunk of zeros leaves between the writes and itself (at most half the bytes ahead).
    static let prepareGapBytes = 64 << 10

    /// Where writes have reached or will reach: the batch in flight's end, or what failed writes left.
    private var writeEnd: UInt64 { max(writtenUntil, durableBytes + UInt64(staged.count)) }

    /// The next chunk of zeros, if the prepared bytes are less than `prepareAheadBytes` ahead of the writes.
    private mutating func prepare(now: UInt64) -> [Action] {
        guard prepareAheadBytes > 0, preparing == nil, !sealed else { return [] }
        if let at = prepareRetryAt {
            guard now >= at else { return [] }
            prepareRetryAt = nil
        }
        let end = writeEnd
        // Whole pages (the page the records end in is written already). Behind the writes (a new segment, or
        // after failures) the first chunk leaves a gap for the next few batches rather than make them wait.
        let gap = UInt64(min(Self.prepareGapBytes, prepareAheadBytes / 2))
        let start = ((preparedBytes >= end ? preparedBytes : end + gap) + 4_095) & ~4_095
        precondition(start >= end, "zeros would be written over records")
        let want = min(prepareLimit, end + UInt64(prepareAheadBytes))
        guard start < want else { return [] }
        let count = Int(min(UInt64(prepareChunkBytes), prepareLimit - start))
        preparing = (start, count)
        return [.prepare(offset: start, count: count)]
    }

    /// Forms the next batch from what waits, if nothing is in flight and no retry delay runs; then prepares
    /// zeros ahead if due.
    private mutating func startBatch(now: UInt64) -> [Action] {
        guard !writing, !sealed, !pending.isEmpty else { return prepare(now: now) }
        if let until = gatherUntil {
            guard pending.count >= gatherTarget || now >= until else { return prepare(now: now) }
        }
        if let at = retryAt {
            guard now >= at else { return [] }
        }
        var taken = 0
        var bytes = 0
        while taken < pending.count {
            let size = pending[taken].recordBytes
            if taken > 0 && bytes + size > maxBatchBytes { break }
            bytes += size
            taken += 1
        }
        let end = max(writtenUntil, durableBytes + UInt64(bytes))
        if let chunk = preparing, end > chunk.offset {
            return []  // it would write where zeros are being written: after them (`prepared` starts it)
        }
        if let until = gatherUntil {
            if pending.count < gatherTarget && now >= until { gatherTimeouts &+= 1 }
            gatherUntil = nil
        }
        retryAt = nil
        var sequence = lastSequence
        for k in 0..<taken {
            let a = pending[k]
            sequence += 1
            if sessionsBefore[a.session] == nil { sessionsBefore[a.session] = sessionSequences[a.session] ?? 0 }
            let sessionSequence = (sessionSequences[a.session] ?? 0) + 1
            sessionSequences[a.session] = sessionSequence
            let offset = durableBytes + UInt64(staged.count)
            VaultRecord(sequence: sequence, sessionSequence: sessionSequence, unixMilliseconds: a.unixMilliseconds,
                        kind: a.kind, flags: a.flags, session: a.session, payload: a.payload).encode(into: &staged)
            batch.append(Durable(id: a.id, sequence: sequence, sessionSequence: sessionSequence, offset: offset,
                                 length: UInt32(a.recordBytes), unixMilliseconds: a.unixMilliseconds, session: a.session))
        }
        pending.removeFirst(taken)
        pendingBytes -= bytes
        stagedRecordBytes = staged.count
        let recordsEnd = durableBytes + UInt64(staged.count)
        if writtenUntil > recordsEnd { staged += repeatElement(0, count: Int(writtenUntil - recordsEnd)) }
        batchStartedAt = now
        return [.writeAndSync(offset: durableBytes, from: 0, count: staged.count)] + prepare(now: now)
    }

    /// The batch in flight is not stored: its appends fail, its sequence numbers are given back, and the next
    /// attempt waits.
    private mutating func failBatch(errno: Int32, now: UInt64) -> [Action] {
        let ids = batch.map(\.id)
        for (session, before) in sessionsBefore {
            if before == 0 { sessionSequences.removeValue(forKey: session) } else { sessionSequences[session] = before }
        }
        sessionsBefore = [:]
        batch = []
        staged.removeAll(keepingCapacity: true)
        writtenOfStaged = 0
        appendsFailed &+= UInt64(ids.count)
        retryAt = now &+ retryDelay
        retryDelay = min(maxRetryNanoseconds, retryDelay * 2)
        return [.fail(ids, errno: errno)]
    }
}

/// Linux errno values the policy reasons about (a sans-IO module does not import the C library).
enum LinuxErrno {
    static let io: Int32 = 5
    static let canceled: Int32 = 125
}
