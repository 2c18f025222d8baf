/// One event in a world's vault log, as it lies in a segment file (little-endian):
///
/// ```
///  0  u32  body length (session id + payload)
///  4  u32  CRC-32C of everything from offset 8 to the end of the body
///  8  u64  sequence number in the log (1, 2, 3, … with no gap)
/// 16  u64  sequence number in its session (1, 2, 3, … per session)
/// 24  u64  wall-clock time, milliseconds since the epoch
/// 32  u16  session id length
/// 34  u8   kind (what the event is: the world's to define)
/// 35  u8   flags (bit 0: the payload is encrypted)
/// 36       session id, then payload
/// ```
///
/// The checksum covers the sequence numbers, so a stale record left in a reused file region is not taken
/// for a new one; the log-wide sequence must follow on from the record before, so a record from an older
/// write that happens to checksum is not either.
public struct VaultRecord: Equatable, Sendable {
    public var sequence: UInt64
    public var sessionSequence: UInt64
    public var unixMilliseconds: UInt64
    public var kind: UInt8
    public var flags: UInt8
    public var session: [UInt8]
    public var payload: [UInt8]

    public static let headerBytes = 36
    /// The largest body a record may have: past it a length field is corruption, not a record still arriving.
    public static let maxBodyBytes = 16 << 20

    public init(sequence: UInt64, sessionSequence: UInt64, unixMilliseconds: UInt64, kind: UInt8 = 0, flags: UInt8 = 0,
                session: [UInt8], payload: [UInt8]) {
        self.sequence = sequence
        self.sessionSequence = sessionSequence
        self.unixMilliseconds = unixMilliseconds
        self.kind = kind
        self.flags = flags
        self.session = session
        self.payload = payload
    }

    /// The record's size on disk.
    public var encodedBytes: Int { Self.headerBytes + session.count + payload.count }

    /// Appends the record's bytes to `out`.
    public func encode(into out: inout [UInt8]) {
        precondition(session.count <= Int(UInt16.max) && session.count + payload.count <= Self.maxBodyBytes,
                     "a vault record over its bounds")
        let start = out.count
        let body = session.count + payload.count
        func put<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out.append(contentsOf: $0) } }
        put(UInt32(body))
        put(UInt32(0))  // the checksum, filled in below
        put(sequence)
        put(sessionSequence)
        put(unixMilliseconds)
        put(UInt16(session.count))
        out.append(kind)
        out.append(flags)
        out.append(contentsOf: session)
        out.append(contentsOf: payload)
        let crc = out.withUnsafeBytes { CRC32C.checksum(UnsafeRawBufferPointer(rebasing: $0[(start + 8)...])) }
        withUnsafeBytes(of: crc.littleEndian) { c in
            for k in 0..<4 { out[start + 4 + k] = c[k] }
        }
    }
}

/// What a scan of a segment found after its last good record.
public enum SegmentTail: Equatable, Sendable {
    /// The records end exactly at the end of the bytes, or only zeros follow them (space prepared ahead).
    case clean
    /// A record was cut short (a write in progress at a crash): the bytes from `at` are to be cut off.
    case torn(at: Int)
    /// Bytes from `at` are not a record that follows on (bad checksum, impossible length, a sequence out of
    /// order): cut off too, and counted — after a crash a torn write can look like this; anywhere else it is
    /// damage.
    case corrupt(at: Int, reason: String)
}

public enum SegmentScan {
    /// Reads the records of a segment's bytes in order, checking each, and stops at the first that is torn or
    /// does not check out: everything before it is good and in order, everything from it on is to be cut.
    /// `after` is the sequence number of the record before this segment's first (0: the log's start);
    /// `anyFirst` takes the first record's number as it is (the oldest segment kept after retention dropped
    /// those before it).
    public static func scan(_ bytes: UnsafeRawBufferPointer, after: UInt64 = 0, anyFirst: Bool = false,
                            _ body: (VaultRecord, Int) -> Void) -> (valid: Int, last: UInt64, tail: SegmentTail) {
        var at = 0
        var last = after
        let h = VaultRecord.headerBytes
        while at < bytes.count {
            // Zeros to the end: space prepared ahead of the records (`GroupCommit`), not a record.
            if bytes[at] == 0 && allZero(bytes, from: at) { return (at, last, .clean) }
            guard bytes.count - at >= h else { return (at, last, .torn(at: at)) }
            func u64(_ o: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at + o, as: UInt64.self)) }
            let length = Int(UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self)))
            guard length <= VaultRecord.maxBodyBytes else {
                return (at, last, .corrupt(at: at, reason: "a body length of \(length) bytes"))
            }
            guard bytes.count - at >= h + length else { return (at, last, .torn(at: at)) }
            let stored = UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at + 4, as: UInt32.self))
            let crc = CRC32C.checksum(UnsafeRawBufferPointer(rebasing: bytes[(at + 8)..<(at + h + length)]))
            guard crc == stored else { return (at, last, .corrupt(at: at, reason: "checksum mismatch")) }
            let sequence = u64(8)
            guard sequence == last &+ 1 || (anyFirst && at == 0 && sequence > last) else {
                return (at, last, .corrupt(at: at, reason: "sequence \(sequence) after \(last)"))
            }
            let sessionLength = Int(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: at + 32, as: UInt16.self)))
            guard sessionLength <= length else { return (at, last, .corrupt(at: at, reason: "a session id longer than its body")) }
            let bodyStart = at + h
            let record = VaultRecord(
                sequence: sequence, sessionSequence: u64(16), unixMilliseconds: u64(24),
                kind: bytes[at + 34], flags: bytes[at + 35],
                session: Array(bytes[bodyStart..<(bodyStart + sessionLength)]),
                payload: Array(bytes[(bodyStart + sessionLength)..<(bodyStart + length)]))
            body(record, at)
            last = sequence
            at += h + length
        }
        return (at, last, .clean)
    }

    /// Whether every byte from `from` on is zero.
    static func allZero(_ bytes: UnsafeRawBufferPointer, from: Int) -> Bool {
        var i = from
        while i + 8 <= bytes.count {
            if bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self) != 0 { return false }
            i += 8
        }
        while i < bytes.count {
            if bytes[i] != 0 { return false }
            i += 1
        }
        return true
    }
}
