/// Where one record is: its segment, its bytes in it, and what a query selects it by.
public struct RecordPosition: Equatable, Sendable {
    public var segment: UInt32
    public var offset: UInt64
    public var length: UInt32
    public var sequence: UInt64
    public var sessionSequence: UInt64
    public var unixMilliseconds: UInt64

    public init(segment: UInt32, offset: UInt64, length: UInt32, sequence: UInt64, sessionSequence: UInt64, unixMilliseconds: UInt64) {
        self.segment = segment
        self.offset = offset
        self.length = length
        self.sequence = sequence
        self.sessionSequence = sessionSequence
        self.unixMilliseconds = unixMilliseconds
    }
}

/// A world's index, in memory: every record's position in log order (the log's sequence numbers have no gap, so
/// a sequence is an array index), and each session's records in session order (session sequences have no gap
/// either). Time stamps never go back in the log (the vault stamps them so), so a time range is two binary
/// searches. Built by the recovery scan at open, extended as batches become durable, trimmed from the front
/// when retention drops whole segments. About 70 bytes a record.
public struct VaultIndex {
    /// Every record still kept, in log order: `records[i].sequence == firstSequence + i`.
    public private(set) var records: [RecordPosition] = []
    /// Per session: the log sequence of each of its records kept, in session order, and the session sequence
    /// of the first of them.
    private var sessions: [[UInt8]: (first: UInt64, sequences: [UInt64])] = [:]

    public init() {}

    public var firstSequence: UInt64 { records.first?.sequence ?? 0 }
    public var lastSequence: UInt64 { records.last?.sequence ?? 0 }
    public var lastUnixMilliseconds: UInt64 { records.last?.unixMilliseconds ?? 0 }
    public var sessionCount: Int { sessions.count }

    /// A record made durable, after every record before it.
    public mutating func add(_ p: RecordPosition, session: [UInt8]) {
        precondition(records.isEmpty || p.sequence == lastSequence + 1, "the log's sequence numbers have no gap")
        records.append(p)
        if var s = sessions[session] {
            sessions[session] = nil  // keep the array uniquely referenced while it grows
            precondition(p.sessionSequence == s.first + UInt64(s.sequences.count), "a session's sequence numbers have no gap")
            s.sequences.append(p.sequence)
            sessions[session] = s
        } else {
            sessions[session] = (p.sessionSequence, [p.sequence])
        }
    }

    /// The position of the record with log sequence `sequence`, if kept.
    public func position(ofSequence sequence: UInt64) -> RecordPosition? {
        guard let first = records.first, sequence >= first.sequence, sequence - first.sequence < UInt64(records.count) else { return nil }
        return records[Int(sequence - first.sequence)]
    }

    /// The session's last sequence number (0: none stored or kept).
    public func lastSessionSequence(_ session: [UInt8]) -> UInt64 {
        guard let s = sessions[session] else { return 0 }
        return s.first + UInt64(s.sequences.count) - 1
    }

    /// The session's records after session sequence `after`, at most `limit`; `more` when there are others after.
    public func session(_ session: [UInt8], after: UInt64, limit: Int) -> (positions: [RecordPosition], more: Bool) {
        guard let s = sessions[session], limit > 0 else { return ([], false) }
        let start = after < s.first ? 0 : Int(min(after - s.first + 1, UInt64(s.sequences.count)))
        let end = min(s.sequences.count, start + limit)
        var out: [RecordPosition] = []
        out.reserveCapacity(end - start)
        for seq in s.sequences[start..<end] {
            if let p = position(ofSequence: seq) { out.append(p) }
        }
        return (out, end < s.sequences.count)
    }

    /// Records stamped in `[from, to)` with log sequence after `after`, in log order, at most `limit`.
    public func range(fromMilliseconds from: UInt64, toMilliseconds to: UInt64, after: UInt64, limit: Int) -> (positions: [RecordPosition], more: Bool) {
        guard let first = records.first, limit > 0, from < to else { return ([], false) }
        var lo = 0, hi = records.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if records[mid].unixMilliseconds < from { lo = mid + 1 } else { hi = mid }
        }
        if after >= first.sequence { lo = max(lo, Int(min(after - first.sequence + 1, UInt64(records.count)))) }
        var out: [RecordPosition] = []
        var i = lo
        while i < records.count && out.count < limit && records[i].unixMilliseconds < to {
            out.append(records[i])
            i += 1
        }
        return (out, i < records.count && records[i].unixMilliseconds < to)
    }

    /// Forgets every record of segments before `segment` (retention dropped them).
    public mutating func dropSegments(before segment: UInt32) {
        let n = records.prefix { $0.segment < segment }.count
        guard n > 0 else { return }
        let cut = records[n - 1].sequence
        records.removeFirst(n)
        for (key, var s) in sessions {
            let k = s.sequences.prefix { $0 <= cut }.count
            guard k > 0 else { continue }
            if k == s.sequences.count {
                sessions[key] = nil
                continue
            }
            sessions[key] = nil
            s.sequences.removeFirst(k)
            s.first += UInt64(k)
            sessions[key] = s
        }
    }
}
