/// The messages on a vault stream (docs/protocol.md "Vault streams"). Each is one broker message (DATA frames,
/// MORE between parts); integers are big-endian like the frames that carry them.
///
/// A stream's OPEN says what it is for in its `detail`:
/// - `append` — the opener sends events (`kind u8` · payload) for the OPEN's session; the vault answers ACK once
///   they are durable, or FAIL when they could not be stored.
/// - `read after=<n> limit=<m> bytes=<b>` — the session's events after session sequence `n`, at most `m` and
///   about `b` bytes of records: RECORDs, then END, then END_STREAM.
/// - `replay from_ms=<a> to_ms=<b> after=<s> limit=<m> bytes=<b>` — every session's events stamped in `[a, b)`,
///   after log sequence `s`, in log order: RECORDs, END, END_STREAM.
public enum VaultRequest: Equatable, Sendable {
    case append
    case read(after: UInt64, limit: Int, maxBytes: Int = VaultRequest.maxPageBytes)
    /// The session's last `limit` events, in order (the recent history an agent answers with).
    case tail(limit: Int, maxBytes: Int = VaultRequest.maxPageBytes)
    case replay(fromMilliseconds: UInt64, toMilliseconds: UInt64, after: UInt64, limit: Int, maxBytes: Int = VaultRequest.maxPageBytes)

    /// The most records one page returns.
    public static let maxLimit = 1_000
    /// A page stops growing past this many bytes of records (it always holds at least one).
    public static let maxPageBytes = 1 << 20

    /// Parses an OPEN's detail; nil when it is not a vault request (the stream is refused).
    public init?(detail: String) {
        let words = detail.split(separator: " ")
        guard let verb = words.first else { return nil }
        var fields: [Substring: UInt64] = [:]
        for w in words.dropFirst() {
            guard let eq = w.firstIndex(of: "="), let v = UInt64(w[w.index(after: eq)...]) else { return nil }
            fields[w[..<eq]] = v
        }
        func limit() -> Int? {
            let l = fields["limit"] ?? 100
            return (1...UInt64(Self.maxLimit)).contains(l) ? Int(l) : nil
        }
        let bytes = fields["bytes"] ?? UInt64(Self.maxPageBytes)
        guard (1...UInt64(Self.maxPageBytes)).contains(bytes) else { return nil }
        switch verb {
        case "append":
            guard fields.isEmpty else { return nil }
            self = .append
        case "read":
            guard Set(fields.keys).isSubset(of: ["after", "limit", "bytes"]), let l = limit() else { return nil }
            self = .read(after: fields["after"] ?? 0, limit: l, maxBytes: Int(bytes))
        case "tail":
            guard Set(fields.keys).isSubset(of: ["limit", "bytes"]), let l = limit() else { return nil }
            self = .tail(limit: l, maxBytes: Int(bytes))
        case "replay":
            guard Set(fields.keys).isSubset(of: ["from_ms", "to_ms", "after", "limit", "bytes"]), let l = limit() else { return nil }
            self = .replay(fromMilliseconds: fields["from_ms"] ?? 0, toMilliseconds: fields["to_ms"] ?? UInt64.max,
                           after: fields["after"] ?? 0, limit: l, maxBytes: Int(bytes))
        default:
            return nil
        }
    }

    /// The OPEN detail for this request.
    public var detail: String {
        switch self {
        case .append: "append"
        case .read(let after, let limit, let bytes): "read after=\(after) limit=\(limit) bytes=\(bytes)"
        case .tail(let limit, let bytes): "tail limit=\(limit) bytes=\(bytes)"
        case .replay(let from, let to, let after, let limit, let bytes):
            "replay from_ms=\(from) to_ms=\(to) after=\(after) limit=\(limit) bytes=\(bytes)"
        }
    }
}

/// What the vault sends on its streams.
public enum VaultMessage: Equatable, Sendable {
    /// Appends made durable, in the order they were sent: each one's log and session sequence numbers.
    case ack([Acknowledged])
    /// The next `count` appends not yet answered were not stored (`errno`: ENOSPC, EIO, …): send them again
    /// after `retryAfterMilliseconds`; nothing after them was stored either.
    case fail(count: UInt32, errno: UInt16, retryAfterMilliseconds: UInt32, reason: String)
    /// One stored event.
    case record(StoredEvent)
    /// The page is over: `next` is the cursor for the next page (the `after` to ask with), `more` whether
    /// there is more now.
    case end(next: UInt64, more: Bool)

    public struct Acknowledged: Equatable, Sendable {
        public var sequence: UInt64
        public var sessionSequence: UInt64
        public init(sequence: UInt64, sessionSequence: UInt64) {
            self.sequence = sequence
            self.sessionSequence = sessionSequence
        }
    }

    enum Tag: UInt8 {
        case ack = 1, fail, record, end
    }

