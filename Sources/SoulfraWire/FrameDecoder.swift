/// Why a byte sequence is not a valid frame. Every case maps to the ERROR code sent before the link closes.
public enum WireError: Error, Sendable, Equatable, CustomStringConvertible {
    case unknownType(UInt8)
    case reservedBitsSet
    case frameTooLarge(length: UInt32, limit: UInt32)
    case truncated(field: String)
    case trailingBytes(type: FrameType)
    case invalidString(field: String)
    case invalidValue(field: String)
    case streamRequired(type: FrameType)
    case streamForbidden(type: FrameType)

    /// The code to send in ERROR.
    public var code: ErrorCode {
        switch self {
        case .frameTooLarge: .frameTooLarge
        default: .protocolError
        }
    }

    public var description: String {
        switch self {
        case .unknownType(let t): "unknown frame type \(t)"
        case .reservedBitsSet: "reserved header bits set"
        case .frameTooLarge(let l, let m): "frame payload \(l) bytes exceeds the negotiated maximum \(m)"
        case .truncated(let f): "payload truncated at \(f)"
        case .trailingBytes(let t): "trailing bytes after \(t) payload"
        case .invalidString(let f): "\(f) is not valid UTF-8 or is too long"
        case .invalidValue(let f): "invalid value for \(f)"
        case .streamRequired(let t): "\(t) needs a non-zero stream id"
        case .streamForbidden(let t): "\(t) must be sent on stream 0"
        }
    }
}

/// Splits a byte stream into frames, whatever the chunking of its input.
///
/// Frames entirely inside one input chunk are handed out in place (no copy); only a frame that straddles
/// chunks is assembled in an internal buffer, which is freed again once empty. The payload limit can be
/// changed between frames (after HELLO negotiates it).
///
/// A frame over the limit ends the link (`frameTooLarge`) unless the caller passes `oversize` and it accepts
/// the header: then the payload is read and dropped as it arrives, never buffered, and decoding goes on with
/// the next frame. The broker does this for DATA on a stream, so one oversize frame ends one stream, not
/// every stream on the link.
public final class FrameDecoder {
    // Stored properties are `@exclusivity(unchecked)` for the reason given at `ByteQueue`.
    /// The largest payload accepted; larger frames fail with `frameTooLarge`.
    @exclusivity(unchecked) public var maxPayload: UInt32
    private let partial = ByteQueue()
    /// Payload bytes of an oversize frame still to be dropped.
    @exclusivity(unchecked) private var skipping = 0

    public init(maxPayload: UInt32 = Wire.handshakeFrameBytes) {
        self.maxPayload = maxPayload
    }

    /// Bytes held for a frame that has not fully arrived.
    public var bufferedBytes: Int { partial.count }

    /// Feeds `bytes`; calls `body` for every complete frame, in order. `body` returns false to stop
    /// (the link is closing); the rest of the input is then discarded. `oversize` (see the type's notes)
    /// returns true to drop a frame over the limit instead of failing.
    @inline(__always)
    public func feed(
        _ bytes: UnsafeRawBufferPointer,
        oversize: (FrameHeader) -> Bool = { _ in false },
        _ body: (FrameHeader, UnsafeRawBufferPointer) throws(WireError) -> Bool
    ) throws(WireError) {
        var input = bytes
        if skipping > 0 {
            let n = min(skipping, input.count)
            skipping -= n
            input = UnsafeRawBufferPointer(rebasing: input[n...])
            if skipping > 0 { return }
        }
        if !partial.isEmpty {
            guard let rest = try completePartial(input, oversize, body) else { return }
            input = rest
        }
        while input.count >= Wire.headerBytes {
            let header = try Self.parseHeader(input, limit: .max)
            if header.length > maxPayload {
                try refuse(header, oversize)
                let n = min(Int(header.length), input.count - Wire.headerBytes)
                skipping = Int(header.length) - n
                input = UnsafeRawBufferPointer(rebasing: input[(Wire.headerBytes + n)...])
                continue
            }
            let total = Wire.headerBytes + Int(header.length)
            guard input.count >= total else { break }
            let payload = UnsafeRawBufferPointer(rebasing: input[Wire.headerBytes..<total])
            input = UnsafeRawBufferPointer(rebasing: input[total...])
            guard try body(header, payload) else { return }
        }
        if input.count > 0 {
            // Validate what we can of a straddling header now, so garbage fails at once, not after more input.
            if input.count >= Wire.headerBytes { _ = try Self.parseHeader(input, limit: .max) }
            partial.append(input)
        }
    }

    /// An oversize header: dropped if the caller accepts it, else the link fails.
    private func refuse(_ header: FrameHeader, _ oversize: (FrameHeader) -> Bool) throws(WireError) {
        guard oversize(header) else { throw .frameTooLarge(length: header.length, limit: maxPayload) }
    }

    /// Drops any partial frame and frees its buffer.
    public func reset() {
        partial.removeAll()
        partial.shrinkIfEmpty()
        skipping = 0
    }

    /// Completes the straddling frame from `input`; returns the unused rest, or nil when input ran out or
    /// the body asked to stop.
    private func completePartial(
        _ input: UnsafeRawBufferPointer,
        _ oversize: (FrameHeader) -> Bool,
        _ body: (FrameHeader, UnsafeRawBufferPointer) throws(WireError) -> Bool
    ) throws(WireError) -> UnsafeRawBufferPointer? {
        var input = input
        if partial.count < Wire.headerBytes {
            let take = min(Wire.headerBytes - partial.count, input.count)
            partial.append(UnsafeRawBufferPointer(rebasing: input[..<take]))
            input = UnsafeRawBufferPointer(rebasing: input[take...])
            if partial.count < Wire.headerBytes { return nil }
        }
        let header = try Self.parseHeader(partial.readable, limit: .max)
        if header.length > maxPayload {
            try refuse(header, oversize)
            // Payload bytes already held count against it; drop them and skip the rest.
            let held = partial.count - Wire.headerBytes
            partial.removeAll()
            let n = min(Int(header.length) - held, input.count)
            skipping = Int(header.length) - held - n
            return skipping > 0 ? nil : UnsafeRawBufferPointer(rebasing: input[n...])
        }
        let total = Wire.headerBytes + Int(header.length)
        let take = min(total - partial.count, input.count)
        if take > 0 {
            partial.append(UnsafeRawBufferPointer(rebasing: input[..<take]))
            input = UnsafeRawBufferPointer(rebasing: input[take...])
        }
        if partial.count < total { return nil }
        let frame = partial.readable
        let keepGoing = try body(header, UnsafeRawBufferPointer(rebasing: frame[Wire.headerBytes..<total]))
        partial.removeAll()
        if partial.capacity > 64 << 10 { partial.shrinkIfEmpty() }  // don't keep a huge frame's buffer
        return keepGoing ? input : nil
    }

    /// Parses and validates the header at the start of `bytes` (which holds at least 12 bytes).
    @inline(__always)
    public static func parseHeader(_ bytes: UnsafeRawBufferPointer, limit: UInt32) throws(WireError) -> FrameHeader {
        let length = bytes.loadBE(UInt32.self, at: 0)
        let rawType = bytes[4]
        guard let type = FrameType(rawValue: rawType) else { throw .unknownType(rawType) }
        guard bytes.loadBE(UInt16.self, at: 6) == 0 else { throw .reservedBitsSet }
        guard length <= limit else { throw .frameTooLarge(length: length, limit: limit) }
        return FrameHeader(
            length: length, type: type, flags: FrameFlags(rawValue: bytes[5]), stream: bytes.loadBE(UInt32.self, at: 8))
    }
}