    /// Appends the message's bytes to `out`.
    public func encode(into out: inout [UInt8]) {
        switch self {
        case .ack(let acks):
            out.append(Tag.ack.rawValue)
            Self.put(UInt16(acks.count), &out)
            for a in acks {
                Self.put(a.sequence, &out)
                Self.put(a.sessionSequence, &out)
            }
        case .fail(let count, let errno, let retry, let reason):
            out.append(Tag.fail.rawValue)
            Self.put(count, &out)
            Self.put(errno, &out)
            Self.put(retry, &out)
            let r = Array(reason.utf8.prefix(1024))
            Self.put(UInt16(r.count), &out)
            out += r
        case .record(let e):
            out.append(Tag.record.rawValue)
            e.encode(into: &out)
        case .end(let next, let more):
            out.append(Tag.end.rawValue)
            Self.put(next, &out)
            out.append(more ? 1 : 0)
        }
    }

    /// Decodes one message; nil when the bytes are not one.
    public static func decode(_ bytes: UnsafeRawBufferPointer) -> VaultMessage? {
        var r = Reader(bytes: bytes)
        guard let t = r.u8(), let tag = Tag(rawValue: t) else { return nil }
        let message: VaultMessage
        switch tag {
        case .ack:
            guard let n = r.u16() else { return nil }
            var acks: [Acknowledged] = []
            for _ in 0..<n {
                guard let s = r.u64(), let ss = r.u64() else { return nil }
                acks.append(Acknowledged(sequence: s, sessionSequence: ss))
            }
            message = .ack(acks)
        case .fail:
            guard let c = r.u32(), let e = r.u16(), let retry = r.u32(), let n = r.u16(), let s = r.take(Int(n)) else { return nil }
            message = .fail(count: c, errno: e, retryAfterMilliseconds: retry, reason: String(decoding: s, as: UTF8.self))
        case .record:
            guard let e = StoredEvent.decode(&r) else { return nil }
            message = .record(e)
        case .end:
            guard let next = r.u64(), let more = r.u8(), more <= 1 else { return nil }
            message = .end(next: next, more: more == 1)
        }
        return r.atEnd ? message : nil
    }

    static func put<T: FixedWidthInteger>(_ v: T, _ out: inout [UInt8]) {
        withUnsafeBytes(of: v.bigEndian) { out.append(contentsOf: $0) }
    }
}

/// One event as the vault stored it.
public struct StoredEvent: Equatable, Sendable {
    public var sequence: UInt64
    public var sessionSequence: UInt64
    public var unixMilliseconds: UInt64
    public var kind: UInt8
    public var session: [UInt8]
    public var payload: [UInt8]

    public init(sequence: UInt64, sessionSequence: UInt64, unixMilliseconds: UInt64, kind: UInt8, session: [UInt8], payload: [UInt8]) {
        self.sequence = sequence
        self.sessionSequence = sessionSequence
        self.unixMilliseconds = unixMilliseconds
        self.kind = kind
        self.session = session
        self.payload = payload
    }

    /// Layout: `sequence u64 · session_sequence u64 · unix_ms u64 · kind u8 · session str · payload (the rest)`.
    func encode(into out: inout [UInt8]) {
        VaultMessage.put(sequence, &out)
        VaultMessage.put(sessionSequence, &out)
        VaultMessage.put(unixMilliseconds, &out)
        out.append(kind)
        VaultMessage.put(UInt16(session.count), &out)
        out += session
        out += payload
    }

    static func decode(_ r: inout Reader) -> StoredEvent? {
        guard let s = r.u64(), let ss = r.u64(), let ms = r.u64(), let k = r.u8(), let n = r.u16(),
              let session = r.take(Int(n)) else { return nil }
        return StoredEvent(sequence: s, sessionSequence: ss, unixMilliseconds: ms, kind: k, session: Array(session),
                           payload: Array(r.rest()))
    }
}

/// Reads big-endian fields off a buffer; nil past its end.
struct Reader {
    let bytes: UnsafeRawBufferPointer
    var at = 0

    var atEnd: Bool { at == bytes.count }

    mutating func take(_ n: Int) -> UnsafeRawBufferPointer? {
        guard n >= 0, bytes.count - at >= n else { return nil }
        defer { at += n }
        return UnsafeRawBufferPointer(rebasing: bytes[at..<(at + n)])
    }

    mutating func rest() -> UnsafeRawBufferPointer { take(bytes.count - at)! }

    mutating func integer<T: FixedWidthInteger>(_: T.Type) -> T? {
        guard let b = take(MemoryLayout<T>.size) else { return nil }
        var v: T = 0
        for byte in b { v = v << 8 | T(byte) }
        return v
    }

    mutating func u8() -> UInt8? { integer(UInt8.self) }
    mutating func u16() -> UInt16? { integer(UInt16.self) }
    mutating func u32() -> UInt32? { integer(UInt32.self) }
    mutating func u64() -> UInt64? { integer(UInt64.self) }
}
